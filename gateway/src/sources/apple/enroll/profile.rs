//! `GET /mdm/enroll`: the signed enrollment profile.
//!
//! Query: `variant=device|user` (default `device`), `managed_apple_id=` (required with `user`),
//! `topic=` (which uploaded push certificate, when several), `ticket=` (from `POST
//! /enroll/session`: the SCEP challenge is tied to it and the download is recorded on it).
//!
//! Order of checks, so nothing is stored for a refused request: rate limit (429), query (400),
//! ticket (404), push certificate (503/409/400); only then a challenge is issued, the download
//! recorded and the profile signed.

use std::collections::BTreeMap;

use http::{HeaderValue, StatusCode};
use mdm_apple::profile::{PROFILE_CONTENT_TYPE, managed_apple_id_ok};
use mdm_apple::{EnrollmentProfile, PayloadUuids, ProfileVariant};

use super::{Refusal, session, take_token};
use crate::AppState;
use crate::http_util::{Reply, with_type};

/// The SCEP `Name` written into profiles.
const SCEP_NAME: &str = "mdm-gateway";

pub(super) async fn get(state: &AppState, query: &str) -> Result<Reply, Refusal> {
    take_token(state)?;
    let q: BTreeMap<String, String> = serde_urlencoded::from_str(query)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "bad_query", format!("query string: {e}")))?;
    let variant = variant(&q)?;
    let now = state.clock.unix();

    let ticket_id = match q.get("ticket") {
        Some(ticket) => {
            let id = session::live_ticket(state, ticket, now).await?;
            Some(id)
        }
        None => None,
    };
    let topic = choose_topic(state, q.get("topic").map(String::as_str), now).await?;

    let uuids: Vec<String> = (0..4).map(|_| new_uuid()).collect();
    let challenge = state
        .scep
        .issue_challenge(ticket_id.as_deref())
        .await
        .map_err(|e| Refusal::internal(format!("issuing a SCEP challenge: {e}")))?;
    let enrollment = &state.enrollment;
    let subject_cn = format!("MDM identity {}", uuids[0]);
    let profile = EnrollmentProfile {
        public_url: &state.config.public_url,
        topic: &topic,
        identifier: &enrollment.identifier,
        organization: &state.config.apple.enrollment.organization,
        uuids: PayloadUuids { profile: &uuids[0], mdm: &uuids[1], scep: &uuids[2], ca: &uuids[3] },
        scep_challenge: &challenge,
        scep_subject_cn: &subject_cn,
        scep_name: SCEP_NAME,
        ca_der: &enrollment.ca_der,
        variant: &variant,
    };
    // Every input was checked above or comes from validated configuration: a failure here is a bug.
    let xml = profile.to_xml().map_err(|e| Refusal::internal(format!("building the profile: {e}")))?;
    if let Some(id) = &ticket_id
        && !state.store.record_profile_download(id, variant.name(), now).await?
    {
        return Err(session::unknown_ticket(false));
    }
    let signed = mdm_certs::sign_attached(&enrollment.signer, &enrollment.key, &enrollment.chain, &xml)
        .map_err(|e| Refusal::internal(format!("signing the profile: {e}")))?;
    tracing::info!(
        platform = "apple", variant = variant.name(), %topic, ticket = ticket_id.is_some(),
        profile_uuid = %uuids[0], "enrollment profile served"
    );
    let mut reply = with_type(StatusCode::OK, PROFILE_CONTENT_TYPE, signed);
    let h = reply.headers_mut();
    // The body holds a one-time challenge: never keep it in a cache.
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"enroll.mobileconfig\""),
    );
    h.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(reply)
}

fn variant(q: &BTreeMap<String, String>) -> Result<ProfileVariant, Refusal> {
    let bad = |reason, detail: String| Refusal::new(StatusCode::BAD_REQUEST, reason, detail);
    match q.get("variant").map(String::as_str).unwrap_or("device") {
        "device" => Ok(ProfileVariant::Device),
        "user" => match q.get("managed_apple_id") {
            None => Err(bad(
                "missing_managed_apple_id",
                "variant=user needs managed_apple_id=<the Managed Apple Account that enrolls>".into(),
            )),
            Some(id) if !managed_apple_id_ok(id) => {
                Err(bad("bad_managed_apple_id", format!("managed_apple_id {id:?} is not of the form user@domain")))
            }
            Some(id) => Ok(ProfileVariant::User { assigned_managed_apple_id: id.clone() }),
        },
        other => Err(bad("bad_variant", format!("variant {other:?}: use device or user"))),
    }
}

/// The push topic for the profile: `?topic=`, else `apple.enrollment.topic`, else the only
/// uploaded push certificate's.
async fn choose_topic(state: &AppState, requested: Option<&str>, now: i64) -> Result<String, Refusal> {
    let certs = state.store.push_certs().await?;
    if certs.is_empty() {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_push_certificate",
            "enrollment is not available yet: no APNs push certificate has been uploaded. An administrator must \
             upload one (PUT /v1/pushcert on the API listener) before devices can enroll",
        ));
    }
    let uploaded = || certs.iter().map(|c| c.topic.as_str()).collect::<Vec<_>>().join(", ");
    let configured = state.config.apple.enrollment.topic.as_deref();
    let chosen = match (requested, configured) {
        (Some(t), _) => certs.iter().find(|c| c.topic == t).ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "unknown_topic",
                format!("no push certificate is uploaded for topic {t:?} (uploaded: {})", uploaded()),
            )
        })?,
        (None, Some(t)) => certs.iter().find(|c| c.topic == t).ok_or_else(|| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "configured_topic_missing",
                format!(
                    "apple.enrollment.topic is {t:?} but no push certificate is uploaded for it (uploaded: {})",
                    uploaded()
                ),
            )
        })?,
        (None, None) if certs.len() == 1 => &certs[0],
        (None, None) => {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "ambiguous_push_topic",
                format!(
                    "{} push certificates are uploaded ({}); choose one with ?topic= or the apple.enrollment.topic \
                     setting",
                    certs.len(),
                    uploaded()
                ),
            ));
        }
    };
    if chosen.not_after <= now {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "push_certificate_expired",
            format!(
                "the push certificate for topic {} has expired: enrolled devices could not be reached. Renew it \
                 (same topic) and upload it with PUT /v1/pushcert",
                chosen.topic
            ),
        ));
    }
    // The upload accepts any `com.apple.mgmt…` subject; a profile needs the `com.apple.mgmt.` prefix.
    if !chosen.topic.starts_with("com.apple.mgmt.") {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bad_push_topic",
            format!("push certificate topic {:?} does not start with com.apple.mgmt.", chosen.topic),
        ));
    }
    Ok(chosen.topic.clone())
}

/// A random (version 4) UUID in upper case, the form Apple's tools write.
fn new_uuid() -> String {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid().hyphenated().to_string().to_ascii_uppercase()
}
