//! Declarative management declarations per channel: `GET /v1/devices/{id}/declarations`,
//! `GET|PUT|DELETE /v1/devices/{id}/declarations/{identifier}`.
//!
//! A change (a new or different declaration, a deletion) gives the channel a new
//! `DeclarationsToken` and queues a `DeclarativeManagement` command without `Data`, in the same
//! transaction as the change and its events, then pushes the device unless `?nopush=1`. The
//! command makes the device fetch the current tokens itself, so it is never misled by tokens
//! that changed again while the command waited; one such command still queued is enough for any
//! number of changes, so no second one is added.

use std::collections::BTreeMap;

use http::StatusCode;
use mdm_apple::ddm::Declaration;
use mdm_apple::request_type::DECLARATIVE_MANAGEMENT;
use mdm_core::{CommandError, CommandStatus, DeviceId, EventType, Platform};
use serde_json::{Value, json};

use super::{rfc3339, store_error};
use crate::AppState;
use crate::events::new_id;
use crate::http_util::{Reply, json, json_error};
use crate::sources::apple::sync_tokens;
use crate::store::{CommandRecord, DeclarationsChange, Enrollment, EnrollmentState, NewCommand, StoredDeclaration};

fn unprocessable(message: &str) -> Reply {
    json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_declaration", message)
}

fn nopush(query: &str) -> bool {
    serde_urlencoded::from_str::<BTreeMap<String, String>>(query)
        .map(|q| q.get("nopush").is_some_and(|v| !v.is_empty() && v != "0" && v != "false"))
        .unwrap_or(false)
}

fn parse_device(id: &str) -> Result<DeviceId, Reply> {
    id.parse()
        .map_err(|e: mdm_core::DeviceIdError| json_error(StatusCode::BAD_REQUEST, "invalid_device_id", &e.to_string()))
}

/// The channel, which must exist; for changes also Apple and not unenrolled.
async fn channel(state: &AppState, device: &DeviceId, for_change: bool) -> Result<Enrollment, Reply> {
    let e = match state.store.enrollment(device).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            return Err(json_error(StatusCode::NOT_FOUND, "device_not_found", &format!("no device {device}")));
        }
        Err(e) => return Err(store_error(e)),
    };
    if device.platform() != Platform::Apple {
        let e = CommandError::UnsupportedOnPlatform { platform: device.platform(), command: "declarations" };
        return Err(json_error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), &e.to_string()));
    }
    if for_change && e.state == EnrollmentState::Unenrolled {
        return Err(json_error(StatusCode::CONFLICT, "device_unenrolled", &format!("{device} is unenrolled")));
    }
    Ok(e)
}

fn describe(d: &StoredDeclaration) -> Value {
    json!({
        "identifier": d.identifier,
        "type": d.declaration_type,
        "server_token": d.server_token,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
        "declaration": serde_json::from_str::<Value>(&d.body).unwrap_or(Value::Null),
    })
}

