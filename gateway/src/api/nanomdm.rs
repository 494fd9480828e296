//! NanoMDM-compatible endpoints: `/v1/enqueue`, `/v1/push`, `/v1/pushcert`. Replies have
//! NanoMDM's shape and status rule: 200 when every id succeeded, 207 when some did, 500 when
//! none did or the request as a whole failed (a command plist that does not decode included,
//! as NanoMDM does).

use std::collections::BTreeMap;

use http::StatusCode;
use mdm_core::{DeviceId, EventType, Platform};
use serde::Serialize;
use serde_json::json;

use super::rfc3339;
use crate::AppState;
use crate::http_util::{Reply, json};
use crate::store::{EnrollmentState, NewCommand, PushCert};
use crate::telemetry;

#[derive(Debug, Default, Serialize)]
struct EnrollmentResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    push_error: Option<String>,
    #[serde(rename = "push_result", skip_serializing_if = "Option::is_none")]
    push_id: Option<String>,
    #[serde(rename = "command_error", skip_serializing_if = "Option::is_none")]
    enqueue_error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct ApiResult {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<String, EnrollmentResult>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_push: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    push_error: Option<String>,
    #[serde(rename = "command_error", skip_serializing_if = "Option::is_none")]
    enqueue_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_type: Option<String>,
}

