//! A fleet of emulated Apple devices: N devices, every message signed (`Mdm-Signature`), all
//! sharing one HTTP client (connection reuse). Each gets its identity either directly (its own
//! P-256 key and a certificate from a CA the gateway trusts, made before the run: fast, for load)
//! or the real way ([`FleetEnroll::Profile`]: ticket, signed enrollment profile, SCEP with an RSA
//! key, during [`Fleet::enroll_all`]). They enroll (Authenticate, TokenUpdate, optionally a user
//! channel), then run MDM sessions (Idle → command → answer → … until the queue is empty) when
//! woken by a push ([`Fleet::run_push`]) or on a timer ([`Fleet::run_poll`]), answering by
//! configured ratios with a seeded RNG, and may check out at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mdm_certs::{PKey, Private, X509};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};

use super::{AppleDevice, DeviceError, EnrollError, Enroller, IdentityMode, UserChannel};
use crate::apns::delivery::PushDelivery;
use crate::stats::{Errors, Samples};

/// The push topic every emulated device sends in its TokenUpdate (and `bench::seed` writes):
/// the UID of the push certificate the gateway needs to push the fleet.
pub const FLEET_TOPIC: &str = "com.apple.mgmt.External.emulated";

/// Shares of each answer status. They need not sum to 1: they are normalised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratios {
    pub ack: f64,
    pub error: f64,
    pub not_now: f64,
}

impl Default for Ratios {
    fn default() -> Self {
        Ratios { ack: 1.0, error: 0.0, not_now: 0.0 }
    }
}

impl Ratios {
    /// The status for a uniform draw `r` in `[0, 1)`.
    pub fn pick(&self, r: f64) -> &'static str {
        let total = self.ack + self.error + self.not_now;
        if total <= 0.0 {
            return "Acknowledged";
        }
        let x = r * total;
        if x < self.ack {
            "Acknowledged"
        } else if x < self.ack + self.error {
            "Error"
        } else {
            "NotNow"
        }
    }
}

