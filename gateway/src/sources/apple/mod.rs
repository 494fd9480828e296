//! Apple MDM: check-in messages and command reports over `PUT /mdm` and `PUT /checkin`.
//!
//! Order of checks for every request: content type, body size, device identity, decoding, the
//! certificate binding of the enrollment. Any refusal is answered before anything is stored.
//! Identity failures answer 400 (never 401: a device treats 401 as "re-authenticate the user").

mod checkin;
mod ddm;
pub mod enroll;
mod report;
pub mod token_services;

pub use ddm::{NO_DECLARATIONS_TOKEN, sync_tokens};

use std::sync::Arc;
use std::time::Instant;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use mdm_apple::EnrollmentIds;
use mdm_core::{DeviceId, EventType};

use crate::AppState;
use crate::http_util::{BodyError, Reply, media_type, read_body, text};
use crate::identity::DeviceIdentity;
use crate::server::ConnInfo;
use crate::store::{Enrollment, EnrollmentState};
use crate::telemetry;

pub const CHECKIN_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm-checkin";
pub const REPORT_CONTENT_TYPE: &str = "application/x-apple-aspen-mdm";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `ServerURL`: check-ins and command reports, told apart by content type.
    Mdm,
    /// `CheckInURL`: check-ins only.
    CheckIn,
}

/// A refusal: answered with `status`, logged and counted with `reason`; nothing was stored.
#[derive(Debug)]
pub(crate) struct Reject {
    status: StatusCode,
    reason: &'static str,
    detail: String,
    /// The certificate is not acceptable for this enrollment (counted as an identity failure).
    identity: bool,
}

impl Reject {
    pub(crate) fn bad_request(reason: &'static str, detail: impl Into<String>) -> Self {
        Reject { status: StatusCode::BAD_REQUEST, reason, detail: detail.into(), identity: false }
    }

    /// A valid certificate that is not the one bound to the enrollment (or is bound to another).
    pub(crate) fn identity(reason: &'static str, detail: impl Into<String>) -> Self {
        Reject { status: StatusCode::BAD_REQUEST, reason, detail: detail.into(), identity: true }
    }

    /// A policy refusal (the enrollment gate): 403, never 401, which would make the device
    /// prompt for credentials.
    pub(crate) fn forbidden(reason: &'static str, detail: impl Into<String>) -> Self {
        Reject { status: StatusCode::FORBIDDEN, reason, detail: detail.into(), identity: false }
    }

    /// What the device asked for does not exist (a declaration it was not given).
    pub(crate) fn not_found(reason: &'static str, detail: impl Into<String>) -> Self {
        Reject { status: StatusCode::NOT_FOUND, reason, detail: detail.into(), identity: false }
    }

    pub(crate) fn internal(detail: impl std::fmt::Display) -> Self {
        // 500 makes the device retry later, which is right for a store hiccup.
        Reject {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "internal",
            detail: detail.to_string(),
            identity: false,
        }
    }
}

impl From<crate::store::StoreError> for Reject {
    /// 503: the store is unreachable (a database restart, a lost connection); the device retries
    /// later, through the load balancer possibly on another instance, and nothing was stored.
    fn from(e: crate::store::StoreError) -> Self {
        Reject {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "store_unavailable",
            detail: e.to_string(),
            identity: false,
        }
    }
}

pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>, conn: &ConnInfo, endpoint: Endpoint) -> Reply {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let outcome = async {
        let is_checkin = match (endpoint, media_type(&parts.headers).as_deref()) {
            (_, Some(CHECKIN_CONTENT_TYPE)) => true,
            (Endpoint::Mdm, Some(REPORT_CONTENT_TYPE)) => false,
            (_, other) => {
                let expected = match endpoint {
                    Endpoint::Mdm => "application/x-apple-aspen-mdm-checkin or application/x-apple-aspen-mdm",
                    Endpoint::CheckIn => CHECKIN_CONTENT_TYPE,
                };
                return Err(Reject {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    reason: "wrong_content_type",
                    detail: format!("content type {:?}, expected {expected}", other.unwrap_or("(none)")),
                    identity: false,
                });
            }
        };
        let body = read_body(&parts.headers, body, state.config.device.max_body_bytes).await.map_err(|e| match e {
            BodyError::TooLarge { .. } => Reject {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                reason: "body_too_large",
                detail: e.to_string(),
                identity: false,
            },
            BodyError::Read(_) => Reject::bad_request("body_unreadable", e.to_string()),
        })?;
        let now = state.clock.unix();
        let identity = state
            .identity
            .verify(&parts.headers, &body, conn, now)
            .map_err(|f| Reject::identity(f.reason, f.detail))?;
        if is_checkin {
            checkin::handle(state, &identity, &body, now).await
        } else {
            report::handle(state, &identity, &body, now).await
        }
    }
    .await;
    let reply = match outcome {
        Ok((kind, reply)) => {
            metrics::counter!(telemetry::DEVICE_REQUESTS, "platform" => "apple", "kind" => kind, "code" => reply.status().as_str().to_owned()).increment(1);
            reply
        }
        Err(r) => {
            if r.status.is_server_error() {
                tracing::error!(platform = "apple", reason = r.reason, detail = %r.detail, client = ?conn.client_ip(), "device request failed");
            } else {
                tracing::warn!(platform = "apple", reason = r.reason, detail = %r.detail, client = ?conn.client_ip(), "device request refused");
            }
            metrics::counter!(telemetry::DEVICE_REJECTS, "platform" => "apple", "reason" => r.reason).increment(1);
            if r.identity {
                metrics::counter!(telemetry::IDENTITY_FAILURES, "reason" => r.reason).increment(1);
            }
            text(r.status, format!("{}: {}\n", r.reason, r.detail))
        }
    };
    metrics::histogram!(telemetry::DEVICE_REQUEST_SECONDS, "platform" => "apple")
        .record(started.elapsed().as_secs_f64());
    reply
}

