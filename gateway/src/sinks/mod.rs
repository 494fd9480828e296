//! Delivery of the event log to sinks. The log in the store is the outbox: each sink keeps a
//! cursor, delivers events in order and moves its cursor only after the sink accepted the
//! event. A sink that is down delays delivery; it never loses an event. Delivery is at least
//! once (a crash between delivery and cursor write repeats one event; its `id` is stable).
//!
//! The embedded log needs no relay: `/v1/events` reads the store directly.
//!
//! With several instances on one store, one relay per sink runs, on the instance holding the
//! sink's lease (`relay:<sink>`, see [`crate::cluster`]); its cursor writes are fenced by that
//! lease, and it stops at once when it loses it. The instance that takes over starts from the
//! cursor, so an event is sent twice at most when a holder dies between delivery and cursor
//! write (as after a crash of a single instance).

pub mod micromdm;
pub mod nats;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use crate::AppState;
use crate::cluster::Leased;
use crate::store::LoggedEvent;
use crate::telemetry;

/// A destination for events.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// Delivers one event; an error means "try again later".
    async fn deliver(&self, event: &LoggedEvent) -> Result<(), String>;
    /// Longest pause between retries.
    fn max_backoff(&self) -> Duration;
    /// Delivers `events` in order and returns how many of them, from the front, the sink
    /// accepted; with an error, the rest are tried again later. Sinks that can keep several
    /// deliveries in flight (NATS) override it; the default delivers one at a time.
    async fn deliver_batch(&self, events: &[LoggedEvent]) -> (usize, Result<(), String>) {
        for (i, event) in events.iter().enumerate() {
            if let Err(e) = self.deliver(event).await {
                return (i, Err(e));
            }
        }
        (events.len(), Ok(()))
    }
}

/// What `/readyz` and `/metrics` report about a sink.
#[derive(Debug, Serialize)]
pub struct SinkHealth {
    pub name: &'static str,
    #[serde(skip)]
    failing: AtomicBool,
    #[serde(skip)]
    cursor: AtomicI64,
    /// False for an intake (NATS commands): it has no cursor in the event log, so retention
    /// does not wait for it.
    #[serde(skip)]
    relay: bool,
}

impl SinkHealth {
    pub fn new(name: &'static str) -> Self {
        SinkHealth { name, failing: AtomicBool::new(false), cursor: AtomicI64::new(0), relay: true }
    }

    /// Health of an intake (the NATS command consumer); its cursor is the last stream sequence
    /// it handled.
    pub fn intake(name: &'static str) -> Self {
        SinkHealth { relay: false, ..SinkHealth::new(name) }
    }

    /// Whether this is a relay of the event log (retention waits for its cursor).
    pub fn is_relay(&self) -> bool {
        self.relay
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// For components that are not relays (the NATS command intake).
    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    pub(crate) fn set_cursor(&self, cursor: i64) {
        self.cursor.store(cursor, Ordering::Relaxed);
    }
}

const BATCH: u32 = 256;
const IDLE_POLL: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Runs one sink under `lease` until shutdown; after shutdown it keeps delivering what is
/// already in the log for at most `grace`. Returns at once when a cursor write finds the lease
/// gone.
pub async fn relay(
    state: Arc<AppState>,
    sink: Arc<dyn Sink>,
    health: Arc<SinkHealth>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    lease: Leased,
) {
    let name = sink.name();
    let mut cursor = loop {
        match state.store.sink_cursor(name).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(sink = name, error = %e, "cannot read sink cursor; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    health.cursor.store(cursor, Ordering::Relaxed);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if deadline.is_none() && *shutdown.borrow() {
            deadline = Some(tokio::time::Instant::now() + grace);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            tracing::warn!(sink = name, cursor, "grace period over; undelivered events stay in the log");
            return;
        }
        // Register interest before reading, so an append between the read and the wait wakes us.
        let notified = state.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch = match state.store.events_after(cursor, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(sink = name, error = %e, "cannot read event log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Ok(last) = state.store.last_event_seq().await {
            metrics::gauge!(telemetry::SINK_LAG, "sink" => name).set((last - cursor).max(0) as f64);
        }
        if batch.is_empty() {
            if deadline.is_some() {
                tracing::info!(sink = name, cursor, "sink flushed");
                return;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let mut pos = 0;
        let mut backoff = FIRST_BACKOFF;
        while pos < batch.len() {
            let (accepted, result) = sink.deliver_batch(&batch[pos..]).await;
            let accepted = accepted.min(batch.len() - pos);
            if accepted > 0 {
                pos += accepted;
                cursor = batch[pos - 1].seq;
                health.cursor.store(cursor, Ordering::Relaxed);
                metrics::counter!(telemetry::SINK_DELIVERED, "sink" => name).increment(accepted as u64);
                backoff = FIRST_BACKOFF;
                match state.store.set_sink_cursor_leased(name, cursor, &lease.name, &lease.holder).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Another instance relays now, from the cursor last saved here.
                        tracing::warn!(sink = name, cursor, "relay lease lost: stopping; another instance relays");
                        return;
                    }
                    // The events were delivered; failing to record it only means they may be sent again.
                    Err(e) => tracing::warn!(sink = name, error = %e, "cannot save sink cursor"),
                }
            }
            let error = match result {
                Ok(()) if accepted > 0 || pos == batch.len() => {
                    health.failing.store(false, Ordering::Relaxed);
                    continue;
                }
                Ok(()) => "the sink accepted none of the events".to_owned(),
                Err(e) => e,
            };
            health.failing.store(true, Ordering::Relaxed);
            metrics::counter!(telemetry::SINK_FAILURES, "sink" => name).increment(1);
            tracing::warn!(sink = name, seq = batch.get(pos).map_or(cursor, |e| e.seq), error = %error, retry_in_ms = backoff.as_millis() as u64, "delivery failed");
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        tracing::warn!(sink = name, cursor, "grace period over; undelivered events stay in the log");
                        return;
                    }
                    backoff.min(left)
                }
                None => backoff,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
            }
            backoff = (backoff * 2).min(sink.max_backoff());
        }
    }
}
