//! Enrollment tickets: `POST /enroll/session` makes one, `GET /enroll/session/<ticket>` says how far
//! the enrollment it started has come.
//!
//! States, in order: `created` (no profile downloaded with the ticket yet) → `profile_downloaded`
//! → `certificate_issued` (the SCEP server issued a certificate with the challenge tied to the
//! ticket) → `enrolled` (that certificate is bound to an enrollment that completed TokenUpdate;
//! between Authenticate and TokenUpdate the state stays `certificate_issued`, with the device id).
//! A SCEP renewal continues the enrollment: once the device presents the renewed certificate and
//! the enrollment is rebound to it, the ticket follows the renewal and keeps naming the device.
//!
//! Tickets live in the store (any instance behind a load balancer can answer, a restart loses
//! nothing); only their SHA-256 is stored, and that hash is also the opaque ticket id handed to the
//! SCEP side. A ticket lets profiles be downloaded until `apple.enrollment.ticket_ttl_s` after its
//! creation; its status stays readable until it is purged one day after that.

use http::{HeaderValue, StatusCode};
use mdm_core::DeviceId;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Refusal, take_token};
use crate::AppState;
use crate::http_util::{Reply, json};
use crate::scep::TicketStatus;
use crate::store::{EnrollTicket, Enrollment, EnrollmentState, StoreError};

/// Tickets are purged this long after they expire; until then their status can be read.
const RETENTION_S: i64 = 86_400;

/// SCEP renewals followed at most, looking for the enrollment a ticket's certificate led to.
const MAX_RENEWALS: usize = 16;

/// How far an enrollment started with a ticket has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Created,
    ProfileDownloaded,
    CertificateIssued,
    Enrolled,
}

/// The state of a ticket from what the store and the SCEP side know: the ticket, the SCEP status
/// of its challenges, and the enrollment bound to the certificate SCEP issued or to a renewal of it
/// (looked up by fingerprint). Returns the device id once an enrollment is bound to that certificate.
pub fn session_state(
    ticket: &EnrollTicket,
    scep: Option<&TicketStatus>,
    bound: Option<&Enrollment>,
) -> (SessionState, Option<DeviceId>) {
    if ticket.profile_downloaded_at.is_none() {
        return (SessionState::Created, None);
    }
    if scep.and_then(|s| s.issued_cert_sha256.as_ref()).is_none() {
        return (SessionState::ProfileDownloaded, None);
    }
    match bound {
        Some(e) if e.state == EnrollmentState::Enrolled => (SessionState::Enrolled, Some(e.device_id.clone())),
        Some(e) => (SessionState::CertificateIssued, Some(e.device_id.clone())),
        None => (SessionState::CertificateIssued, None),
    }
}

/// 32 random bytes, URL-safe base64 without padding.
fn new_ticket() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The stored id of a ticket; `None` when the text cannot be one of ours (not worth a lookup).
fn ticket_id(ticket: &str) -> Option<String> {
    let plausible = ticket.len() == 43 && ticket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plausible.then(|| hex::encode(Sha256::digest(ticket.as_bytes())))
}

pub(super) fn unknown_ticket(json: bool) -> Refusal {
    let r = Refusal::new(
        StatusCode::NOT_FOUND,
        "unknown_ticket",
        "no such enrollment ticket, or it has expired: start again from the enrollment page (/enroll)",
    );
    if json { r.json() } else { r }
}

/// The id of a ticket that may still be used to download a profile, or 404.
pub(super) async fn live_ticket(state: &AppState, ticket: &str, now: i64) -> Result<String, Refusal> {
    let id = ticket_id(ticket).ok_or_else(|| unknown_ticket(false))?;
    match state.store.enroll_ticket(&id).await? {
        Some(t) if t.expires_at > now => Ok(id),
        _ => Err(unknown_ticket(false)),
    }
}

/// `POST /enroll/session`: a new ticket. No body is read.
pub(super) async fn create(state: &AppState) -> Result<Reply, Refusal> {
    take_token(state).map_err(Refusal::json)?;
    let now = state.clock.unix();
    let ticket = new_ticket();
    let id = ticket_id(&ticket).expect("our own tickets are well-formed");
    let expires_at = now + state.config.apple.enrollment.ticket_ttl_s as i64;
    let record =
        EnrollTicket { id, created_at: now, expires_at, profile_downloaded_at: None, downloads: 0, variant: None };
    state.store.create_enroll_ticket(&record, now - RETENTION_S).await.map_err(|e| Refusal::from(e).json())?;
    tracing::info!(platform = "apple", "enrollment ticket created");
    let body = json!({
        "ticket": ticket,
        "profile_url": format!("/mdm/enroll?ticket={ticket}"),
        "status_url": format!("/enroll/session/{ticket}"),
        "expires_at": rfc3339(expires_at),
    });
    Ok(no_store(json(StatusCode::CREATED, &body)))
}