/// Our name for the kind of enrollment (`device`, `user`, `user_enrollment`, ...).
pub fn enrollment_type(ids: &EnrollmentIds) -> &'static str {
    ids.enrollment_type().map(|t| t.as_str()).unwrap_or("unknown")
}

fn subject_of(identity: &DeviceIdentity) -> String {
    identity
        .cert
        .subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn device_ids(ids: &EnrollmentIds) -> Result<(DeviceId, DeviceId), Reject> {
    let id = ids.device_id().map_err(|e| Reject::bad_request(e.reason(), e.to_string()))?;
    let channel = ids.device_channel_id().map_err(|e| Reject::bad_request(e.reason(), e.to_string()))?;
    Ok((id, channel))
}

/// The device channel's enrollment, after checking that `identity` is the certificate bound to
/// it, or a renewal of it, which is rebound here with its own event: one the gateway issued
/// through SCEP RenewalReq (always), or, when `apple.allow_cert_renewal` is on, any trusted
/// certificate with the same subject.
pub(crate) async fn bound_enrollment(
    state: &AppState,
    identity: &DeviceIdentity,
    channel: &DeviceId,
    now: i64,
) -> Result<Enrollment, Reject> {
    let found = state.store.enrollment(channel).await?;
    check_bound(state, identity, channel, found, now).await
}

/// [`bound_enrollment`] on the device channel's enrollment already read (`found`).
pub(crate) async fn check_bound(
    state: &AppState,
    identity: &DeviceIdentity,
    channel: &DeviceId,
    found: Option<Enrollment>,
    now: i64,
) -> Result<Enrollment, Reject> {
    let Some(mut enrollment) = found else {
        return Err(Reject::bad_request("not_enrolled", format!("{channel} has not authenticated")));
    };
    if enrollment.state == EnrollmentState::Unenrolled {
        return Err(Reject::bad_request("unenrolled", format!("{channel} checked out; it must authenticate again")));
    }
    if enrollment.cert_sha256.as_deref() == Some(identity.fingerprint.as_str()) {
        return Ok(enrollment);
    }
    // A certificate this gateway issued through a SCEP RenewalReq signed with the bound one is
    // the same device by construction: rebind whatever `apple.allow_cert_renewal` says (that
    // flag is about certificates the gateway did not issue), and whatever the new subject is.
    if let Some(issued) = state.store.scep_certificate(&identity.fingerprint).await?
        && issued.renewal_of.is_some()
        && issued.renewal_of == enrollment.cert_sha256
    {
        if let Some(other) = state.store.enrollment_by_cert(&identity.fingerprint).await?
            && other != *channel
        {
            return Err(Reject::identity("certificate_bound_elsewhere", format!("certificate is bound to {other}")));
        }
        let previous = enrollment.cert_sha256.clone();
        remember_identity(&mut enrollment, identity);
        enrollment.updated_at = now;
        let event = state.events.event(
            EventType::DEVICE_IDENTITY_RENEWED,
            channel,
            None,
            serde_json::json!({ "previous_sha256": previous, "sha256": identity.fingerprint, "via": "scep_renewal" }),
        );
        state.store.save_enrollment(&enrollment, std::slice::from_ref(&event)).await?;
        return Ok(enrollment);
    }
    if !state.config.apple.allow_cert_renewal {
        return Err(Reject::identity(
            "certificate_mismatch",
            format!("{channel} is bound to another certificate (renewal is not allowed by apple.allow_cert_renewal)"),
        ));
    }
    if let Some(other) = state.store.enrollment_by_cert(&identity.fingerprint).await? {
        return Err(Reject::identity("certificate_bound_elsewhere", format!("certificate is bound to {other}")));
    }
    let subject = subject_of(identity);
    let bound_subject = enrollment.attributes.get("cert_subject").and_then(|v| v.as_str()).unwrap_or_default();
    if subject != bound_subject {
        return Err(Reject::identity(
            "certificate_mismatch",
            format!("renewal certificate subject {subject:?} differs from the bound {bound_subject:?}"),
        ));
    }
    let previous = enrollment.cert_sha256.replace(identity.fingerprint.clone());
    enrollment.updated_at = now;
    let event = state.events.event(
        EventType::DEVICE_IDENTITY_RENEWED,
        channel,
        None,
        serde_json::json!({ "previous_sha256": previous, "sha256": identity.fingerprint }),
    );
    state.store.save_enrollment(&enrollment, std::slice::from_ref(&event)).await?;
    Ok(enrollment)
}

pub(crate) fn remember_identity(enrollment: &mut Enrollment, identity: &DeviceIdentity) {
    enrollment.cert_sha256 = Some(identity.fingerprint.clone());
    enrollment.attributes.insert("cert_subject".into(), subject_of(identity).into());
}
