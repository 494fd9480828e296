//! One authenticated push body → store: decode, normalise, apply once, in order.
//!
//! - **Permanently bad** (not a push envelope, bad base64, a payload that is not the resource
//!   its type promises, a resource name that gives no device): recorded as a dead letter (and
//!   its message id as handled), answered 2xx so Pub/Sub stops redelivering.
//! - **Temporary** (a store error): the caller answers 503 and Pub/Sub redelivers.
//! - Otherwise the notification is applied with [`Store::apply_pubsub`]: deduplicated by
//!   message id, and for `ENROLLMENT`/`STATUS_REPORT` ordered per device by publish time (an
//!   older notification than the newest applied one is recorded as stale and not applied).
//!
//! A device's notifications are handled one at a time within the process (a sharded lock on the
//! device id), so reading the stored enrollment, merging and writing it back never interleave;
//! between instances, the store's watermark keeps the newest state.
//!
//! Work is done only when it can matter: a device notification is normalised once
//! ([`device_report`]), then one read ([`Store::pubsub_view`]) says whether the message was
//! handled before (answered at once), whether it is older than the device's newest (recorded as
//! stale, nothing built) and what the stored enrollment is; the enrollment is written only as far
//! as the merge changed it ([`EnrollmentWrite::diff`]); the notification goes into the events as
//! `raw` once per message, in the base64 it arrived in.
//!
//! [`Store::apply_pubsub`]: crate::store::Store::apply_pubsub
//! [`Store::pubsub_view`]: crate::store::Store::pubsub_view

use std::hash::{Hash, Hasher};

use mdm_android::amapi::{Device, Operation};
use mdm_android::{DecodeError, DeviceReport, Emission, Notification, NotificationType, PushMessage, device_report};
use mdm_core::{CommandStatus, DeviceId, Event, EventType, Platform};
use serde_json::Value as Json;
use tokio::sync::{Mutex, MutexGuard};

use crate::AppState;
use crate::android::device_policy;
use crate::enrollment_gate::{self, EnrollmentFacts, Ownership};
use crate::store::{
    CommandUpdate, DeadLetter, Enrollment, EnrollmentState, EnrollmentWrite, PubSubDelivery, PubSubOutcome, StoreError,
};
use crate::telemetry;

/// Lock shards: enough that unrelated devices rarely wait for each other.
const SHARDS: usize = 256;

/// Per-device serialisation of notification handling.
pub(crate) struct DeviceLocks {
    shards: Vec<Mutex<()>>,
}

impl std::fmt::Debug for DeviceLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLocks").field("shards", &self.shards.len()).finish()
    }
}

impl DeviceLocks {
    pub(crate) fn new() -> Self {
        DeviceLocks { shards: (0..SHARDS).map(|_| Mutex::new(())).collect() }
    }

    async fn lock(&self, id: &DeviceId) -> MutexGuard<'_, ()> {
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        self.shards[(h.finish() % SHARDS as u64) as usize].lock().await
    }
}

/// What became of one push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    Applied,
    Duplicate,
    Stale,
    DeadLetter,
}

impl Handled {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Handled::Applied => "applied",
            Handled::Duplicate => "duplicate",
            Handled::Stale => "stale",
            Handled::DeadLetter => "dead_letter",
        }
    }
}

impl From<PubSubOutcome> for Handled {
    fn from(o: PubSubOutcome) -> Self {
        match o {
            PubSubOutcome::Applied => Handled::Applied,
            PubSubOutcome::Duplicate => Handled::Duplicate,
            PubSubOutcome::Stale => Handled::Stale,
        }
    }
}

/// The `type` metric label: AMAPI's notification type, `other` for types this build does not
/// know, `unknown` when the envelope could not be read.
fn type_label(t: Option<&NotificationType>) -> &'static str {
    match t {
        None => "unknown",
        Some(NotificationType::Enrollment) => "ENROLLMENT",
        Some(NotificationType::StatusReport) => "STATUS_REPORT",
        Some(NotificationType::Command) => "COMMAND",
        Some(NotificationType::UsageLogs) => "USAGE_LOGS",
        Some(NotificationType::EnterpriseUpgrade) => "ENTERPRISE_UPGRADE",
        Some(NotificationType::Test) => "test",
        Some(NotificationType::Other(_)) => "other",
    }
}

