//! Sends queued Android commands to AMAPI, and resolves operations no COMMAND notification
//! resolved.
//!
//! `POST /v1/commands` stores an Android command first (`queued`, `command.queued`, its
//! [`AmapiCall`] as the payload) and wakes the dispatcher, which also scans at start and every
//! few seconds, so a command queued before a restart is sent after it. Per call kind:
//!
//! | call | success | failure |
//! |---|---|---|
//! | `devices.issueCommand` | the operation is bound to the command, `queued → sent`, `command.sent` | `command.error` |
//! | `devices.get` | `command.acknowledged` with the device as the result, `device.inventory` | `command.error` |
//! | `devices.delete` | `command.acknowledged` (the DELETED notification unenrolls) | `command.error` |
//! | raw | `command.acknowledged` with the reply | `command.error` |
//! | `policies.patch` (set_settings, install_app, app_config) | `command.sent`; resolved by the device's report ([`super::device_policy`]) | `command.error` |
//!
//! Policy commands of one device go one at a time, in queue order (each reads the policy the
//! previous one wrote).
//!
//! A failure is Google's error class and message ([`AmapiError::code`], [`AmapiError::message`]),
//! after the retries its class allows: never dropped. A crash between AMAPI's answer and the
//! store write sends the command again after restart (at least once).
//!
//! Reconcile: operations bound more than `reconcile_after_s` ago whose command is still `sent`
//! are asked for with `operations.get` (background priority); a done operation is applied as its
//! COMMAND notification would be. One not done yet is asked again later, backing off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdm_android::command::{AmapiCall, CallKind, Method};
use mdm_android::{Device, Notification, Operation};
use mdm_core::{CommandStatus, EventType};
use serde_json::{Value as Json, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Android;
use super::budget::Priority;
use super::client::AmapiError;
use crate::store::{AndroidOperation, CommandRecord, CommandUpdate};

/// The request type of policy commands (`set_settings`, `install_app`, `app_config`).
const POLICY_REQUEST_TYPE: &str = "policies.patch";
use crate::telemetry;

/// How often the dispatcher scans without being woken.
const SCAN_EVERY: Duration = Duration::from_secs(5);
const BATCH: u32 = 200;
/// Commands being sent at once (each waits for the budget anyway).
const CONCURRENCY: usize = 32;
/// Longest wait before asking again about an operation that is not done.
const RECONCILE_MAX_BACKOFF: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub(super) struct ReconcileState {
    /// Operation name (or `policy:<device>`) → (next check, current backoff).
    pub(super) next: Mutex<HashMap<String, (Instant, Duration)>>,
}

impl Android {
    /// Starts the dispatcher and the reconcile loop.
    pub fn spawn(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().dispatch_loop(shutdown.clone())),
            tokio::spawn(self.clone().reconcile_loop(shutdown)),
        ]
    }

    async fn dispatch_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let in_flight: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
        // Devices with a policy command being sent: their next one waits for the next scan.
        let policy_in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            match self.store.queued_android_commands(BATCH).await {
                Ok(queued) => {
                    let mut policy_seen = HashSet::new();
                    for record in queued {
                        let key = (record.device_id.as_str().to_owned(), record.command_id.clone());
                        let policy = record.request_type == POLICY_REQUEST_TYPE;
                        if policy {
                            // One per device per scan, and none while one is in flight.
                            let first = policy_seen.insert(key.0.clone());
                            let busy = policy_in_flight.lock().unwrap_or_else(|e| e.into_inner()).contains(&key.0);
                            if !first || busy {
                                continue;
                            }
                        }
                        if !in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
                            continue;
                        }
                        if policy {
                            policy_in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(key.0.clone());
                        }
                        let Ok(permit) = permits.clone().acquire_owned().await else { return };
                        let (this, in_flight, policy_in_flight) =
                            (self.clone(), in_flight.clone(), policy_in_flight.clone());
                        tokio::spawn(async move {
                            this.dispatch_one(record).await;
                            in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                            if policy {
                                policy_in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&key.0);
                            }
                            drop(permit);
                            this.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list queued Android commands"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(SCAN_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Sends one command and records the outcome. Store failures leave it queued for the next
    /// scan.
    async fn dispatch_one(&self, record: CommandRecord) {
        let call: AmapiCall = match serde_json::from_slice(&record.payload) {
            Ok(c) => c,
            Err(e) => {
                let err =
                    json!({"code": "invalid_payload", "message": format!("stored AMAPI call is unreadable: {e}")});
                self.fail(&record, err).await;
                return;
            }
        };
        if let CallKind::Policy { change } = &call.kind {
            self.dispatch_policy(&record, &call, change).await;
            return;
        }
        let result =
            self.client.call(call.method, &call.path, &call.query, call.body.as_ref(), Priority::Command).await;
        let outcome = match result {
            Err(e) => {
                tracing::warn!(command_id = %record.command_id, device = %record.device_id, code = e.code(),
                    message = %e.message(), "AMAPI refused or failed an Android command");
                self.fail(&record, error_json(&e)).await;
                return;
            }
            Ok(reply) => reply,
        };
        let now = self.clock.unix();
        let stored = match &call.kind {
            CallKind::IssueCommand { command_type } => {
                let Some(name) = outcome["name"].as_str().filter(|n| n.contains("/operations/")) else {
                    let err = json!({"code": "amapi_bad_reply", "message": "issueCommand reply has no operation name"});
                    self.fail(&record, err).await;
                    return;
                };
                let op = AndroidOperation {
                    operation: name.to_owned(),
                    device_id: record.device_id.clone(),
                    command_id: record.command_id.clone(),
                    created_at: now,
                };
                let event = self.events.event(
                    EventType::COMMAND_SENT,
                    &record.device_id,
                    Some(&record.command_id),
                    json!({"request_type": record.request_type, "command_type": command_type, "operation": name}),
                );
                let update = CommandUpdate {
                    device_id: &record.device_id,
                    command_id: &record.command_id,
                    from: &[CommandStatus::Queued],
                    to: CommandStatus::Sent,
                    result: None,
                    error: None,
                    now,
                };
                let r = self.store.record_android_operation(&op, Some(update), &[event]).await;
                // AMAPI may answer with an operation that is already done.
                if r.is_ok()
                    && outcome["done"].as_bool() == Some(true)
                    && let Ok(parsed) = serde_json::from_value::<Operation>(outcome.clone())
                {
                    self.apply_operation(&op, &parsed).await;
                }
                r.map(|()| true)
            }
            CallKind::GetDevice => {
                let mut events = vec![self.events.event(
                    EventType::COMMAND_ACKNOWLEDGED,
                    &record.device_id,
                    Some(&record.command_id),
                    json!({"request_type": record.request_type, "status": "Acknowledged"}),
                )];
                let inventory = serde_json::from_value::<Device>(outcome.clone())
                    .ok()
                    .map(|d| mdm_android::normalise::device_inventory(&d))
                    .filter(|i| !i.is_empty());
                if let Some(inv) = &inventory {
                    events.push(self.events.event(
                        EventType::DEVICE_INVENTORY,
                        &record.device_id,
                        Some(&record.command_id),
                        serde_json::to_value(inv).unwrap_or(Json::Null),
                    ));
                }
                let r = self.acknowledge(&record, outcome, &events).await;
                if r.is_ok()
                    && let Some(inv) = inventory
                {
                    // The stored inventory follows the event (a separate write: the events
                    // already carry it).
                    if let Ok(Some(mut e)) = self.store.enrollment(&record.device_id).await {
                        e.inventory.merge(&inv);
                        e.updated_at = now;
                        if let Err(err) = self.store.save_enrollment(&e, &[]).await {
                            tracing::warn!(device = %record.device_id, error = %err, "cannot store Android inventory");
                        }
                    }
                }
                r
            }
            // Sent above.
            CallKind::Policy { .. } => Ok(false),
            CallKind::DeleteDevice | CallKind::Raw => {
                let event = self.events.event(
                    EventType::COMMAND_ACKNOWLEDGED,
                    &record.device_id,
                    Some(&record.command_id),
                    json!({"request_type": record.request_type, "status": "Acknowledged"}),
                );
                self.acknowledge(&record, outcome, &[event]).await
            }
        };
        if let Err(e) = stored {
            tracing::error!(command_id = %record.command_id, error = %e, "cannot store an Android command's outcome");
        }
    }

    async fn acknowledge(
        &self,
        record: &CommandRecord,
        result: Json,
        events: &[mdm_core::Event],
    ) -> crate::store::Result<bool> {
        let update = CommandUpdate {
            device_id: &record.device_id,
            command_id: &record.command_id,
            from: &[CommandStatus::Queued],
            to: CommandStatus::Acknowledged,
            result: Some(result),
            error: None,
            now: self.clock.unix(),
        };
        let r = self.store.update_command(update, events).await;
        if let Ok(true) = r {
            metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "android", "status" => "acknowledged")
                .increment(1);
        }
        r
    }

    pub(super) async fn fail(&self, record: &CommandRecord, error: Json) {
        let event = self.events.event(
            EventType::COMMAND_ERROR,
            &record.device_id,
            Some(&record.command_id),
            json!({"request_type": record.request_type, "status": "Error", "error": error}),
        );
        let update = CommandUpdate {
            device_id: &record.device_id,
            command_id: &record.command_id,
            from: &[CommandStatus::Queued],
            to: CommandStatus::Error,
            result: None,
            error: Some(error),
            now: self.clock.unix(),
        };
        match self.store.update_command(update, &[event]).await {
            Ok(true) => {
                metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "android", "status" => "error")
                    .increment(1);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(command_id = %record.command_id, error = %e, "cannot store an Android command's failure");
            }
        }
    }

    async fn reconcile_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let period = Duration::from_millis((self.config.reconcile_after_s * 1000 / 2).clamp(200, 30_000));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
            self.reconcile_once().await;
        }
    }

    /// One reconcile pass (public for tests and operators' tooling).
    pub async fn reconcile_once(&self) {
        let cut = self.clock.unix() - self.config.reconcile_after_s as i64;
        self.reconcile_policies(cut, BATCH).await;
        let ops = match self.store.unresolved_android_operations(cut, BATCH).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list unresolved Android operations");
                return;
            }
        };
        let now = Instant::now();
        {
            // Forget backoffs of operations resolved meanwhile.
            let names: HashSet<&str> = ops.iter().map(|o| o.operation.as_str()).collect();
            self.reconcile
                .next
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| k.starts_with("policy:") || names.contains(k.as_str()));
        }
        for op in ops {
            let due = self.reconcile.next.lock().unwrap_or_else(|e| e.into_inner()).get(&op.operation).map(|(t, _)| *t);
            if due.is_some_and(|t| t > now) {
                continue;
            }
            match self.client.call(Method::Get, &op.operation, &[], None, Priority::Background).await {
                Ok(v) => match serde_json::from_value::<Operation>(v) {
                    Ok(parsed) if parsed.done => {
                        self.apply_operation(&op, &parsed).await;
                    }
                    Ok(_) => self.back_off(&op.operation),
                    Err(e) => {
                        tracing::warn!(operation = %op.operation, error = %e, "operations.get reply is not an Operation");
                        self.back_off(&op.operation);
                    }
                },
                Err(AmapiError::NotFound { message }) => {
                    let err = json!({"code": "amapi_operation_not_found", "message": message});
                    self.resolve(
                        &op,
                        EventType::COMMAND_ERROR,
                        json!({"status": "Error", "error": err.clone()}),
                        None,
                        Some(err),
                    )
                    .await;
                }
                Err(e) => {
                    tracing::warn!(operation = %op.operation, code = e.code(), "operations.get failed");
                    self.back_off(&op.operation);
                }
            }
        }
    }

    /// True when `key` (an operation, or `policy:<device>`) may be asked about now.
    pub(super) fn reconcile_due(&self, key: &str) -> bool {
        let next = self.reconcile.next.lock().unwrap_or_else(|e| e.into_inner());
        next.get(key).is_none_or(|(t, _)| *t <= Instant::now())
    }

    pub(super) fn reconcile_done(&self, key: &str) {
        self.reconcile.next.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    pub(super) fn back_off(&self, operation: &str) {
        let base = Duration::from_secs(self.config.reconcile_after_s.max(1));
        let mut next = self.reconcile.next.lock().unwrap_or_else(|e| e.into_inner());
        let backoff = next.get(operation).map(|(_, b)| (*b * 2).min(RECONCILE_MAX_BACKOFF)).unwrap_or(base);
        next.insert(operation.to_owned(), (Instant::now() + backoff, backoff));
    }

    /// Applies a done operation to its bound command, as the COMMAND notification would.
    async fn apply_operation(&self, op: &AndroidOperation, parsed: &Operation) {
        let emission = Notification::Command(parsed.clone()).emissions().ok().and_then(|e| e.into_iter().next());
        let Some(emission) = emission else {
            tracing::warn!(operation = %op.operation, "done operation without a usable name");
            return;
        };
        let (result, error) = if emission.event_type == EventType::COMMAND_ERROR {
            (None, Some(emission.data.get("error").cloned().unwrap_or(Json::Null)))
        } else {
            (Some(emission.data.clone()), None)
        };
        self.resolve(op, emission.event_type, emission.data, result, error).await;
    }

    async fn resolve(
        &self,
        op: &AndroidOperation,
        event_type: EventType,
        mut data: Json,
        result: Option<Json>,
        error: Option<Json>,
    ) {
        if let Some(m) = data.as_object_mut() {
            m.insert("reconciled".into(), true.into());
            m.entry("operation").or_insert_with(|| op.operation.clone().into());
        }
        let to =
            if event_type == EventType::COMMAND_ERROR { CommandStatus::Error } else { CommandStatus::Acknowledged };
        let event = self.events.event(event_type, &op.device_id, Some(&op.command_id), data);
        let update = CommandUpdate {
            device_id: &op.device_id,
            command_id: &op.command_id,
            from: &[CommandStatus::Sent],
            to,
            result,
            error,
            now: self.clock.unix(),
        };
        match self.store.update_command(update, &[event]).await {
            Ok(applied) => {
                if applied {
                    metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "android", "status" => to.as_str())
                        .increment(1);
                    tracing::info!(operation = %op.operation, command_id = %op.command_id, status = to.as_str(),
                        "Android command resolved by operations.get");
                }
                self.reconcile.next.lock().unwrap_or_else(|e| e.into_inner()).remove(&op.operation);
            }
            Err(e) => tracing::error!(operation = %op.operation, error = %e, "cannot store a reconciled operation"),
        }
    }
}

/// `{"code", "message"}` of a failed call, as stored and sent in `command.error`.
pub fn error_json(e: &AmapiError) -> Json {
    json!({"code": e.code(), "message": e.message()})
}
