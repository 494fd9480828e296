//! `[windows]`: Windows enrollment (MS-MDE2 discovery, policy and enrollment services).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// How devices authenticate to the policy and enrollment services (the discovery answer's
/// `AuthPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowsAuthPolicy {
    /// WS-Security `UsernameToken`: the user's UPN and the enrollment secret (or whatever the
    /// credential hook accepts).
    Onpremise,
    /// A bearer JWT from the configured identity provider (`[windows.federated]`).
    Federated,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// Serve Windows enrollment. When false, the enrollment endpoints answer every request
    /// with an `EnrollmentServer`/`NotSupported` fault.
    pub enabled: bool,
    /// `onpremise` or `federated`.
    pub auth_policy: WindowsAuthPolicy,
    /// File holding the OnPremise password; `<data_dir>/enroll-secret` when absent.
    pub enroll_secret_file: Option<PathBuf>,
    /// A backend URL that decides OnPremise credentials instead of the enrollment secret: the
    /// gateway POSTs `{"upn", "password", "operation", "device_id"}` and the hook answers
    /// `{"allowed": true}`, or `{"allowed": false, "error_type"?, "message"?}`; 401/403 mean
    /// wrong credentials.
    pub credential_hook_url: Option<String>,
    /// Time for the hook to answer, in milliseconds.
    pub credential_hook_timeout_ms: u64,
    /// File holding a secret; when set, each hook POST carries `X-Hmac-Signature`, the base64
    /// HMAC-SHA256 of the body.
    pub credential_hook_hmac_secret_file: Option<PathBuf>,
    /// UPN domains allowed to enroll (`example.com`); empty allows any.
    pub allowed_domains: Vec<String>,
    /// Deprecated: use `enrollment.device_limit_per_user`. Above 0, it lowers that limit to this
    /// value ([`super::Config::enrollment_rules`]); 0 is unset.
    pub max_devices_per_user: u32,
    /// Answer every enrollment request with an `EnrollmentServer`/`InMaintenance` fault
    /// (discovery still answers, so devices learn the service exists).
    pub maintenance: bool,
    /// Validity of issued device certificates, in days.
    pub cert_validity_days: u32,
    /// Let devices renew their certificate (MS-WSTEP `Renew`, ROBO) before it expires.
    pub renewal: bool,
    /// Days before expiry when devices start renewing (`RenewPeriod`).
    pub renew_period_days: u32,
    /// Days between a device's renewal attempts after a failure (`RetryInterval`).
    pub renew_retry_interval_days: u32,
    /// `PROVIDER-ID` of the management account (also the `DMClient` provider name).
    pub provider_id: String,
    /// Name of the management account, shown in Windows settings.
    pub name: String,
    /// The `DMClient` poll schedule written into provisioning documents.
    pub poll: WindowsPollConfig,
    /// Federated authentication (`auth_policy = "federated"`).
    pub federated: FederatedConfig,
}

/// When enrolled devices start management sessions by themselves (DMClient CSP `Poll`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsPollConfig {
    /// Minutes between polls of the first set (right after enrollment).
    pub first_interval_min: u32,
    pub first_count: u32,
    /// Minutes between polls of the second set.
    pub second_interval_min: u32,
    pub second_count: u32,
    /// Minutes between the remaining scheduled polls.
    pub remaining_interval_min: u32,
    /// How many remaining polls; 0 means forever.
    pub remaining_count: u32,
    /// Poll when a user logs in.
    pub poll_on_login: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederatedConfig {
    /// The STS devices get their token from (`AuthenticationServiceUrl`), `https://`.
    pub authentication_url: Option<String>,
    /// Exact `iss` of accepted tokens.
    pub issuer: Option<String>,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Files with the issuer's verification keys: PEM (`PUBLIC KEY` or `CERTIFICATE` blocks) or
    /// a JWKS document.
    pub keys: Vec<PathBuf>,
    /// The claim holding the user's UPN (then `preferred_username`, `unique_name`, `email`).
    pub upn_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig {
            enabled: true,
            auth_policy: WindowsAuthPolicy::Onpremise,
            enroll_secret_file: None,
            credential_hook_url: None,
            credential_hook_timeout_ms: 10_000,
            credential_hook_hmac_secret_file: None,
            allowed_domains: Vec::new(),
            max_devices_per_user: 0,
            maintenance: false,
            cert_validity_days: 365,
            renewal: true,
            renew_period_days: 42,
            renew_retry_interval_days: 7,
            provider_id: "MDM Gateway".into(),
            name: "MDM Gateway".into(),
            poll: WindowsPollConfig::default(),
            federated: FederatedConfig { upn_claim: "upn".into(), leeway_s: 300, ..FederatedConfig::default() },
        }
    }
}

