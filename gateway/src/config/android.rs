//! `[android]`: Android Management API (AMAPI): Pub/Sub push intake and the AMAPI client.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Which credentials a Pub/Sub push must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PubSubAuth {
    /// The `?token=` query parameter (the push endpoint URL configured on the subscription).
    Token,
    /// An OIDC bearer token signed by Google for the subscription's service account
    /// (`[android.oidc]`).
    Oidc,
    /// Both.
    TokenAndOidc,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AndroidConfig {
    // --- Pub/Sub push intake (`POST /android/pubsub`) ---
    /// `token`, `oidc` or `token_and_oidc`.
    pub pubsub_auth: PubSubAuth,
    /// File holding the current push token; `<data_dir>/pubsub-token` (generated) when absent.
    pub pubsub_token_file: Option<PathBuf>,
    /// File holding the previous push token, still accepted while subscriptions are being moved
    /// to the current one (rotation). Remove it once every subscription uses the new token.
    pub pubsub_previous_token_file: Option<PathBuf>,
    /// OIDC push authentication (`pubsub_auth = "oidc"` or `"token_and_oidc"`).
    pub oidc: PubSubOidcConfig,
    /// Days a handled Pub/Sub message id is remembered, so a redelivery is not applied twice.
    /// At least 7 (Pub/Sub's longest retention).
    pub dedupe_days: u32,

    // --- AMAPI client ---
    /// AMAPI base URL (no path); a local emulator in tests.
    pub api_base_url: String,
    /// PEM CA file that verifies the AMAPI and token endpoints; the built-in Mozilla roots when
    /// absent.
    pub api_ca: Option<PathBuf>,
    /// The service account's JSON key file (Google's format: `client_email`, `private_key`,
    /// `token_uri`, `project_id`). The AMAPI client is off when absent.
    pub service_account_key: Option<PathBuf>,
    /// The managed enterprise, `enterprises/<id>`; set after signup.
    pub enterprise: Option<String>,
    /// Google Cloud project for signup and the request budget; the key file's `project_id` when
    /// absent.
    pub project_id: Option<String>,
    /// Pub/Sub topic given to `enterprises.create`, `projects/<project>/topics/<topic>`.
    pub pubsub_topic: Option<String>,
    /// Time for one AMAPI or token request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Wait after a 429 from AMAPI before the next request, in milliseconds (jitter is added).
    pub rate_limited_wait_ms: u64,
    /// First retry delay after a 5xx or a timeout, in milliseconds; doubled per attempt.
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// Attempts per request (5xx, timeouts, 429) before the command fails.
    pub max_attempts: u32,
    /// Requests allowed per `budget_window_s` for the whole Google project (AMAPI's default quota
    /// is 1 000 per 100 s), shared by all commands.
    pub budget_requests: u32,
    pub budget_window_s: u64,
    /// Seconds after issuing a command with no COMMAND notification before the gateway asks
    /// `operations.get` itself.
    pub reconcile_after_s: u64,
    /// Repeated patches of one policy within this many milliseconds are sent as one.
    pub policy_merge_ms: u64,
    /// Where the admin's browser returns after enterprise signup when `POST
    /// /v1/android/signup-urls` gives no `callback_url`: a URL that reaches the API listener's
    /// `GET /android/signup/callback` (docs/android.md).
    pub signup_callback_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PubSubOidcConfig {
    /// Expected `aud`: the audience set on the push subscription (by default its endpoint URL).
    pub audience: Option<String>,
    /// Accepted `iss` values.
    pub issuers: Vec<String>,
    /// The push subscription's service account; the token's `email` must match and be verified.
    pub service_account_email: Option<String>,
    /// Files with Google's verification keys: PEM (`PUBLIC KEY` or `CERTIFICATE`) or a JWKS
    /// document (`https://www.googleapis.com/oauth2/v3/certs`, saved and refreshed by the operator).
    pub keys: Vec<PathBuf>,
    /// Clock skew allowed on `exp`, `iat` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for AndroidConfig {
    fn default() -> Self {
        AndroidConfig {
            pubsub_auth: PubSubAuth::Token,
            pubsub_token_file: None,
            pubsub_previous_token_file: None,
            oidc: PubSubOidcConfig::default(),
            dedupe_days: 7,
            api_base_url: "https://androidmanagement.googleapis.com".into(),
            api_ca: None,
            service_account_key: None,
            enterprise: None,
            project_id: None,
            pubsub_topic: None,
            request_timeout_ms: 30_000,
            rate_limited_wait_ms: 60_000,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            max_attempts: 6,
            budget_requests: 1_000,
            budget_window_s: 100,
            reconcile_after_s: 300,
            policy_merge_ms: 1_000,
            signup_callback_url: None,
        }
    }
}

impl Default for PubSubOidcConfig {
    fn default() -> Self {
        PubSubOidcConfig {
            audience: None,
            issuers: vec!["https://accounts.google.com".into(), "accounts.google.com".into()],
            service_account_email: None,
            keys: Vec::new(),
            leeway_s: 60,
        }
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(key, message)
}

impl AndroidConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.pubsub_auth != PubSubAuth::Token {
            let o = &self.oidc;
            if o.audience.as_deref().is_none_or(str::is_empty) {
                return Err(err("android.oidc.audience", "required when pubsub_auth uses OIDC"));
            }
            if o.service_account_email.as_deref().is_none_or(str::is_empty) {
                return Err(err("android.oidc.service_account_email", "required when pubsub_auth uses OIDC"));
            }
            if o.keys.is_empty() {
                return Err(err("android.oidc.keys", "at least one key file is required when pubsub_auth uses OIDC"));
            }
            if o.issuers.is_empty() {
                return Err(err("android.oidc.issuers", "must not be empty"));
            }
        }
        for (key, path) in [
            ("android.pubsub_token_file", &self.pubsub_token_file),
            ("android.pubsub_previous_token_file", &self.pubsub_previous_token_file),
            ("android.api_ca", &self.api_ca),
            ("android.service_account_key", &self.service_account_key),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(err(key, format!("{} is not a readable file", p.display())));
            }
        }
        for (i, p) in self.oidc.keys.iter().enumerate() {
            if !p.is_file() {
                return Err(err(&format!("android.oidc.keys[{i}]"), format!("{} is not a readable file", p.display())));
            }
        }
        if self.dedupe_days < 7 {
            return Err(err("android.dedupe_days", "must be at least 7 (Pub/Sub redelivers for up to 7 days)"));
        }
        let uri: http::Uri =
            self.api_base_url.parse().map_err(|e| err("android.api_base_url", format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() || uri.path() != "/" {
            return Err(err("android.api_base_url", "must be an http(s):// URL with a host and no path"));
        }
        if let Some(e) = &self.enterprise
            && (!e.starts_with("enterprises/") || e.len() == "enterprises/".len() || e[12..].contains('/'))
        {
            return Err(err("android.enterprise", "must be `enterprises/<id>`"));
        }
        if let Some(t) = &self.pubsub_topic {
            let parts: Vec<&str> = t.split('/').collect();
            if parts.len() != 4
                || parts[0] != "projects"
                || parts[2] != "topics"
                || parts[1].is_empty()
                || parts[3].is_empty()
            {
                return Err(err("android.pubsub_topic", "must be `projects/<project>/topics/<topic>`"));
            }
        }
        for (key, v) in [
            ("android.request_timeout_ms", self.request_timeout_ms),
            ("android.retry_base_ms", self.retry_base_ms),
            ("android.budget_window_s", self.budget_window_s),
        ] {
            if v == 0 {
                return Err(err(key, "must be at least 1"));
            }
        }
        if let Some(u) = &self.signup_callback_url {
            let uri: http::Uri =
                u.parse().map_err(|e| err("android.signup_callback_url", format!("not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
                return Err(err("android.signup_callback_url", "must be an http(s):// URL"));
            }
        }
        if self.retry_max_ms < self.retry_base_ms {
            return Err(err("android.retry_max_ms", "must be at least android.retry_base_ms"));
        }
        if self.max_attempts == 0 {
            return Err(err("android.max_attempts", "must be at least 1"));
        }
        if self.budget_requests == 0 {
            return Err(err("android.budget_requests", "must be at least 1"));
        }
        Ok(())
    }
}
