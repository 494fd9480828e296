//! Android `set_settings`, `install_app` and `app_config`: patches of the device's own policy
//! (`enterprises/<e>/policies/device-<d>`, see [`mdm_android::policy`] for why and what is
//! written).
//!
//! Sending one (the dispatcher, one policy command per device at a time, in queue order):
//! 1. `devices.get`: which policy the device has now;
//! 2. `policies.get` of that policy (a missing one counts as empty);
//! 3. on its own policy already: `policies.patch` of the touched fields (`updateMask`), merged
//!    with other patches of that policy ([`super::policy`]); otherwise its own policy is created
//!    as a copy of the current one with the change on top (no mask), and the device moved to it
//!    with `devices.patch` (`updateMask=policyName`);
//! 4. stored: `queued → sent`, `command.sent`, and what the command waits for (the patched
//!    version, [`AndroidPolicyCommand`]) in one transaction.
//!
//! Resolving it: the device's next STATUS_REPORT (the Pub/Sub intake calls [`resolutions`]), or
//! `devices.get` when none came within `reconcile_after_s` ([`Android::reconcile_policies`]).
//! Applied with no non-compliance for what the command touched → `acknowledged` (result: policy,
//! versions, the app's report); non-compliant → `error` with the details; otherwise still `sent`.
//! Any failed call → `error` with Google's error class and message.

use std::collections::BTreeMap;

use mdm_android::amapi::Device;
use mdm_android::command::{AmapiCall, Method, device_name};
use mdm_android::policy::{PolicyChange, PolicyExpectation, PolicyOutcome, full_policy_name};
use mdm_core::{CommandStatus, DeviceId, Event, EventType};
use serde_json::{Map, Value as Json, json};

use super::Android;
use super::budget::Priority;
use super::client::AmapiError;
use super::dispatch::error_json;
use crate::events::EventFactory;
use crate::store::{AndroidPolicyCommand, CommandRecord, CommandUpdate};
use crate::telemetry;

/// A policy command's final status, as the store update and event that record it.
#[derive(Debug, Clone)]
pub(crate) struct Resolution {
    pub(crate) device_id: DeviceId,
    pub(crate) command_id: String,
    pub(crate) to: CommandStatus,
    pub(crate) result: Option<Json>,
    pub(crate) error: Option<Json>,
    pub(crate) event: Event,
}

impl Resolution {
    /// The conditional update (only a command still `sent` changes).
    pub(crate) fn update(&self, now: i64) -> CommandUpdate<'_> {
        CommandUpdate {
            device_id: &self.device_id,
            command_id: &self.command_id,
            from: &[CommandStatus::Sent],
            to: self.to,
            result: self.result.clone(),
            error: self.error.clone(),
            now,
        }
    }
}

fn expectation(pc: &AndroidPolicyCommand) -> PolicyExpectation {
    PolicyExpectation {
        policy: pc.policy.clone(),
        version: pc.policy_version,
        settings: pc.settings.clone(),
        package: pc.package.clone(),
    }
}

/// What the device report `d` resolves among `pending` (the device's policy commands still
/// `sent`). `via`: `STATUS_REPORT` or `devices.get`, kept in the event data.
pub(crate) fn resolutions(
    events: &EventFactory,
    pending: &[AndroidPolicyCommand],
    d: &Device,
    via: &str,
) -> Vec<Resolution> {
    pending
        .iter()
        .filter_map(|pc| {
            let (to, result, error, event_type, mut data) = match expectation(pc).outcome(d) {
                PolicyOutcome::Pending => return None,
                PolicyOutcome::Applied(r) => {
                    let mut data = r.clone();
                    data["status"] = "Acknowledged".into();
                    (CommandStatus::Acknowledged, Some(r), None, EventType::COMMAND_ACKNOWLEDGED, data)
                }
                PolicyOutcome::NonCompliant(e) => {
                    let data = json!({"status": "Error", "error": e.clone()});
                    (CommandStatus::Error, None, Some(e), EventType::COMMAND_ERROR, data)
                }
            };
            data["request_type"] = "policies.patch".into();
            data["resolved_by"] = via.into();
            let event = events.event(event_type, &pc.device_id, Some(&pc.command_id), data);
            Some(Resolution {
                device_id: pc.device_id.clone(),
                command_id: pc.command_id.clone(),
                to,
                result,
                error,
                event,
            })
        })
        .collect()
}

fn bad_reply(message: &str) -> Json {
    json!({"code": "amapi_bad_reply", "message": message})
}

