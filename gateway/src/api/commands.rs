//! `POST /v1/commands` and `GET /v1/commands/{id}`.

use http::StatusCode;
use mdm_core::placeholder::{self, DeviceFacts};
use mdm_core::{Command, CommandError, DeviceId, EventType, Platform};
use serde::Deserialize;
use serde_json::json;

use super::{rfc3339, store_error};
use crate::AppState;
use crate::events::new_id;
use crate::http_util::{Reply, json, json_error};
use crate::store::{CommandRecord, Enrollment, EnrollmentState, NewCommand, StoreError};
use crate::telemetry;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    device_id: String,
    command: serde_json::Value,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    expires_at: Option<String>,
    /// Higher first; default 0.
    #[serde(default)]
    priority: Option<i32>,
    /// Queue only: do not wake the device (it gets the command at its next check-in).
    #[serde(default)]
    nopush: bool,
}

const MAX_IDEMPOTENCY_KEY: usize = 256;

pub(super) async fn create(state: &AppState, body: &[u8]) -> Reply {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return json_error(StatusCode::BAD_REQUEST, "invalid_json", &format!("request body is not JSON: {e}"));
        }
    };
    let req: CreateRequest = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", &e.to_string()),
    };
    let device_id: DeviceId = match req.device_id.parse() {
        Ok(d) => d,
        Err(e) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_device_id", &e.to_string()),
    };
    let command: Command = match serde_json::from_value(req.command.clone()) {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_command", &e.to_string()),
    };
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "idempotency_key must be 1 to 256 bytes",
            );
        }
        match state.store.command_by_idempotency_key(key).await {
            Ok(Some(existing)) if existing.device_id == device_id => {
                return json(
                    StatusCode::ACCEPTED,
                    &json!({ "command_id": existing.command_id, "status": existing.status.as_str() }),
                );
            }
            Ok(Some(_)) => {
                return json_error(
                    StatusCode::CONFLICT,
                    "idempotency_conflict",
                    "idempotency_key was used for another device",
                );
            }
            Ok(None) => {}
            Err(e) => return store_error(e),
        }
    }
    let now = state.clock.unix();
    let expires_at = match &req.expires_at {
        None => None,
        Some(s) => match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
            Ok(t) if t.unix_timestamp() > now => Some(t.unix_timestamp()),
            Ok(_) => {
                return json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_expires_at", "expires_at is in the past");
            }
            Err(e) => {
                return json_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_expires_at",
                    &format!("expires_at is not RFC 3339: {e}"),
                );
            }
        },
    };
    let enrollment = match state.store.enrollment(&device_id).await {
        Ok(Some(e)) => e,
        Ok(None) => return json_error(StatusCode::NOT_FOUND, "device_not_found", &format!("no device {device_id}")),
        Err(e) => return store_error(e),
    };
    if enrollment.state == EnrollmentState::Unenrolled {
        return json_error(StatusCode::CONFLICT, "device_unenrolled", &format!("{device_id} is unenrolled"));
    }
    // Per-device placeholders in app configuration ({{SerialNumber}}…): filled in now, so an
    // unknown token, or one this device has no value for, is a 422 at enqueue.
    let command = match fill_placeholders(command, &enrollment) {
        Ok(c) => c,
        Err(e) => return command_refused(&e),
    };
    let command_id = new_id();
    let (request_type, payload) = match device_id.platform() {
        Platform::Apple => {
            // ClearPasscode needs the device channel's UnlockToken.
            let unlock_owner = match &enrollment.parent {
                Some(parent) => match state.store.enrollment(parent).await {
                    Ok(p) => p.and_then(|p| p.unlock_token),
                    Err(e) => return store_error(e),
                },
                None => enrollment.unlock_token.clone(),
            };
            let ctx = mdm_apple::TranslateContext {
                unlock_token: unlock_owner.as_deref(),
                os_name: enrollment.inventory.os_name.as_deref(),
            };
            match mdm_apple::translate(&command, &command_id, &ctx) {
                Ok(c) => (c.request_type, c.plist),
                Err(e) => return command_refused(&e),
            }
        }
        // OMA-DM has no push yet (WNS): the device gets the command at its next scheduled session.
        Platform::Windows => match mdm_windows::syncml::translate(&command) {
            Ok(c) => (c.request_type.clone(), c.payload()),
            Err(e) => return command_refused(&e),
        },
        // Stored first; the dispatcher calls AMAPI (gateway/src/android/dispatch.rs).
        Platform::Android => {
            let call = match mdm_android::command::translate(&command, &device_id) {
                Ok(c) => c,
                Err(e) => return command_refused(&e),
            };
            if state.android.is_none() {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "android_not_configured",
                    "the AMAPI client is off: set android.service_account_key",
                );
            }
            (call.request_type(), serde_json::to_vec(&call).unwrap_or_default())
        }
    };
    let new = NewCommand {
        command_id: command_id.clone(),
        device_id: device_id.clone(),
        request_type: request_type.clone(),
        normalised: Some(req.command),
        payload,
        priority: req.priority.unwrap_or(0),
        expires_at,
        idempotency_key: req.idempotency_key.clone(),
        created_at: now,
    };
    let event = state.events.event(
        EventType::COMMAND_QUEUED,
        &device_id,
        Some(&command_id),
        json!({ "type": command.type_name(), "request_type": request_type, "expires_at": expires_at.and_then(rfc3339) }),
    );
    match state.store.enqueue(std::slice::from_ref(&new), &[event]).await {
        Ok(()) => {}
        Err(StoreError::IdempotencyConflict(_)) => {
            // Lost a race with an identical request: answer as the winner did.
            if let Some(key) = &req.idempotency_key
                && let Ok(Some(existing)) = state.store.command_by_idempotency_key(key).await
                && existing.device_id == device_id
            {
                return json(
                    StatusCode::ACCEPTED,
                    &json!({ "command_id": existing.command_id, "status": existing.status.as_str() }),
                );
            }
            return json_error(StatusCode::CONFLICT, "idempotency_conflict", "idempotency_key is already used");
        }
        Err(e) => return store_error(e),
    }
    metrics::counter!(telemetry::COMMANDS_QUEUED, "platform" => device_id.platform().as_str()).increment(1);
    // The reply does not wait for APNs: the push is coalesced per device, and its failures
    // become `push.failed` events.
    if !req.nopush && device_id.platform() == Platform::Apple {
        state.pusher.wake(device_id);
    } else if let Some(a) = state.android.as_ref().filter(|_| device_id.platform() == Platform::Android) {
        a.wake();
    }
    json(StatusCode::ACCEPTED, &json!({ "command_id": command_id, "status": "queued" }))
}