impl Default for WindowsPollConfig {
    fn default() -> Self {
        WindowsPollConfig {
            first_interval_min: 3,
            first_count: 5,
            second_interval_min: 15,
            second_count: 8,
            remaining_interval_min: 480,
            remaining_count: 0,
            poll_on_login: true,
        }
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), message: message.into() }
}

fn plain(s: &str) -> bool {
    !s.trim().is_empty() && !s.chars().any(char::is_control)
}

fn https_url(key: &str, url: &str, allow_http: bool) -> Result<(), ConfigError> {
    let u: http::Uri = url.parse().map_err(|e| err(key, format!("not a URL: {e}")))?;
    let scheme_ok = match u.scheme_str() {
        Some("https") => true,
        Some("http") => allow_http,
        _ => false,
    };
    if !scheme_ok || u.host().is_none() {
        return Err(err(
            key,
            if allow_http { "must be an http:// or https:// URL" } else { "must be an https:// URL" },
        ));
    }
    Ok(())
}

impl WindowsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [
            ("windows.enroll_secret_file", &self.enroll_secret_file),
            ("windows.credential_hook_hmac_secret_file", &self.credential_hook_hmac_secret_file),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(err(key, format!("{} does not exist", p.display())));
            }
        }
        if let Some(url) = &self.credential_hook_url {
            https_url("windows.credential_hook_url", url, true)?;
        } else if self.credential_hook_hmac_secret_file.is_some() {
            return Err(err("windows.credential_hook_hmac_secret_file", "only meaningful with credential_hook_url"));
        }
        if !(1..=60_000).contains(&self.credential_hook_timeout_ms) {
            return Err(err("windows.credential_hook_timeout_ms", "must be 1 to 60000"));
        }
        for d in &self.allowed_domains {
            if !plain(d) || d.contains(['@', ' ', '/']) {
                return Err(err("windows.allowed_domains", format!("{d:?} is not a domain name")));
            }
        }
        if !(1..=3650).contains(&self.cert_validity_days) {
            return Err(err("windows.cert_validity_days", "must be 1 to 3650"));
        }
        if self.renewal {
            if self.renew_period_days == 0 || self.renew_period_days >= self.cert_validity_days {
                return Err(err(
                    "windows.renew_period_days",
                    "must be at least 1 and less than windows.cert_validity_days",
                ));
            }
            if self.renew_retry_interval_days == 0 || self.renew_retry_interval_days > self.renew_period_days {
                return Err(err("windows.renew_retry_interval_days", "must be 1 to windows.renew_period_days"));
            }
        }
        for (key, v) in [("windows.provider_id", &self.provider_id), ("windows.name", &self.name)] {
            if !plain(v) || v.chars().count() > 64 {
                return Err(err(key, "must be 1 to 64 characters without control characters"));
            }
        }
        let p = &self.poll;
        for (key, v) in [
            ("windows.poll.first_interval_min", p.first_interval_min),
            ("windows.poll.second_interval_min", p.second_interval_min),
            ("windows.poll.remaining_interval_min", p.remaining_interval_min),
        ] {
            if !(1..=10_080).contains(&v) {
                return Err(err(key, "must be 1 to 10080 minutes (a week)"));
            }
        }
        for (key, v) in [("windows.poll.first_count", p.first_count), ("windows.poll.second_count", p.second_count)] {
            if v > 1000 {
                return Err(err(key, "must be at most 1000"));
            }
        }
        if self.auth_policy == WindowsAuthPolicy::Federated {
            let f = &self.federated;
            let url = f.authentication_url.as_deref().ok_or_else(|| {
                err("windows.federated.authentication_url", "required with auth_policy = \"federated\"")
            })?;
            https_url("windows.federated.authentication_url", url, false)?;
            if !f.issuer.as_deref().is_some_and(plain) {
                return Err(err("windows.federated.issuer", "required with auth_policy = \"federated\""));
            }
            if f.audiences.is_empty() || !f.audiences.iter().all(|a| plain(a)) {
                return Err(err("windows.federated.audiences", "at least one audience is required"));
            }
            if f.keys.is_empty() {
                return Err(err("windows.federated.keys", "at least one key file is required"));
            }
            for k in &f.keys {
                if !k.is_file() {
                    return Err(err("windows.federated.keys", format!("{} does not exist", k.display())));
                }
            }
            if !plain(&f.upn_claim) {
                return Err(err("windows.federated.upn_claim", "must not be empty"));
            }
            if f.leeway_s > 3600 {
                return Err(err("windows.federated.leeway_s", "must be at most 3600"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Overrides};
    use super::*;

    fn refused(f: impl FnOnce(&mut WindowsConfig)) -> String {
        let mut c = Config::default();
        f(&mut c.windows);
        c.validate().expect_err("refused").key
    }

    #[test]
    fn checks_name_the_key() {
        Config::default().validate().expect("defaults are valid");
        assert_eq!(refused(|w| w.cert_validity_days = 0), "windows.cert_validity_days");
        assert_eq!(refused(|w| w.renew_period_days = 365), "windows.renew_period_days");
        assert_eq!(refused(|w| w.renew_retry_interval_days = 43), "windows.renew_retry_interval_days");
        assert_eq!(refused(|w| w.provider_id = " ".into()), "windows.provider_id");
        assert_eq!(refused(|w| w.allowed_domains = vec!["a@b".into()]), "windows.allowed_domains");
        assert_eq!(refused(|w| w.credential_hook_url = Some("ftp://x".into())), "windows.credential_hook_url");
        assert_eq!(refused(|w| w.credential_hook_timeout_ms = 0), "windows.credential_hook_timeout_ms");
        assert_eq!(refused(|w| w.poll.first_interval_min = 0), "windows.poll.first_interval_min");
        assert_eq!(
            refused(|w| w.enroll_secret_file = Some("/nonexistent/secret".into())),
            "windows.enroll_secret_file"
        );
        assert_eq!(refused(|w| w.auth_policy = WindowsAuthPolicy::Federated), "windows.federated.authentication_url");
        let fed = |w: &mut WindowsConfig| {
            w.auth_policy = WindowsAuthPolicy::Federated;
            w.federated.authentication_url = Some("https://sts.example.com".into());
            w.federated.issuer = Some("https://sts.example.com".into());
            w.federated.audiences = vec!["mdm".into()];
        };
        assert_eq!(refused(fed), "windows.federated.keys");
        assert_eq!(
            refused(|w| {
                fed(w);
                w.federated.authentication_url = Some("http://sts.example.com".into());
            }),
            "windows.federated.authentication_url"
        );
        // Renewal off: its periods are not checked.
        let mut c = Config::default();
        c.windows.renewal = false;
        c.windows.renew_period_days = 0;
        c.validate().expect("renewal off");
    }

    #[test]
    fn from_toml_and_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "[windows]\nauth_policy = \"onpremise\"\nmax_devices_per_user = 3\nallowed_domains = [\"corp.example\"]\n[windows.poll]\nfirst_count = 2\n",
        )
        .expect("write");
        let c = Config::load(Some(&path), &Overrides::default()).expect("valid");
        assert_eq!((c.windows.max_devices_per_user, c.windows.poll.first_count), (3, 2));
        assert_eq!(c.windows.allowed_domains, ["corp.example"]);
        std::fs::write(&path, "[windows.poll]\nfirst_cnt = 2\n").expect("write");
        let e = Config::load(Some(&path), &Overrides::default()).expect_err("unknown key");
        assert!(e.key.starts_with("windows.poll"), "{e}");
        std::fs::write(&path, "[windows]\nauth_policy = \"certificate\"\n").expect("write");
        let e = Config::load(Some(&path), &Overrides::default()).expect_err("unknown policy");
        assert_eq!(e.key, "windows.auth_policy", "{e}");
    }
}
