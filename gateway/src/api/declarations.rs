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
use crate::store::{
    CommandRecord, DeclarationsChange, Enrollment, EnrollmentState, NewCommand, StoreError, StoredDeclaration,
};

/// A refusal, small enough to pass around with `?`; turned into the reply at the end.
#[derive(Debug)]
enum Refusal {
    Http(StatusCode, &'static str, String),
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

impl Refusal {
    fn reply(self) -> Reply {
        match self {
            Refusal::Http(status, code, message) => json_error(status, code, &message),
            Refusal::Store(e) => store_error(e),
        }
    }
}

fn unprocessable(message: String) -> Refusal {
    Refusal::Http(StatusCode::UNPROCESSABLE_ENTITY, "invalid_declaration", message)
}

fn declaration_not_found(device: &DeviceId, identifier: &str) -> Refusal {
    Refusal::Http(StatusCode::NOT_FOUND, "declaration_not_found", format!("{device} has no declaration {identifier:?}"))
}

fn nopush(query: &str) -> bool {
    serde_urlencoded::from_str::<BTreeMap<String, String>>(query)
        .map(|q| q.get("nopush").is_some_and(|v| !v.is_empty() && v != "0" && v != "false"))
        .unwrap_or(false)
}

fn parse_device(id: &str) -> Result<DeviceId, Refusal> {
    id.parse().map_err(|e: mdm_core::DeviceIdError| {
        Refusal::Http(StatusCode::BAD_REQUEST, "invalid_device_id", e.to_string())
    })
}

/// The channel, which must exist and be Apple; for changes also not unenrolled.
async fn channel(state: &AppState, device: &DeviceId, for_change: bool) -> Result<Enrollment, Refusal> {
    let Some(e) = state.store.enrollment(device).await? else {
        return Err(Refusal::Http(StatusCode::NOT_FOUND, "device_not_found", format!("no device {device}")));
    };
    if device.platform() != Platform::Apple {
        let e = CommandError::UnsupportedOnPlatform { platform: device.platform(), command: "declarations" };
        return Err(Refusal::Http(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()));
    }
    if for_change && e.state == EnrollmentState::Unenrolled {
        return Err(Refusal::Http(StatusCode::CONFLICT, "device_unenrolled", format!("{device} is unenrolled")));
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
    async {
        let device = parse_device(id)?;
        channel(state, &device, false).await?;
        let set = state.store.declaration_set(&device).await?;
        let tokens = sync_tokens(&set);
        Ok(json(
            StatusCode::OK,
            &json!({
                "device_id": device,
                "declarations_token": tokens.declarations_token,
                "timestamp": tokens.timestamp,
                "declarations": set.declarations.iter().map(describe).collect::<Vec<_>>(),
            }),
        ))
    }
    .await
    .unwrap_or_else(Refusal::reply)
}

pub(super) async fn get(state: &AppState, id: &str, identifier: &str) -> Reply {
    async {
        let device = parse_device(id)?;
        channel(state, &device, false).await?;
        match state.store.declaration(&device, identifier).await? {
            Some(d) => Ok(json(StatusCode::OK, &describe(&d))),
            None => Err(declaration_not_found(&device, identifier)),
        }
    }
    .await
    .unwrap_or_else(Refusal::reply)
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
) -> Result<Option<(NewCommand, mdm_core::Event)>, Refusal> {
    let pending = state.store.pending(device, 64).await?;
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
    put_inner(state, id, identifier, body, query).await.unwrap_or_else(Refusal::reply)
}

async fn put_inner(state: &AppState, id: &str, identifier: &str, body: &[u8], query: &str) -> Result<Reply, Refusal> {
    let device = parse_device(id)?;
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Refusal::Http(StatusCode::BAD_REQUEST, "invalid_json", format!("request body is not JSON: {e}"))
    })?;
    let declaration = Declaration::from_json(value).map_err(|e| unprocessable(e.to_string()))?;
    if declaration.identifier != identifier {
        return Err(unprocessable(format!(
            "`Identifier` {:?} differs from the identifier in the path {identifier:?}",
            declaration.identifier
        )));
    }
    channel(state, &device, true).await?;
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
    if let Some(old) = state.store.declaration(&device, identifier).await?
        && old.server_token == stored.server_token
        && (old.body != stored.body || old.declaration_type != stored.declaration_type)
    {
        // The device fetches a declaration again only when its ServerToken changes.
        return Err(Refusal::Http(
            StatusCode::CONFLICT,
            "server_token_unchanged",
            "the declaration differs from the stored one but has the same ServerToken; devices would keep the old one"
                .into(),
        ));
    }
    change(state, &device, now, query, Change::Put(&stored)).await
}

pub(super) async fn delete(state: &AppState, id: &str, identifier: &str, query: &str) -> Reply {
    async {
        let device = parse_device(id)?;
        channel(state, &device, true).await?;
        let now = state.clock.unix();
        change(state, &device, now, query, Change::Delete(identifier)).await
    }
    .await
    .unwrap_or_else(Refusal::reply)
}

enum Change<'a> {
    Put(&'a StoredDeclaration),
    Delete(&'a str),
}

async fn change(
    state: &AppState,
    device: &DeviceId,
    now: i64,
    query: &str,
    what: Change<'_>,
) -> Result<Reply, Refusal> {
    let token = new_id();
    let sync = sync_command(state, device, now).await?;
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
        Change::Put(d) => state.store.put_declaration(d, change).await?,
        Change::Delete(i) => state.store.delete_declaration(device, i, change).await?,
    };
    if !changed {
        if let Change::Delete(i) = what {
            return Err(declaration_not_found(device, i));
        }
        // The same declaration again: nothing was written, nothing to tell the device.
        let current = sync_tokens(&state.store.declaration_set(device).await?).declarations_token;
        return Ok(json(
            StatusCode::OK,
            &json!({
                "device_id": device, "identifier": identifier, "changed": false,
                "declarations_token": current, "sync_command_id": null,
            }),
        ));
    }
    let pushed = !nopush(query);
    if pushed {
        state.pusher.wake(device.clone());
    }
    Ok(json(
        StatusCode::OK,
        &json!({
            "device_id": device,
            "identifier": identifier,
            "changed": true,
            "declarations_token": token,
            "sync_command_id": sync.map(|(c, _)| c.command_id),
            "push": pushed,
        }),
    ))
}
