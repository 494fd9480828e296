//! The AMAPI REST client: one HTTPS client (trusting `android.api_ca` or the Mozilla roots), the
//! service-account token, the project's request budget, and the error classes of docs/android.md:
//!
//! | answer | what the client does |
//! |---|---|
//! | 429 | waits `rate_limited_wait_ms` plus up to 10 % jitter, then retries |
//! | 5xx, timeout, connection error | retries after `retry_base_ms`, doubling up to `retry_max_ms` |
//! | 401 | drops the cached token and retries once with a new one |
//! | 400 | [`AmapiError::BadRequest`] with Google's message, not retried |
//! | 403 | [`AmapiError::PermissionDenied`]; the enterprise in the path is marked failing |
//! | 404, and 500 "Requested entity was not found." | [`AmapiError::NotFound`] |
//!
//! Every attempt counts against the budget; `max_attempts` bounds the attempts of one call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mdm_android::command::Method;
use serde::Serialize;
use serde_json::Value as Json;

use super::auth::{TokenError, TokenSource};
use super::budget::{Budget, Priority};
use crate::config::AndroidConfig;
use crate::telemetry;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTPS client for AMAPI and the token endpoint.
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cannot read PEM: {e}"))?;
            if certs.is_empty() {
                return Err("no PEM certificate in the file".into());
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("unusable CA certificate: {e}"))?;
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https))
}

/// Why an AMAPI call failed, after the retries its class allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmapiError {
    #[error("AMAPI refused the request as invalid: {message}")]
    BadRequest { message: String },
    #[error("AMAPI denied permission: {message}")]
    PermissionDenied { message: String },
    #[error("AMAPI: not found: {message}")]
    NotFound { message: String },
    #[error("AMAPI kept answering 429 ({attempts} attempts): {message}")]
    RateLimited { attempts: u32, message: String },
    #[error("AMAPI unavailable ({attempts} attempts): {detail}")]
    Unavailable { attempts: u32, detail: String },
    #[error("AMAPI refused the access token: {message}")]
    Unauthenticated { message: String },
    #[error("AMAPI answered {status}: {message}")]
    Other { status: u16, message: String },
    #[error("service-account token: {0}")]
    Token(String),
    #[error("AMAPI reply is not JSON: {0}")]
    BadReply(String),
}

impl AmapiError {
    /// The stable code in API errors and `command.error` events.
    pub fn code(&self) -> &'static str {
        match self {
            AmapiError::BadRequest { .. } => "amapi_invalid_argument",
            AmapiError::PermissionDenied { .. } => "amapi_permission_denied",
            AmapiError::NotFound { .. } => "amapi_not_found",
            AmapiError::RateLimited { .. } => "amapi_rate_limited",
            AmapiError::Unavailable { .. } => "amapi_unavailable",
            AmapiError::Unauthenticated { .. } => "amapi_unauthenticated",
            AmapiError::Other { .. } => "amapi_error",
            AmapiError::Token(_) => "amapi_token",
            AmapiError::BadReply(_) => "amapi_bad_reply",
        }
    }

    /// Google's message (or ours), for the backend.
    pub fn message(&self) -> String {
        match self {
            AmapiError::BadRequest { message }
            | AmapiError::PermissionDenied { message }
            | AmapiError::NotFound { message }
            | AmapiError::Unauthenticated { message }
            | AmapiError::Other { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// The HTTP status the backend API answers with for this failure.
    pub fn api_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            AmapiError::BadRequest { .. } => S::UNPROCESSABLE_ENTITY,
            AmapiError::NotFound { .. } => S::NOT_FOUND,
            AmapiError::RateLimited { .. } => S::TOO_MANY_REQUESTS,
            AmapiError::Unavailable { .. } => S::SERVICE_UNAVAILABLE,
            AmapiError::PermissionDenied { .. }
            | AmapiError::Unauthenticated { .. }
            | AmapiError::Other { .. }
            | AmapiError::Token(_)
            | AmapiError::BadReply(_) => S::BAD_GATEWAY,
        }
    }
}

/// Retry settings from `[android]`.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub request_timeout: Duration,
    pub rate_limited_wait: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_attempts: u32,
}

impl RetrySettings {
    pub fn from_config(c: &AndroidConfig) -> RetrySettings {
        RetrySettings {
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            rate_limited_wait: Duration::from_millis(c.rate_limited_wait_ms),
            retry_base: Duration::from_millis(c.retry_base_ms),
            retry_max: Duration::from_millis(c.retry_max_ms),
            max_attempts: c.max_attempts,
        }
    }

    /// Delay before attempt `attempt + 1` after a 5xx or timeout (`attempt` ≥ 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.retry_base.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX));
        exp.min(self.retry_max)
    }
}

