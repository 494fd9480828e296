//! The Windows enrollment service as configured: URLs, the CA that signs device certificates,
//! the OnPremise secret, the credential hook and the federated token keys. Built once at start
//! (bad files and keys are configuration errors, exit 64).

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use mdm_certs::jwt::{self, JwtKey};
use mdm_certs::{PKey, Private, X509};
use mdm_windows::enroll::{CertificateEntry, ErrorType};
use sha2::Sha256;

use crate::config::{ConfigError, WindowsAuthPolicy, WindowsConfig};
use crate::http_util::{OutboundClient, outbound_client};
use crate::pki;
use crate::sinks::webhook::SIGNATURE_HEADER;

/// Largest hook answer read.
const MAX_HOOK_ANSWER_BYTES: usize = 64 * 1024;

pub const DISCOVERY_PATH: &str = "/EnrollmentServer/Discovery.svc";
pub const POLICY_PATH: &str = "/EnrollmentServer/Policy.svc";
pub const ENROLLMENT_PATH: &str = "/EnrollmentServer/Enrollment.svc";
/// Where enrolled devices send OMA-DM (served by the management source).
pub const MANAGEMENT_PATH: &str = "/ManagementServer/MDM.svc";

/// What the credential hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookAnswer {
    Allowed,
    /// The credentials are right but the user may not enroll: the error type to answer with
    /// (`UserLicense`, `DeviceCapReached`, … or none) and a message for the device.
    Denied {
        error_type: Option<ErrorType>,
        message: Option<String>,
    },
    /// 401 or 403: wrong credentials.
    WrongCredentials,
}

/// Why the hook gave no decision.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    #[error("credential hook: {0}")]
    Request(String),
    #[error("credential hook gave no answer within {0:?}")]
    Timeout(Duration),
    #[error("credential hook answered HTTP {0}")]
    Status(u16),
    #[error("credential hook answer is not {{\"allowed\": bool}}: {0}")]
    Answer(String),
}

#[derive(Debug)]
struct CredentialHook {
    url: String,
    timeout: Duration,
    secret: Option<String>,
    client: OutboundClient,
}

/// The running service.
pub struct WindowsEnrollment {
    pub(crate) config: WindowsConfig,
    base_url: String,
    pub(crate) ca: X509,
    pub(crate) ca_key: PKey<Private>,
    /// The gateway CA as the provisioning document's trusted root.
    pub(crate) root: CertificateEntry,
    secret: String,
    hook: Option<CredentialHook>,
    pub(crate) jwt_keys: Vec<JwtKey>,
}

impl std::fmt::Debug for WindowsEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowsEnrollment")
            .field("base_url", &self.base_url)
            .field("auth_policy", &self.config.auth_policy)
            .field("hook", &self.hook.as_ref().map(|h| &h.url))
            .field("jwt_keys", &self.jwt_keys.len())
            .finish_non_exhaustive()
    }
}

fn config_err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), message: message.into() }
}

impl WindowsEnrollment {
    /// `public_url` is the gateway's (validated); `enroll_secret` the data directory's
    /// `enroll-secret`, used unless `windows.enroll_secret_file` names another file.
    pub fn new(
        config: &WindowsConfig,
        public_url: &str,
        ca: X509,
        ca_key: PKey<Private>,
        enroll_secret: String,
    ) -> Result<WindowsEnrollment, ConfigError> {
        let secret = match &config.enroll_secret_file {
            Some(p) => pki::read_secret(p).map_err(|e| config_err("windows.enroll_secret_file", e.to_string()))?,
            None => enroll_secret,
        };
        let hook = match &config.credential_hook_url {
            Some(url) => {
                let secret = match &config.credential_hook_hmac_secret_file {
                    Some(p) => Some(
                        pki::read_secret(p)
                            .map_err(|e| config_err("windows.credential_hook_hmac_secret_file", e.to_string()))?,
                    ),
                    None => None,
                };
                let client = outbound_client().map_err(|e| config_err("windows.credential_hook_url", e))?;
                Some(CredentialHook {
                    url: url.clone(),
                    timeout: Duration::from_millis(config.credential_hook_timeout_ms),
                    secret,
                    client,
                })
            }
            None => None,
        };
        let mut jwt_keys = Vec::new();
        if config.auth_policy == WindowsAuthPolicy::Federated {
            for path in &config.federated.keys {
                let bytes = std::fs::read(path)
                    .map_err(|e| config_err("windows.federated.keys", format!("{}: {e}", path.display())))?;
                let keys = if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                    jwt::keys_from_jwks(&bytes)
                } else {
                    jwt::keys_from_pem(&bytes)
                }
                .map_err(|e| config_err("windows.federated.keys", format!("{}: {e}", path.display())))?;
                jwt_keys.extend(keys);
            }
        }
        let root = CertificateEntry {
            thumbprint: mdm_certs::wstep::thumbprint_sha1(&ca),
            der: ca.to_der().map_err(|e| config_err("data_dir", format!("CA certificate: {e}")))?,
        };
        Ok(WindowsEnrollment {
            config: config.clone(),
            base_url: public_url.trim_end_matches('/').to_owned(),
            ca,
            ca_key,
            root,
            secret,
            hook,
            jwt_keys,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Constant-time comparison with the OnPremise secret.
    pub(crate) fn secret_matches(&self, password: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), password.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub(crate) fn has_hook(&self) -> bool {
        self.hook.is_some()
    }

    /// Asks the credential hook about a user name and password.
    pub(crate) async fn ask_hook(
        &self,
        upn: &str,
        password: &str,
        operation: &str,
        device_id: Option<&str>,
    ) -> Result<HookAnswer, HookError> {
        let Some(hook) = &self.hook else {
            return Err(HookError::Request("no hook configured".into()));
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "upn": upn,
            "password": password,
            "operation": operation,
            "device_id": device_id,
        }))
        .map_err(|e| HookError::Request(e.to_string()))?;
        tokio::time::timeout(hook.timeout, call_hook(hook, body)).await.map_err(|_| HookError::Timeout(hook.timeout))?
    }
}

async fn call_hook(hook: &CredentialHook, body: Vec<u8>) -> Result<HookAnswer, HookError> {
    let mut req = http::Request::post(&hook.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json");
    if let Some(secret) = &hook.secret {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| HookError::Request(e.to_string()))?;
        mac.update(&body);
        req =
            req.header(SIGNATURE_HEADER, base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| HookError::Request(e.to_string()))?;
    let resp = hook.client.request(req).await.map_err(|e| HookError::Request(e.to_string()))?;
    let status = resp.status();
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        return Ok(HookAnswer::WrongCredentials);
    }
    let answer = Limited::new(resp.into_body(), MAX_HOOK_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| HookError::Answer(format!("reading the body: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(HookError::Status(status.as_u16()));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        allowed: bool,
        #[serde(default)]
        error_type: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let a: Answer = serde_json::from_slice(&answer).map_err(|e| HookError::Answer(e.to_string()))?;
    if a.allowed {
        return Ok(HookAnswer::Allowed);
    }
    let error_type = a.error_type.filter(|t| !t.trim().is_empty()).map(|t| ErrorType::other(t.trim().to_owned()));
    Ok(HookAnswer::Denied { error_type, message: a.message })
}
