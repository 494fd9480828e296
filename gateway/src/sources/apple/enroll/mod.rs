//! Apple enrollment on the device listener: the signed enrollment profile (`GET /mdm/enroll`),
//! enrollment tickets that let a page follow one enrollment (`POST /enroll/session`,
//! `GET /enroll/session/<ticket>`), and the enrollment page itself (`GET /enroll`).
//!
//! No authentication: anyone who reaches the device listener may download a profile, as with any
//! open ("manual") MDM enrollment. What they get is a one-time SCEP challenge; what stops abuse is
//! the gateway-wide token bucket on every request that stores something (tickets, challenges).
//!
//! The profile's content is decided by `mdm_apple::profile` and signed by `mdm_certs`; this module
//! picks the inputs (topic, UUIDs, challenge, signer) and does the IO.

mod page;
mod profile;
mod session;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_certs::{PKey, Private, X509};

use crate::AppState;
use crate::config::Config;
use crate::http_util::{Reply, json_error, text};
use crate::ratelimit::TokenBucket;
use crate::telemetry;

pub use session::{SessionState, session_state};

/// What enrollment needs besides the shared state: the signing identity, the CA to install, the
/// rendered page and the rate limit. Built once at start.
#[derive(Debug)]
pub struct Enrollment {
    signer: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
    ca_der: Vec<u8>,
    identifier: String,
    limiter: TokenBucket,
    page: page::Page,
}

impl Enrollment {
    /// `tls_chain_pem`/`tls_key_pem`: the device listener's certificate chain and key, which sign
    /// the profile (see docs/apple.md, "Enrollment profile"). `ca`: the gateway CA installed by it.
    pub fn new(config: &Config, ca: &X509, tls_chain_pem: &[u8], tls_key_pem: &[u8]) -> Result<Self, String> {
        let mut certs = X509::stack_from_pem(tls_chain_pem).map_err(|e| format!("certificate chain: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in the chain".into());
        }
        let signer = certs.remove(0);
        let key = PKey::private_key_from_pem(tls_key_pem).map_err(|e| format!("private key: {e}"))?;
        let signer_key = signer.public_key().map_err(|e| format!("certificate key: {e}"))?;
        if !signer_key.public_eq(&key) {
            return Err("private key does not match the certificate".into());
        }
        let ca_der = ca.to_der().map_err(|e| format!("CA certificate: {e}"))?;
        Ok(Enrollment {
            signer,
            chain: certs,
            key,
            ca_der,
            identifier: config.profile_identifier(),
            limiter: TokenBucket::per_minute(config.apple.enrollment.requests_per_minute, Instant::now()),
            page: page::Page::render(&config.apple.enrollment.organization),
        })
    }
}

/// The enrollment paths; `None` when `path` is not one of them.
pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>) -> Option<Reply> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let (kind, allowed) = match path {
        "/mdm/enroll" => ("enroll_profile", Method::GET),
        "/enroll" => ("enroll_page", Method::GET),
        "/enroll/session" => ("enroll_session", Method::POST),
        p if p.starts_with("/enroll/session/") => ("enroll_status", Method::GET),
        _ => return None,
    };
    if *req.method() != allowed {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allowed}\n"));
        r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_str(allowed.as_str()).expect("method name"));
        return Some(r);
    }
    // The enrollment gate: with Apple enrollment blocked, no profile is handed out (the page
    // and the download say why, instead of a profile whose Authenticate would be refused).
    if matches!(kind, "enroll_profile" | "enroll_session") && !state.gate.config.rules(mdm_core::Platform::Apple).allow
    {
        metrics::counter!(telemetry::DEVICE_REQUESTS, "platform" => "apple", "kind" => kind, "code" => "403")
            .increment(1);
        return Some(text(
            StatusCode::FORBIDDEN,
            "Enrollment of Apple devices is not allowed by this organisation's enrollment rules.\n",
        ));
    }
    let outcome = match kind {
        "enroll_profile" => profile::get(state, query).await,
        "enroll_page" => Ok(state.enrollment.page.reply()),
        "enroll_session" => session::create(state).await,
        _ => session::status(state, path.trim_start_matches("/enroll/session/")).await,
    };
    let reply = match outcome {
        Ok(reply) => {
            metrics::counter!(telemetry::DEVICE_REQUESTS, "platform" => "apple", "kind" => kind, "code" => reply.status().as_str().to_owned()).increment(1);
            reply
        }
        Err(refusal) => refusal.reply(kind),
    };
    Some(reply)
}

/// A refused enrollment request: answered with `status`, logged and counted with `reason`;
/// nothing was stored for it.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    reason: &'static str,
    detail: String,
    /// The endpoint answers JSON (`/enroll/session…`) rather than text.
    json: bool,
    retry_after_s: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Refusal { status, reason, detail: detail.into(), json: false, retry_after_s: None }
    }

    fn json(mut self) -> Self {
        self.json = true;
        self
    }

    fn internal(detail: impl std::fmt::Display) -> Self {
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail.to_string())
    }

    fn reply(self, kind: &'static str) -> Reply {
        if self.status.is_server_error() {
            tracing::error!(platform = "apple", kind, reason = self.reason, detail = %self.detail, "enrollment request failed");
        } else {
            tracing::warn!(platform = "apple", kind, reason = self.reason, detail = %self.detail, "enrollment request refused");
        }
        metrics::counter!(telemetry::DEVICE_REJECTS, "platform" => "apple", "reason" => self.reason).increment(1);
        let mut r = if self.json {
            json_error(self.status, self.reason, &self.detail)
        } else {
            text(self.status, format!("{}: {}\n", self.reason, self.detail))
        };
        if let Some(s) = self.retry_after_s {
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal::internal(format!("store: {e}"))
    }
}

/// One token from the gateway-wide bucket, or 429 with `Retry-After`.
fn take_token(state: &AppState) -> Result<(), Refusal> {
    state.enrollment.limiter.try_take(Instant::now()).map_err(|wait| Refusal {
        retry_after_s: Some(wait.as_secs().max(1)),
        ..Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many enrollment requests on this gateway (apple.enrollment.requests_per_minute = {}); retry later",
                state.config.apple.enrollment.requests_per_minute
            ),
        )
    })
}