/// Up to 10 % more than `d`, at random: clients retrying together spread out.
fn jitter(d: Duration) -> Duration {
    let extra = d.as_millis() as u64 / 10;
    d + Duration::from_millis(if extra == 0 { 0 } else { rand::random_range(0..=extra) })
}

/// A 403 seen for one enterprise: it is failing, the others carry on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnterpriseFailure {
    pub message: String,
    /// Unix seconds.
    pub since: i64,
}

#[derive(Debug)]
pub struct AmapiClient {
    base: String,
    http: HttpClient,
    token: TokenSource,
    budget: Budget,
    retry: RetrySettings,
    clock: Arc<dyn crate::clock::Clock>,
    failing: Mutex<BTreeMap<String, EnterpriseFailure>>,
}

/// One outcome of one attempt.
enum Attempt {
    Done(Json),
    RateLimited(String),
    Transient(String),
    Unauthenticated(String),
    Fail(AmapiError),
}

impl AmapiClient {
    pub fn new(
        base: &str,
        http: HttpClient,
        token: TokenSource,
        budget: Budget,
        retry: RetrySettings,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> AmapiClient {
        AmapiClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token,
            budget,
            retry,
            clock,
            failing: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn token_grants(&self) -> u64 {
        self.token.grants()
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Enterprises whose last call was denied (403), by name.
    pub fn failing_enterprises(&self) -> BTreeMap<String, EnterpriseFailure> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Calls `<base>/v1/<path>?<query>` with the retries its answers allow.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Json>,
        priority: Priority,
    ) -> Result<Json, AmapiError> {
        self.call_with(method, path, query, body, priority, self.retry.max_attempts).await
    }

    /// Like [`AmapiClient::call`], one attempt only (besides a token refresh after a 401): for
    /// calls that must not be repeated behind the caller's back (`enterprises.create`).
    pub async fn call_once(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Json>,
        priority: Priority,
    ) -> Result<Json, AmapiError> {
        self.call_with(method, path, query, body, priority, 1).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Json>,
        priority: Priority,
        max_attempts: u32,
    ) -> Result<Json, AmapiError> {
        let mut url = format!("{}/v1/{}", self.base, path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&serde_urlencoded::to_string(query).map_err(|e| AmapiError::BadReply(e.to_string()))?);
        }
        let body = body.map(|b| Bytes::from(b.to_string()));
        let mut attempts = 0u32;
        let mut reauthenticated = false;
        let result = loop {
            attempts += 1;
            self.budget.acquire(priority).await;
            let outcome = match self.token.token().await {
                Ok(token) => {
                    let o = self.attempt(method, &url, body.clone(), &token).await;
                    if let Attempt::Unauthenticated(_) = &o {
                        self.token.invalidate(&token).await;
                    }
                    o
                }
                Err(TokenError::Unavailable(m)) => Attempt::Transient(format!("token endpoint: {m}")),
                Err(e) => Attempt::Fail(AmapiError::Token(e.to_string())),
            };
            let wait = match outcome {
                Attempt::Done(v) => break Ok(v),
                Attempt::Fail(e) => break Err(e),
                Attempt::Unauthenticated(message) => {
                    if reauthenticated {
                        break Err(AmapiError::Unauthenticated { message });
                    }
                    reauthenticated = true;
                    attempts -= 1;
                    continue;
                }
                Attempt::RateLimited(message) => {
                    metrics::counter!(telemetry::AMAPI_RETRIES, "reason" => "rate_limited").increment(1);
                    if attempts >= max_attempts {
                        break Err(AmapiError::RateLimited { attempts, message });
                    }
                    jitter(self.retry.rate_limited_wait)
                }
                Attempt::Transient(detail) => {
                    metrics::counter!(telemetry::AMAPI_RETRIES, "reason" => "unavailable").increment(1);
                    if attempts >= max_attempts {
                        break Err(AmapiError::Unavailable { attempts, detail });
                    }
                    jitter(self.retry.backoff(attempts))
                }
            };
            tracing::debug!(%path, attempts, wait_ms = wait.as_millis() as u64, "AMAPI call retried");
            tokio::time::sleep(wait).await;
        };
        let enterprise = enterprise_of(path);
        match (&result, enterprise) {
            (Err(AmapiError::PermissionDenied { message }), Some(e)) => {
                tracing::error!(enterprise = e, %message, "AMAPI denied permission for this enterprise");
                self.failing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(e.to_owned(), EnterpriseFailure { message: message.clone(), since: self.clock.unix() });
            }
            (Ok(_), Some(e)) => {
                self.failing.lock().unwrap_or_else(|e| e.into_inner()).remove(e);
            }
            _ => {}
        }
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        metrics::counter!(telemetry::AMAPI_CALLS, "outcome" => outcome).increment(1);
        result
    }

    async fn attempt(&self, method: Method, url: &str, body: Option<Bytes>, token: &str) -> Attempt {
        let mut req = http::Request::builder()
            .method(method.as_str())
            .uri(url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = match req.body(Full::new(body.unwrap_or_default())) {
            Ok(r) => r,
            Err(e) => return Attempt::Fail(AmapiError::BadReply(format!("cannot build the request: {e}"))),
        };
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| format!("request failed: {e}"))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| format!("reading the reply: {e}"))?.to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(self.retry.request_timeout, exchange).await {
            Err(_) => return Attempt::Transient(format!("no answer within {:?}", self.retry.request_timeout)),
            Ok(Err(e)) => return Attempt::Transient(e),
            Ok(Ok(r)) => r,
        };
        classify(status.as_u16(), &bytes)
    }
}

