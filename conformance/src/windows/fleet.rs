//! A fleet of emulated Windows devices, for `mdm-emulate windows`: every device enrolls the real
//! way (discovery, policy, MS-WSTEP with its own RSA key and certificate request, the
//! provisioning document read back), opens its first OMA-DM session right after enrollment (as
//! Windows does), then one every poll interval over mutual TLS, answers what the gateway queued,
//! and at the end unenrolls (Alert 1226).
//!
//! Devices are `<prefix>-<seed>-<index>`; each has its own UPN from a template (`{n}` is the
//! index). Failures are counted, not fatal: the summary says what went wrong.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{DmIdentity, WindowsDevice, WindowsEnroller, WindowsEnrollerConfig, WindowsIdentity};
use crate::apple::fleet::Latency;
use crate::stats::{Errors, Samples};

/// What the fleet is and where it goes.
#[derive(Debug, Clone)]
pub struct WindowsFleetConfig {
    pub devices: usize,
    /// Where discovery goes (`https://host:port`, standing in for
    /// `https://EnterpriseEnrollment.<domain>`); the rest follows the gateway's answers.
    pub gateway_url: String,
    /// What devices trust for the gateway's server certificate.
    pub server_ca_pem: Vec<u8>,
    /// The OnPremise enrollment secret (the password of every UPN).
    pub secret: String,
    /// The UPN of device `n`: `{n}` is replaced by the zero-padded index (no `{n}`: one user
    /// for the whole fleet).
    pub upn_template: String,
    /// DeviceIDs are `<prefix>-<seed>-<index>`.
    pub device_prefix: String,
    pub seed: u64,
    /// Requests (and key generations) in flight at most, across the fleet.
    pub concurrency: usize,
}

impl WindowsFleetConfig {
    pub fn new(devices: usize, gateway_url: &str, server_ca_pem: Vec<u8>, secret: &str) -> Self {
        WindowsFleetConfig {
            devices,
            gateway_url: gateway_url.to_owned(),
            server_ca_pem,
            secret: secret.to_owned(),
            upn_template: "emu{n}@example.com".into(),
            device_prefix: "WINEMU".into(),
            seed: 1,
            concurrency: 64,
        }
    }
}

/// The DeviceID of device `index`.
pub fn windows_device_id(prefix: &str, seed: u64, index: usize) -> String {
    format!("{prefix}-{seed:X}-{index:06}")
}

/// The UPN of device `index` from `template`.
pub fn windows_upn(template: &str, index: usize) -> String {
    template.replace("{n}", &format!("{index:06}"))
}

/// The commands `mdm-emulate windows --commands N` queues per device: alternately `device_info`
/// (every DevInfo/DevDetail node: Gets and Results) and `lock` (an Exec).
pub fn sample_command(n: usize) -> serde_json::Value {
    if n.is_multiple_of(2) {
        serde_json::json!({ "type": "device_info" })
    } else {
        serde_json::json!({ "type": "lock" })
    }
}

struct Member {
    device_id: String,
    upn: String,
    identity: OnceLock<WindowsIdentity>,
    device: OnceLock<WindowsDevice>,
    /// A session is running (a poll meanwhile is skipped, as the DM client does).
    busy: AtomicBool,
    unenrolled: AtomicBool,
}

/// Live counters. Latencies are in microseconds.
#[derive(Debug, Default)]
pub struct Counters {
    pub enrolled: AtomicU64,
    pub sessions: AtomicU64,
    /// SyncML messages the devices sent in their sessions.
    pub messages: AtomicU64,
    /// Server commands carried out with a success status (Get, Exec, Replace, …; the commands
    /// inside Atomic and Sequence counted too).
    pub syncml_ok: AtomicU64,
    /// Server commands answered with a failure status (404, 405, 507, …).
    pub syncml_failed: AtomicU64,
    pub unenrolled: AtomicU64,
    pub errors: Errors,
    enroll_us: Samples,
    session_us: Samples,
    unenroll_us: Samples,
}

impl Counters {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.note(e);
    }

    /// Server commands answered so far, any status.
    pub fn answered(&self) -> u64 {
        self.syncml_ok.load(Ordering::Relaxed) + self.syncml_failed.load(Ordering::Relaxed)
    }
}

