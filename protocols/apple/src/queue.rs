//! Which queued command to send next, as a pure function of the queue, the trigger and `now`.
//!
//! Rules:
//! - Order by priority (higher first), then age (smaller `seq` first), then id for determinism.
//! - An item whose `expires_at` has come (`now >= expires_at`) is never sent and is listed in
//!   [`Selection::expired`], whatever its state, so the caller can mark it expired.
//! - A `NotNow` item is skipped while the device is busy (the report that triggered this fetch
//!   was not Idle), and is eligible again once the device reports Idle. This keeps a device that
//!   just said NotNow from being handed the same command in a loop within one session.
//!   (NanoMDM skips NotNow items only when the triggering report is itself NotNow; this rule is
//!   stricter and waits for the device's next session, which always starts with Idle.)
//! - A `Sent` item that was never answered stays eligible and is sent again: the device may have
//!   lost the response, and Apple devices handle a repeated CommandUUID.
//!
//! This module stores nothing and reads no clock; the gateway owns the queue and passes `now`.

use serde::{Deserialize, Serialize};

use crate::ReportStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    Queued,
    Sent,
    NotNow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    pub command_id: String,
    pub priority: i32,
    /// Age order: smaller is older.
    pub seq: i64,
    pub state: QueueState,
    /// Unix seconds.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// The command to send now, if any.
    pub next: Option<String>,
    /// Commands that expired, in send order; never sent.
    pub expired: Vec<String>,
}

/// What made the device ask for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The device reported Idle: the start of a session.
    Idle,
    /// Any other report (Acknowledged, Error, NotNow, an unknown status …).
    Report,
}

impl Trigger {
    pub fn from_status(status: &ReportStatus) -> Self {
        match status {
            ReportStatus::Idle => Trigger::Idle,
            _ => Trigger::Report,
        }
    }
}

pub fn select_next(items: &[QueueItem], trigger: Trigger, now: i64) -> Selection {
    let mut order: Vec<&QueueItem> = items.iter().collect();
    order.sort_by(|a, b| {
        b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)).then_with(|| a.command_id.cmp(&b.command_id))
    });
    let mut sel = Selection::default();
    for item in order {
        if item.expires_at.is_some_and(|t| now >= t) {
            sel.expired.push(item.command_id.clone());
            continue;
        }
        if sel.next.is_some() {
            continue;
        }
        let eligible = match item.state {
            QueueState::Queued | QueueState::Sent => true,
            QueueState::NotNow => trigger == Trigger::Idle,
        };
        if eligible {
            sel.next = Some(item.command_id.clone());
        }
    }
    sel
}