/// Handles one push body; `Err` only for temporary failures (answer 503).
pub(crate) async fn intake(
    state: &AppState,
    locks: &DeviceLocks,
    body: &[u8],
) -> Result<(Handled, &'static str), StoreError> {
    let now = state.clock.unix();
    let msg = match PushMessage::decode(body) {
        Ok(m) => m,
        Err(e) => return dead_letter(state, best_effort_id(body), "unknown", &e, body, now).await,
    };
    let ntype = msg.notification_type().map(NotificationType::parse);
    let label = type_label(ntype.as_ref());
    let n = match Notification::decode(&msg) {
        Ok(n) => n,
        Err(e) => return dead_letter(state, Some(msg.message_id.clone()), label, &e, body, now).await,
    };
    let publish_ms = i64::try_from(msg.publish_time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let handled = match &n {
        // Device notifications: normalised once here, the rest only if the message is new.
        Notification::Enrollment(d) | Notification::StatusReport(d) => match device_report(d) {
            Ok(report) => {
                let is_enrollment = matches!(n, Notification::Enrollment(_));
                device(state, locks, &msg, is_enrollment, d, report, publish_ms, now).await?
            }
            Err(e) => return dead_letter(state, Some(msg.message_id.clone()), label, &e, body, now).await,
        },
        _ => {
            let emissions = match n.emissions() {
                Ok(out) => out,
                Err(e) => return dead_letter(state, Some(msg.message_id.clone()), label, &e, body, now).await,
            };
            if let Notification::Command(op) = &n {
                command(state, locks, &msg, op, emissions, now).await?
            } else {
                let events: Vec<Event> = emissions.into_iter().map(|em| event(state, &msg, em, None)).collect();
                apply(state, &msg, None, None, &[], &events, now).await?
            }
        }
    };
    if let Notification::Other { notification_type, .. } = &n {
        tracing::info!(message_id = %msg.message_id, notification_type, "Pub/Sub notification of a type this build does not know: recorded as handled");
    }
    Ok((handled, label))
}

/// An event for an emission, carrying the notification (the message's `data`) as `raw`.
fn event(state: &AppState, msg: &PushMessage, em: Emission, command_id: Option<&str>) -> Event {
    let command_id = command_id.or(em.command_id.as_deref());
    raw_event(state, msg, em.event_type, &em.device_id, command_id, em.data)
}

fn raw_event(
    state: &AppState,
    msg: &PushMessage,
    event_type: EventType,
    device: &DeviceId,
    command_id: Option<&str>,
    data: Json,
) -> Event {
    match &msg.data_b64 {
        // Passed on as received: no decode-and-encode round.
        Some(b64) => state.events.with_raw_b64(event_type, device, command_id, data, "application/json", b64.clone()),
        None => state.events.event(event_type, device, command_id, data),
    }
}

async fn apply(
    state: &AppState,
    msg: &PushMessage,
    ordering: Option<(&DeviceId, i64)>,
    enrollment: Option<EnrollmentWrite<'_>>,
    command_updates: &[CommandUpdate<'_>],
    events: &[Event],
    now: i64,
) -> Result<Handled, StoreError> {
    let outcome = state
        .store
        .apply_pubsub(PubSubDelivery {
            message_id: &msg.message_id,
            received_at: now,
            ordering,
            enrollment,
            command_updates,
            events,
        })
        .await?;
    Ok(outcome.into())
}

/// The message id of a body that is not a valid envelope, when one can still be read (so a
/// redelivery of the same bad message is recognised).
fn best_effort_id(body: &[u8]) -> Option<String> {
    let v: Json = serde_json::from_slice(body).ok()?;
    let m = v.get("message")?;
    m.get("messageId")
        .or_else(|| m.get("message_id"))
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

async fn dead_letter(
    state: &AppState,
    message_id: Option<String>,
    label: &'static str,
    e: &DecodeError,
    body: &[u8],
    now: i64,
) -> Result<(Handled, &'static str), StoreError> {
    let dead = DeadLetter {
        message_id: message_id.clone(),
        received_at: now,
        reason: e.reason().to_owned(),
        detail: e.to_string(),
        body: body.to_vec(),
    };
    if !state.store.record_dead_letter(&dead, &[]).await? {
        return Ok((Handled::Duplicate, label));
    }
    tracing::warn!(platform = "android", message_id = ?message_id, reason = e.reason(), detail = %e, "Pub/Sub message dead-lettered: it can never be applied");
    metrics::counter!(telemetry::ANDROID_PUBSUB_DEAD_LETTERS, "reason" => e.reason()).increment(1);
    Ok((Handled::DeadLetter, label))
}

/// Facts kept in the enrollment's attributes, from the device event data. `state` is AMAPI's
/// device state (`amapi_state` here, not to be confused with the enrollment's state).
const ATTRIBUTES: [(&str, &str); 16] = [
    ("name", "name"),
    ("management_mode", "management_mode"),
    ("ownership", "ownership"),
    ("state", "amapi_state"),
    ("applied_state", "applied_state"),
    ("policy_compliant", "policy_compliant"),
    ("policy_name", "policy_name"),
    ("applied_policy_name", "applied_policy_name"),
    ("applied_policy_version", "applied_policy_version"),
    ("enrollment_token_name", "enrollment_token_name"),
    ("user_name", "user_name"),
    ("enrollment_time", "enrollment_time"),
    ("last_status_report_time", "last_status_report_time"),
    ("security_patch_level", "security_patch_level"),
    ("device_posture", "device_posture"),
    ("brand", "brand"),
];

fn unix(t: Option<time::OffsetDateTime>) -> Option<i64> {
    t.map(time::OffsetDateTime::unix_timestamp)
}

/// The stored enrollment after the report: `current` (if any) with the device's facts merged in.
fn merged_enrollment(
    current: Option<&Enrollment>,
    id: &DeviceId,
    d: &Device,
    report: &DeviceReport,
    enrolling: bool,
    now: i64,
) -> Enrollment {
    let mut e = current.cloned().unwrap_or_else(|| Enrollment::new(id.clone(), now));
    if report.deleted {
        e.state = EnrollmentState::Unenrolled;
    } else {
        if enrolling {
            e.enrolled_at = unix(d.enrollment_time).or(Some(now));
        }
        e.state = EnrollmentState::Enrolled;
    }
    e.inventory.merge(&report.inventory);
    if let Json::Object(data) = &report.data {
        for (from, to) in ATTRIBUTES {
            if let Some(v) = data.get(from)
                && e.attributes.get(to) != Some(v)
            {
                e.attributes.insert(to.to_owned(), v.clone());
            }
        }
    }
    e.last_seen = Some(e.last_seen.unwrap_or(0).max(unix(d.last_status_report_time).unwrap_or(now).min(now)));
    e.updated_at = now;
    e
}

#[allow(clippy::too_many_arguments)]
async fn device(
    state: &AppState,
    locks: &DeviceLocks,
    msg: &PushMessage,
    is_enrollment: bool,
    d: &Device,
    report: DeviceReport,
    publish_ms: i64,
    now: i64,
) -> Result<Handled, StoreError> {
    let id = report.device_id.clone();
    let _guard = locks.lock(&id).await;
    // One read: handled before?, the device's watermark, its enrollment. A redelivery stops
    // here, without building events or touching the writer.
    let view = state.store.pubsub_view(&msg.message_id, Some(&id)).await?;
    if view.seen {
        return Ok(Handled::Duplicate);
    }
    let ordering = Some((&id, publish_ms));
    if view.watermark_ms.is_some_and(|newest| publish_ms < newest) {
        // Stale: only the id is recorded (the store checks the watermark again as it writes).
        let handled = apply(state, msg, ordering, None, &[], &[], now).await?;
        if handled == Handled::Stale {
            tracing::info!(device_id = %id, message_id = %msg.message_id, publish_time = %msg.publish_time, "Android device notification older than the newest applied one: not applied");
        }
        return Ok(handled);
    }
    let current = view.enrollment;
    let was_enrolled = current.as_ref().is_some_and(|e| e.state == EnrollmentState::Enrolled);
    // A status report for a device not known as enrolled (enrolled before the gateway was
    // connected, or re-enrolled under the same name) enrolls it.
    let inferred = !report.deleted && !is_enrollment && !was_enrolled;
    // The DELETED report of a device never stored (one the enrollment gate refused): nothing to
    // record but the message.
    if report.deleted && current.is_none() {
        return apply(state, msg, ordering, None, &[], &[], now).await;
    }
    let mut corporate_identifier = None;
    let mut gate_ownership = None;
    if (is_enrollment || inferred) && !was_enrolled && !report.deleted {
        // The enrollment gate: a device that enrolled against the rules is not stored, is
        // removed through AMAPI (devices.delete with the reason) and reported.
        let inv = &report.inventory;
        let facts = EnrollmentFacts {
            platform: Some(Platform::Android),
            device_id: Some(id.clone()),
            user: inv.enrolled_user.clone(),
            os_version: inv.os_version.clone(),
            serial_number: inv.serial_number.clone(),
            imei: inv.imei.clone(),
            declared: match d.ownership.as_deref() {
                Some("PERSONALLY_OWNED") => Some(Ownership::Personal),
                Some("COMPANY_OWNED") => Some(Ownership::Corporate),
                _ => None,
            },
        };
        match state.gate.check(state.store.as_ref(), &facts).await {
            Ok(Ok(admission)) => {
                corporate_identifier = admission.corporate_identifier;
                gate_ownership = Some(admission.ownership);
            }
            Ok(Err(denial)) => {
                let event = enrollment_gate::denied_event(&state.events, &id, &facts, &denial);
                let handled = apply(state, msg, ordering, None, &[], &[event], now).await?;
                if handled == Handled::Applied {
                    remove_refused_device(state, d, &denial.message);
                }
                tracing::info!(device_id = %id, reason = denial.reason.as_str(), "Android enrollment refused by the enrollment gate");
                return Ok(handled);
            }
            Err(enrollment_gate::GateError::Store(e)) => return Err(e),
        }
    }
    let mut enrollment = merged_enrollment(current.as_ref(), &id, d, &report, is_enrollment || inferred, now);
    if let Some(o) = gate_ownership {
        enrollment.inventory.ownership = Some(o.as_str().into());
    }
    // Only what changed is written (nothing, or only the report's columns, for most reports).
    let write = EnrollmentWrite::diff(current.as_ref(), &enrollment);

    // The notification's own event carries it as `raw`, once per message.
    let mut events = Vec::with_capacity(3);
    let has_inventory = !report.deleted && !report.inventory.is_empty();
    let primary = if report.deleted {
        EventType::DEVICE_UNENROLLED
    } else if is_enrollment {
        EventType::DEVICE_ENROLLED
    } else {
        EventType::DEVICE_STATUS_REPORT
    };
    if inferred {
        let mut data = report.data.clone();
        data["inferred_from"] = "STATUS_REPORT".into();
        events.push(state.events.event(EventType::DEVICE_ENROLLED, &id, None, data));
    }
    events.push(raw_event(state, msg, primary, &id, None, report.data));
    if has_inventory {
        // As on every platform: the whole inventory after the merge.
        let data = serde_json::to_value(&enrollment.inventory).unwrap_or_default();
        events.push(state.events.event(EventType::DEVICE_INVENTORY, &id, None, data));
    }
    // Policy commands (set_settings, install_app, app_config) this report shows applied or
    // refused: resolved in the same transaction. Read only when the view says there are some.
    let pending = if view.policy_commands_pending && !is_enrollment && !report.deleted {
        state.store.pending_android_policy_commands(&id).await?
    } else {
        Vec::new()
    };
    let resolved = device_policy::resolutions(&state.events, &pending, d, "STATUS_REPORT");
    let updates: Vec<CommandUpdate<'_>> = resolved.iter().map(|r| r.update(now)).collect();
    events.extend(resolved.iter().map(|r| r.event.clone()));
    let handled = apply(state, msg, ordering, write, &updates, &events, now).await?;
    if handled == Handled::Applied {
        for r in &resolved {
            metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "android", "status" => r.to.as_str())
                .increment(1);
            tracing::info!(device_id = %id, command_id = %r.command_id, status = r.to.as_str(),
                "Android policy command resolved by a status report");
        }
    }
    if handled == Handled::Applied
        && let Some((kind, identifier)) = &corporate_identifier
    {
        state.store.mark_corporate_identifier_enrolled(*kind, identifier, &id, now).await?;
    }
    match handled {
        Handled::Applied => {
            tracing::debug!(device_id = %id, message_id = %msg.message_id, state = enrollment.state.as_str(), "Android device notification applied")
        }
        Handled::Stale => {
            tracing::info!(device_id = %id, message_id = %msg.message_id, publish_time = %msg.publish_time, "Android device notification older than the newest applied one: not applied")
        }
        _ => {}
    }
    Ok(handled)
}

async fn command(
    state: &AppState,
    locks: &DeviceLocks,
    msg: &PushMessage,
    op: &Operation,
    emissions: Vec<Emission>,
    now: i64,
) -> Result<Handled, StoreError> {
    // Not done yet (or nothing to say): only remembered as handled.
    let (Some(name), Some(em)) = (op.name.as_deref(), emissions.into_iter().next()) else {
        return apply(state, msg, None, None, &[], &[], now).await;
    };
    let Some(binding) = state.store.android_operation(name).await? else {
        // Not started by this gateway (another console, or before it was connected): reported
        // without a command id; `data.operation` names it.
        tracing::info!(operation = name, message_id = %msg.message_id, "COMMAND notification for an operation no command is bound to");
        let ev = event(state, msg, Emission { command_id: None, ..em }, None);
        return apply(state, msg, None, None, &[], &[ev], now).await;
    };
    let _guard = locks.lock(&binding.device_id).await;
    let record = state.store.command_for_device(&binding.device_id, &binding.command_id).await?;
    let Some(record) = record.filter(|r| !r.status.is_final()) else {
        // Already final (reconciled through operations.get, expired) or gone: nothing to change.
        tracing::info!(operation = name, command_id = %binding.command_id, "COMMAND notification for a command that is already final or gone");
        return apply(state, msg, None, None, &[], &[], now).await;
    };
    let ok = em.event_type == EventType::COMMAND_ACKNOWLEDGED;
    let to = if ok { CommandStatus::Acknowledged } else { CommandStatus::Error };
    let mut data = em.data.clone();
    data["request_type"] = record.request_type.clone().into();
    let update = CommandUpdate {
        device_id: &binding.device_id,
        command_id: &binding.command_id,
        from: &[CommandStatus::Queued, CommandStatus::Sent, CommandStatus::NotNow],
        to,
        result: ok.then(|| data.clone()),
        error: (!ok).then(|| data.clone()),
        now,
    };
    let em = Emission { device_id: binding.device_id.clone(), data, ..em };
    let ev = event(state, msg, em, Some(&binding.command_id));
    let handled = apply(state, msg, None, None, std::slice::from_ref(&update), &[ev], now).await?;
    if handled == Handled::Applied {
        metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "android", "status" => to.as_str()).increment(1);
    }
    Ok(handled)
}

/// Asks AMAPI to delete a device the enrollment gate refused, in the background (the Pub/Sub
/// answer does not wait for Google). Without an AMAPI client the refusal is only reported.
fn remove_refused_device(state: &AppState, d: &Device, reason: &str) {
    let (Some(android), Some(name)) = (state.android.clone(), d.name.clone()) else {
        tracing::warn!(
            "an Android device enrolled against the enrollment rules, and no AMAPI client is configured to remove it"
        );
        return;
    };
    let message = format!("Enrollment refused: {reason}");
    tokio::spawn(async move {
        match android.remove_device(&name, &message).await {
            Ok(()) => tracing::info!(device = %name, "refused Android device removed (devices.delete)"),
            Err(e) => tracing::warn!(device = %name, error = %e, "could not remove a refused Android device"),
        }
    });
}
