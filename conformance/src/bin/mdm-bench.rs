//! `mdm-bench`: load tests of a real `mdm-gateway` child process on loopback, compared in the
//! same run with a bare hyper + rustls server (the ceiling of the machine).
//!
//! ```sh
//! cargo build --release -p mdm-gateway -p mdm-conformance --bins
//! target/release/mdm-bench idle --enrolled 10000,100000,1000000 --duration 20s
//! target/release/mdm-bench roundtrip --rate 500,2000,5000 --duration 10s
//! target/release/mdm-bench roundtrip --push --rate 200 --duration 10s
//! target/release/mdm-bench push --devices 10000 --batch 100 --concurrency 8 --duration 10s
//! target/release/mdm-bench windows --duration 10s
//! target/release/mdm-bench android --pushes 100000 --duration 10s
//! target/release/mdm-bench cluster --postgres postgres://mdm:mdm@127.0.0.1/mdm_test
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::HeaderValue;
use mdm_conformance::apple::fleet::{self, ApiClient, Fleet, FleetConfig, Issuer};
use mdm_conformance::apple::{AppleDevice, IdentityMode};
use mdm_conformance::bench::child::{self, ChildServer, GatewayChild};
use mdm_conformance::bench::cluster;
use mdm_conformance::bench::load::{self, LoadResult, LoadSpec, Prepared};
use mdm_conformance::bench::push::{self as push_bench, EmulatedApns, PushResult, PushSpec};
use mdm_conformance::bench::roundtrip::{self, RoundtripResult, RoundtripSpec, Waker};
use mdm_conformance::bench::seed::{self, ActiveDevice, SeedStats, WindowsSeed};
use mdm_conformance::bench::windows::{self as win_bench, SessionCommand, SessionResult, SessionSpec};
use mdm_conformance::bench::{ceiling, client_config, client_config_with};
use mdm_conformance::cli::parse_duration;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "mdm-bench", version, about = "Load tests for mdm-gateway (loopback only, bounded in time)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Signed Idle check-ins with empty queues, gateway vs. a bare hyper + rustls server.
    Idle(IdleArgs),
    /// POST /v1/commands → device session → command.acknowledged on /v1/events, at set rates.
    Roundtrip(RoundtripArgs),
    /// GET /v1/push/<ids> in batches through the gateway's APNs pool to an in-process APNs emulator.
    Push(PushArgs),
    /// Windows: MS-WSTEP enrollments/s (certificate signing) and three-message OMA-DM sessions/s
    /// over mutual TLS, each against the bare hyper + rustls ceiling.
    Windows(WindowsArgs),
    /// Android: Pub/Sub push deliveries of AMAPI STATUS_REPORTs ingested durably (with
    /// deduplication and per-device ordering), against the bare hyper + rustls ceiling.
    Android(AndroidArgs),
    /// Apple check-ins and command round trips on SQLite, on PostgreSQL, and on two instances
    /// sharing one PostgreSQL, one after the other in one run.
    Cluster(ClusterArgs),
    /// Write enrolled devices into a stopped gateway's data directory.
    Seed(SeedArgs),
    /// (internal) The ceiling server, run as a child process.
    #[command(hide = true)]
    CeilingServer(CeilingArgs),
}

#[derive(Debug, Args, Clone)]
struct Common {
    /// The `mdm-gateway` binary; default: next to this executable.
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// A TOML configuration passed to the gateway with --config.
    #[arg(long)]
    gateway_config: Option<PathBuf>,
    /// Work directory (kept); default: a temporary directory removed at the end.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the results as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Enrolled devices in the store; a comma-separated list runs each size in turn.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    enrolled: Vec<u64>,
    /// How many of them send requests (each with its own certificate and pre-signed body).
    #[arg(long, default_value_t = 1000)]
    active: usize,
    /// Concurrent TLS connections (HTTP/1.1 keep-alive, one request in flight each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time per run.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured load before each run.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Stop each run after this many measured requests (or at --duration).
    #[arg(long)]
    requests: Option<u64>,
    /// Skip the ceiling server run.
    #[arg(long)]
    no_ceiling: bool,
    /// How devices prove who they are: `signature` (Mdm-Signature on every body, shared
    /// connections) or `tls` (a client certificate per connection, unsigned bodies).
    #[arg(long, value_enum, default_value_t = Identity::Signature)]
    identity: Identity,
    /// The devices' identity keys: `rsa2048` (what Apple SCEP enrollment profiles typically
    /// issue; PKCS#1 v1.5 signatures, so a device's repeated Idle body carries the same
    /// signature every time) or `p256` (ECDSA: a fresh signature at every signing).
    #[arg(long, value_enum, default_value_t = DeviceKey::Rsa2048)]
    device_key: DeviceKey,
    /// Signature mode: pre-sign this many distinct signatures of the Idle body per device
    /// (needs `--device-key p256`) and send each once per cycle, so consecutive requests of a
    /// device never repeat a signature. 0: one signed message per device, reused.
    #[arg(long, default_value_t = 0)]
    distinct_signatures: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum DeviceKey {
    Rsa2048,
    P256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Identity {
    Signature,
    Tls,
}

#[derive(Debug, Args)]
struct RoundtripArgs {
    #[command(flatten)]
    common: Common,
    /// Enrolled devices in the store besides the fleet.
    #[arg(long, default_value_t = 10_000)]
    enrolled: u64,
    /// Emulated devices that receive commands (enrolled through the protocol).
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Target commands per second; a comma-separated list runs each rate in turn.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    rate: Vec<f64>,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Round trips in flight at most.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Device requests in flight at most.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Put APNs in the path: the gateway pushes to an in-process APNs emulator and devices wake
    /// on its deliveries (default: the driver wakes the device when the POST answers).
    #[arg(long)]
    push: bool,
    /// With --push: the gateway's `apple.push_coalesce_ms` (default: the gateway's, 1000).
    #[arg(long, requires = "push")]
    push_coalesce_ms: Option<u64>,
}

#[derive(Debug, Args)]
struct PushArgs {
    #[command(flatten)]
    common: Common,
    /// Enrolled devices with push tokens in the store (seeded), pushed round-robin.
    #[arg(long, default_value_t = 10_000)]
    devices: u64,
    /// Ids per GET /v1/push request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// API requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after this many requests (or at --duration).
    #[arg(long)]
    max_batches: Option<u64>,
}

#[derive(Debug, Args)]
struct AndroidArgs {
    #[command(flatten)]
    common: Common,
    /// Measured time of each run.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured load before each run.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Skip the ceiling server run.
    #[arg(long)]
    no_ceiling: bool,
    /// Concurrent TLS connections (HTTP/1.1 keep-alive, one push in flight each), as Pub/Sub's
    /// push delivery opens several.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Distinct pushes made before the run (each its own message id); a run ends when they are
    /// used up, so none is sent twice. Needs (warm-up + duration) × pushes/s.
    #[arg(long, default_value_t = 100_000)]
    pushes: usize,
    /// Devices the pushes cycle over.
    #[arg(long, default_value_t = 2_000)]
    devices: usize,
    /// Then send the same pushes again: every one a duplicate (answered from the handled-id check).
    #[arg(long)]
    duplicates: bool,
}

/// The parts of `mdm-bench windows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum WindowsScenario {
    /// MS-WSTEP RequestSecurityToken (Issue) with pre-made CSRs: enrollments/s.
    Enroll,
    /// Three-message OMA-DM sessions over mutual TLS, one per pre-enrolled device: sessions/s.
    Sessions,
}

#[derive(Debug, Args)]
struct WindowsArgs {
    #[command(flatten)]
    common: Common,
    /// What to measure (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "enroll,sessions")]
    scenario: Vec<WindowsScenario>,
    /// Measured time of each run.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured load before each run.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Skip the ceiling server runs.
    #[arg(long)]
    no_ceiling: bool,
    /// Enrollment: concurrent TLS connections (HTTP/1.1 keep-alive, one request in flight each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Enrollment: distinct requests made before the run (a device, UPN and CSR each), sent in
    /// turn; when they run out, devices enroll again (a re-enrollment: a new certificate too).
    #[arg(long, default_value_t = 5000)]
    enroll_requests: usize,
    /// Sessions: enrolled devices (written into the store before the gateway starts), one command
    /// queued for each, one session each; the gateway run ends early when they are used up
    /// (the ceiling takes them in turn again). Needs (warm-up + duration) × sessions/s.
    #[arg(long, default_value_t = 30_000)]
    devices: usize,
    /// Sessions in flight, each on its own TLS connection with its device's certificate.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Sessions: the command each session delivers: `lock` (one Exec) or `device-info` (15 Gets
    /// and their Results).
    #[arg(long, value_enum, default_value_t = SessionCommand::Lock)]
    command: SessionCommand,
    /// Sessions: the devices' TLS client keys: `p256` or `rsa2048` (what Windows' TPM keys are;
    /// the client's RSA signature per handshake costs the load generator ~1 ms of CPU).
    #[arg(long, value_enum, default_value_t = DeviceKey::P256)]
    device_key: DeviceKey,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    #[command(flatten)]
    common: Common,
    /// PostgreSQL server URL; its role must be allowed to create schemas (each setup runs on a
    /// new schema, dropped at the end).
    #[arg(long, env = "MDM_BENCH_POSTGRES_URL")]
    postgres: Option<String>,
    /// Setups in the order run, `store:instances`; ratios are to the first.
    #[arg(long, value_delimiter = ',', default_value = "sqlite:1,postgres:1,postgres:2", value_parser = cluster::Setup::parse)]
    setups: Vec<cluster::Setup>,
    /// Devices enrolled over the wire in each setup; all of them check in and take commands.
    #[arg(long, default_value_t = 500)]
    devices: usize,
    /// Concurrent TLS connections for the check-ins, spread over the instances.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Measured check-in time per setup.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Command round trips per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Sending time of the round trips per setup.
    #[arg(long, value_parser = parse_duration, default_value = "8s")]
    roundtrip_duration: Duration,
}

#[derive(Debug, Serialize)]
struct ClusterReport {
    scenario: &'static str,
    machine: Machine,
    devices: usize,
    connections: usize,
    rate: f64,
    setups: Vec<cluster::SetupResult>,
}

#[derive(Debug, Args)]
struct SeedArgs {
    /// A gateway data directory (the gateway must have run once on it, and be stopped).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    devices: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Debug, Args)]
struct CeilingArgs {
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    listen: SocketAddr,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// What the results were measured on.
#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    kernel: String,
    rustc: String,
    profile: &'static str,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        rustc,
        profile: if cfg!(debug_assertions) { "debug" } else { "release" },
    }
}

struct Work {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    gateway_bin: PathBuf,
}

fn work(c: &Common) -> Result<Work, String> {
    let gateway_bin = match &c.gateway_bin {
        Some(p) => p.clone(),
        None => child::sibling_binary("mdm-gateway")
            .ok_or("no mdm-gateway next to this executable: build it (cargo build --release -p mdm-gateway) or pass --gateway-bin")?,
    };
    let (dir, temp) = match &c.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("mdm-bench-").tempdir().map_err(|e| e.to_string())?;
            (t.path().to_owned(), Some(t))
        }
    };
    Ok(Work { dir, _temp: temp, gateway_bin })
}

