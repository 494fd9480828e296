//! Windows management: OMA-DM 1.2 SyncML at `POST /ManagementServer/MDM.svc`.
//!
//! Order of checks for every request: method, load (429 with `Retry-After` when
//! `omadm.max_in_flight` requests are already being handled), content type, body size, the
//! client certificate (TLS, or a trusted proxy's header), the enrollment bound to it, decoding,
//! and the device id the message claims (`SyncHdr/Source/LocURI`), which must be the
//! certificate's device. Refusals before decoding are answered in plain text, later ones as a
//! SyncML message whose SyncHdr Status carries the code and the reason; nothing is stored for
//! either.
//!
//! Session state (`mdm_windows::syncml::Session`) is stored per device after every message
//! (compare-and-set on a version), so any instance can serve the next message of a session.
//! The stored reply is replayed when the device repeats a message whose answer it lost.

mod apply;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_core::{CommandStatus, DeviceId, Platform};
use mdm_windows::syncml::{self, Queued, ServerConfig, SyncMl};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::AppState;
use crate::http_util::{BodyError, Reply, media_type, read_body, text, with_type};
use crate::server::ConnInfo;
use crate::store::{EnrollmentState, OmaDmSession};
use crate::telemetry;

pub const PATH: &str = "/ManagementServer/MDM.svc";

/// How many pending commands are offered to one message; the rest wait for later messages.
const QUEUE_WINDOW: u32 = 64;

/// The source's runtime part: the load limit and the server's SyncML settings.
#[derive(Debug)]
pub struct OmaDm {
    in_flight: Arc<Semaphore>,
    server: ServerConfig,
}

impl OmaDm {
    pub fn new(config: &crate::config::Config) -> Self {
        let o = &config.omadm;
        OmaDm {
            in_flight: Arc::new(Semaphore::new(o.max_in_flight)),
            server: ServerConfig {
                server_uri: format!("{}{PATH}", config.public_url.trim_end_matches('/')),
                max_msg_size: o.max_msg_size,
                max_obj_size: o.max_obj_size,
                default_client_max_msg_size: o.default_device_max_msg_size,
            },
        }
    }
}

/// A refusal: answered with `status`, logged and counted with `reason`; nothing was stored.
#[derive(Debug)]
pub(crate) struct Reject {
    status: StatusCode,
    reason: &'static str,
    detail: String,
    identity: bool,
    /// The message, when it could be read: the answer is then SyncML.
    syncml: Option<(Box<SyncMl>, syncml::StatusCode)>,
}

impl Reject {
    fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Reject { status, reason, detail: detail.into(), identity: false, syncml: None }
    }

    fn identity(reason: &'static str, detail: impl Into<String>) -> Self {
        Reject { identity: true, ..Reject::new(StatusCode::FORBIDDEN, reason, detail) }
    }

    fn in_syncml(mut self, msg: &SyncMl, code: syncml::StatusCode) -> Self {
        self.syncml = Some((Box::new(msg.clone()), code));
        self
    }

    pub(crate) fn internal(detail: impl std::fmt::Display) -> Self {
        Reject::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail.to_string())
    }
}

impl From<crate::store::StoreError> for Reject {
    /// 503: the store is unreachable (a database restart, a lost connection); the device retries
    /// later, and nothing was stored.
    fn from(e: crate::store::StoreError) -> Self {
        Reject::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
    }
}

pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>, conn: &ConnInfo) -> Reply {
    let started = Instant::now();
    if req.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    // Taken before the body is read: a slow or large body holds a slot too.
    let Ok(_permit) = state.omadm.in_flight.clone().try_acquire_owned() else {
        tracing::warn!(platform = "windows", client = ?conn.client_ip(), "OMA-DM request refused: too many in flight");
        metrics::counter!(telemetry::DEVICE_REJECTS, "platform" => "windows", "reason" => "overloaded").increment(1);
        let mut r =
            text(StatusCode::TOO_MANY_REQUESTS, "overloaded: too many OMA-DM requests in flight; retry later\n");
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(state.config.omadm.retry_after_s));
        return r;
    };
    let (parts, body) = req.into_parts();
    let outcome = async {
        let ct = media_type(&parts.headers);
        if ct.as_deref() != Some(syncml::CONTENT_TYPE) {
            return Err(Reject::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "wrong_content_type",
                format!("content type {:?}, expected {}", ct.as_deref().unwrap_or("(none)"), syncml::CONTENT_TYPE),
            ));
        }
        let body = read_body(&parts.headers, body, state.config.device.max_body_bytes).await.map_err(|e| match e {
            BodyError::TooLarge { .. } => Reject::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.to_string()),
            BodyError::Read(_) => Reject::new(StatusCode::BAD_REQUEST, "body_unreadable", e.to_string()),
        })?;
        let now = state.clock.unix();
        let identity = state
            .identity
            .verify_client_certificate(&parts.headers, conn, now)
            .map_err(|f| Reject::identity(f.reason, f.detail))?;
        let Some(id) = state.store.enrollment_by_cert(&identity.fingerprint).await? else {
            return Err(Reject::identity("not_enrolled", "no enrollment is bound to this client certificate"));
        };
        if id.platform() != Platform::Windows {
            return Err(Reject::identity("not_a_windows_enrollment", format!("the certificate is bound to {id}")));
        }
        let msg = syncml::decode(&body).map_err(|e| Reject::new(StatusCode::BAD_REQUEST, e.reason(), e.to_string()))?;
        // The device is the certificate's; the message's claim must agree.
        if msg.hdr.source != id.native() {
            return Err(Reject::identity(
                "device_mismatch",
                format!("SyncHdr Source {:?} is not {id}, the device of the client certificate", msg.hdr.source),
            )
            .in_syncml(&msg, syncml::StatusCode::FORBIDDEN));
        }
        let enrollment = state.store.enrollment(&id).await?;
        if enrollment.as_ref().map(|e| e.state) != Some(EnrollmentState::Enrolled) {
            return Err(Reject::identity("not_enrolled", format!("{id} is not enrolled"))
                .in_syncml(&msg, syncml::StatusCode::FORBIDDEN));
        }
        session(state, &id, &msg, &body, now).await
    }
    .await;
    let reply = match outcome {
        Ok(reply) => {
            metrics::counter!(telemetry::DEVICE_REQUESTS, "platform" => "windows", "kind" => "syncml", "code" => reply.status().as_str().to_owned()).increment(1);
            reply
        }
        Err(r) => refuse(state, conn, r),
    };
    metrics::histogram!(telemetry::DEVICE_REQUEST_SECONDS, "platform" => "windows")
        .record(started.elapsed().as_secs_f64());
    reply
}

