//! Expires commands whose `expires_at` has passed even when their device never checks in
//! again, so the backend hears `command.expired` on time. Devices that do check in have their
//! expired commands handled on the spot by the source (the same store call, guarded by status).

use std::sync::Arc;
use std::time::Duration;

use mdm_core::{CommandStatus, EventType};
use tokio::sync::watch;

use crate::AppState;
use crate::store::{CommandRecord, CommandUpdate};

const SWEEP_EVERY: Duration = Duration::from_secs(5);
const BATCH: u32 = 500;

/// Statuses a command can expire from.
pub const EXPIRABLE: &[CommandStatus] = &[CommandStatus::Queued, CommandStatus::Sent, CommandStatus::NotNow];

pub async fn run(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let now = state.clock.unix();
        match state.store.due_for_expiry(now, BATCH).await {
            Ok(due) => {
                for record in due {
                    if let Err(e) = expire(&state, &record, now).await {
                        tracing::warn!(command_id = %record.command_id, error = %e, "cannot expire command");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}

/// Marks one command expired and records `command.expired`, unless it already reached a final
/// status meanwhile.
pub async fn expire(state: &AppState, record: &CommandRecord, now: i64) -> crate::store::Result<bool> {
    let event = state.events.event(
        EventType::COMMAND_EXPIRED,
        &record.device_id,
        Some(&record.command_id),
        serde_json::json!({
            "request_type": record.request_type,
            "expires_at": record.expires_at.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()).and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        }),
    );
    let applied = state
        .store
        .update_command(
            CommandUpdate {
                device_id: &record.device_id,
                command_id: &record.command_id,
                from: EXPIRABLE,
                to: CommandStatus::Expired,
                result: None,
                error: None,
                now,
            },
            std::slice::from_ref(&event),
        )
        .await?;
    if applied {
        metrics::counter!(crate::telemetry::COMMAND_RESULTS, "platform" => record.device_id.platform().as_str(), "status" => "expired").increment(1);
    }
    Ok(applied)
}