/// The values `{{Token}}` placeholders take for this device (see [`mdm_core::placeholder`]).
fn device_facts(e: &Enrollment) -> DeviceFacts<'_> {
    let attr = |k: &str| e.attributes.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    let upn = attr("user_principal_name").or_else(|| attr("upn"));
    DeviceFacts {
        user_principal_name: upn,
        // A UPN is the sign-in address; it stands in for the email when none was reported.
        user_email: attr("email").or_else(|| upn.filter(|u| u.contains('@'))),
        device_id: Some(e.device_id.as_str()),
        serial_number: e.inventory.serial_number.as_deref(),
        udid: e.inventory.udid.as_deref(),
    }
}

fn fill_placeholders(command: Command, enrollment: &Enrollment) -> Result<Command, CommandError> {
    let facts = device_facts(enrollment);
    let fill = |m: &serde_json::Map<String, serde_json::Value>| placeholder::substitute_map(m, &facts);
    Ok(match command {
        Command::AppConfig { app, config } => Command::AppConfig { config: fill(&config)?, app },
        Command::InstallApp { app, managed_config: Some(m) } => {
            Command::InstallApp { managed_config: Some(fill(&m)?), app }
        }
        other => other,
    })
}

fn command_refused(e: &CommandError) -> Reply {
    json_error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), &e.to_string())
}

#[derive(Debug, Deserialize)]
struct GetQuery {
    device_id: Option<String>,
}

pub(super) async fn get(state: &AppState, id: &str, query: &str) -> Reply {
    let q: GetQuery = match serde_urlencoded::from_str(query) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string()),
    };
    let mut records = match state.store.command(id).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    if let Some(d) = &q.device_id {
        records.retain(|r| r.device_id.as_str() == d);
    }
    let Some(first) = records.first() else {
        return json_error(StatusCode::NOT_FOUND, "command_not_found", &format!("no command {id}"));
    };
    let mut body = describe(first);
    // The NanoMDM-compatible API can queue one CommandUUID to many devices.
    if records.len() > 1 {
        body["devices"] = records.iter().map(describe).collect();
    }
    json(StatusCode::OK, &body)
}

fn describe(r: &CommandRecord) -> serde_json::Value {
    let mut v = json!({
        "command_id": r.command_id,
        "device_id": r.device_id,
        "status": r.status.as_str(),
        "request_type": r.request_type,
        "created_at": rfc3339(r.created_at),
        "updated_at": rfc3339(r.updated_at),
        "sent_count": r.sent_count,
    });
    if let Some(c) = &r.normalised {
        v["command"] = c.clone();
    }
    if let Some(x) = r.expires_at {
        v["expires_at"] = json!(rfc3339(x));
    }
    if let Some(res) = &r.result {
        v["result"] = res.clone();
    }
    if let Some(err) = &r.error {
        v["error"] = err.clone();
    }
    v
}
