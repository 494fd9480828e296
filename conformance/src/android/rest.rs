//! Routing of `/v1/…` requests to the state, following the discovery document's paths:
//!
//! | method | path |
//! |---|---|
//! | POST | `v1/signupUrls` |
//! | POST | `v1/enterprises` |
//! | GET | `v1/{name=enterprises/*}` |
//! | POST | `v1/{parent=enterprises/*}/enrollmentTokens` |
//! | GET, PATCH | `v1/{name=enterprises/*/policies/*}` |
//! | GET | `v1/{parent=enterprises/*}/devices` |
//! | GET, PATCH, DELETE | `v1/{name=enterprises/*/devices/*}` |
//! | POST | `v1/{name=enterprises/*/devices/*}:issueCommand` |
//! | GET | `v1/{name=enterprises/*/devices/*/operations/*}` |

use serde_json::Value;

use super::errors::ApiError;
use super::state::{Effect, Query, State};

/// Answers one authorised REST request.
pub(super) fn route(
    state: &mut State,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now_ms: i64,
    effects: &mut Vec<Effect>,
) -> Result<Value, ApiError> {
    let query = Query::parse(query)?;
    let json = || -> Result<Value, ApiError> {
        if body.is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))
    };
    let Some(rest) = path.strip_prefix("/v1/") else { return Err(ApiError::not_found()) };
    let seg: Vec<&str> = rest.split('/').collect();
    match (method, seg.as_slice()) {
        ("POST", ["signupUrls"]) => state.create_signup_url(query.get("projectId"), query.get("callbackUrl")),
        ("POST", ["enterprises"]) => state.create_enterprise(&query, &json()?, effects),
        ("GET", ["enterprises", id]) => {
            state.enterprises.get(&format!("enterprises/{id}")).cloned().ok_or_else(ApiError::not_found)
        }
        ("POST", ["enterprises", id, "enrollmentTokens"]) => {
            state.create_enrollment_token(&format!("enterprises/{id}"), &json()?, now_ms)
        }
        ("PATCH", ["enterprises", id, "policies", p]) => {
            state.patch_policy(&format!("enterprises/{id}/policies/{p}"), query.get("updateMask"), &json()?, effects)
        }
        ("GET", ["enterprises", id, "policies", p]) => {
            state.policies.get(&format!("enterprises/{id}/policies/{p}")).cloned().ok_or_else(ApiError::not_found)
        }
        ("GET", ["enterprises", id, "devices"]) => state.list_devices(&format!("enterprises/{id}"), &query),
        ("POST", ["enterprises", id, "devices", d]) if d.ends_with(":issueCommand") => {
            let d = d.trim_end_matches(":issueCommand");
            state.issue_command(&format!("enterprises/{id}/devices/{d}"), &json()?, now_ms, effects)
        }
        ("GET", ["enterprises", id, "devices", d]) => state.get_device(&format!("enterprises/{id}/devices/{d}")),
        ("PATCH", ["enterprises", id, "devices", d]) => {
            state.patch_device(&format!("enterprises/{id}/devices/{d}"), query.get("updateMask"), &json()?, effects)
        }
        ("DELETE", ["enterprises", id, "devices", d]) => {
            state.delete_device(&format!("enterprises/{id}/devices/{d}"), &query, now_ms, effects)
        }
        ("GET", ["enterprises", id, "devices", d, "operations", n]) => {
            state.get_operation(&format!("enterprises/{id}/devices/{d}/operations/{n}"))
        }
        _ => Err(ApiError::not_found()),
    }
}