/// The CA that issues the devices' identities (the gateway's `ca.pem`/`ca-key.pem`, or a CA
/// given to the gateway with `--device-ca`).
#[derive(Debug, Clone)]
pub struct Issuer {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Issuer {
    /// Reads `ca.pem` and `ca-key.pem` from a gateway data directory.
    pub fn from_data_dir(dir: &std::path::Path) -> Result<Issuer, FleetError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| FleetError::Setup(format!("{}: {e}", dir.join(name).display())))
        };
        let cert = X509::from_pem(&read("ca.pem")?).map_err(|e| FleetError::Setup(format!("ca.pem: {e}")))?;
        let key = PKey::private_key_from_pem(&read("ca-key.pem")?)
            .map_err(|e| FleetError::Setup(format!("ca-key.pem: {e}")))?;
        Ok(Issuer { cert, key })
    }

    /// A client-auth identity for `common_name` with `key`, valid from an hour before `now` for a
    /// year, with a random serial.
    pub fn issue(&self, common_name: &str, key: &PKey<Private>, now: i64) -> Result<X509, FleetError> {
        let serial = mdm_certs::devpki::serial_from_random(rand::random());
        mdm_certs::devpki::issue_device_certificate(
            &self.cert,
            &self.key,
            key,
            common_name,
            now - 3600,
            now + 86_400 * 365,
            &serial,
        )
        .map_err(|e| FleetError::Setup(format!("certificate: {e}")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet setup: {0}")]
    Setup(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
}

/// How the fleet's devices get their identities.
#[derive(Debug, Clone)]
pub enum FleetEnroll {
    /// Certificates issued directly from this CA before the run (the gateway's own CA, or one
    /// given to it with `--device-ca`).
    Issued(Issuer),
    /// The real way, each device on its own: `GET /mdm/enroll` (through a ticket from
    /// `POST /enroll/session` when `ticket`), the signature checked against the fleet's
    /// `server_ca_pem`, SCEP as the profile says, then Authenticate/TokenUpdate to its URLs.
    Profile {
        ticket: bool,
        /// `?topic=` for the download, when the gateway has several push certificates.
        topic: Option<String>,
    },
}

impl FleetEnroll {
    /// `direct` or `profile`, as in `mdm-emulate --enroll`.
    pub fn name(&self) -> &'static str {
        match self {
            FleetEnroll::Issued(_) => "direct",
            FleetEnroll::Profile { .. } => "profile",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub devices: usize,
    /// Device listener base URL, e.g. `https://localhost:8443`.
    pub gateway_url: String,
    /// What devices trust for the gateway's server certificate (and, enrolling by profile, for
    /// the profile's signature).
    pub server_ca_pem: Vec<u8>,
    pub enroll: FleetEnroll,
    /// Requests in flight at most, across the fleet.
    pub concurrency: usize,
    pub ratios: Ratios,
    pub seed: u64,
    /// UDIDs are `<prefix>-<seed>-<index>`.
    pub udid_prefix: String,
    /// Also enroll one user channel per device (TokenUpdate with a UserID).
    pub user_channel: bool,
    /// Several instances of the gateway behind an ideal balancer: device `i` talks to
    /// `instance_urls[i % len]`. Empty: every device talks to `gateway_url`.
    pub instance_urls: Vec<String>,
}

impl FleetConfig {
    /// Devices with identities issued directly by `issuer`.
    pub fn new(devices: usize, gateway_url: &str, server_ca_pem: Vec<u8>, issuer: Issuer) -> Self {
        Self::with_enroll(devices, gateway_url, server_ca_pem, FleetEnroll::Issued(issuer))
    }

    pub fn with_enroll(devices: usize, gateway_url: &str, server_ca_pem: Vec<u8>, enroll: FleetEnroll) -> Self {
        FleetConfig {
            devices,
            gateway_url: gateway_url.to_owned(),
            server_ca_pem,
            enroll,
            concurrency: 64,
            ratios: Ratios::default(),
            seed: 1,
            udid_prefix: "EMU".into(),
            user_channel: false,
            instance_urls: Vec::new(),
        }
    }
}

struct Member {
    udid: String,
    /// Set at build (identities issued directly) or once its profile enrollment got an identity.
    device: OnceLock<AppleDevice>,
    user: Option<UserChannel>,
    rng: Mutex<StdRng>,
    /// A session is running; a push meanwhile sets `again` instead of starting a second one.
    busy: AtomicBool,
    again: AtomicBool,
    /// Completed Authenticate and TokenUpdate.
    enrolled: AtomicBool,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("udid", &self.udid).finish()
    }
}

/// Live counters of a fleet. Latencies are in microseconds.
#[derive(Debug, Default)]
pub struct Counters {
    pub enrolled: AtomicU64,
    /// Identities issued by the gateway's SCEP server (profile enrollment).
    pub scep_identities: AtomicU64,
    /// Tickets whose status said `enrolled` with the device's id after TokenUpdate.
    pub tickets_enrolled: AtomicU64,
    pub user_channels: AtomicU64,
    pub sessions: AtomicU64,
    pub pushes: AtomicU64,
    pub unknown_pushes: AtomicU64,
    pub acknowledged: AtomicU64,
    pub errored: AtomicU64,
    pub not_now: AtomicU64,
    pub checked_out: AtomicU64,
    pub errors: Errors,
    enroll_us: Samples,
    checkin_us: Samples,
    push_to_session_us: Samples,
}

impl Counters {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.note(e);
    }

    /// Commands answered so far, all statuses.
    pub fn answered(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
            + self.errored.load(Ordering::Relaxed)
            + self.not_now.load(Ordering::Relaxed)
    }
}

/// p50 / p99 / max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// From microsecond samples (sorted here).
    pub fn from_micros(samples: &mut [u32]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            f64::from(samples[i]) / 1000.0
        };
        Latency {
            count: samples.len() as u64,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: f64::from(samples[samples.len() - 1]) / 1000.0,
        }
    }
}

