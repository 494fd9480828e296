//! Command reports (`application/x-apple-aspen-mdm`): record the result, then hand out the next
//! command by the queue rules of `mdm_apple::queue`.

use http::StatusCode;
use mdm_apple::{QueueItem, QueueState, ReportStatus, Trigger};
use mdm_core::{CommandStatus, EventType};

use super::{REPORT_CONTENT_TYPE, Reject, check_bound, device_ids};
use crate::AppState;
use crate::http_util::{Reply, empty, with_type};
use crate::identity::DeviceIdentity;
use crate::store::{CommandUpdate, EnrollmentState};
use crate::telemetry;

/// How many queued commands are looked at per report; the rest wait their turn.
const QUEUE_WINDOW: u32 = 64;

pub(super) async fn handle(
    state: &AppState,
    identity: &DeviceIdentity,
    body: &[u8],
    now: i64,
) -> Result<(&'static str, Reply), Reject> {
    let report = mdm_apple::decode_report(body).map_err(|e| Reject::bad_request(e.reason(), e.to_string()))?;
    let (id, channel) = device_ids(&report.ids)?;
    // Both enrollments and the queue in one read: on an Idle check-in with nothing due, that
    // read is all the store work the request does.
    let snapshot = state.store.request_snapshot(&channel, &id, QUEUE_WINDOW).await?;
    let parent = check_bound(state, identity, &channel, snapshot.channel, now).await?;
    let mut enrollment = if id == channel {
        parent
    } else {
        snapshot
            .user
            .ok_or_else(|| Reject::bad_request("not_enrolled", format!("user channel {id} has no TokenUpdate")))?
    };
    if enrollment.state != EnrollmentState::Enrolled {
        return Err(Reject::bad_request("not_enrolled", format!("{id} is {}", enrollment.state.as_str())));
    }
    let kind = status_label(&report.status);

    // 1. The device was seen. Throttled so that idle check-ins cost no writes most of the time.
    let interval = state.config.apple.checked_in_event_interval_s as i64;
    let due_event = enrollment.checked_in_event_at.is_none_or(|t| now - t >= interval);
    if due_event {
        let event = state.events.with_raw(
            EventType::DEVICE_CHECKED_IN,
            &id,
            None,
            serde_json::json!({ "status": report.status.as_str() }),
            REPORT_CONTENT_TYPE,
            body,
        );
        enrollment.checked_in_event_at = Some(now);
        enrollment.last_seen = Some(now);
        enrollment.updated_at = now;
        state.store.save_enrollment(&enrollment, &[event]).await?;
    } else if enrollment.last_seen.is_none_or(|t| now - t >= state.config.apple.last_seen_resolution_s as i64) {
        state.store.touch(&id, now).await?;
    }

    // 2. The result of the command the device just worked on.
    if report.status != ReportStatus::Idle
        && let Some(uuid) = &report.command_uuid
    {
        record_result(state, &mut enrollment, &report, uuid, body, now).await?;
    }

    // 3. The next command. Nothing above changed the queue unless a result was recorded.
    let pending = if report.status == ReportStatus::Idle {
        snapshot.pending
    } else {
        state.store.pending(&id, QUEUE_WINDOW).await?
    };
    let items: Vec<QueueItem> = pending
        .iter()
        .filter_map(|c| {
            let queue_state = match c.status {
                CommandStatus::Queued => QueueState::Queued,
                CommandStatus::Sent => QueueState::Sent,
                CommandStatus::NotNow => QueueState::NotNow,
                _ => return None,
            };
            Some(QueueItem {
                command_id: c.command_id.clone(),
                priority: c.priority,
                seq: c.seq,
                state: queue_state,
                expires_at: c.expires_at,
            })
        })
        .collect();
    let trigger = if report.status == ReportStatus::Idle { Trigger::Idle } else { Trigger::Report };
    let selection = mdm_apple::select_next(&items, trigger, now);
    for expired in &selection.expired {
        if let Some(record) = pending.iter().find(|c| &c.command_id == expired) {
            crate::expiry::expire(state, record, now).await?;
        }
    }
    let Some(next_id) = selection.next else {
        return Ok((kind, empty(StatusCode::OK)));
    };
    let Some(next) = pending.iter().find(|c| c.command_id == next_id) else {
        return Ok((kind, empty(StatusCode::OK)));
    };
    let event = state.events.event(
        EventType::COMMAND_SENT,
        &id,
        Some(&next.command_id),
        serde_json::json!({ "request_type": next.request_type, "attempt": next.sent_count + 1 }),
    );
    let applied = state
        .store
        .update_command(
            CommandUpdate {
                device_id: &id,
                command_id: &next.command_id,
                from: &[CommandStatus::Queued, CommandStatus::Sent, CommandStatus::NotNow],
                to: CommandStatus::Sent,
                result: None,
                error: None,
                now,
            },
            &[event],
        )
        .await?;
    if !applied {
        // Finished or expired by someone else meanwhile; the device asks again after this reply.
        return Ok((kind, empty(StatusCode::OK)));
    }
    Ok((kind, with_type(StatusCode::OK, "application/xml", next.payload.clone())))
}

