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
//! after the retries its class allows: never dropped.
//!
//! **One instance sends each command, at most once.** Every instance runs a dispatcher; each
//! *claims* queued commands in the store ([`crate::store::Store::claim_android_commands`]: PostgreSQL
//! `FOR UPDATE SKIP LOCKED`, SQLite's single writer) before calling AMAPI, and only as many as
//! it can send at once. A claim lasts while the command is `queued` and the claiming instance
//! keeps its heartbeat lease (`crate::cluster`). AMAPI has no idempotency key, so a claim whose
//! instance died between claiming and recording the answer (its heartbeat lapsed, or was
//! released by a shutdown that could not wait for it) is never sent blindly again: the
//! `android-reconcile` lease holder reports it `command.error` with code `dispatch_interrupted`
//! ("outcome unknown"), except a `GET` (`device_info`), which changes nothing and is put back
//! in the queue. The backend decides whether to send an interrupted command again.
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
use crate::cluster::{ANDROID_RECONCILE_LEASE, Cluster};
use crate::store::{AndroidOperation, CommandRecord, CommandUpdate};

use crate::telemetry;

/// How often the dispatcher scans without being woken.
const SCAN_EVERY: Duration = Duration::from_secs(5);
const BATCH: u32 = 200;
/// Commands being sent at once (each waits for the budget anyway).
const CONCURRENCY: usize = 32;
/// Longest wait at shutdown for the commands being sent.
const DRAIN: Duration = Duration::from_secs(30);
/// Longest wait before asking again about an operation that is not done.
const RECONCILE_MAX_BACKOFF: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub(super) struct ReconcileState {
    /// Operation name (or `policy:<device>`) → (next check, current backoff).
    pub(super) next: Mutex<HashMap<String, (Instant, Duration)>>,
}

impl Android {
    /// Starts the dispatcher (on every instance) and the reconcile loop (on the instance
    /// holding the `android-reconcile` lease).
    pub fn spawn(self: &Arc<Self>, cluster: Arc<Cluster>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let this = self.clone();
        let stop = shutdown.clone();
        let _ = self.instance.set(cluster.instance_id().to_owned());
        vec![
            tokio::spawn(self.clone().dispatch_loop(cluster.instance_id().to_owned(), shutdown.clone())),
            tokio::spawn(cluster.run_leased(ANDROID_RECONCILE_LEASE.to_owned(), shutdown, move |_| {
                this.clone().reconcile_loop(stop.clone())
            })),
        ]
    }

    async fn dispatch_loop(self: Arc<Self>, holder: String, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            // A claim is a promise to send now: claim only as many as there are free slots.
            let free = permits.available_permits();
            if free > 0 {
                match self.store.claim_android_commands(&holder, self.clock.unix(), free as u32).await {
                    Ok(claimed) => {
                        for record in claimed {
                            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
                            let this = self.clone();
                            tokio::spawn(async move {
                                this.dispatch_one(record).await;
                                drop(permit);
                                this.wake.notify_one();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot claim queued Android commands"),
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(SCAN_EVERY) => {}
                _ = shutdown.changed() => break,
            }
        }
        // Let the commands claimed here finish: once this instance's heartbeat stops, an
        // unfinished claim is reported interrupted.
        if tokio::time::timeout(DRAIN, permits.acquire_many(CONCURRENCY as u32)).await.is_err() {
            tracing::warn!("Android commands still being sent at shutdown; they will be reported interrupted");
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

    /// Resolves claims of instances that are gone (see the module documentation).
    pub async fn resolve_abandoned_claims(&self) {
        let now_ms = i64::try_from(self.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let abandoned = match self.store.abandoned_android_claims(now_ms, BATCH).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list abandoned Android command claims");
                return;
            }
        };
        for claim in abandoned {
            // This instance is alive whatever its heartbeat row says (a clock jump, a slow
            // renewal): its own dispatcher finishes its claims.
            if self.instance.get() == Some(&claim.holder) {
                continue;
            }
            let record = &claim.command;
            let method = serde_json::from_slice::<AmapiCall>(&record.payload).ok().map(|c| c.method);
            if method == Some(Method::Get) {
                match self.store.release_android_claim(&record.device_id, &record.command_id, &claim.holder).await {
                    Ok(true) => {
                        tracing::info!(command_id = %record.command_id, instance = %claim.holder,
                            "Android command claimed by a stopped instance: a read, queued again");
                        self.wake();
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(command_id = %record.command_id, error = %e, "cannot release a claim"),
                }
                continue;
            }
            tracing::warn!(command_id = %record.command_id, device = %record.device_id, instance = %claim.holder,
                "Android command claimed by a stopped instance before its AMAPI answer was stored: reported interrupted");
            let err = json!({
                "code": "dispatch_interrupted",
                "message": "dispatch interrupted, outcome unknown: the gateway instance sending this command to AMAPI \
                            stopped before storing the answer; it was not sent again (AMAPI has no idempotency key)",
            });
            self.fail(record, err).await;
        }
    }

    /// One reconcile pass (public for tests and operators' tooling).
    pub async fn reconcile_once(&self) {
        self.resolve_abandoned_claims().await;
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