impl Android {
    /// Sends one policy command (see the module documentation); failures become `command.error`.
    pub(super) async fn dispatch_policy(&self, record: &CommandRecord, call: &AmapiCall, change: &PolicyChange) {
        let (version, moved) = match self.patch_device_policy(&record.device_id, &call.path, change).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(command_id = %record.command_id, device = %record.device_id, error = %e,
                    "an Android policy command could not be sent");
                self.fail(record, e).await;
                return;
            }
        };
        let now = self.clock.unix();
        let pc = AndroidPolicyCommand {
            device_id: record.device_id.clone(),
            command_id: record.command_id.clone(),
            policy: call.path.clone(),
            policy_version: version,
            settings: change.settings(),
            package: change.package().map(str::to_owned),
            created_at: now,
        };
        let event = self.events.event(
            EventType::COMMAND_SENT,
            &record.device_id,
            Some(&record.command_id),
            json!({"request_type": record.request_type, "policy": pc.policy, "policy_version": version,
                   "device_moved_to_policy": moved}),
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
        match self.store.record_android_policy_command(&pc, update, &[event]).await {
            Ok(true) => tracing::debug!(command_id = %record.command_id, policy = %pc.policy, version,
                "Android policy patched; waiting for the device to apply it"),
            Ok(false) => tracing::info!(command_id = %record.command_id,
                "Android policy command changed while its policy was patched (expired?): not recorded as sent"),
            Err(e) => tracing::error!(command_id = %record.command_id, error = %e,
                "cannot store an Android policy command's patched version"),
        }
    }

    /// Steps 1–3: the patched version, and whether the device was moved to its own policy.
    async fn patch_device_policy(
        &self,
        device: &DeviceId,
        target: &str,
        change: &PolicyChange,
    ) -> Result<(i64, bool), Json> {
        let invalid = |e: mdm_core::CommandError| json!({"code": "invalid_command", "message": e.to_string()});
        let name = device_name(device).map_err(invalid)?;
        let enterprise = name.split("/devices/").next().unwrap_or_default().to_owned();
        let c = &self.client;
        let current = c.call(Method::Get, &name, &[], None, Priority::Command).await.map_err(|e| error_json(&e))?;
        let current_policy = current["policyName"].as_str().map(|p| full_policy_name(&enterprise, p));
        let on_own = current_policy.as_deref() == Some(target);
        let base: Map<String, Json> = match current_policy.as_deref() {
            None => Map::new(),
            Some(p) => match c.call(Method::Get, p, &[], None, Priority::Command).await {
                Ok(Json::Object(m)) => m,
                Ok(_) => return Err(bad_reply("policies.get reply is not a Policy")),
                Err(AmapiError::NotFound { .. }) => Map::new(),
                Err(e) => return Err(error_json(&e)),
            },
        };
        let patch = change.apply(&base).map_err(|m| json!({"code": "policy_conflict", "message": m}))?;
        let reply = if on_own {
            self.policies.patch(c.clone(), target.to_owned(), patch.fields.clone(), Some(patch.mask.clone())).await
        } else {
            self.policies.patch(c.clone(), target.to_owned(), patch.seeded(&base), None).await
        }
        .map_err(|e| error_json(&e))?;
        let version = reply["version"]
            .as_str()
            .and_then(|v| v.parse::<i64>().ok())
            .or_else(|| reply["version"].as_i64())
            .ok_or_else(|| bad_reply("policies.patch reply has no version"))?;
        if !on_own {
            let query = [("updateMask".to_owned(), "policyName".to_owned())];
            let body = json!({ "policyName": target });
            c.call(Method::Patch, &name, &query, Some(&body), Priority::Command).await.map_err(|e| error_json(&e))?;
            tracing::info!(device = %device, policy = target, from = ?current_policy, "Android device moved to its own policy");
        }
        Ok((version, !on_own))
    }

    /// Policy commands `sent` longer than `reconcile_after_s` ago: `devices.get` once per
    /// device, resolved as a STATUS_REPORT would resolve them.
    pub(super) async fn reconcile_policies(&self, cut: i64, batch: u32) {
        let pending = match self.store.unresolved_android_policy_commands(cut, batch).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list unresolved Android policy commands");
                return;
            }
        };
        let mut by_device: BTreeMap<DeviceId, Vec<AndroidPolicyCommand>> = BTreeMap::new();
        for pc in pending {
            by_device.entry(pc.device_id.clone()).or_default().push(pc);
        }
        {
            // Forget backoffs of devices resolved meanwhile.
            let keys: std::collections::HashSet<String> = by_device.keys().map(|d| format!("policy:{d}")).collect();
            self.reconcile
                .next
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, _| !k.starts_with("policy:") || keys.contains(k));
        }
        for (device, cmds) in by_device {
            let key = format!("policy:{device}");
            if !self.reconcile_due(&key) {
                continue;
            }
            let Ok(name) = device_name(&device) else { continue };
            let resolved = match self.client.call(Method::Get, &name, &[], None, Priority::Background).await {
                Ok(v) => match serde_json::from_value::<Device>(v) {
                    Ok(d) => resolutions(&self.events, &cmds, &d, "devices.get"),
                    Err(e) => {
                        tracing::warn!(device = %device, error = %e, "devices.get reply is not a Device");
                        Vec::new()
                    }
                },
                Err(AmapiError::NotFound { message }) => cmds
                    .iter()
                    .map(|pc| {
                        let err = json!({"code": "amapi_not_found", "message": message});
                        let data = json!({"request_type": "policies.patch", "status": "Error", "error": err.clone(),
                            "resolved_by": "devices.get"});
                        Resolution {
                            device_id: pc.device_id.clone(),
                            command_id: pc.command_id.clone(),
                            to: CommandStatus::Error,
                            result: None,
                            error: Some(err),
                            event: self.events.event(
                                EventType::COMMAND_ERROR,
                                &pc.device_id,
                                Some(&pc.command_id),
                                data,
                            ),
                        }
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(device = %device, code = e.code(), "devices.get for policy commands failed");
                    Vec::new()
                }
            };
            let now = self.clock.unix();
            for r in &resolved {
                match self.store.update_command(r.update(now), std::slice::from_ref(&r.event)).await {
                    Ok(true) => {
                        metrics::counter!(telemetry::COMMAND_RESULTS, "platform" => "android", "status" => r.to.as_str())
                            .increment(1);
                        tracing::info!(command_id = %r.command_id, status = r.to.as_str(),
                            "Android policy command resolved by devices.get");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(command_id = %r.command_id, error = %e, "cannot store a reconciled policy command")
                    }
                }
            }
            if resolved.len() == cmds.len() {
                self.reconcile_done(&key);
            } else {
                self.back_off(&key);
            }
        }
    }
}