/// `GET /enroll/session/<ticket>`: the ticket's state.
pub(super) async fn status(state: &AppState, ticket: &str) -> Result<Reply, Refusal> {
    let id = ticket_id(ticket).ok_or_else(|| unknown_ticket(true))?;
    let store_err = |e| Refusal::from(e).json();
    let Some(record) = state.store.enroll_ticket(&id).await.map_err(store_err)? else {
        return Err(unknown_ticket(true));
    };
    let scep = match record.profile_downloaded_at {
        Some(_) => state.scep.ticket_status(&id).await.map_err(store_err)?,
        None => None,
    };
    let bound = match scep.as_ref().and_then(|s| s.issued_cert_sha256.as_deref()) {
        Some(fp) => bound_enrollment(state, fp).await.map_err(store_err)?,
        None => None,
    };
    let (session, device_id) = session_state(&record, scep.as_ref(), bound.as_ref());
    let now = state.clock.unix();
    let body = json!({
        "state": session,
        "device_id": device_id.map(|d| d.to_string()),
        "created_at": rfc3339(record.created_at),
        "expires_at": rfc3339(record.expires_at),
        "expired": record.expires_at <= now,
        "profile_downloaded_at": record.profile_downloaded_at.and_then(rfc3339),
    });
    Ok(no_store(json(StatusCode::OK, &body)))
}

/// The enrollment bound to `issued`, or else to the newest SCEP renewal of it (and so on): after
/// a renewal the enrollment is rebound to the new certificate, and the ticket still names it.
async fn bound_enrollment(state: &AppState, issued: &str) -> Result<Option<Enrollment>, StoreError> {
    let mut fp = issued.to_owned();
    for _ in 0..=MAX_RENEWALS {
        if let Some(device) = state.store.enrollment_by_cert(&fp).await? {
            return state.store.enrollment(&device).await;
        }
        match state.store.scep_renewal_of(&fp).await? {
            Some(renewal) => fp = renewal.cert_sha256,
            None => return Ok(None),
        }
    }
    Ok(None)
}

fn no_store(mut r: Reply) -> Reply {
    r.headers_mut().insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix).ok()?.format(&time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(downloaded: bool) -> EnrollTicket {
        EnrollTicket {
            id: "x".into(),
            created_at: 1,
            expires_at: 100,
            profile_downloaded_at: downloaded.then_some(5),
            downloads: i64::from(downloaded),
            variant: downloaded.then(|| "device".into()),
        }
    }

    fn enrollment(state: EnrollmentState) -> Enrollment {
        let mut e = Enrollment::new("apple:UDID-1".parse().expect("id"), 10);
        e.state = state;
        e.cert_sha256 = Some("ab".repeat(32));
        e
    }

    #[test]
    fn states_in_order() {
        let issued = TicketStatus { challenge_used: true, issued_cert_sha256: Some("ab".repeat(32)) };
        let used_not_issued = TicketStatus { challenge_used: true, issued_cert_sha256: None };
        let fresh = TicketStatus::default();
        let device: DeviceId = "apple:UDID-1".parse().expect("id");
        assert_eq!(session_state(&ticket(false), None, None), (SessionState::Created, None));
        // SCEP knowledge without a recorded download cannot happen through this gateway; the
        // ticket's own record decides the first step.
        assert_eq!(session_state(&ticket(false), Some(&issued), None), (SessionState::Created, None));
        assert_eq!(session_state(&ticket(true), None, None), (SessionState::ProfileDownloaded, None));
        assert_eq!(session_state(&ticket(true), Some(&fresh), None), (SessionState::ProfileDownloaded, None));
        assert_eq!(session_state(&ticket(true), Some(&used_not_issued), None), (SessionState::ProfileDownloaded, None));
        assert_eq!(session_state(&ticket(true), Some(&issued), None), (SessionState::CertificateIssued, None));
        let authenticated = enrollment(EnrollmentState::Authenticated);
        assert_eq!(
            session_state(&ticket(true), Some(&issued), Some(&authenticated)),
            (SessionState::CertificateIssued, Some(device.clone())),
            "bound at Authenticate, not yet reachable"
        );
        let enrolled = enrollment(EnrollmentState::Enrolled);
        assert_eq!(
            session_state(&ticket(true), Some(&issued), Some(&enrolled)),
            (SessionState::Enrolled, Some(device))
        );
    }

    #[test]
    fn states_serialise_as_documented() {
        let names: Vec<String> = [
            SessionState::Created,
            SessionState::ProfileDownloaded,
            SessionState::CertificateIssued,
            SessionState::Enrolled,
        ]
        .iter()
        .map(|s| serde_json::to_value(s).expect("json").as_str().expect("string").to_owned())
        .collect();
        assert_eq!(names, ["created", "profile_downloaded", "certificate_issued", "enrolled"]);
    }

    #[test]
    fn ticket_ids() {
        let t = new_ticket();
        assert_eq!(t.len(), 43);
        let id = ticket_id(&t).expect("own ticket");
        assert_eq!(id.len(), 64);
        assert_ne!(ticket_id(&new_ticket()), Some(id), "random");
        for bad in ["", "short", &"a".repeat(44), &format!("{}!", &"a".repeat(42)), &format!("{}/", &"a".repeat(42))] {
            assert_eq!(ticket_id(bad), None, "{bad}");
        }
    }
}