impl ApiResult {
    /// NanoMDM's rule: any top-level error or all ids failing is 500; some is 207; none is 200.
    fn code(&self, ids: usize) -> StatusCode {
        if self.push_error.is_some() || self.enqueue_error.is_some() {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        let failed = self.status.values().filter(|r| r.push_error.is_some() || r.enqueue_error.is_some()).count();
        match failed {
            0 => StatusCode::OK,
            n if n < ids => StatusCode::MULTI_STATUS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reply(self, ids: usize) -> Reply {
        let code = self.code(ids);
        json(code, &self)
    }
}

fn split_ids(ids: &str) -> Vec<String> {
    ids.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

pub(super) async fn enqueue(state: &AppState, ids: &str, body: &[u8], query: &str) -> Reply {
    let ids = split_ids(ids);
    let no_push = serde_urlencoded::from_str::<BTreeMap<String, String>>(query)
        .map(|q| q.get("nopush").is_some_and(|v| !v.is_empty()))
        .unwrap_or(false);
    let mut result = ApiResult { no_push, ..ApiResult::default() };
    let command = match mdm_apple::parse_command_plist(body) {
        Ok(c) => c,
        Err(e) => {
            result.enqueue_error = Some(format!("decoding command: {e}"));
            return result.reply(ids.len());
        }
    };
    result.command_uuid = Some(command.command_uuid.clone());
    result.request_type = Some(command.request_type.clone());
    let now = state.clock.unix();
    let mut new = Vec::new();
    let mut events = Vec::new();
    for id in &ids {
        // Like NanoMDM, an id gets a status entry on enqueue only when it failed.
        let fail =
            |result: &mut ApiResult, e: String| result.status.entry(id.clone()).or_default().enqueue_error = Some(e);
        let device = match DeviceId::new(Platform::Apple, &id.split(':').collect::<Vec<_>>()) {
            Ok(d) => d,
            Err(e) => {
                fail(&mut result, format!("invalid enrollment id: {e}"));
                continue;
            }
        };
        match state.store.enrollment(&device).await {
            Ok(Some(e)) if e.state != EnrollmentState::Unenrolled => {}
            Ok(_) => {
                fail(&mut result, "no such enrollment".into());
                continue;
            }
            Err(e) => {
                fail(&mut result, format!("store: {e}"));
                continue;
            }
        }
        events.push(state.events.event(
            EventType::COMMAND_QUEUED,
            &device,
            Some(&command.command_uuid),
            json!({ "type": "raw", "request_type": command.request_type, "via": "nanomdm" }),
        ));
        new.push(NewCommand {
            command_id: command.command_uuid.clone(),
            device_id: device,
            request_type: command.request_type.clone(),
            normalised: None,
            payload: command.plist.clone(),
            priority: 0,
            expires_at: None,
            idempotency_key: None,
            created_at: now,
        });
    }
    if !new.is_empty() {
        if let Err(e) = state.store.enqueue(&new, &events).await {
            result.enqueue_error = Some(e.to_string());
            return result.reply(ids.len());
        }
        metrics::counter!(telemetry::COMMANDS_QUEUED, "platform" => "apple").increment(new.len() as u64);
    }
    if !no_push {
        let targets: Vec<String> = new.iter().map(|c| c.device_id.native().to_owned()).collect();
        push_into(state, &targets, &mut result).await;
    }
    result.reply(ids.len())
}

pub(super) async fn push(state: &AppState, ids: &str) -> Reply {
    let ids = split_ids(ids);
    let mut result = ApiResult::default();
    push_into(state, &ids, &mut result).await;
    result.reply(ids.len())
}

/// Pushes every id at once and waits for APNs (retries included): per id, `push_result` (the
/// `apns-id`) or `push_error`. Not coalesced: an explicit push is sent.
async fn push_into(state: &AppState, ids: &[String], result: &mut ApiResult) {
    let pushes = ids.iter().map(|id| async move {
        let outcome = match DeviceId::new(Platform::Apple, &id.split(':').collect::<Vec<_>>()) {
            Ok(device) => state.pusher.push(&device).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("invalid enrollment id: {e}")),
        };
        (id, outcome)
    });
    for (id, outcome) in futures_util::future::join_all(pushes).await {
        let entry = result.status.entry(id.clone()).or_default();
        match outcome {
            Ok(apns_id) => entry.push_id = Some(apns_id),
            Err(e) => entry.push_error = Some(e),
        }
    }
}

/// `PUT /v1/pushcert`: PEM certificate and unencrypted PEM key, in either order.
///
/// Refused: an expired (or not yet valid) certificate; a topic that is not an MDM topic; and a
/// certificate for a new topic while another is stored, unless `?add=1`. Renewing (same topic)
/// replaces the stored one. Devices enrolled under a topic can only be pushed with that topic's
/// certificate, so an upload that silently switched topics would cut them all off.
pub(super) async fn put_pushcert(state: &AppState, body: &[u8], query: &str) -> Reply {
    let fail = |topic: Option<String>, not_after: Option<String>, e: String| {
        tracing::info!(error = %e, "push certificate refused");
        json(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "error": e, "topic": topic, "not_after": not_after }))
    };
    let add = serde_urlencoded::from_str::<BTreeMap<String, String>>(query)
        .map(|q| q.get("add").is_some_and(|v| !v.is_empty() && v != "0" && v != "false"))
        .unwrap_or(false);
    let parsed = match parse_push_cert(body) {
        Ok(p) => p,
        Err(e) => return fail(None, None, e),
    };
    let now = state.clock.unix();
    let (topic, not_after) = (Some(parsed.topic.clone()), rfc3339(parsed.not_after));
    if parsed.not_after <= now {
        let e = format!(
            "push certificate for topic {} expired at {}; renew it at Apple's push certificate portal",
            parsed.topic,
            not_after.clone().unwrap_or_default()
        );
        return fail(topic, not_after, e);
    }
    if parsed.not_before > now {
        let e = format!(
            "push certificate for topic {} is not valid before {}",
            parsed.topic,
            rfc3339(parsed.not_before).unwrap_or_default()
        );
        return fail(topic, not_after, e);
    }
    let existing = match state.store.push_certs().await {
        Ok(c) => c,
        Err(e) => return fail(topic, not_after, format!("store: {e}")),
    };
    let renewal = existing.iter().any(|c| c.topic == parsed.topic);
    if !renewal && !existing.is_empty() && !add {
        let stored: Vec<&str> = existing.iter().map(|c| c.topic.as_str()).collect();
        let e = format!(
            "certificate topic {} differs from the stored topic {}: a renewed push certificate must keep its topic, \
             and devices enrolled under the stored topic cannot be pushed with another one. Renew the existing \
             certificate instead, or upload with ?add=1 to serve this topic in addition",
            parsed.topic,
            stored.join(", ")
        );
        return fail(topic, not_after, e);
    }
    let record = PushCert {
        topic: parsed.topic.clone(),
        cert_pem: parsed.cert_pem,
        key_pem: parsed.key_pem,
        not_after: parsed.not_after,
        updated_at: now,
    };
    if let Err(e) = state.store.save_push_cert(&record).await {
        return fail(topic, not_after, e.to_string());
    }
    state.pusher.certificates_changed();
    metrics::gauge!(telemetry::PUSH_CERT_EXPIRY, "topic" => record.topic.clone()).set((record.not_after - now) as f64);
    let days_left = crate::push::days_left(record.not_after, now);
    tracing::info!(topic = %record.topic, renewal, days_left, "push certificate stored");
    let mut reply =
        json!({ "topic": record.topic, "not_after": not_after, "days_left": days_left, "renewal": renewal });
    if days_left < crate::push::WARN_DAYS {
        let w = format!("push certificate expires in {days_left} days");
        tracing::warn!(topic = %record.topic, days_left, "{w}");
        reply["warning"] = w.into();
    }
    json(StatusCode::OK, &reply)
}

pub(super) async fn get_pushcert(state: &AppState, query: &str) -> Reply {
    let topic =
        serde_urlencoded::from_str::<BTreeMap<String, String>>(query).ok().and_then(|q| q.get("topic").cloned());
    let mut certs = match state.store.push_certs().await {
        Ok(c) => c,
        Err(e) => return super::store_error(e),
    };
    certs.sort_by_key(|c| std::cmp::Reverse(c.updated_at));
    let chosen = match &topic {
        Some(t) => certs.iter().find(|c| &c.topic == t),
        None => certs.first(),
    };
    let Some(chosen) = chosen else {
        return json(StatusCode::NOT_FOUND, &json!({ "error": "no push certificate stored" }));
    };
    let now = state.clock.unix();
    let describe = |c: &PushCert| json!({ "topic": c.topic, "not_after": rfc3339(c.not_after), "days_left": crate::push::days_left(c.not_after, now) });
    let mut body = describe(chosen);
    body["push_certs"] = certs.iter().map(describe).collect();
    json(StatusCode::OK, &body)
}

struct ParsedPushCert {
    topic: String,
    cert_pem: String,
    key_pem: String,
    not_before: i64,
    not_after: i64,
}

/// The topic is the certificate subject's UID; Apple MDM topics start with `com.apple.mgmt`.
fn parse_push_cert(body: &[u8]) -> Result<ParsedPushCert, String> {
    let text = std::str::from_utf8(body).map_err(|_| "body is not PEM text".to_owned())?;
    // Blocks concatenated without a newline (`cat cert key` of files lacking one) still count.
    let text = text.replace("----------", "-----\n-----");
    let cert = openssl::x509::X509::from_pem(text.as_bytes()).map_err(|_| "no CERTIFICATE block in body".to_owned())?;
    let key_start = text.match_indices("-----BEGIN ").map(|(i, _)| i).find(|&i| {
        let line = text[i..].lines().next().unwrap_or("");
        line.trim_end().ends_with("PRIVATE KEY-----")
    });
    if text.contains("ENCRYPTED") {
        return Err("private key PEM appears to be encrypted".into());
    }
    let key_pem = key_start.map(|i| &text[i..]).ok_or_else(|| "no PRIVATE KEY block in body".to_owned())?;
    let key = openssl::pkey::PKey::private_key_from_pem(key_pem.as_bytes())
        .map_err(|e| format!("private key does not parse: {e}"))?;
    let cert_key = cert.public_key().map_err(|e| format!("certificate key: {e}"))?;
    if !cert_key.public_eq(&key) {
        return Err("private key does not match certificate".into());
    }
    let topic = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::USERID)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .ok_or_else(|| "certificate has no UID (topic) in its subject".to_owned())?;
    if !topic.starts_with("com.apple.mgmt") {
        return Err(format!("topic {topic:?} is not an MDM topic (must start with com.apple.mgmt)"));
    }
    let not_after = crate::pki::not_after_unix(&cert).ok_or_else(|| "certificate notAfter unreadable".to_owned())?;
    let not_before = asn1_unix(cert.not_before()).ok_or_else(|| "certificate notBefore unreadable".to_owned())?;
    let cert_pem = String::from_utf8(cert.to_pem().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let key_pem =
        String::from_utf8(key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(ParsedPushCert { topic, cert_pem, key_pem, not_before, not_after })
}

fn asn1_unix(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let diff = epoch.diff(t).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}
