//! Token services for `GetToken` check-ins (`[apple.tokens.<TokenServiceType>]`): a token read
//! from a file, or asked of a backend hook.
//!
//! The hook gets a POST of `{"device_id", "token_service_type", "token_parameters"}` (the
//! device's `TokenParameters` as JSON, data as base64, secrets included: the hook needs them to
//! mint the token) and answers 2xx with `{"token": "<base64>"}`; those bytes go to the device as
//! `TokenData`. Nothing here is stored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use mdm_core::DeviceId;
use sha2::Sha256;

use crate::config::{ConfigError, TokenServiceConfig};
use crate::http_util::{OutboundClient, outbound_client};
use crate::pki;
use crate::sinks::webhook::SIGNATURE_HEADER;

/// Largest hook answer read.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Debug)]
enum Source {
    File(PathBuf),
    Hook { url: String, timeout: Duration, secret: Option<String> },
}

/// Why a configured service gave no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("token file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("token hook: {0}")]
    Request(String),
    #[error("token hook gave no answer within {0:?}")]
    Timeout(Duration),
    #[error("token hook answered HTTP {0}")]
    Status(u16),
    #[error("token hook answer is not {{\"token\": \"<base64>\"}}: {0}")]
    Answer(String),
}

impl TokenError {
    /// A short, stable label for metrics, logs and event data.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::File { .. } | TokenError::EmptyFile(_) => "token_file_unreadable",
            TokenError::Request(_) | TokenError::Timeout(_) => "token_hook_unreachable",
            TokenError::Status(_) => "token_hook_refused",
            TokenError::Answer(_) => "token_hook_bad_answer",
        }
    }
}

/// The configured services, ready to answer.
#[derive(Debug)]
pub struct TokenServices {
    services: BTreeMap<String, Source>,
    client: OutboundClient,
}

impl TokenServices {
    /// Reads the hooks' secrets; a missing or empty one is a configuration error.
    pub fn new(config: &BTreeMap<String, TokenServiceConfig>) -> Result<TokenServices, ConfigError> {
        let mut services = BTreeMap::new();
        for (name, c) in config {
            let source = match (&c.file, &c.url) {
                (Some(path), _) => Source::File(path.clone()),
                (None, Some(url)) => {
                    let secret = match &c.hmac_secret_file {
                        Some(p) => Some(pki::read_secret(p).map_err(|e| ConfigError {
                            key: format!("apple.tokens.{name}.hmac_secret_file"),
                            message: e.to_string(),
                        })?),
                        None => None,
                    };
                    Source::Hook { url: url.clone(), timeout: Duration::from_millis(c.timeout_ms), secret }
                }
                (None, None) => {
                    return Err(ConfigError {
                        key: format!("apple.tokens.{name}"),
                        message: "set exactly one of `file` and `url`".into(),
                    });
                }
            };
            services.insert(name.clone(), source);
        }
        let client = outbound_client().map_err(|message| ConfigError { key: "apple.tokens".into(), message })?;
        Ok(TokenServices { services, client })
    }

    /// The token for `service_type`, `Ok(None)` when that type is not configured.
    pub async fn token(
        &self,
        service_type: &str,
        device: &DeviceId,
        parameters: serde_json::Value,
    ) -> Result<Option<Vec<u8>>, TokenError> {
        let Some(source) = self.services.get(service_type) else {
            return Ok(None);
        };
        match source {
            Source::File(path) => {
                let bytes =
                    tokio::fs::read(path).await.map_err(|source| TokenError::File { path: path.clone(), source })?;
                if bytes.is_empty() {
                    return Err(TokenError::EmptyFile(path.clone()));
                }
                Ok(Some(bytes))
            }
            Source::Hook { url, timeout, secret } => {
                let body = serde_json::to_vec(&serde_json::json!({
                    "device_id": device,
                    "token_service_type": service_type,
                    "token_parameters": parameters,
                }))
                .map_err(|e| TokenError::Request(e.to_string()))?;
                let call = self.call(url, secret.as_deref(), body);
                tokio::time::timeout(*timeout, call).await.map_err(|_| TokenError::Timeout(*timeout))?.map(Some)
            }
        }
    }

    async fn call(&self, url: &str, secret: Option<&str>, body: Vec<u8>) -> Result<Vec<u8>, TokenError> {
        let mut req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json");
        if let Some(secret) = secret {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| TokenError::Request(e.to_string()))?;
            mac.update(&body);
            req = req.header(
                SIGNATURE_HEADER,
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
            );
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| TokenError::Request(e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| TokenError::Request(e.to_string()))?;
        let status = resp.status();
        let answer = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| TokenError::Answer(format!("reading the body: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(TokenError::Status(status.as_u16()));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: String,
        }
        let a: Answer = serde_json::from_slice(&answer).map_err(|e| TokenError::Answer(e.to_string()))?;
        let token = base64::engine::general_purpose::STANDARD
            .decode(a.token.trim())
            .map_err(|e| TokenError::Answer(format!("`token` is not base64: {e}")))?;
        if token.is_empty() {
            return Err(TokenError::Answer("`token` is empty".into()));
        }
        Ok(token)
    }
}
