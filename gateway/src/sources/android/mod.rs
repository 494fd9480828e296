//! Android: Google's Cloud Pub/Sub push of AMAPI notifications at `POST /android/pubsub`.
//!
//! Order of checks: method (405), content type `application/json` (415), a declared body larger
//! than `device.max_body_bytes` (413), credentials ([`auth`]: 401 none, 403 wrong), then the
//! body is read (413 when it grows past the limit) and handled ([`pubsub`]). Refusals store
//! nothing. The answer is 204 only once the message is durably handled (applied, recognised as
//! a duplicate or as stale, or dead-lettered); a store failure is 503, which Pub/Sub retries.

mod auth;
mod pubsub;

use std::sync::Arc;
use std::time::Instant;

use http::header::{ALLOW, CONTENT_LENGTH, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::AppState;
use crate::config::{AndroidConfig, ConfigError, PubSubAuth};
use crate::http_util::{BodyError, Reply, empty, media_type, read_body, text};
use crate::server::ConnInfo;
use crate::telemetry;

pub const PATH: &str = "/android/pubsub";

/// The Pub/Sub intake's runtime part: the push authenticator and the per-device locks.
#[derive(Debug)]
pub struct PubSubIntake {
    auth: auth::PushAuth,
    locks: pubsub::DeviceLocks,
    oidc: bool,
}

impl PubSubIntake {
    /// `data_token` is `<data_dir>/pubsub-token`. Key files are read here: a bad one is a
    /// configuration error.
    pub fn new(config: &AndroidConfig, data_token: &str) -> Result<PubSubIntake, ConfigError> {
        Ok(PubSubIntake {
            auth: auth::PushAuth::new(config, data_token)?,
            locks: pubsub::DeviceLocks::new(),
            oidc: config.pubsub_auth != PubSubAuth::Token,
        })
    }
}

struct Reject {
    status: StatusCode,
    reason: &'static str,
    detail: String,
}

impl Reject {
    fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Reject { status, reason, detail: detail.into() }
    }
}

pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>, conn: &ConnInfo) -> Reply {
    let started = Instant::now();
    if req.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let (parts, body) = req.into_parts();
    let intake = &state.android_pubsub;
    let outcome = async {
        let ct = media_type(&parts.headers);
        if ct.as_deref() != Some("application/json") {
            return Err(Reject::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "wrong_content_type",
                format!("content type {:?}, expected application/json", ct.as_deref().unwrap_or("(none)")),
            ));
        }
        let limit = state.config.device.max_body_bytes;
        let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Reject::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("more than {limit} bytes"),
            ));
        }
        let now = state.clock.unix();
        // Before the body is read: an unauthenticated peer cannot make the gateway read it.
        intake.auth.check(&parts.headers, parts.uri.query(), now).map_err(|f| match f {
            auth::AuthFailure::Missing { reason } => {
                Reject::new(StatusCode::UNAUTHORIZED, reason, "the push carries no credentials")
            }
            auth::AuthFailure::Wrong { reason, detail } => Reject::new(StatusCode::FORBIDDEN, reason, detail),
        })?;
        let body = read_body(&parts.headers, body, limit).await.map_err(|e| match e {
            BodyError::TooLarge { .. } => Reject::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.to_string()),
            BodyError::Read(_) => Reject::new(StatusCode::BAD_REQUEST, "body_unreadable", e.to_string()),
        })?;
        pubsub::intake(state, &intake.locks, &body)
            .await
            .map_err(|e| Reject::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()))
    }
    .await;
    let reply = match outcome {
        Ok((handled, label)) => {
            metrics::counter!(telemetry::ANDROID_PUBSUB_MESSAGES, "type" => label, "outcome" => handled.as_str())
                .increment(1);
            metrics::counter!(telemetry::DEVICE_REQUESTS, "platform" => "android", "kind" => label, "code" => "204")
                .increment(1);
            empty(StatusCode::NO_CONTENT)
        }
        Err(r) => refuse(intake, conn, r),
    };
    metrics::histogram!(telemetry::DEVICE_REQUEST_SECONDS, "platform" => "android")
        .record(started.elapsed().as_secs_f64());
    reply
}

fn refuse(intake: &PubSubIntake, conn: &ConnInfo, r: Reject) -> Reply {
    if r.status.is_server_error() {
        tracing::error!(platform = "android", reason = r.reason, detail = %r.detail, client = ?conn.client_ip(), "Pub/Sub push failed; Pub/Sub will redeliver");
    } else {
        tracing::warn!(platform = "android", reason = r.reason, detail = %r.detail, client = ?conn.client_ip(), "Pub/Sub push refused");
    }
    metrics::counter!(telemetry::DEVICE_REJECTS, "platform" => "android", "reason" => r.reason).increment(1);
    let mut reply = if r.status.is_server_error() {
        // Store details stay in the log.
        text(r.status, "temporarily unavailable; retry\n")
    } else {
        text(r.status, format!("{}: {}\n", r.reason, r.detail))
    };
    if r.status == StatusCode::UNAUTHORIZED && intake.oidc {
        reply.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if r.status == StatusCode::SERVICE_UNAVAILABLE {
        reply.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("10"));
    }
    reply
}