async fn record_result(
    state: &AppState,
    enrollment: &mut crate::store::Enrollment,
    report: &mdm_apple::CommandReport,
    uuid: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Reject> {
    let id = enrollment.device_id.clone();
    let Some(record) = state.store.command_for_device(&id, uuid).await? else {
        tracing::warn!(device_id = %id, command_uuid = uuid, status = report.status.as_str(), "report for a command this gateway did not queue");
        return Ok(());
    };
    if record.status.is_final() {
        tracing::info!(device_id = %id, command_uuid = uuid, "repeated report for a finished command ignored");
        return Ok(());
    }
    let (to, event_type) = match &report.status {
        ReportStatus::Acknowledged => (CommandStatus::Acknowledged, EventType::COMMAND_ACKNOWLEDGED),
        ReportStatus::NotNow => (CommandStatus::NotNow, EventType::COMMAND_NOT_NOW),
        ReportStatus::Error | ReportStatus::CommandFormatError | ReportStatus::Unknown(_) => {
            (CommandStatus::Error, EventType::COMMAND_ERROR)
        }
        ReportStatus::Idle => return Ok(()),
    };
    let mut data = report.event_data();
    if let Some(obj) = data.as_object_mut() {
        obj.insert("request_type".into(), record.request_type.clone().into());
    }
    let (result, error) = match to {
        CommandStatus::Acknowledged => (Some(data.clone()), None),
        CommandStatus::Error => (None, Some(data.clone())),
        _ => (None, None),
    };
    let event = state.events.with_raw(event_type, &id, Some(uuid), data, REPORT_CONTENT_TYPE, body);
    let applied = state
        .store
        .update_command(
            CommandUpdate {
                device_id: &id,
                command_id: uuid,
                from: &[CommandStatus::Queued, CommandStatus::Sent, CommandStatus::NotNow],
                to,
                result,
                error,
                now,
            },
            &[event],
        )
        .await?;
    if !applied {
        return Ok(());
    }
    metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "apple", "status" => to.as_str()).increment(1);
    if to == CommandStatus::Acknowledged
        && let Some(inv) = report.inventory(&record.request_type).filter(|i| !i.is_empty())
    {
        let mut events = Vec::new();
        super::checkin::merge_inventory(state, enrollment, &inv, &mut events);
        enrollment.updated_at = now;
        state.store.save_enrollment(enrollment, &events).await?;
    }
    Ok(())
}

fn status_label(s: &ReportStatus) -> &'static str {
    match s {
        ReportStatus::Acknowledged => "Acknowledged",
        ReportStatus::Error => "Error",
        ReportStatus::CommandFormatError => "CommandFormatError",
        ReportStatus::Idle => "Idle",
        ReportStatus::NotNow => "NotNow",
        ReportStatus::Unknown(_) => "Unknown",
    }
}