fn refuse(state: &AppState, conn: &ConnInfo, r: Reject) -> Reply {
    if r.status.is_server_error() {
        tracing::error!(platform = "windows", reason = r.reason, detail = %r.detail, client = ?conn.client_ip(), "device request failed");
    } else {
        tracing::warn!(platform = "windows", reason = r.reason, detail = %r.detail, client = ?conn.client_ip(), "device request refused");
    }
    metrics::counter!(telemetry::DEVICE_REJECTS, "platform" => "windows", "reason" => r.reason).increment(1);
    if r.identity {
        metrics::counter!(telemetry::IDENTITY_FAILURES, "reason" => r.reason).increment(1);
    }
    let detail = format!("{}: {}", r.reason, r.detail);
    match &r.syncml {
        Some((msg, code)) => {
            let body = syncml::refusal(msg, &state.omadm.server.server_uri, *code, &detail).encode();
            with_type(r.status, syncml::CONTENT_TYPE, body)
        }
        None => text(r.status, format!("{detail}\n")),
    }
}

/// The session step for an authenticated message from `id`.
async fn session(state: &AppState, id: &DeviceId, msg: &SyncMl, body: &[u8], now: i64) -> Result<Reply, Reject> {
    let request_sha256 = hex::encode(Sha256::digest(body));
    let row = state.store.omadm_session(id).await?;
    if let Some(row) = &row
        && row.session_id == msg.hdr.session_id
        && row.client_msg_id == i64::from(msg.hdr.msg_id)
    {
        if row.request_sha256 == request_sha256 {
            // The device did not get our answer and sent the message again.
            tracing::info!(device_id = %id, session_id = %row.session_id, msg_id = row.client_msg_id, "repeated message: reply replayed");
            return Ok(with_type(StatusCode::OK, syncml::CONTENT_TYPE, row.reply.clone()));
        }
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "msg_id_reused",
            format!("MsgID {} of session {:?} was already used for another message", msg.hdr.msg_id, row.session_id),
        )
        .in_syncml(msg, syncml::StatusCode::BAD_REQUEST));
    }
    let ttl = state.config.omadm.session_ttl_s as i64;
    let prev = match &row {
        Some(r) if now - r.updated_at <= ttl => match serde_json::from_str::<syncml::Session>(&r.state) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(device_id = %id, error = %e, "stored OMA-DM session unreadable; treated as none");
                None
            }
        },
        _ => None,
    };

    let mut pending = state.store.pending(id, QUEUE_WINDOW).await?;
    let mut expired = Vec::new();
    pending.retain(|c| {
        let due = c.expires_at.is_some_and(|t| t <= now);
        if due {
            expired.push(c.clone());
        }
        !due && c.status != CommandStatus::Expired
    });
    for c in &expired {
        crate::expiry::expire(state, c, now).await?;
    }
    let queue: Vec<Queued<'_>> = pending
        .iter()
        .map(|c| Queued { command_id: &c.command_id, request_type: &c.request_type, payload: &c.payload })
        .collect();

    let step = syncml::handle(prev, msg, &queue, &state.omadm.server, now)
        .map_err(|e| Reject::new(StatusCode::BAD_REQUEST, e.reason(), e.to_string()).in_syncml(msg, e.status()))?;
    let reply = step.reply.encode();
    let session_events = apply::effects(state, id, msg, body, &pending, &step, now).await?;

    let version = row.as_ref().map_or(1, |r| r.version + 1);
    let stored = OmaDmSession {
        device_id: id.clone(),
        session_id: step.session.session_id.clone(),
        client_msg_id: i64::from(step.session.client_msg_id),
        version,
        state: serde_json::to_string(&step.session).map_err(Reject::internal)?,
        request_sha256,
        reply: reply.clone(),
        updated_at: now,
    };
    if !state.store.save_omadm_session(&stored, row.as_ref().map(|r| r.version), &session_events).await? {
        // Another instance handled a message of this device meanwhile; the device retries.
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "session_conflict: the session changed meanwhile; retry\n");
        r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(1u64));
        tracing::warn!(device_id = %id, "OMA-DM session saved concurrently by another request");
        return Ok(r);
    }
    Ok(with_type(StatusCode::OK, syncml::CONTENT_TYPE, reply))
}
