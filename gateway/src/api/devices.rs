//! `GET /v1/devices` and `GET /v1/devices/{id}`.

use http::StatusCode;
use mdm_core::{DeviceId, Platform};
use serde::Deserialize;
use serde_json::json;

use super::{rfc3339, store_error};
use crate::AppState;
use crate::http_util::{Reply, json, json_error};
use crate::store::Enrollment;

pub(super) async fn get(state: &AppState, id: &str) -> Reply {
    let device_id: DeviceId = match id.parse() {
        Ok(d) => d,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_device_id", &e.to_string()),
    };
    match state.store.enrollment(&device_id).await {
        Ok(Some(e)) => json(StatusCode::OK, &describe(&e)),
        Ok(None) => json_error(StatusCode::NOT_FOUND, "device_not_found", &format!("no device {device_id}")),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    platform: Option<Platform>,
    cursor: Option<String>,
    limit: Option<u32>,
}

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub(super) async fn list(state: &AppState, query: &str) -> Reply {
    let q: ListQuery = match serde_urlencoded::from_str(query) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string()),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let page =
        match state.store.list_enrollments(q.platform, q.cursor.as_deref().filter(|c| !c.is_empty()), limit).await {
            Ok(p) => p,
            Err(e) => return store_error(e),
        };
    let next = (page.len() as u32 == limit).then(|| page.last().map(|e| e.device_id.to_string())).flatten();
    json(StatusCode::OK, &json!({ "devices": page.iter().map(describe).collect::<Vec<_>>(), "next": next }))
}

pub(super) fn describe(e: &Enrollment) -> serde_json::Value {
    let mut enrollment = json!({
        "state": e.state,
        "enrolled_at": e.enrolled_at.and_then(rfc3339),
        "push_topic": e.push.as_ref().map(|p| p.topic.clone()),
        "bootstrap_token_escrowed": e.bootstrap_token.is_some(),
    });
    if let Some(p) = &e.parent {
        enrollment["parent_device_id"] = json!(p);
    }
    for (k, v) in &e.attributes {
        // The certificate subject is an internal detail of identity binding.
        if k != "cert_subject" {
            enrollment[k] = v.clone();
        }
    }
    if let Some(fp) = &e.cert_sha256 {
        enrollment["certificate_sha256"] = json!(fp);
    }
    json!({
        "device_id": e.device_id,
        "platform": e.platform(),
        "enrollment": enrollment,
        "inventory": e.inventory,
        "last_seen": e.last_seen.and_then(rfc3339),
    })
}
