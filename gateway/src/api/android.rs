//! `/v1/android/*`: enterprise signup, enrollment tokens, policies and devices through AMAPI,
//! and the client's status; and the unauthenticated signup callback
//! `GET /android/signup/callback` (the one-time `state` is its credential).

use http::StatusCode;
use mdm_android::EnrollmentMode;
use serde::Deserialize;

use super::store_error;
use crate::AppState;
use crate::android::AndroidError;
use crate::enrollment_gate::EnrollmentFacts;
use crate::http_util::{Reply, json, json_error};
use mdm_core::Platform;

fn not_configured() -> Reply {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "android_not_configured",
        "the AMAPI client is off: set android.service_account_key",
    )
}

fn failure(e: AndroidError) -> Reply {
    match e {
        AndroidError::Amapi(a) => json_error(a.api_status(), a.code(), &a.message()),
        AndroidError::Store(s) => store_error(s),
        AndroidError::Conflict(code, m) => json_error(StatusCode::CONFLICT, code, &m),
        AndroidError::Invalid(code, m) => json_error(StatusCode::UNPROCESSABLE_ENTITY, code, &m),
        AndroidError::NotFound(code, m) => json_error(StatusCode::NOT_FOUND, code, &m),
    }
}

/// The request body as `T` (an empty body is `{}`), or the error reply.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Reply>> {
    let v: serde_json::Value = serde_json::from_slice(if body.is_empty() { b"{}" } else { body }).map_err(|e| {
        Box::new(json_error(StatusCode::BAD_REQUEST, "invalid_json", &format!("request body is not JSON: {e}")))
    })?;
    serde_json::from_value(v)
        .map_err(|e| Box::new(json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", &e.to_string())))
}

pub(super) async fn status(state: &AppState) -> Reply {
    match &state.android {
        Some(a) => json(StatusCode::OK, &a.status().await),
        None => json(StatusCode::OK, &serde_json::json!({"enabled": false})),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    #[serde(default)]
    callback_url: Option<String>,
}

pub(super) async fn create_signup_url(state: &AppState, body: &[u8]) -> Reply {
    let Some(a) = state.android.as_deref() else { return not_configured() };
    let req: SignupRequest = match parse(body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match a.create_signup_url(req.callback_url.as_deref()).await {
        Ok(v) => json(StatusCode::CREATED, &v),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    state: String,
    #[serde(default, rename = "enterpriseToken")]
    enterprise_token: String,
}

pub(super) async fn signup_callback(state: &AppState, query: &str) -> Reply {
    let Some(a) = state.android.as_deref() else { return not_configured() };
    let q: CallbackQuery = match serde_urlencoded::from_str(query) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string()),
    };
    match a.complete_signup(&q.state, &q.enterprise_token).await {
        Ok(v) => json(StatusCode::CREATED, &v),
        Err(e) => {
            tracing::warn!(error = %e, "Android signup callback failed");
            failure(e)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    mode: EnrollmentMode,
    policy: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    duration_s: Option<u64>,
    #[serde(default)]
    one_time: bool,
}

pub(super) async fn create_enrollment_token(state: &AppState, body: &[u8]) -> Reply {
    let Some(a) = state.android.as_deref() else { return not_configured() };
    let req: TokenRequest = match parse(body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if req.duration_s == Some(0) {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "duration_s must be at least 1");
    }
    if req.user.as_deref() == Some("") {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "user must not be empty");
    }
    // The enrollment gate: no token for a user at their device limit, a blocked platform or a
    // mode the rules do not allow (a work profile is a personally owned device).
    let facts = EnrollmentFacts {
        platform: Some(Platform::Android),
        user: req.user.clone(),
        declared_personal: req.mode == EnrollmentMode::WorkProfile,
        ..EnrollmentFacts::default()
    };
    match state.gate.check(state.store.as_ref(), &facts).await {
        Ok(Ok(_)) => {}
        Ok(Err(denial)) => {
            metrics::counter!(crate::telemetry::ENROLLMENTS_DENIED, "platform" => "android", "reason" => denial.reason.as_str())
                .increment(1);
            return json_error(StatusCode::FORBIDDEN, denial.reason.as_str(), &denial.message);
        }
        Err(crate::enrollment_gate::GateError::Store(e)) => return super::store_error(e),
    }
    match a.create_enrollment_token(req.mode, &req.policy, req.user.as_deref(), req.duration_s, req.one_time).await {
        Ok(v) => json(StatusCode::CREATED, &v),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyQuery {
    #[serde(default)]
    update_mask: Option<String>,
}

pub(super) async fn put_policy(state: &AppState, id: &str, body: &[u8], query: &str) -> Reply {
    let Some(a) = state.android.as_deref() else { return not_configured() };
    let q: PolicyQuery = match serde_urlencoded::from_str(query) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string()),
    };
    let body: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return json_error(StatusCode::BAD_REQUEST, "invalid_json", &format!("request body is not JSON: {e}"));
        }
    };
    let serde_json::Value::Object(body) = body else {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            "the body must be an AMAPI Policy object",
        );
    };
    let mask =
        q.update_mask.map(|m| m.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned).collect());
    match a.patch_policy(id, body, mask).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    page_token: Option<String>,
}

pub(super) async fn list_devices(state: &AppState, query: &str) -> Reply {
    let Some(a) = state.android.as_deref() else { return not_configured() };
    let q: ListQuery = match serde_urlencoded::from_str(query) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string()),
    };
    match a.list_devices(q.page_size, q.page_token.as_deref()).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => failure(e),
    }
}

pub(super) async fn get_device(state: &AppState, id: &str) -> Reply {
    let Some(a) = state.android.as_deref() else { return not_configured() };
    match a.get_device(id).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => failure(e),
    }
}