/// What a fleet run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub devices: usize,
    /// `direct` or `profile`.
    pub enroll_mode: &'static str,
    pub enrolled: u64,
    pub scep_identities: u64,
    pub tickets_enrolled: u64,
    pub user_channels: u64,
    pub sessions: u64,
    pub pushes: u64,
    pub unknown_pushes: u64,
    pub acknowledged: u64,
    pub errored: u64,
    pub not_now: u64,
    pub checked_out: u64,
    /// Requests that failed (transport error or a non-200 answer).
    pub errors: u64,
    pub first_errors: Vec<String>,
    /// Authenticate + TokenUpdate per device (enrolling by profile: from the ticket to the
    /// ticket's `enrolled` state, profile and SCEP included).
    pub enroll_latency: Latency,
    /// Every request of every session (Idle and reports).
    pub checkin_latency: Latency,
    /// From the APNs emulator accepting a push to the device's session starting.
    pub push_to_session_latency: Latency,
    pub wall_seconds: f64,
}

impl Summary {
    pub fn answered(&self) -> u64 {
        self.acknowledged + self.errored + self.not_now
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> =
            vec![("devices".into(), self.devices.to_string()), ("enrolled".into(), self.enrolled.to_string())];
        if self.enroll_mode == "profile" {
            rows.push((
                "enrollment".into(),
                format!(
                    "profile + SCEP: {} identities issued, {} tickets enrolled",
                    self.scep_identities, self.tickets_enrolled
                ),
            ));
        }
        if self.user_channels > 0 {
            rows.push(("user channels".into(), self.user_channels.to_string()));
        }
        rows.extend([
            ("sessions".into(), self.sessions.to_string()),
            ("pushes received".into(), format!("{} ({} unknown token)", self.pushes, self.unknown_pushes)),
            (
                "commands answered".into(),
                format!(
                    "{} (Acknowledged {}, Error {}, NotNow {})",
                    self.answered(),
                    self.acknowledged,
                    self.errored,
                    self.not_now
                ),
            ),
            ("checked out".into(), self.checked_out.to_string()),
            ("errors".into(), self.errors.to_string()),
        ]);
        for (name, l) in [
            ("enroll", &self.enroll_latency),
            ("check-in request", &self.checkin_latency),
            ("push → session", &self.push_to_session_latency),
        ] {
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

/// A running fleet. Cheap to share (`Arc<Fleet>`).
#[derive(Debug)]
pub struct Fleet {
    members: Vec<Arc<Member>>,
    enroll_mode: &'static str,
    /// Enrolling by profile: the shared not-yet-enrolled device side, and whether to use tickets.
    enroller: Option<(Enroller, bool)>,
    by_token: HashMap<String, usize>,
    permits: Arc<Semaphore>,
    counters: Arc<Counters>,
    ratios: Ratios,
    started: Instant,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A device identity: its private key and certificate.
pub type Identity = (PKey<Private>, X509);

/// `n` P-256 keys and client-auth certificates from `issuer`, made on all cores.
pub fn issue_identities(issuer: &Issuer, common_names: &[String]) -> Result<Vec<Identity>, FleetError> {
    let now = unix_now();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
    let chunk = common_names.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Identity>, FleetError>> = std::thread::scope(|s| {
        let handles: Vec<_> = common_names
            .chunks(chunk)
            .map(|names| {
                s.spawn(move || {
                    names
                        .iter()
                        .map(|cn| {
                            let key = mdm_certs::devpki::generate_key()
                                .map_err(|e| FleetError::Setup(format!("key: {e}")))?;
                            let cert = issuer.issue(cn, &key, now)?;
                            Ok((key, cert))
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(FleetError::Setup("issuing thread panicked".into()))))
            .collect()
    });
    let mut out = Vec::with_capacity(common_names.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// The UDID of device `index` of a fleet.
pub fn fleet_udid(prefix: &str, seed: u64, index: usize) -> String {
    format!("{prefix}-{seed:04X}-{index:08X}")
}

/// The APNs token the fleet gives a device: SHA-256 of its UDID.
pub fn fleet_token(udid: &str) -> Vec<u8> {
    Sha256::digest(udid.as_bytes()).to_vec()
}

/// A device with the fleet's push token and PushMagic for its UDID.
fn fleet_device(mut device: AppleDevice) -> AppleDevice {
    device.push_token = fleet_token(&device.udid);
    device.push_magic = format!("magic-{}", device.udid);
    device
}

impl Fleet {
    /// Makes the devices (keys, certificates, one shared client); sends nothing yet.
    pub fn build(config: &FleetConfig) -> Result<Fleet, FleetError> {
        let root = reqwest::Certificate::from_pem(&config.server_ca_pem)
            .map_err(|e| FleetError::Setup(format!("server CA: {e}")))?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .pool_max_idle_per_host(config.concurrency.max(1))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| FleetError::Setup(format!("HTTP client: {e}")))?;
        let udids: Vec<String> = (0..config.devices).map(|i| fleet_udid(&config.udid_prefix, config.seed, i)).collect();
        let (mut identities, enroller) = match &config.enroll {
            FleetEnroll::Issued(issuer) => (issue_identities(issuer, &udids)?.into_iter().map(Some).collect(), None),
            FleetEnroll::Profile { ticket, topic } => {
                let mut enroller = Enroller::with_client(&config.gateway_url, &config.server_ca_pem, client.clone())?;
                enroller.topic = topic.clone();
                // Many devices at once meet the gateway's enrollment rate limit: wait as told.
                enroller.rate_limit_patience = Duration::from_secs(600);
                (vec![None; udids.len()], Some((enroller, *ticket)))
            }
        };
        let mut members = Vec::with_capacity(config.devices);
        let mut by_token = HashMap::with_capacity(config.devices);
        for (i, udid) in udids.iter().enumerate() {
            by_token.insert(hex::encode(fleet_token(udid)), i);
            let device = OnceLock::new();
            if let Some((key, cert)) = identities[i].take() {
                let url = match config.instance_urls.len() {
                    0 => &config.gateway_url,
                    n => &config.instance_urls[i % n],
                };
                let device_value =
                    AppleDevice::with_client(udid, key, cert, IdentityMode::SignMessages, url, client.clone());
                let _ = device.set(fleet_device(device_value));
            }
            let user = config.user_channel.then(|| UserChannel {
                user_id: format!("{:08X}-0000-4000-8000-{:012X}", config.seed as u32, i),
                short_name: format!("user{i}"),
                long_name: format!("Emulated User {i}"),
            });
            members.push(Arc::new(Member {
                udid: udid.clone(),
                device,
                user,
                rng: Mutex::new(StdRng::seed_from_u64(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64)),
                busy: AtomicBool::new(false),
                again: AtomicBool::new(false),
                enrolled: AtomicBool::new(false),
            }));
        }
        Ok(Fleet {
            members,
            enroll_mode: config.enroll.name(),
            enroller,
            by_token,
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            counters: Arc::new(Counters::default()),
            ratios: config.ratios,
            started: Instant::now(),
        })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Device `index`, once it has an identity (always, with identities issued directly).
    pub fn device(&self, index: usize) -> Option<&AppleDevice> {
        self.members.get(index)?.device.get()
    }

    /// The UDID of device `index`.
    pub fn udid(&self, index: usize) -> &str {
        &self.members[index].udid
    }

    /// The APNs token device `index` sends in its TokenUpdate (lower-case hex).
    pub fn token_hex(&self, index: usize) -> String {
        hex::encode(fleet_token(&self.members[index].udid))
    }

    /// The index of the first device that completed enrollment, if any.
    pub fn first_enrolled(&self) -> Option<usize> {
        self.members.iter().position(|m| m.device.get().is_some() && m.enrolled.load(Ordering::Relaxed))
    }

    /// The `apple:<UDID>` ids of every device, in fleet order.
    pub fn device_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("apple:{}", m.udid)).collect()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Index of the device owning an APNs token (lower-case hex).
    pub fn by_token(&self, token_hex: &str) -> Option<usize> {
        self.by_token.get(token_hex).copied()
    }

    /// Enrolls every device (Authenticate, TokenUpdate, and the user channel's TokenUpdate when
    /// configured), at most `concurrency` requests at once. Failures are counted, not fatal.
    pub async fn enroll_all(self: &Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.members.len() {
            let fleet = self.clone();
            let permit = self.permits.clone().acquire_owned().await.expect("semaphore open");
            tasks.spawn(async move {
                let _permit = permit;
                fleet.enroll(i).await;
            });
            // Reap finished ones as we go so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn enroll(&self, i: usize) {
        let m = &self.members[i];
        let started = Instant::now();
        let result = match (&self.enroller, m.device.get()) {
            (_, Some(device)) => device.enroll().await.map_err(EnrollError::from),
            (Some((enroller, ticket)), None) => self.enroll_by_profile(m, enroller, *ticket).await,
            (None, None) => Err(EnrollError::NotProfileEnrolled),
        };
        match result {
            Ok(()) => {
                m.enrolled.store(true, Ordering::Relaxed);
                self.counters.enroll_us.record(started.elapsed());
                self.counters.enrolled.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return self.counters.error(format!("{}: enroll: {e}", m.udid)),
        }
        let Some(device) = m.device.get() else { return };
        if let Some(user) = &m.user {
            match device.send_checkin(device.token_update_message(Some(user))).await {
                Ok(r) if r.status == 200 => {
                    self.counters.user_channels.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => self.counters.error(format!("{}: user TokenUpdate answered {}", m.udid, r.status)),
                Err(e) => self.counters.error(format!("{}: user TokenUpdate: {e}", m.udid)),
            }
        }
    }

    /// Ticket (optional), profile, SCEP, Authenticate, TokenUpdate; then the ticket must say
    /// `enrolled` for this device.
    async fn enroll_by_profile(&self, m: &Member, enroller: &Enroller, use_ticket: bool) -> Result<(), EnrollError> {
        let ticket = if use_ticket { Some(enroller.create_ticket().await?) } else { None };
        let device = fleet_device(enroller.identity_device(&m.udid, ticket.as_ref()).await?);
        self.counters.scep_identities.fetch_add(1, Ordering::Relaxed);
        let device = m.device.get_or_init(|| device);
        device.enroll().await?;
        if let Some(ticket) = &ticket {
            let status = enroller.ticket_status(ticket).await?;
            let expected = format!("apple:{}", m.udid);
            if status.state != "enrolled" || status.device_id.as_deref() != Some(expected.as_str()) {
                return Err(EnrollError::BadAnswer {
                    what: "GET /enroll/session/<ticket>",
                    detail: format!("after TokenUpdate: {}", status.raw),
                });
            }
            self.counters.tickets_enrolled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One session of device `index` (bounded by the fleet's concurrency), counted.
    pub async fn session(&self, index: usize) {
        let Some(m) = self.members.get(index) else { return };
        // A device without an identity (its profile enrollment failed, counted then) has no
        // server to talk to.
        let Some(device) = m.device.get() else { return };
        let _permit = self.permits.acquire().await.expect("semaphore open");
        let ratios = self.ratios;
        let choose = |_: &str| {
            let r: f64 = m.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
            ratios.pick(r)
        };
        let counters = &self.counters;
        let result = device.session_timed(choose, |d| counters.checkin_us.record(d)).await;
        self.counters.sessions.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(handled) => {
                for (_, _, status) in handled {
                    let c = match status.as_str() {
                        "Acknowledged" => &self.counters.acknowledged,
                        "Error" => &self.counters.errored,
                        _ => &self.counters.not_now,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => self.counters.error(format!("{}: session: {e}", m.udid)),
        }
    }

    /// Wakes device `index` as a push would: runs a session now, or right after the one in
    /// progress (pushes arriving during a session coalesce into one more session).
    pub async fn wake(self: &Arc<Self>, index: usize) {
        let Some(m) = self.members.get(index) else { return };
        if m.busy.swap(true, Ordering::AcqRel) {
            m.again.store(true, Ordering::Release);
            // The running session may have finished between our swap and store: take over then.
            if m.busy.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        loop {
            m.again.store(false, Ordering::Release);
            self.session(index).await;
            m.busy.store(false, Ordering::Release);
            if !m.again.load(Ordering::Acquire) || m.busy.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Runs sessions for pushes from the APNs emulator ([`crate::apns::ApnsEmulator::start`]
    /// hands out the receiver) until the channel closes or `until`.
    pub async fn run_push(
        self: &Arc<Self>,
        mut deliveries: mpsc::UnboundedReceiver<PushDelivery>,
        until: Option<tokio::time::Instant>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let delivery = match until {
                Some(t) => match tokio::time::timeout_at(t, deliveries.recv()).await {
                    Ok(d) => d,
                    Err(_) => break,
                },
                None => deliveries.recv().await,
            };
            let Some(d) = delivery else { break };
            self.counters.pushes.fetch_add(1, Ordering::Relaxed);
            let Some(i) = self.by_token(&d.token_hex) else {
                self.counters.unknown_pushes.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            self.counters.push_to_session_us.record(d.accepted_at.elapsed());
            let fleet = self.clone();
            tasks.spawn(async move { fleet.wake(i).await });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Every device runs a session every `interval` (spread evenly over the interval) until
    /// `until`.
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
                    fleet.wake(i).await;
                    next += interval;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Every device runs one session (e.g. after commands were queued without push).
    pub async fn session_all(self: &Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.members.len() {
            let fleet = self.clone();
            tasks.spawn(async move { fleet.wake(i).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Every enrolled device checks out.
    pub async fn checkout_all(self: &Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.members.len() {
            let fleet = self.clone();
            tasks.spawn(async move {
                let _permit = fleet.permits.acquire().await.expect("semaphore open");
                let m = &fleet.members[i];
                let Some(device) = m.device.get() else { return };
                match device.send_checkin(device.checkout_message()).await {
                    Ok(r) if r.status == 200 => {
                        fleet.counters.checked_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => fleet.counters.error(format!("{}: CheckOut answered {}", m.udid, r.status)),
                    Err(e) => fleet.counters.error(format!("{}: CheckOut: {e}", m.udid)),
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The counters so far, with latency percentiles; wall time since [`Fleet::build`].
    pub fn summary(&self) -> Summary {
        let c = &self.counters;
        Summary {
            devices: self.members.len(),
            enroll_mode: self.enroll_mode,
            enrolled: c.enrolled.load(Ordering::Relaxed),
            scep_identities: c.scep_identities.load(Ordering::Relaxed),
            tickets_enrolled: c.tickets_enrolled.load(Ordering::Relaxed),
            user_channels: c.user_channels.load(Ordering::Relaxed),
            sessions: c.sessions.load(Ordering::Relaxed),
            pushes: c.pushes.load(Ordering::Relaxed),
            unknown_pushes: c.unknown_pushes.load(Ordering::Relaxed),
            acknowledged: c.acknowledged.load(Ordering::Relaxed),
            errored: c.errored.load(Ordering::Relaxed),
            not_now: c.not_now.load(Ordering::Relaxed),
            checked_out: c.checked_out.load(Ordering::Relaxed),
            errors: c.errors.count(),
            first_errors: c.errors.first(),
            enroll_latency: c.enroll_us.latency(),
            checkin_latency: c.checkin_us.latency(),
            push_to_session_latency: c.push_to_session_us.latency(),
            wall_seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// A small client for the backend API (queueing commands, reading events).
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    key: String,
    client: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, key: &str) -> ApiClient {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build()
            .expect("HTTP client");
        ApiClient { base: base.trim_end_matches('/').to_owned(), key: key.to_owned(), client }
    }

    /// `POST /v1/commands`; the command id.
    pub async fn enqueue(&self, device_id: &str, command: serde_json::Value) -> Result<String, String> {
        let resp = self
            .client
            .post(format!("{}/v1/commands", self.base))
            .bearer_auth(&self.key)
            .json(&serde_json::json!({ "device_id": device_id, "command": command }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if status != 202 {
            return Err(format!("POST /v1/commands answered {status}: {body}"));
        }
        body["command_id"].as_str().map(str::to_owned).ok_or_else(|| format!("no command_id in {body}"))
    }

    /// `GET /v1/commands/<id>`: the command's record.
    pub async fn command(&self, command_id: &str) -> Result<serde_json::Value, String> {
        let resp = self
            .client
            .get(format!("{}/v1/commands/{command_id}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("GET /v1/commands/{command_id} answered {status}: {body}"));
        }
        Ok(body)
    }

    /// `GET /v1/events?after=&limit=&wait=`: (events, next cursor).
    pub async fn events(
        &self,
        after: &str,
        limit: u32,
        wait_s: u64,
    ) -> Result<(Vec<serde_json::Value>, String), String> {
        let resp = self
            .client
            .get(format!("{}/v1/events?after={after}&limit={limit}&wait={wait_s}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("GET /v1/events answered {status}: {body}"));
        }
        let events = body["events"].as_array().cloned().unwrap_or_default();
        let next = body["next"].as_str().unwrap_or(after).to_owned();
        Ok((events, next))
    }

    /// `PUT /v1/pushcert` with a PEM certificate and key (one body); `query` e.g. `""` or
    /// `"?add=1"`. The reply on 200, else an error with the gateway's message.
    pub async fn put_pushcert(&self, pem: String, query: &str) -> Result<serde_json::Value, String> {
        let resp = self
            .client
            .put(format!("{}/v1/pushcert{query}", self.base))
            .bearer_auth(&self.key)
            .body(pem)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("PUT /v1/pushcert answered {status}: {body}"));
        }
        Ok(body)
    }

    /// `GET /v1/push/<id,id,…>` (NanoMDM-compatible; waits for APNs' answers): (HTTP status,
    /// reply). 200, 207 and 500 all carry per-id `push_result` / `push_error` in `status`.
    pub async fn push(&self, ids: &[&str]) -> Result<(u16, serde_json::Value), String> {
        let resp = self
            .client
            .get(format!("{}/v1/push/{}", self.base, ids.join(",")))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// The current end of the event log (a cursor after every event so far).
    pub async fn events_end(&self) -> Result<String, String> {
        let mut after = "0".to_owned();
        loop {
            let (events, next) = self.events(&after, 1000, 0).await?;
            if events.is_empty() {
                return Ok(next);
            }
            after = next;
        }
    }
}

/// The commands `mdm-emulate --commands N` queues per device: alternately DeviceInformation and
/// SecurityInfo.
pub fn sample_command(n: usize) -> serde_json::Value {
    if n.is_multiple_of(2) {
        serde_json::json!({ "type": "device_info" })
    } else {
        serde_json::json!({ "type": "raw", "platform": "apple", "payload": { "RequestType": "SecurityInfo" } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pick_by_share_and_normalise() {
        let r = Ratios { ack: 0.9, error: 0.05, not_now: 0.05 };
        assert_eq!(r.pick(0.0), "Acknowledged");
        assert_eq!(r.pick(0.899), "Acknowledged");
        assert_eq!(r.pick(0.91), "Error");
        assert_eq!(r.pick(0.99), "NotNow");
        // Shares need not sum to 1.
        let r = Ratios { ack: 2.0, error: 1.0, not_now: 1.0 };
        assert_eq!(r.pick(0.49), "Acknowledged");
        assert_eq!(r.pick(0.6), "Error");
        assert_eq!(r.pick(0.8), "NotNow");
        assert_eq!(Ratios { ack: 0.0, error: 0.0, not_now: 0.0 }.pick(0.5), "Acknowledged");
    }

    #[test]
    fn seeded_answers_repeat_and_follow_ratios() {
        let draw = |seed: u64| {
            let mut rng = StdRng::seed_from_u64(seed);
            let r = Ratios { ack: 0.9, error: 0.05, not_now: 0.05 };
            (0..10_000).map(|_| r.pick(rng.random())).collect::<Vec<_>>()
        };
        let a = draw(5);
        assert_eq!(a, draw(5));
        let acks = a.iter().filter(|s| **s == "Acknowledged").count();
        assert!((8_800..9_200).contains(&acks), "{acks}");
    }

    #[test]
    fn latency_percentiles() {
        let mut v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        let l = Latency::from_micros(&mut v);
        assert_eq!((l.count, l.p50_ms, l.p99_ms, l.max_ms), (100, 50.0, 99.0, 100.0));
        assert_eq!(Latency::from_micros(&mut []), Latency::default());
    }
}