/// Starts the gateway once on `data_dir` so it creates its CA, secrets and schema; stops it.
async fn init_data_dir(w: &Work, c: &Common, data_dir: &Path) -> Result<(), String> {
    let mut g = GatewayChild::start(&w.gateway_bin, data_dir, c.gateway_config.as_deref()).await?;
    g.stop()
}

/// What the load sends as `n` devices.
struct Devices {
    active: Vec<ActiveDevice>,
    requests: Arc<Vec<Prepared>>,
    /// TLS mode: each device's client certificate and key.
    identities: Vec<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
}

/// Certificates for `n` devices from the data dir's CA, and an Idle report each: pre-signed,
/// or unsigned with the certificate kept for TLS.
fn active_devices(
    data_dir: &Path,
    n: usize,
    identity: Identity,
    key: DeviceKey,
    distinct: usize,
) -> Result<Devices, String> {
    let issuer = Issuer::from_data_dir(data_dir).map_err(|e| e.to_string())?;
    let udids: Vec<String> = (0..n).map(|i| fleet::fleet_udid("BENCH", 0, i)).collect();
    let ids = match key {
        DeviceKey::P256 => fleet::issue_identities(&issuer, &udids).map_err(|e| e.to_string())?,
        DeviceKey::Rsa2048 => issue_rsa_identities(&issuer, &udids)?,
    };
    // A client that is never used: AppleDevice only builds and signs the messages here.
    let client = reqwest::Client::new();
    let mut active = Vec::with_capacity(n);
    let mut prepared = Vec::with_capacity(n);
    let mut identities = Vec::new();
    let mut signers = Vec::with_capacity(n);
    for (udid, (key, cert)) in udids.iter().zip(ids) {
        let fp = mdm_certs::fingerprint_sha256(&cert);
        if identity == Identity::Tls {
            let der = cert.to_der().map_err(|e| e.to_string())?;
            let key_der = key.private_key_to_pkcs8().map_err(|e| e.to_string())?;
            identities.push((
                vec![rustls::pki_types::CertificateDer::from(der)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key_der)),
            ));
        }
        let d = AppleDevice::with_client(udid, key, cert, IdentityMode::SignMessages, "https://unused", client.clone());
        let body = d.report_message("Idle", None, None, plist::Dictionary::new());
        let signature = match identity {
            Identity::Signature => {
                Some(HeaderValue::from_str(&d.sign(&body).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?)
            }
            Identity::Tls => None,
        };
        prepared.push(Prepared { body: Bytes::from(body), signature });
        active.push(ActiveDevice { udid: udid.clone(), cert_sha256: fp, cert_subject: format!("CN={udid}") });
        signers.push(d);
    }
    if identity == Identity::Signature && distinct > 1 {
        prepared = distinct_signatures(&signers, prepared, distinct)?;
    }
    Ok(Devices { active, requests: Arc::new(prepared), identities })
}

/// How many RSA keys the `rsa2048` devices share. An RSA 2048 key takes ~0.2 s to generate
/// here, so each device gets its own certificate (own serial, subject and fingerprint) on one
/// of these keys. The gateway never sees keys, only certificates and signatures, so its work
/// per request is the same as with a key per device.
const RSA_KEYS: usize = 16;

fn issue_rsa_identities(issuer: &Issuer, udids: &[String]) -> Result<Vec<fleet::Identity>, String> {
    let keys = rsa_keys(RSA_KEYS.min(udids.len()).max(1))?;
    let now = unix_now();
    udids
        .iter()
        .enumerate()
        .map(|(i, cn)| {
            let key = keys[i % keys.len()].clone();
            let cert = issuer.issue(cn, &key, now).map_err(|e| e.to_string())?;
            Ok((key, cert))
        })
        .collect()
}

/// `n` RSA 2048 keys, made on all cores.
fn rsa_keys(n: usize) -> Result<Vec<openssl::pkey::PKey<openssl::pkey::Private>>, String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    openssl::rsa::Rsa::generate(2048).and_then(openssl::pkey::PKey::from_rsa).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("key thread panicked".into())))
            .collect::<Result<_, _>>()
    })
}