/// What a fleet run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub devices: usize,
    pub enrolled: u64,
    pub sessions: u64,
    pub messages: u64,
    /// Server (SyncML) commands answered with success / failure statuses.
    pub syncml_commands_ok: u64,
    pub syncml_commands_failed: u64,
    pub unenrolled: u64,
    /// Requests that failed (transport error, a fault, a refusal).
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Discovery → policy → enrollment → provisioning document read, per device (key generation
    /// excluded).
    pub enroll_latency: Latency,
    /// A whole OMA-DM session (all its messages).
    pub session_latency: Latency,
    /// The Alert 1226 message.
    pub unenroll_latency: Latency,
    pub wall_seconds: f64,
}

impl Summary {
    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("devices".into(), self.devices.to_string()),
            ("enrolled".into(), self.enrolled.to_string()),
            ("sessions".into(), format!("{} ({} messages)", self.sessions, self.messages)),
            (
                "commands answered".into(),
                format!(
                    "{} SyncML commands ({} success, {} failure status)",
                    self.syncml_commands_ok + self.syncml_commands_failed,
                    self.syncml_commands_ok,
                    self.syncml_commands_failed
                ),
            ),
            ("unenrolled".into(), self.unenrolled.to_string()),
            ("errors".into(), self.errors.to_string()),
        ];
        for (name, l) in
            [("enroll", &self.enroll_latency), ("session", &self.session_latency), ("unenroll", &self.unenroll_latency)]
        {
            if l.count > 0 {
                rows.push((
                    format!("{name} latency"),
                    format!("p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})", l.p50_ms, l.p99_ms, l.max_ms, l.count),
                ));
            }
        }
        rows.push(("wall time".into(), format!("{:.2} s", self.wall_seconds)));
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        for e in &self.first_errors {
            out.push_str(&format!("  error: {e}\n"));
        }
        out
    }
}

/// A running Windows fleet. Cheap to share (`Arc<WindowsFleet>`).
pub struct WindowsFleet {
    config: WindowsFleetConfig,
    members: Vec<Member>,
    permits: Arc<Semaphore>,
    counters: Counters,
    started: Instant,
}

impl std::fmt::Debug for WindowsFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowsFleet").field("devices", &self.members.len()).finish_non_exhaustive()
    }
}

