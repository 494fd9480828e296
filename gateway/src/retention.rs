//! Keeps the event log bounded: events older than `events.retention_days` are deleted, oldest
//! first, once every configured sink has relayed them. The log is also the outbox, so an event a
//! sink has not taken yet is kept whatever its age; the backend reading `/v1/events` instead of
//! a sink has `retention_days` to catch up.
//!
//! The same loop forgets handled Android Pub/Sub message ids older than `android.dedupe_days`
//! (a redelivery after that would be applied again; Pub/Sub keeps messages 7 days at most).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::AppState;
use crate::telemetry;

/// Events deleted per store call, so one sweep never holds the writer for long.
const BATCH: u32 = 5_000;

pub async fn run(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let days = state.config.events.retention_days;
    let every = Duration::from_secs(state.config.events.prune_interval_s);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if days > 0
            && let Err(e) = sweep(&state, days).await
        {
            tracing::warn!(error = %e, "event retention sweep failed");
        }
        if let Err(e) = sweep_pubsub_ids(&state).await {
            tracing::warn!(error = %e, "Pub/Sub message id retention sweep failed");
        }
    }
}

/// Forgets handled Pub/Sub message ids received more than `android.dedupe_days` ago.
pub async fn sweep_pubsub_ids(state: &AppState) -> crate::store::Result<u64> {
    let days = state.config.android.dedupe_days;
    let before = state.clock.unix().saturating_sub(i64::from(days) * 86_400);
    let mut total = 0;
    loop {
        let n = state.store.prune_pubsub_messages(before, BATCH).await?;
        total += n;
        if n < u64::from(BATCH) {
            break;
        }
    }
    if total > 0 {
        metrics::counter!(telemetry::ANDROID_PUBSUB_PRUNED).increment(total);
        tracing::info!(pruned = total, dedupe_days = days, "old Pub/Sub message ids forgotten");
    }
    Ok(total)
}

/// One sweep: deletes every event that is old enough and delivered to every sink.
pub async fn sweep(state: &AppState, days: u32) -> crate::store::Result<u64> {
    let cutoff = state.clock.unix().saturating_sub(i64::from(days) * 86_400);
    let older_than = uuid_v7_floor(cutoff);
    let mut below = i64::MAX;
    for sink in state.sinks.iter().filter(|s| s.is_relay()) {
        below = below.min(state.store.sink_cursor(sink.name).await?.saturating_add(1));
    }
    let mut total = 0;
    loop {
        let n = state.store.prune_events(&older_than, below, BATCH).await?;
        total += n;
        if n < u64::from(BATCH) {
            break;
        }
    }
    if total > 0 {
        metrics::counter!(telemetry::EVENTS_PRUNED).increment(total);
        tracing::info!(pruned = total, retention_days = days, "old events deleted from the log");
    }
    Ok(total)
}

/// The smallest UUIDv7 (canonical text) of the millisecond `unix_seconds` begins: every event id
/// made at or after that time sorts after it, every one made before sorts before it.
fn uuid_v7_floor(unix_seconds: i64) -> String {
    let ms = u64::try_from(unix_seconds).unwrap_or(0).saturating_mul(1000) & 0xFFFF_FFFF_FFFF;
    format!("{:08x}-{:04x}-7000-8000-000000000000", ms >> 16, ms & 0xFFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_orders_with_real_ids() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let id = crate::events::new_id();
        assert!(uuid_v7_floor(now - 1) < id, "an id made now is after a second ago");
        assert!(uuid_v7_floor(now + 1) > id, "and before a second from now");
        assert_eq!(uuid_v7_floor(0), "00000000-0000-7000-8000-000000000000");
        let parsed = uuid::Uuid::parse_str(&uuid_v7_floor(now)).expect("a valid UUID");
        let (secs, _) = parsed.get_timestamp().expect("v7 timestamp").to_unix();
        assert_eq!(secs as i64, now);
    }
}