/// `k` signatures of each device's Idle body, laid out as `k` rounds over the devices (entry
/// `r * n + i` is device `i`'s `r`-th signature), so the load's stride over the list visits
/// every signature once before any repeats. Signed before the run, on all cores.
fn distinct_signatures(devices: &[AppleDevice], first: Vec<Prepared>, k: usize) -> Result<Vec<Prepared>, String> {
    let n = devices.len();
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let rounds: Vec<usize> = (1..k).collect();
    let chunk = rounds.len().div_ceil(threads).max(1);
    let more: Vec<Vec<Prepared>> = std::thread::scope(|s| {
        let handles: Vec<_> = rounds
            .chunks(chunk)
            .map(|rs| {
                let first = &first;
                s.spawn(move || -> Result<Vec<Prepared>, String> {
                    let mut out = Vec::with_capacity(rs.len() * n);
                    for _ in rs {
                        for (d, p) in devices.iter().zip(first) {
                            let sig = d.sign(&p.body).map_err(|e| e.to_string())?;
                            out.push(Prepared {
                                body: p.body.clone(),
                                signature: Some(HeaderValue::from_str(&sig).map_err(|e| e.to_string())?),
                            });
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("signing thread panicked".into())))
            .collect::<Result<_, _>>()
    })?;
    let mut all = first;
    all.extend(more.into_iter().flatten());
    Ok(all)
}

fn spec(addrs: &[SocketAddr], ca_pem: &[u8], a: &IdleArgs, devices: &Devices) -> Result<LoadSpec, String> {
    let tls = if devices.identities.is_empty() {
        vec![client_config(ca_pem, &[b"http/1.1"])?]
    } else {
        devices
            .identities
            .iter()
            .map(|id| client_config_with(ca_pem, &[b"http/1.1"], Some((id.0.clone(), id.1.clone_key()))))
            .collect::<Result<_, _>>()?
    };
    Ok(LoadSpec {
        addrs: addrs.to_vec(),
        server_name: "localhost".into(),
        tls,
        connections: a.connections,
        warmup: a.warmup,
        duration: a.duration,
        max_requests: a.requests,
        requests: devices.requests.clone(),
        method: http::Method::PUT,
        path: "/mdm".into(),
        content_type: HeaderValue::from_static("application/x-apple-aspen-mdm"),
    })
}

/// One load run against a ceiling server started with `data_dir`'s certificate, stopped after.
async fn ceiling_load(
    w: &Work,
    data_dir: &Path,
    spec: impl FnOnce(SocketAddr) -> Result<LoadSpec, String>,
) -> Result<LoadResult, String> {
    let (mut server, addr) = start_ceiling(w, data_dir).await?;
    let r = match spec(addr) {
        Ok(spec) => load::run(spec, &[server.pid]).await,
        Err(e) => {
            server.stop(Duration::from_secs(5)).ok();
            return Err(e);
        }
    };
    server.stop(Duration::from_secs(5)).ok();
    Ok(r)
}

async fn start_ceiling(w: &Work, data_dir: &Path) -> Result<(ChildServer, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let addr: SocketAddr = format!("127.0.0.1:{}", child::free_port()?).parse().map_err(|e| format!("{e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("ceiling-server")
        .arg("--cert")
        .arg(data_dir.join("server.pem"))
        .arg("--key")
        .arg(data_dir.join("server-key.pem"))
        .arg("--listen")
        .arg(addr.to_string());
    let mut server = child::spawn(cmd, "ceiling server", &w.dir.join("ceiling.log"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if server.exited().is_some() || std::time::Instant::now() > deadline {
            return Err(format!("ceiling server did not start; see {}", w.dir.join("ceiling.log").display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((server, addr))
}

#[derive(Debug, Serialize)]
struct GatewayRun {
    enrolled: u64,
    seed: SeedStats,
    /// RSS of the gateway after start, before load (KiB).
    rss_idle_kib: u64,
    load: LoadResult,
    /// Gateway requests/s divided by the ceiling's.
    ratio_to_ceiling: Option<f64>,
    /// This run's requests/s divided by the first (smallest store) run's.
    ratio_to_first: f64,
}

#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str,
    machine: Machine,
    protocol: &'static str,
    identity: Identity,
    device_key: DeviceKey,
    /// Distinct pre-made signatures per device (1: one signed message reused).
    signatures_per_device: usize,
    connections: usize,
    active_devices: usize,
    warmup_s: f64,
    duration_s: f64,
    ceiling: Option<LoadResult>,
    gateway: Vec<GatewayRun>,
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|| "-".into())
}

fn row(name: &str, enrolled: &str, r: &LoadResult, ratio: Option<f64>) -> String {
    format!(
        "{name:<9} {enrolled:>9} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>8} {:>8.2} {:>8.1} {:>9} {:>7}",
        r.requests_per_second,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        r.requests,
        r.non_200 + r.errors,
        r.server_cpu_seconds.unwrap_or(0.0),
        r.server_cpu_us_per_request.unwrap_or(0.0),
        mib(r.server_peak_rss_kib),
        ratio.map(|x| format!("{:.0}%", x * 100.0)).unwrap_or_else(|| "-".into()),
    )
}

async fn idle(a: IdleArgs) -> Result<bool, String> {
    let w = work(&a.common)?;
    if a.enrolled.is_empty() {
        return Err("--enrolled needs at least one size".into());
    }
    if a.distinct_signatures > 1 && a.device_key != DeviceKey::P256 {
        return Err(
            "--distinct-signatures needs --device-key p256 (RSA PKCS#1 v1.5 signatures of one body are identical)"
                .into(),
        );
    }
    let mut report = IdleReport {
        scenario: "idle",
        machine: machine(),
        protocol: "HTTP/1.1 keep-alive over TLS 1.3 (rustls, ring), one request in flight per connection",
        identity: a.identity,
        device_key: a.device_key,
        signatures_per_device: a.distinct_signatures.max(1),
        connections: a.connections,
        active_devices: a.active,
        warmup_s: a.warmup.as_secs_f64(),
        duration_s: a.duration.as_secs_f64(),
        ceiling: None,
        gateway: Vec::new(),
    };
    let mut ok = true;
    for (idx, &enrolled) in a.enrolled.iter().enumerate() {
        let data_dir = w.dir.join(format!("gw-{enrolled}"));
        eprintln!("[{enrolled} enrolled] initialising {}", data_dir.display());
        init_data_dir(&w, &a.common, &data_dir).await?;
        let active_n = a.active.min(enrolled as usize).max(1);
        let devices = active_devices(&data_dir, active_n, a.identity, a.device_key, a.distinct_signatures)?;
        eprintln!("[{enrolled} enrolled] seeding the store");
        let seeded = seed::seed(&data_dir.join("gateway.db"), enrolled, &devices.active, unix_now(), 7).await?;
        eprintln!(
            "[{enrolled} enrolled] seeded {} rows in {:.1} s ({:.0} MiB)",
            seeded.rows,
            seeded.seconds,
            seeded.db_bytes as f64 / 1048576.0
        );
        let ca_pem = std::fs::read(data_dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;

        if idx == 0 && !a.no_ceiling {
            eprintln!("[ceiling] bare hyper + rustls server, {} connections, {:?}", a.connections, a.duration);
            let r = ceiling_load(&w, &data_dir, |addr| spec(&[addr], &ca_pem, &a, &devices)).await?;
            eprintln!("[ceiling] {:.0} requests/s", r.requests_per_second);
            report.ceiling = Some(r);
        }

        eprintln!("[{enrolled} enrolled] gateway, {} connections, {:?}", a.connections, a.duration);
        let mut g = GatewayChild::start(&w.gateway_bin, &data_dir, a.common.gateway_config.as_deref()).await?;
        let rss_idle_kib = g.server.sample().map(|s| s.rss_kib).unwrap_or(0);
        let r = load::run(spec(&[g.device_addr], &ca_pem, &a, &devices)?, &[g.server.pid]).await;
        g.stop()?;
        eprintln!("[{enrolled} enrolled] {:.0} requests/s", r.requests_per_second);
        if r.requests == 0 || r.non_200 > 0 {
            ok = false;
            let log = std::fs::read_to_string(&g.server.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            eprintln!("[{enrolled} enrolled] problems: {:?}; gateway log tail: {tail:?}", r.first_error);
        }
        let ratio_to_ceiling = report.ceiling.as_ref().map(|c| r.requests_per_second / c.requests_per_second.max(1e-9));
        let ratio_to_first =
            report.gateway.first().map(|f| r.requests_per_second / f.load.requests_per_second.max(1e-9)).unwrap_or(1.0);
        report.gateway.push(GatewayRun {
            enrolled,
            seed: seeded,
            rss_idle_kib,
            load: r,
            ratio_to_ceiling,
            ratio_to_first,
        });
        if a.common.work_dir.is_none() {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }

    println!();
    println!(
        "mdm-bench idle ({:?} identity, {:?} device keys, {} signature(s) per device): {} — {} connections, {} active devices, {:.0} s measured after {:.0} s warm-up",
        a.identity,
        a.device_key,
        a.distinct_signatures.max(1),
        report.protocol,
        a.connections,
        a.active,
        a.duration.as_secs_f64(),
        a.warmup.as_secs_f64()
    );
    println!(
        "{:<9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "server",
        "enrolled",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "reqs",
        "failed",
        "CPU s",
        "CPU µs/r",
        "peak MiB",
        "ratio"
    );
    if let Some(c) = &report.ceiling {
        println!("{}", row("ceiling", "-", c, None));
    }
    for g in &report.gateway {
        println!("{}", row("gateway", &g.enrolled.to_string(), &g.load, g.ratio_to_ceiling));
    }
    for g in report.gateway.iter().skip(1) {
        println!(
            "{} enrolled vs {}: throughput {:.1}%, idle RSS {} MiB, peak RSS {} MiB",
            g.enrolled,
            report.gateway[0].enrolled,
            g.ratio_to_first * 100.0,
            mib(Some(g.rss_idle_kib)),
            mib(g.load.server_peak_rss_kib)
        );
    }
    write_json(&a.common, &report)?;
    Ok(ok)
}

fn write_json(c: &Common, value: &impl Serialize) -> Result<(), String> {
    let Some(path) = &c.json else { return Ok(()) };
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    if path.as_os_str() == "-" {
        println!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[derive(Debug, Serialize)]
struct RoundtripReport {
    scenario: &'static str,
    machine: Machine,
    enrolled: u64,
    devices: usize,
    waker: Waker,
    waker_note: &'static str,
    runs: Vec<RoundtripResult>,
    gateway_cpu_seconds: Option<f64>,
    gateway_peak_rss_kib: Option<u64>,
    /// With --push: what went through the APNs emulator.
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<RoundtripPush>,
}

#[derive(Debug, Serialize)]
struct RoundtripPush {
    /// The gateway's `apple.push_coalesce_ms` when set by --push-coalesce-ms (else its default).
    coalesce_ms: Option<u64>,
    apns_accepted: u64,
    apns_refused: u64,
    apns_connections: u64,
    /// Deliveries the fleet received from the emulator.
    deliveries_received: u64,
    /// From the emulator accepting a push to the device's session starting.
    push_to_session_latency: fleet::Latency,
}

async fn roundtrip(a: RoundtripArgs) -> Result<bool, String> {
    let w = work(&a.common)?;
    let data_dir = w.dir.join("gw-roundtrip");
    init_data_dir(&w, &a.common, &data_dir).await?;
    let filler = a.enrolled.saturating_sub(a.devices as u64);
    if filler > 0 {
        let s = seed::seed(&data_dir.join("gateway.db"), filler, &[], unix_now(), 11).await?;
        eprintln!("seeded {} rows in {:.1} s", s.rows, s.seconds);
    }
    let (apns, deliveries) = if a.push {
        let (apns, rx) = EmulatedApns::start(&w.dir).await?;
        (Some(apns), Some(rx))
    } else {
        (None, None)
    };
    let env = apns.as_ref().map(|x| x.gateway_env(a.push_coalesce_ms)).unwrap_or_default();
    let mut g =
        GatewayChild::start_with_env(&w.gateway_bin, &data_dir, a.common.gateway_config.as_deref(), &env).await?;
    let api = ApiClient::new(&g.api_url(), &g.api_key()?);
    if let Some(apns) = &apns {
        apns.upload_certificate(&api, fleet::FLEET_TOPIC).await?;
        eprintln!("APNs emulator at {}, push certificate for {} uploaded", apns.emulator.url(), fleet::FLEET_TOPIC);
    }
    let ca_pem = std::fs::read(data_dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
    let issuer = Issuer::from_data_dir(&data_dir).map_err(|e| e.to_string())?;
    let mut config = FleetConfig::new(a.devices, &g.device_url(), ca_pem, issuer);
    config.concurrency = a.concurrency;
    config.udid_prefix = "RT".into();
    let fleet = Arc::new(Fleet::build(&config).map_err(|e| e.to_string())?);
    fleet.enroll_all().await;
    let s = fleet.summary();
    eprintln!("enrolled {} devices (p50 {:.1} ms), {} errors", s.enrolled, s.enroll_latency.p50_ms, s.errors);
    if s.enrolled != a.devices as u64 {
        return Err(format!("enrollment failed: {:?}", s.first_errors));
    }
    let waker = if a.push { Waker::Push } else { Waker::Direct };
    let push_coalesce_ms = a.push_coalesce_ms;
    // Pushes for the fleet's enrollment (none are sent for TokenUpdate, but be safe) are
    // counted from here.
    let apns_before = apns.as_ref().map(EmulatedApns::stats);
    let pusher = deliveries.map(|rx| {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.run_push(rx, None).await })
    });
    let before = g.server.sample();
    let mut runs = Vec::new();
    for &rate in &a.rate {
        eprintln!("round trip at {rate}/s for {:?}", a.duration);
        let r = roundtrip::run(
            fleet.clone(),
            api.clone(),
            RoundtripSpec {
                rate,
                duration: a.duration,
                max_in_flight: a.max_in_flight,
                waker,
                drain: Duration::from_secs(10),
            },
        )
        .await;
        eprintln!(
            "  completed {} ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms",
            r.completed, r.achieved_rate, r.latency.p50_ms, r.latency.p99_ms
        );
        runs.push(r);
    }
    let after = g.server.sample();
    g.stop()?;
    if let Some(p) = pusher {
        p.abort();
    }
    let apns_after = apns.as_ref().map(EmulatedApns::stats);
    let fs = fleet.summary();
    let report = RoundtripReport {
        scenario: "roundtrip",
        machine: machine(),
        enrolled: a.enrolled,
        devices: a.devices,
        waker,
        waker_note: if a.push {
            "the gateway pushes each command (HTTP/2 + TLS, push certificate) to an in-process APNs emulator; its delivery wakes the device"
        } else {
            "devices are woken by the driver as soon as POST /v1/commands answers (an ideal zero-latency push); APNs is not in the path"
        },
        gateway_cpu_seconds: before.zip(after).map(|(b, a)| a.cpu_seconds - b.cpu_seconds),
        gateway_peak_rss_kib: after.map(|s| s.peak_rss_kib),
        push: apns_before.zip(apns_after).map(|(b, a)| RoundtripPush {
            coalesce_ms: push_coalesce_ms,
            apns_accepted: a.accepted - b.accepted,
            apns_refused: a.refused.values().sum::<u64>() - b.refused.values().sum::<u64>(),
            apns_connections: a.connections,
            deliveries_received: fs.pushes,
            push_to_session_latency: fs.push_to_session_latency,
        }),
        runs,
    };
    println!();
    println!(
        "mdm-bench roundtrip: {} enrolled, {} emulated devices; wake: {}",
        a.enrolled, a.devices, report.waker_note
    );
    println!(
        "{:>8} {:>8} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "target/s", "posted", "completed", "done/s", "p50 ms", "p99 ms", "max ms", "POST p50", "lost"
    );
    let mut ok = true;
    for r in &report.runs {
        println!(
            "{:>8.0} {:>8} {:>10} {:>8.0} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>6}",
            r.target_rate,
            r.posted,
            r.completed,
            r.achieved_rate,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.post_latency.p50_ms,
            r.lost
        );
        ok &= r.completed > 0 && r.post_errors == 0;
    }
    if let Some(p) = &report.push {
        println!(
            "APNs emulator: {} pushes accepted, {} refused, {} connections; devices woken by {} deliveries (push → session p50 {:.2} ms, p99 {:.2} ms)",
            p.apns_accepted,
            p.apns_refused,
            p.apns_connections,
            p.deliveries_received,
            p.push_to_session_latency.p50_ms,
            p.push_to_session_latency.p99_ms
        );
        ok &= p.apns_accepted > 0;
    }
    println!(
        "device errors: {}{}",
        fs.errors,
        fs.first_errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    write_json(&a.common, &report)?;
    Ok(ok && fs.errors == 0)
}

#[derive(Debug, Serialize)]
struct PushReport {
    scenario: &'static str,
    machine: Machine,
    devices: u64,
    apns_connections_setting: &'static str,
    run: PushResult,
    gateway_cpu_seconds: Option<f64>,
    /// Gateway CPU per successful push (µs).
    gateway_cpu_us_per_push: Option<f64>,
    gateway_peak_rss_kib: Option<u64>,
    /// The emulator's totals at the end (connections, GOAWAYs, requests, accepted, refused).
    apns_connections: u64,
    apns_refused: std::collections::BTreeMap<String, u64>,
}

async fn push(a: PushArgs) -> Result<bool, String> {
    if a.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    let w = work(&a.common)?;
    let data_dir = w.dir.join("gw-push");
    init_data_dir(&w, &a.common, &data_dir).await?;
    const SEED: u64 = 13;
    let s = seed::seed(&data_dir.join("gateway.db"), a.devices, &[], unix_now(), SEED).await?;
    eprintln!("seeded {} enrolled devices with push tokens in {:.1} s", s.rows, s.seconds);
    // The emulator's deliveries are not needed (nobody to wake): dropping the receiver only
    // stops the forwarding.
    let (apns, deliveries) = EmulatedApns::start(&w.dir).await?;
    drop(deliveries);
    let mut g = GatewayChild::start_with_env(
        &w.gateway_bin,
        &data_dir,
        a.common.gateway_config.as_deref(),
        &apns.gateway_env(None),
    )
    .await?;
    let api = ApiClient::new(&g.api_url(), &g.api_key()?);
    apns.upload_certificate(&api, fleet::FLEET_TOPIC).await?;
    let ids: Arc<Vec<String>> = Arc::new((0..a.devices).map(|i| seed::seeded_udid(SEED, i)).collect());
    eprintln!(
        "pushing {} devices, {} per request, {} requests in flight, for {:?}",
        a.devices, a.batch, a.concurrency, a.duration
    );
    let before = g.server.sample();
    let run = push_bench::run(
        api,
        ids,
        PushSpec { batch: a.batch, concurrency: a.concurrency, duration: a.duration, max_batches: a.max_batches },
        || apns.stats(),
    )
    .await;
    let after = g.server.sample();
    g.stop()?;
    let stats = apns.stats();
    let cpu = before.zip(after).map(|(b, a)| a.cpu_seconds - b.cpu_seconds);
    let report = PushReport {
        scenario: "push",
        machine: machine(),
        devices: a.devices,
        apns_connections_setting: "gateway default (apple.apns_connections = 2) unless --gateway-config sets it",
        gateway_cpu_us_per_push: cpu.filter(|_| run.succeeded > 0).map(|c| c * 1e6 / run.succeeded as f64),
        gateway_cpu_seconds: cpu,
        gateway_peak_rss_kib: after.map(|s| s.peak_rss_kib),
        apns_connections: stats.connections,
        apns_refused: stats.refused.clone(),
        run,
    };
    let r = &report.run;
    println!();
    println!(
        "mdm-bench push: {} devices, {} ids per GET /v1/push, {} in flight, {:.1} s",
        a.devices, r.batch, r.concurrency, r.seconds
    );
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>11} {:>12} {:>9} {:>9} {:>9} {:>10}",
        "batches", "pushes", "ok", "failed", "pushes/s", "APNs ok/s", "p50 ms", "p99 ms", "CPU s", "CPU µs/p"
    );
    println!(
        "{:>9} {:>9} {:>9} {:>9} {:>11.0} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>10.1}",
        r.batches,
        r.pushes,
        r.succeeded,
        r.failed,
        r.pushes_per_second,
        r.apns_accepted_per_second,
        r.batch_latency.p50_ms,
        r.batch_latency.p99_ms,
        report.gateway_cpu_seconds.unwrap_or(0.0),
        report.gateway_cpu_us_per_push.unwrap_or(0.0)
    );
    println!("APNs emulator: {} connections, refused {:?}", report.apns_connections, report.apns_refused);
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
    write_json(&a.common, &report)?;
    apns.emulator.stop().await;
    Ok(r.succeeded > 0 && r.failed == 0 && r.apns_accepted == r.succeeded)
}

#[derive(Debug, Serialize)]
struct WindowsReport {
    scenario: &'static str,
    machine: Machine,
    warmup_s: f64,
    duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    enroll: Option<WindowsEnrollReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<WindowsSessionsReport>,
}

#[derive(Debug, Serialize)]
struct WindowsEnrollReport {
    what: &'static str,
    connections: usize,
    distinct_requests: usize,
    /// Keys behind the CSRs (RSA 2048; each request has its own CSR).
    csr_keys: usize,
    ceiling: Option<LoadResult>,
    gateway: LoadResult,
    /// Gateway enrollments/s divided by the ceiling's requests/s.
    ratio_to_ceiling: Option<f64>,
    /// Rows in `windows_certificates` after the run: one per 200 answer, warm-up included.
    certificates_stored: u64,
    windows_enrollments_stored: u64,
}

#[derive(Debug, Serialize)]
struct WindowsSessionsReport {
    what: &'static str,
    messages: [&'static str; 3],
    devices: usize,
    concurrency: usize,
    command: SessionCommand,
    device_key: DeviceKey,
    /// Queueing one command per device through POST /v1/commands before the run.
    queue_seconds: f64,
    ceiling: Option<SessionResult>,
    gateway: SessionResult,
    /// Gateway sessions/s divided by the ceiling's.
    ratio_to_ceiling: Option<f64>,
    /// Commands `acknowledged` in the store after the run: one per completed session.
    commands_acknowledged: u64,
}

fn enroll_row(name: &str, r: &LoadResult, ratio: Option<f64>) -> String {
    format!(
        "{name:<9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>8.2} {:>9.1} {:>9} {:>7}",
        r.requests_per_second,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        r.requests,
        r.non_200 + r.errors,
        r.server_cpu_seconds.unwrap_or(0.0),
        r.server_cpu_us_per_request.unwrap_or(0.0),
        mib(r.server_peak_rss_kib),
        ratio.map(|x| format!("{:.0}%", x * 100.0)).unwrap_or_else(|| "-".into()),
    )
}

fn session_row(name: &str, r: &SessionResult, ratio: Option<f64>) -> String {
    format!(
        "{name:<9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>7} {:>8.2} {:>9.1} {:>9} {:>7}",
        r.sessions_per_second,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        r.sessions,
        r.failed,
        r.server_cpu_seconds.unwrap_or(0.0),
        r.server_cpu_us_per_session.unwrap_or(0.0),
        mib(r.server_peak_rss_kib),
        ratio.map(|x| format!("{:.0}%", x * 100.0)).unwrap_or_else(|| "-".into()),
    )
}

fn table_header(unit: &str) -> String {
    format!(
        "{:<9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>9} {:>9} {:>7}",
        "server", unit, "p50 ms", "p99 ms", "max ms", "done", "failed", "CPU s", "CPU µs/op", "peak MiB", "ratio"
    )
}

async fn windows(a: WindowsArgs) -> Result<bool, String> {
    let w = work(&a.common)?;
    let mut report = WindowsReport {
        scenario: "windows",
        machine: machine(),
        warmup_s: a.warmup.as_secs_f64(),
        duration_s: a.duration.as_secs_f64(),
        enroll: None,
        sessions: None,
    };
    let mut ok = true;
    if a.scenario.contains(&WindowsScenario::Enroll) {
        let (r, good) = windows_enroll(&w, &a).await?;
        ok &= good;
        report.enroll = Some(r);
    }
    if a.scenario.contains(&WindowsScenario::Sessions) {
        let (r, good) = windows_sessions(&w, &a).await?;
        ok &= good;
        report.sessions = Some(r);
    }
    println!();
    println!(
        "mdm-bench windows: {:.0} s measured after {:.0} s warm-up; HTTP/1.1 over TLS 1.3 (rustls, ring)",
        a.duration.as_secs_f64(),
        a.warmup.as_secs_f64()
    );
    if let Some(e) = &report.enroll {
        println!();
        println!("enrollment: {} ({} connections, {} distinct requests)", e.what, e.connections, e.distinct_requests);
        println!("{}", table_header("enroll/s"));
        if let Some(c) = &e.ceiling {
            println!("{}", enroll_row("ceiling", c, None));
        }
        println!("{}", enroll_row("gateway", &e.gateway, e.ratio_to_ceiling));
        println!(
            "stored: {} certificates, {} Windows enrollments ({} answered 200 including warm-up)",
            e.certificates_stored, e.windows_enrollments_stored, e.gateway.ok_total
        );
    }
    if let Some(s) = &report.sessions {
        println!();
        println!(
            "sessions: {} ({} in flight, {:?} command, {:?} device keys)",
            s.what, s.concurrency, s.command, s.device_key
        );
        for (i, m) in s.messages.iter().enumerate() {
            println!("  {}. {m}", i + 1);
        }
        println!("{}", table_header("session/s"));
        if let Some(c) = &s.ceiling {
            println!("{}", session_row("ceiling", c, None));
        }
        println!("{}", session_row("gateway", &s.gateway, s.ratio_to_ceiling));
        println!(
            "stored: {} commands acknowledged ({} sessions completed including warm-up); {} of {} devices used{}",
            s.commands_acknowledged,
            s.gateway.sessions_total,
            s.gateway.devices_used,
            s.devices,
            if s.gateway.exhausted { " — devices ran out before the end: raise --devices" } else { "" }
        );
    }
    write_json(&a.common, &report)?;
    Ok(ok)
}

#[derive(Debug, Serialize)]
struct AndroidReport {
    scenario: &'static str,
    machine: Machine,
    what: &'static str,
    warmup_s: f64,
    duration_s: f64,
    connections: usize,
    distinct_pushes: usize,
    devices: usize,
    ceiling: Option<LoadResult>,
    gateway: LoadResult,
    ratio_to_ceiling: Option<f64>,
    /// Rows in `pubsub_messages` with outcome `applied` after the first pass: one per 2xx answer.
    messages_applied: u64,
    /// Android enrollments stored.
    android_enrollments: u64,
    /// Events appended by the first pass.
    events_stored: u64,
    /// The second pass (`--duplicates`): the same pushes again.
    duplicates: Option<LoadResult>,
    duplicates_ratio_to_ceiling: Option<f64>,
    /// Events after the second pass (must equal `events_stored`).
    events_after_duplicates: Option<u64>,
}

async fn android(a: AndroidArgs) -> Result<bool, String> {
    use mdm_conformance::bench::android as android_bench;
    let w = work(&a.common)?;
    let data_dir = w.dir.join("gw-android");
    eprintln!("[android] initialising {}", data_dir.display());
    init_data_dir(&w, &a.common, &data_dir).await?;
    let ca_pem = std::fs::read(data_dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
    let token = std::fs::read_to_string(data_dir.join("pubsub-token")).map_err(|e| format!("pubsub-token: {e}"))?;
    let n = a.pushes.max(1);
    let started = std::time::Instant::now();
    let start_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis() as i64;
    let run = format!("{start_ms}");
    let pushes = Arc::new(android_bench::status_report_pushes(n, a.devices, start_ms, &run));
    eprintln!("[android] {n} pushes made in {:.1} s", started.elapsed().as_secs_f64());
    let path = format!("{}?token={}", android_bench::PUSH_PATH, token.trim());
    let spec = |addr: SocketAddr| -> Result<LoadSpec, String> {
        Ok(LoadSpec {
            addrs: vec![addr],
            server_name: "localhost".into(),
            tls: vec![client_config(&ca_pem, &[b"http/1.1"])?],
            connections: a.connections,
            warmup: a.warmup,
            duration: a.duration,
            max_requests: None,
            requests: pushes.clone(),
            method: http::Method::POST,
            path: path.clone(),
            content_type: HeaderValue::from_static("application/json"),
        })
    };
    let mut ceiling = None;
    if !a.no_ceiling {
        eprintln!("[android] ceiling server, {} connections, {:?}", a.connections, a.duration);
        let r = ceiling_load(&w, &data_dir, spec).await?;
        eprintln!("[android] ceiling {:.0} pushes/s", r.requests_per_second);
        ceiling = Some(r);
    }
    eprintln!("[android] gateway, {} connections, {:?}", a.connections, a.duration);
    let mut g = GatewayChild::start(&w.gateway_bin, &data_dir, a.common.gateway_config.as_deref()).await?;
    let r = load::run(spec(g.device_addr)?, &[g.server.pid]).await;
    eprintln!("[android] gateway {:.0} pushes/s", r.requests_per_second);
    let db = data_dir.join("gateway.db");
    // Counted before any duplicate pass, so they describe the first pass alone.
    let events_stored = win_bench::count(&db, "SELECT COUNT(*) FROM events")?;
    let messages_applied = win_bench::count(&db, "SELECT COUNT(*) FROM pubsub_messages WHERE outcome = 'applied'")?;
    let mut duplicates = None;
    let mut events_after_duplicates = None;
    if a.duplicates {
        // Exactly the pushes the gateway took (connections run at their own pace, so these are
        // not a prefix of the prepared ones): every one is a duplicate now.
        let taken = android_bench::handled_indices(&db, &run)?;
        let again: Vec<Prepared> = taken.iter().filter_map(|&k| pushes.get(k).cloned()).collect();
        eprintln!("[android] gateway, the {} pushes it took, again (duplicates)", again.len());
        let d = load::run(LoadSpec { requests: Arc::new(again), ..spec(g.device_addr)? }, &[g.server.pid]).await;
        eprintln!("[android] gateway {:.0} duplicate pushes/s", d.requests_per_second);
        events_after_duplicates = Some(win_bench::count(&db, "SELECT COUNT(*) FROM events")?);
        duplicates = Some(d);
    }
    g.stop()?;
    let android_enrollments = win_bench::count(&db, "SELECT COUNT(*) FROM enrollments WHERE platform = 'android'")?;
    let sent_total = r.ok_total + r.non_200 + r.errors;
    let mut ok = r.requests > 0 && r.non_200 == 0 && r.errors == 0 && messages_applied == r.ok_total;
    if sent_total > n as u64 {
        eprintln!("[android] {sent_total} pushes sent for {n} prepared: some were repeats; raise --pushes");
        ok = false;
    }
    if let Some(d) = &duplicates {
        ok &= d.non_200 == 0 && d.errors == 0 && events_after_duplicates == Some(events_stored);
    }
    if !ok {
        let log = std::fs::read_to_string(&g.server.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        eprintln!(
            "[android] problems: {:?}; {messages_applied} messages applied for {} answers; gateway log tail: {tail:?}",
            r.first_error, r.ok_total
        );
    }
    let ratio =
        |x: &LoadResult| ceiling.as_ref().map(|c: &LoadResult| x.requests_per_second / c.requests_per_second.max(1e-9));
    let report = AndroidReport {
        scenario: "android",
        machine: machine(),
        what: "Pub/Sub push of an AMAPI STATUS_REPORT (base64 Device JSON, ~1.3 kB envelope), token-authenticated; stored with dedupe and per-device order before the 2xx",
        warmup_s: a.warmup.as_secs_f64(),
        duration_s: a.duration.as_secs_f64(),
        connections: a.connections,
        distinct_pushes: n,
        devices: a.devices,
        ratio_to_ceiling: ratio(&r),
        duplicates_ratio_to_ceiling: duplicates.as_ref().and_then(ratio),
        ceiling,
        gateway: r,
        messages_applied,
        android_enrollments,
        events_stored,
        duplicates,
        events_after_duplicates,
    };
    println!();
    println!(
        "mdm-bench android: {:.0} s measured after {:.0} s warm-up; HTTP/1.1 over TLS 1.3 (rustls, ring)",
        a.duration.as_secs_f64(),
        a.warmup.as_secs_f64()
    );
    println!("{} ({} connections, {} devices)", report.what, report.connections, report.devices);
    println!("{}", table_header("push/s"));
    if let Some(c) = &report.ceiling {
        println!("{}", enroll_row("ceiling", c, None));
    }
    println!("{}", enroll_row("gateway", &report.gateway, report.ratio_to_ceiling));
    if let Some(d) = &report.duplicates {
        println!("{}", enroll_row("duplicates", d, report.duplicates_ratio_to_ceiling));
    }
    println!(
        "stored: {} messages applied ({} answered 2xx including warm-up), {} Android enrollments, {} events{}",
        report.messages_applied,
        report.gateway.ok_total,
        report.android_enrollments,
        report.events_stored,
        match report.events_after_duplicates {
            Some(e) => format!("; {e} after the duplicate pass"),
            None => String::new(),
        }
    );
    write_json(&a.common, &report)?;
    Ok(ok)
}

async fn windows_enroll(w: &Work, a: &WindowsArgs) -> Result<(WindowsEnrollReport, bool), String> {
    let data_dir = w.dir.join("gw-windows-enroll");
    eprintln!("[enroll] initialising {}", data_dir.display());
    init_data_dir(w, &a.common, &data_dir).await?;
    let ca_pem = std::fs::read(data_dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
    let secret = std::fs::read_to_string(data_dir.join("enroll-secret")).map_err(|e| format!("enroll-secret: {e}"))?;
    let n = a.enroll_requests.max(1);
    let keys = rsa_keys(RSA_KEYS.min(n))?;
    let started = std::time::Instant::now();
    // The URL in the requests (wsa:To) is the gateway's usual public URL; the port is the child's.
    let requests = win_bench::enrollment_requests(n, "https://localhost", &ca_pem, secret.trim(), &keys)?;
    eprintln!("[enroll] {n} RequestSecurityToken requests made in {:.1} s", started.elapsed().as_secs_f64());
    let requests = Arc::new(requests);
    let spec = |addr: SocketAddr| -> Result<LoadSpec, String> {
        Ok(LoadSpec {
            addrs: vec![addr],
            server_name: "localhost".into(),
            tls: vec![client_config(&ca_pem, &[b"http/1.1"])?],
            connections: a.connections,
            warmup: a.warmup,
            duration: a.duration,
            max_requests: None,
            requests: requests.clone(),
            method: http::Method::POST,
            path: win_bench::ENROLLMENT_PATH.into(),
            content_type: HeaderValue::from_static(win_bench::SOAP_CONTENT_TYPE),
        })
    };
    let mut ceiling = None;
    if !a.no_ceiling {
        eprintln!("[enroll] ceiling server, {} connections, {:?}", a.connections, a.duration);
        let r = ceiling_load(w, &data_dir, spec).await?;
        eprintln!("[enroll] ceiling {:.0} requests/s", r.requests_per_second);
        ceiling = Some(r);
    }
    eprintln!("[enroll] gateway, {} connections, {:?}", a.connections, a.duration);
    let mut g = GatewayChild::start(&w.gateway_bin, &data_dir, a.common.gateway_config.as_deref()).await?;
    let r = load::run(spec(g.device_addr)?, &[g.server.pid]).await;
    g.stop()?;
    eprintln!("[enroll] gateway {:.0} enrollments/s", r.requests_per_second);
    let db = data_dir.join("gateway.db");
    let certificates_stored = win_bench::count(&db, "SELECT COUNT(*) FROM windows_certificates")?;
    let windows_enrollments_stored =
        win_bench::count(&db, "SELECT COUNT(*) FROM enrollments WHERE platform = 'windows'")?;
    let mut ok = r.requests > 0 && r.non_200 == 0 && r.errors == 0 && certificates_stored == r.ok_total;
    if !ok {
        let log = std::fs::read_to_string(&g.server.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        eprintln!(
            "[enroll] problems: {:?}; {certificates_stored} certificates stored for {} answers; gateway log tail: {tail:?}",
            r.first_error, r.ok_total
        );
        ok = false;
    }
    let ratio_to_ceiling =
        ceiling.as_ref().map(|c: &LoadResult| r.requests_per_second / c.requests_per_second.max(1e-9));
    Ok((
        WindowsEnrollReport {
            what: "MS-WSTEP RequestSecurityToken (Issue): UsernameToken (UPN + enrollment secret), RSA 2048 PKCS#10, Windows' context items; answered with the provisioning document",
            connections: a.connections,
            distinct_requests: n,
            csr_keys: keys.len(),
            ceiling,
            gateway: r,
            ratio_to_ceiling,
            certificates_stored,
            windows_enrollments_stored,
        },
        ok,
    ))
}

async fn windows_sessions(w: &Work, a: &WindowsArgs) -> Result<(WindowsSessionsReport, bool), String> {
    let data_dir = w.dir.join("gw-windows-sessions");
    eprintln!("[sessions] initialising {}", data_dir.display());
    init_data_dir(w, &a.common, &data_dir).await?;
    let ca_pem = std::fs::read(data_dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
    let n = a.devices.max(1);
    let started = std::time::Instant::now();
    let issuer = Issuer::from_data_dir(&data_dir).map_err(|e| e.to_string())?;
    let ids: Vec<String> = (0..n).map(win_bench::session_device_id).collect();
    let identities = match a.device_key {
        DeviceKey::P256 => fleet::issue_identities(&issuer, &ids).map_err(|e| e.to_string())?,
        DeviceKey::Rsa2048 => issue_rsa_identities(&issuer, &ids)?,
    };
    let mut seeds = Vec::with_capacity(n);
    let mut tls = Vec::with_capacity(n);
    for (i, (id, (key, cert))) in ids.iter().zip(&identities).enumerate() {
        seeds.push(WindowsSeed {
            device_id: id.clone(),
            cert_sha256: mdm_certs::fingerprint_sha256(cert),
            upn: win_bench::bench_upn(i),
        });
        let chain = vec![rustls::pki_types::CertificateDer::from(cert.to_der().map_err(|e| e.to_string())?)];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
            key.private_key_to_pkcs8().map_err(|e| e.to_string())?,
        ));
        let config = client_config_with(&ca_pem, &[b"http/1.1"], Some((chain, key)))?;
        tls.push(win_bench::without_resumption(&config));
    }
    drop(identities);
    seed::seed_windows(&data_dir.join("gateway.db"), &seeds, unix_now()).await?;
    eprintln!(
        "[sessions] {n} device certificates ({:?}) issued and enrollments seeded in {:.1} s",
        a.device_key,
        started.elapsed().as_secs_f64()
    );
    let devices_for = |url: &str| -> Result<Arc<Vec<win_bench::SessionDevice>>, String> {
        ids.iter()
            .zip(&tls)
            .map(|(id, t)| win_bench::session_device(id, url, t.clone(), a.command))
            .collect::<Result<Vec<_>, _>>()
            .map(Arc::new)
    };
    let spec = |addr: SocketAddr, devices, expect: Option<usize>| SessionSpec {
        addr,
        server_name: "localhost".into(),
        concurrency: a.concurrency,
        warmup: a.warmup,
        duration: a.duration,
        devices,
        reuse_devices: expect.is_none(),
        expect_commands: expect,
    };
    let mut ceiling = None;
    if !a.no_ceiling {
        eprintln!("[sessions] ceiling server, {} sessions in flight, {:?}", a.concurrency, a.duration);
        let (mut server, addr) = start_ceiling(w, &data_dir).await?;
        let url = format!("https://localhost:{}{}", addr.port(), win_bench::MANAGEMENT_PATH);
        let r = win_bench::run_sessions(spec(addr, devices_for(&url)?, None), Some(server.pid)).await;
        server.stop(Duration::from_secs(5)).ok();
        eprintln!("[sessions] ceiling {:.0} sessions/s", r.sessions_per_second);
        ceiling = Some(r);
    }

    let mut g = GatewayChild::start(&w.gateway_bin, &data_dir, a.common.gateway_config.as_deref()).await?;
    let api = ApiClient::new(&g.api_url(), &g.api_key()?);
    let started = std::time::Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for id in &ids {
        let (api, sem, id) = (api.clone(), sem.clone(), format!("windows:{id}"));
        let permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
        let command = a.command.normalised();
        tasks.spawn(async move {
            let _p = permit;
            api.enqueue(&id, command).await
        });
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| e.to_string())??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let queue_seconds = started.elapsed().as_secs_f64();
    eprintln!("[sessions] {n} commands queued through POST /v1/commands in {queue_seconds:.1} s");

    eprintln!("[sessions] gateway, {} sessions in flight, {:?}", a.concurrency, a.duration);
    let url = format!("{}{}", g.device_url(), win_bench::MANAGEMENT_PATH);
    let expect = Some(a.command.syncml_commands());
    let r = win_bench::run_sessions(spec(g.device_addr, devices_for(&url)?, expect), Some(g.server.pid)).await;
    g.stop()?;
    eprintln!("[sessions] gateway {:.0} sessions/s", r.sessions_per_second);
    let commands_acknowledged =
        win_bench::count(&data_dir.join("gateway.db"), "SELECT COUNT(*) FROM commands WHERE status = 'acknowledged'")?;
    let mut ok = r.sessions > 0 && r.failed == 0 && commands_acknowledged == r.sessions_total;
    if !ok {
        let log = std::fs::read_to_string(&g.server.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        eprintln!(
            "[sessions] problems: {:?}; {commands_acknowledged} commands acknowledged for {} sessions; gateway log tail: {tail:?}",
            r.first_error, r.sessions_total
        );
        ok = false;
    }
    if r.exhausted {
        eprintln!("[sessions] the {n} devices ran out before the end of the run: raise --devices");
    }
    let ratio_to_ceiling =
        ceiling.as_ref().map(|c: &SessionResult| r.sessions_per_second / c.sessions_per_second.max(1e-9));
    Ok((
        WindowsSessionsReport {
            what: "one OMA-DM session per pre-enrolled device, on a new TLS connection with its client certificate (full handshake), two HTTP/1.1 requests",
            messages: [
                "device → gateway (MsgID 1): Alert 1201, Alert 1224 (sign-in state), Replace of 5 ./DevInfo nodes",
                "gateway → device: Statuses for those and the command queued for the device",
                "device → gateway (MsgID 2): Status for the SyncHdr and the command (and Results of Gets); answered with the closing Statuses",
            ],
            devices: n,
            concurrency: a.concurrency,
            command: a.command,
            device_key: a.device_key,
            queue_seconds,
            ceiling,
            gateway: r,
            ratio_to_ceiling,
            commands_acknowledged,
        },
        ok,
    ))
}

async fn cluster_cmd(a: ClusterArgs) -> Result<bool, String> {
    let w = work(&a.common)?;
    let spec = cluster::ClusterSpec {
        gateway_bin: w.gateway_bin.clone(),
        work_dir: w.dir.clone(),
        postgres_url: a.postgres.clone(),
        setups: a.setups.clone(),
        devices: a.devices,
        connections: a.connections,
        warmup: a.warmup,
        duration: a.duration,
        rate: a.rate,
        roundtrip_duration: a.roundtrip_duration,
    };
    let setups = cluster::run(&spec).await?;
    println!();
    println!(
        "mdm-bench cluster: {} devices enrolled over the wire per setup; check-ins over {} connections for {:.0} s; round trips at {:.0}/s for {:.0} s",
        a.devices,
        a.connections,
        a.duration.as_secs_f64(),
        a.rate,
        a.roundtrip_duration.as_secs_f64()
    );
    println!(
        "{:<11} {:>10} {:>8} {:>8} {:>10} {:>10} {:>7} | {:>8} {:>8} {:>8} {:>5} {:>10} {:>10} {:>7}",
        "setup",
        "checkin/s",
        "p50 ms",
        "p99 ms",
        "gw µs/req",
        "db µs/req",
        "ratio",
        "rt/s",
        "p50 ms",
        "p99 ms",
        "lost",
        "gw µs/rt",
        "db µs/rt",
        "ratio"
    );
    let per = |cpu: Option<f64>, n: u64| {
        cpu.filter(|_| n > 0).map_or("-".to_owned(), |c| format!("{:.0}", c * 1e6 / n as f64))
    };
    let mut ok = true;
    for s in &setups {
        let c = &s.checkins;
        let r = &s.roundtrip;
        println!(
            "{:<11} {:>10.0} {:>8.2} {:>8.2} {:>10} {:>10} {:>6.0}% | {:>8.0} {:>8.2} {:>8.2} {:>5} {:>10} {:>10} {:>6.0}%",
            s.setup.name(),
            c.requests_per_second,
            c.latency.p50_ms,
            c.latency.p99_ms,
            per(c.server_cpu_seconds, c.requests),
            per(s.checkins_db_cpu_seconds, c.requests),
            s.checkins_ratio_to_first * 100.0,
            r.achieved_rate,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.lost,
            per(s.roundtrip_gateway_cpu_seconds, r.completed),
            per(s.roundtrip_db_cpu_seconds, r.completed),
            s.roundtrip_ratio_to_first * 100.0,
        );
        ok &= c.requests > 0 && c.non_200 == 0 && c.errors == 0 && r.completed > 0 && r.lost == 0 && r.post_errors == 0;
    }
    write_json(
        &a.common,
        &ClusterReport {
            scenario: "cluster",
            machine: machine(),
            devices: a.devices,
            connections: a.connections,
            rate: a.rate,
            setups,
        },
    )?;
    Ok(ok)
}

async fn seed_cmd(a: SeedArgs) -> Result<bool, String> {
    let s = seed::seed(&a.data_dir.join("gateway.db"), a.devices, &[], unix_now(), a.seed).await?;
    println!(
        "seeded {} enrolled devices in {:.1} s; database {:.0} MiB",
        s.rows,
        s.seconds,
        s.db_bytes as f64 / 1048576.0
    );
    Ok(true)
}

async fn ceiling_server(a: CeilingArgs) -> Result<bool, String> {
    let chain = std::fs::read(&a.cert).map_err(|e| format!("{}: {e}", a.cert.display()))?;
    let key = std::fs::read(&a.key).map_err(|e| format!("{}: {e}", a.key.display()))?;
    let tls = ceiling::server_config(&chain, &key)?;
    let listener = tokio::net::TcpListener::bind(a.listen).await.map_err(|e| format!("{}: {e}", a.listen))?;
    tokio::select! {
        _ = ceiling::serve(listener, tls) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => { s.recv().await; }
                Err(_) => std::future::pending::<()>().await,
            }
        } => {}
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mdm-bench: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Idle(a) => idle(a).await,
            Cmd::Roundtrip(a) => roundtrip(a).await,
            Cmd::Push(a) => push(a).await,
            Cmd::Windows(a) => windows(a).await,
            Cmd::Android(a) => android(a).await,
            Cmd::Cluster(a) => cluster_cmd(a).await,
            Cmd::Seed(a) => seed_cmd(a).await,
            Cmd::CeilingServer(a) => ceiling_server(a).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("mdm-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