impl WindowsFleet {
    pub fn new(config: WindowsFleetConfig) -> Self {
        let members = (0..config.devices)
            .map(|i| Member {
                device_id: windows_device_id(&config.device_prefix, config.seed, i),
                upn: windows_upn(&config.upn_template, i),
                identity: OnceLock::new(),
                device: OnceLock::new(),
                busy: AtomicBool::new(false),
                unenrolled: AtomicBool::new(false),
            })
            .collect();
        WindowsFleet {
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            members,
            counters: Counters::default(),
            started: Instant::now(),
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// `windows:<DeviceID>` of every device that enrolled.
    pub fn device_ids(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.identity.get().is_some()).map(|m| format!("windows:{}", m.device_id)).collect()
    }

    /// The identity device `index` got, once enrolled.
    pub fn identity(&self, index: usize) -> Option<&WindowsIdentity> {
        self.members.get(index)?.identity.get()
    }

    /// The UPN device `index` enrolls as.
    pub fn upn(&self, index: usize) -> Option<&str> {
        self.members.get(index).map(|m| m.upn.as_str())
    }

    /// Enrolls every device, at most `concurrency` at once, each followed by its first session.
    pub async fn enroll_all(self: &Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.members.len() {
            let fleet = self.clone();
            let permit = self.permits.clone().acquire_owned().await.expect("semaphore open");
            tasks.spawn(async move {
                let enrolled = {
                    let _permit = permit;
                    fleet.enroll(i).await
                };
                if enrolled {
                    fleet.session(i).await;
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn enroll(&self, i: usize) -> bool {
        let m = &self.members[i];
        let c = &self.config;
        let mut ec = WindowsEnrollerConfig::on_premise(&m.device_id, &m.upn, &c.secret);
        ec.device_name = format!("EMU-{i:06}");
        let enroller = match WindowsEnroller::new(ec, &c.gateway_url, &c.server_ca_pem) {
            Ok(e) => e,
            Err(e) => {
                self.counters.error(format!("{}: {e}", m.device_id));
                return false;
            }
        };
        // The key is the device's (its TPM's) work, not the exchange's: made off the runtime and
        // not timed.
        let key = match tokio::task::spawn_blocking(|| mdm_certs::devpki::generate_rsa_key(2048)).await {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                self.counters.error(format!("{}: key: {e}", m.device_id));
                return false;
            }
            Err(e) => {
                self.counters.error(format!("{}: key thread: {e}", m.device_id));
                return false;
            }
        };
        let started = Instant::now();
        let identity = match enroller.enroll_with_key(key).await {
            Ok(id) => id,
            Err(e) => {
                self.counters.error(format!("{}: enroll: {e}", m.device_id));
                return false;
            }
        };
        self.counters.enroll_us.record(started.elapsed());
        let device = match WindowsDevice::new(DmIdentity::from(&identity), &identity.management_url, &c.server_ca_pem) {
            Ok(d) => d,
            Err(e) => {
                self.counters.error(format!("{}: management client: {e}", m.device_id));
                return false;
            }
        };
        let _ = m.identity.set(identity);
        let _ = m.device.set(device);
        self.counters.enrolled.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// One session of device `index` (skipped when one is running or the device unenrolled).
    pub async fn session(&self, index: usize) {
        let Some(m) = self.members.get(index) else { return };
        let Some(device) = m.device.get() else { return };
        if m.unenrolled.load(Ordering::Acquire) || m.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let result = {
            let _permit = self.permits.acquire().await.expect("semaphore open");
            let started = Instant::now();
            let r = device.session().await;
            if r.is_ok() {
                self.counters.session_us.record(started.elapsed());
            }
            r
        };
        m.busy.store(false, Ordering::Release);
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(report) => {
                self.counters.messages.fetch_add(u64::from(report.messages), Ordering::Relaxed);
                for h in &report.handled {
                    let ok = (200..300).contains(&h.code);
                    let counter = if ok { &self.counters.syncml_ok } else { &self.counters.syncml_failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => self.counters.error(format!("{}: session: {e}", m.device_id)),
        }
    }

    /// Every enrolled device runs a session every `interval` (first ones spread evenly over the
    /// interval) until `until`.
    pub async fn run_poll(self: &Arc<Self>, interval: Duration, until: tokio::time::Instant) {
        let n = self.members.len().max(1);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.members.len() {
            let fleet = self.clone();
            let offset = interval.mul_f64(i as f64 / n as f64);
            tasks.spawn(async move {
                let mut next = tokio::time::Instant::now() + offset;
                loop {
                    tokio::time::sleep_until(next).await;
                    if tokio::time::Instant::now() >= until {
                        return;
                    }
                    fleet.session(i).await;
                    next += interval;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Every enrolled device tells the gateway it unenrolled (Alert 1226,
    /// `com.microsoft:mdm.unenrollment.userrequest`).
    pub async fn unenroll_all(self: &Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.members.len() {
            let fleet = self.clone();
            tasks.spawn(async move {
                let m = &fleet.members[i];
                let Some(device) = m.device.get() else { return };
                let _permit = fleet.permits.acquire().await.expect("semaphore open");
                m.unenrolled.store(true, Ordering::Release);
                let started = Instant::now();
                match device.unenroll().await {
                    Ok(reply) => {
                        let refused = reply.body.commands.iter().find_map(|c| match c {
                            mdm_windows::syncml::Command::Status(s) if !s.code.is_success() => {
                                Some(format!("{} {}", s.cmd, s.code.0))
                            }
                            _ => None,
                        });
                        match refused {
                            None => {
                                fleet.counters.unenroll_us.record(started.elapsed());
                                fleet.counters.unenrolled.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(s) => fleet.counters.error(format!("{}: unenroll answered {s}", m.device_id)),
                        }
                    }
                    Err(e) => fleet.counters.error(format!("{}: unenroll: {e}", m.device_id)),
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The counters so far, with latency percentiles; wall time since [`WindowsFleet::new`].
    pub fn summary(&self) -> Summary {
        let c = &self.counters;
        Summary {
            devices: self.members.len(),
            enrolled: c.enrolled.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            syncml_commands_ok: c.syncml_ok.load(Ordering::Relaxed),
            syncml_commands_failed: c.syncml_failed.load(Ordering::Relaxed),
            unenrolled: c.unenrolled.load(Ordering::Relaxed),
            errors: c.errors.count(),
            first_errors: c.errors.first(),
            enroll_latency: c.enroll_us.latency(),
            session_latency: c.session_us.latency(),
            unenroll_latency: c.unenroll_us.latency(),
            wall_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_and_upns() {
        assert_eq!(windows_device_id("WINEMU", 26, 7), "WINEMU-1A-000007");
        assert_eq!(windows_upn("emu{n}@example.com", 42), "emu000042@example.com");
        assert_eq!(windows_upn("shared@example.com", 42), "shared@example.com");
        assert_eq!(sample_command(0)["type"], "device_info");
        assert_eq!(sample_command(1)["type"], "lock");
    }
}