pub(super) async fn list(state: &AppState, id: &str) -> Reply {
    let device = match parse_device(id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Err(r) = channel(state, &device, false).await {
        return r;
    }
    let set = match state.store.declaration_set(&device).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let tokens = sync_tokens(&set);
    json(
        StatusCode::OK,
        &json!({
            "device_id": device,
            "declarations_token": tokens.declarations_token,
            "timestamp": tokens.timestamp,
            "declarations": set.declarations.iter().map(describe).collect::<Vec<_>>(),
        }),
    )
}

pub(super) async fn get(state: &AppState, id: &str, identifier: &str) -> Reply {
    let device = match parse_device(id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Err(r) = channel(state, &device, false).await {
        return r;
    }
    match state.store.declaration(&device, identifier).await {
        Ok(Some(d)) => json(StatusCode::OK, &describe(&d)),
        Ok(None) => not_found(&device, identifier),
        Err(e) => store_error(e),
    }
}

fn not_found(device: &DeviceId, identifier: &str) -> Reply {
    json_error(StatusCode::NOT_FOUND, "declaration_not_found", &format!("{device} has no declaration {identifier:?}"))
}

/// A `DeclarativeManagement` command without `Data` that the device has not fetched yet.
fn is_waiting_sync(c: &CommandRecord) -> bool {
    c.request_type == DECLARATIVE_MANAGEMENT
        && matches!(c.status, CommandStatus::Queued | CommandStatus::NotNow)
        && plist::from_bytes::<plist::Dictionary>(&c.payload)
            .ok()
            .and_then(|d| d.get("Command")?.as_dictionary().map(|c| !c.contains_key("Data")))
            .unwrap_or(false)
}

/// The sync command to queue with a change, and its event; none when one is already waiting.
async fn sync_command(
    state: &AppState,
    device: &DeviceId,
    now: i64,
) -> Result<Option<(NewCommand, mdm_core::Event)>, Reply> {
    let pending = state.store.pending(device, 64).await.map_err(store_error)?;
    if pending.iter().any(is_waiting_sync) {
        return Ok(None);
    }
    let command_id = new_id();
    let c = mdm_apple::declarative_management_command(&command_id, None);
    let event = state.events.event(
        EventType::COMMAND_QUEUED,
        device,
        Some(&command_id),
        json!({ "type": "raw", "request_type": c.request_type, "via": "declarations" }),
    );
    let command = NewCommand {
        command_id,
        device_id: device.clone(),
        request_type: c.request_type,
        normalised: None,
        payload: c.plist,
        priority: 0,
        expires_at: None,
        idempotency_key: None,
        created_at: now,
    };
    Ok(Some((command, event)))
}

pub(super) async fn put(state: &AppState, id: &str, identifier: &str, body: &[u8], query: &str) -> Reply {
    let device = match parse_device(id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return json_error(StatusCode::BAD_REQUEST, "invalid_json", &format!("request body is not JSON: {e}"));
        }
    };
    let declaration = match Declaration::from_json(value) {
        Ok(d) => d,
        Err(e) => return unprocessable(&e.to_string()),
    };
    if declaration.identifier != identifier {
        return unprocessable(&format!(
            "`Identifier` {:?} differs from the identifier in the path {identifier:?}",
            declaration.identifier
        ));
    }
    if let Err(r) = channel(state, &device, true).await {
        return r;
    }
    let now = state.clock.unix();
    let stored = StoredDeclaration {
        device_id: device.clone(),
        identifier: declaration.identifier.clone(),
        declaration_type: declaration.declaration_type.clone(),
        server_token: declaration.server_token.clone(),
        body: String::from_utf8(declaration.to_bytes()).unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    match state.store.declaration(&device, identifier).await {
        Ok(Some(old))
            if old.server_token == stored.server_token
                && (old.body != stored.body || old.declaration_type != stored.declaration_type) =>
        {
            // The device fetches a declaration again only when its ServerToken changes.
            return json_error(
                StatusCode::CONFLICT,
                "server_token_unchanged",
                "the declaration differs from the stored one but has the same ServerToken; devices would keep the old one",
            );
        }
        Ok(_) => {}
        Err(e) => return store_error(e),
    }
    change(state, &device, now, query, Change::Put(&stored)).await
}

pub(super) async fn delete(state: &AppState, id: &str, identifier: &str, query: &str) -> Reply {
    let device = match parse_device(id) {
        Ok(d) => d,
        Err(r) => return r,
    };
    if let Err(r) = channel(state, &device, true).await {
        return r;
    }
    let now = state.clock.unix();
    change(state, &device, now, query, Change::Delete(identifier)).await
}

enum Change<'a> {
    Put(&'a StoredDeclaration),
    Delete(&'a str),
}

async fn change(state: &AppState, device: &DeviceId, now: i64, query: &str, what: Change<'_>) -> Reply {
    let token = new_id();
    let sync = match sync_command(state, device, now).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (action, identifier, details) = match &what {
        Change::Put(d) => {
            ("put", d.identifier.as_str(), json!({ "type": d.declaration_type, "server_token": d.server_token }))
        }
        Change::Delete(i) => ("delete", *i, json!({})),
    };
    let mut data = json!({ "action": action, "identifier": identifier, "declarations_token": token });
    if let (Some(obj), Value::Object(more)) = (data.as_object_mut(), details) {
        obj.extend(more);
    }
    let mut events = vec![state.events.event(EventType::DEVICE_DECLARATIONS_CHANGED, device, None, data)];
    let mut commands = Vec::new();
    if let Some((c, e)) = sync.clone() {
        commands.push(c);
        events.push(e);
    }
    let change = DeclarationsChange { token: &token, now, commands: &commands, events: &events };
    let changed = match &what {
        Change::Put(d) => state.store.put_declaration(d, change).await,
        Change::Delete(i) => state.store.delete_declaration(device, i, change).await,
    };
    let changed = match changed {
        Ok(c) => c,
        Err(e) => return store_error(e),
    };
    if !changed {
        if let Change::Delete(i) = what {
            return not_found(device, i);
        }
        // The same declaration again: nothing was written, nothing to tell the device.
        let current = match state.store.declaration_set(device).await {
            Ok(s) => sync_tokens(&s).declarations_token,
            Err(e) => return store_error(e),
        };
        return json(
            StatusCode::OK,
            &json!({ "device_id": device, "identifier": identifier, "changed": false, "declarations_token": current, "sync_command_id": null }),
        );
    }
    let pushed = !nopush(query);
    if pushed {
        state.pusher.wake(device.clone());
    }
    json(
        StatusCode::OK,
        &json!({
            "device_id": device,
            "identifier": identifier,
            "changed": true,
            "declarations_token": token,
            "sync_command_id": sync.map(|(c, _)| c.command_id),
            "push": pushed,
        }),
    )
}
