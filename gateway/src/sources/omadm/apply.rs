//! The effects of one session step, recorded in the store with their events: the check-in and
//! DevInfo of a new session, commands sent and finished (with inventory from their results),
//! unenrollment. Alerts are returned, to be saved with the session itself.
//!
//! Each store call is its own transaction. If the gateway stops half-way, the session is not
//! saved, the device sends the message again and it is handled again: command updates are
//! compare-and-set, so a command finishes once and its event is not repeated; a `command.sent`
//! or `device.checked_in` may be.

use mdm_core::{CommandStatus, DeviceId, Event, EventType, Inventory};
use mdm_windows::syncml::{self, Effect, Step, SyncMl};
use serde_json::json;

use super::Reject;
use crate::AppState;
use crate::expiry::EXPIRABLE;
use crate::store::{CommandRecord, CommandUpdate, Enrollment, EnrollmentState};
use crate::telemetry;

/// Attribute holding DevInfo/DevDetail node values as the device reported them.
pub(super) const ATTR_NODES: &str = "windows_nodes";

fn is_tree_info(uri: &str) -> bool {
    uri.starts_with("./DevInfo/") || uri.starts_with("./DevDetail/")
}

/// Merges node values into the enrollment (normalised inventory and raw nodes); pushes a
/// `device.inventory` event when the inventory changed. Returns whether anything changed.
fn merge_nodes(state: &AppState, e: &mut Enrollment, nodes: &[(String, String)], events: &mut Vec<Event>) -> bool {
    let inv: Inventory = syncml::inventory_from_nodes(nodes.iter().map(|(u, v)| (u.as_str(), v.as_str())));
    let mut changed = false;
    let raw = e.attributes.entry(ATTR_NODES).or_insert_with(|| json!({}));
    if let Some(map) = raw.as_object_mut() {
        for (uri, value) in nodes.iter().filter(|(u, _)| is_tree_info(u)) {
            if map.get(uri).and_then(|v| v.as_str()) != Some(value.as_str()) {
                map.insert(uri.clone(), value.clone().into());
                changed = true;
            }
        }
    }
    if !inv.is_empty() {
        let before = e.inventory.clone();
        e.inventory.merge(&inv);
        if e.inventory != before {
            changed = true;
            let data = serde_json::to_value(&e.inventory).unwrap_or_default();
            events.push(state.events.event(EventType::DEVICE_INVENTORY, &e.device_id, None, data));
        }
    }
    changed
}

pub(super) async fn effects(
    state: &AppState,
    id: &DeviceId,
    msg: &SyncMl,
    body: &[u8],
    pending: &[CommandRecord],
    step: &Step,
    now: i64,
) -> Result<Vec<Event>, Reject> {
    let session_id = &msg.hdr.session_id;
    let raw = |t: EventType, command_id: Option<&str>, data: serde_json::Value| {
        state.events.with_raw(t, id, command_id, data, syncml::CONTENT_TYPE, body)
    };
    let mut session_events = Vec::new();

    // 1. The check-in and what the device says about itself.
    let started = step.effects.iter().find_map(|e| match e {
        Effect::SessionStarted { alert, login_status } => Some((alert, login_status)),
        _ => None,
    });
    let devinfo: Vec<(String, String)> = step
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeviceInfo { nodes } => Some(nodes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    if started.is_some() || !devinfo.is_empty() {
        let mut enrollment =
            state.store.enrollment(id).await?.ok_or_else(|| Reject::internal(format!("{id} disappeared")))?;
        let mut events = Vec::new();
        if let Some((alert, login_status)) = started {
            events.push(raw(
                EventType::DEVICE_CHECKED_IN,
                None,
                json!({ "session_id": session_id, "alert": alert.0, "login_status": login_status }),
            ));
            enrollment.last_seen = Some(now);
            enrollment.checked_in_event_at = Some(now);
        }
        merge_nodes(state, &mut enrollment, &devinfo, &mut events);
        enrollment.updated_at = now;
        state.store.save_enrollment(&enrollment, &events).await?;
    }

    // 2. Commands: results first, then what went out.
    let mut inventory_nodes: Vec<(String, String)> = Vec::new();
    for e in &step.effects {
        match e {
            Effect::Finished { command_id, ok, data, nodes } => {
                let (to, t) = if *ok {
                    (CommandStatus::Acknowledged, EventType::COMMAND_ACKNOWLEDGED)
                } else {
                    (CommandStatus::Error, EventType::COMMAND_ERROR)
                };
                let mut data = data.clone();
                data["session_id"] = session_id.clone().into();
                let event = raw(t, Some(command_id), data.clone());
                let (result, error) = if *ok { (Some(data), None) } else { (None, Some(data)) };
                let applied = state
                    .store
                    .update_command(
                        CommandUpdate { device_id: id, command_id, from: EXPIRABLE, to, result, error, now },
                        &[event],
                    )
                    .await?;
                if applied {
                    metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "windows", "status" => to.as_str())
                        .increment(1);
                    if *ok {
                        inventory_nodes.extend(nodes.iter().cloned());
                    }
                }
            }
            Effect::Sent { command_id } => {
                let Some(record) = pending.iter().find(|c| &c.command_id == command_id) else { continue };
                let event = state.events.event(
                    EventType::COMMAND_SENT,
                    id,
                    Some(command_id),
                    json!({ "request_type": record.request_type, "attempt": record.sent_count + 1, "session_id": session_id }),
                );
                state
                    .store
                    .update_command(
                        CommandUpdate {
                            device_id: id,
                            command_id,
                            from: EXPIRABLE,
                            to: CommandStatus::Sent,
                            result: None,
                            error: None,
                            now,
                        },
                        &[event],
                    )
                    .await?;
            }
            Effect::Alert { code, items } => session_events.push(raw(
                syncml::DEVICE_ALERT,
                None,
                json!({ "session_id": session_id, "alert": code.0, "items": items }),
            )),
            Effect::Aborted => {
                tracing::info!(device_id = %id, session_id = %session_id, "device aborted the OMA-DM session")
            }
            Effect::SessionStarted { .. } | Effect::DeviceInfo { .. } | Effect::Unenrolled { .. } => {}
        }
    }
    if !inventory_nodes.is_empty() {
        let mut enrollment =
            state.store.enrollment(id).await?.ok_or_else(|| Reject::internal(format!("{id} disappeared")))?;
        let mut events = Vec::new();
        if merge_nodes(state, &mut enrollment, &inventory_nodes, &mut events) {
            enrollment.updated_at = now;
            state.store.save_enrollment(&enrollment, &events).await?;
        }
    }

    // 3. Unenrollment, last: the device stays reachable for this message's results.
    for e in &step.effects {
        if let Effect::Unenrolled { items } = e {
            let event = raw(
                EventType::DEVICE_UNENROLLED,
                None,
                json!({ "session_id": session_id, "reason": "user_request", "items": items }),
            );
            state.store.set_state_with_children(id, EnrollmentState::Unenrolled, now, &[event]).await?;
        }
    }
    Ok(session_events)
}