/// Google's error message from `{"error": {"code", "message", "status"}}`, or the body's start.
fn google_message(bytes: &[u8]) -> String {
    let v: Json = serde_json::from_slice(bytes).unwrap_or(Json::Null);
    v.pointer("/error/message")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).chars().take(300).collect())
}

/// The quirk: some AMAPI methods answer a missing resource with 500 and this message.
const NOT_FOUND_QUIRK: &str = "Requested entity was not found.";

fn classify(status: u16, bytes: &[u8]) -> Attempt {
    if (200..300).contains(&status) {
        if bytes.is_empty() {
            return Attempt::Done(Json::Object(Default::default()));
        }
        return match serde_json::from_slice(bytes) {
            Ok(v) => Attempt::Done(v),
            Err(e) => Attempt::Fail(AmapiError::BadReply(e.to_string())),
        };
    }
    let message = google_message(bytes);
    match status {
        400 => Attempt::Fail(AmapiError::BadRequest { message }),
        401 => Attempt::Unauthenticated(message),
        403 => Attempt::Fail(AmapiError::PermissionDenied { message }),
        404 => Attempt::Fail(AmapiError::NotFound { message }),
        429 => Attempt::RateLimited(message),
        500 if message.trim() == NOT_FOUND_QUIRK => Attempt::Fail(AmapiError::NotFound { message }),
        500..=599 => Attempt::Transient(format!("{status}: {message}")),
        other => Attempt::Fail(AmapiError::Other { status: other, message }),
    }
}

/// `enterprises/<id>` at the start of a path.
pub fn enterprise_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("enterprises/")?;
    let end = rest.find(['/', ':']).unwrap_or(rest.len());
    (end > 0).then(|| &path[..("enterprises/".len() + end)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let err = |s: u16, m: &str| {
            let body = serde_json::json!({"error": {"code": s, "message": m, "status": "X"}}).to_string();
            classify(s, body.as_bytes())
        };
        assert!(
            matches!(err(400, "bad policy"), Attempt::Fail(AmapiError::BadRequest { message }) if message == "bad policy")
        );
        assert!(matches!(err(403, "no"), Attempt::Fail(AmapiError::PermissionDenied { .. })));
        assert!(matches!(err(404, "gone"), Attempt::Fail(AmapiError::NotFound { .. })));
        assert!(matches!(err(500, "Requested entity was not found."), Attempt::Fail(AmapiError::NotFound { .. })));
        assert!(matches!(err(500, "Internal error"), Attempt::Transient(_)));
        assert!(matches!(err(503, "x"), Attempt::Transient(_)));
        assert!(matches!(err(429, "quota"), Attempt::RateLimited(_)));
        assert!(matches!(err(401, "token"), Attempt::Unauthenticated(_)));
        assert!(matches!(err(409, "x"), Attempt::Fail(AmapiError::Other { status: 409, .. })));
        assert!(matches!(classify(200, b""), Attempt::Done(_)));
        assert!(matches!(classify(200, b"<html>"), Attempt::Fail(AmapiError::BadReply(_))));
        // A non-Google body still gives a message.
        assert!(
            matches!(classify(400, b"plain"), Attempt::Fail(AmapiError::BadRequest { message }) if message == "plain")
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let r = RetrySettings {
            request_timeout: Duration::from_secs(1),
            rate_limited_wait: Duration::from_secs(60),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(500),
            max_attempts: 10,
        };
        let got: Vec<u128> = (1..=6).map(|a| r.backoff(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500, 500]);
        assert_eq!(r.backoff(60), Duration::from_millis(500));
        let j = jitter(Duration::from_millis(1000));
        assert!(j >= Duration::from_millis(1000) && j <= Duration::from_millis(1100));
    }

    #[test]
    fn enterprise_of_paths() {
        assert_eq!(enterprise_of("enterprises/E1/devices/D:issueCommand"), Some("enterprises/E1"));
        assert_eq!(enterprise_of("enterprises/E1"), Some("enterprises/E1"));
        assert_eq!(enterprise_of("enterprises/E1:x"), Some("enterprises/E1"));
        assert_eq!(enterprise_of("enterprises"), None);
        assert_eq!(enterprise_of("signupUrls"), None);
    }
}
