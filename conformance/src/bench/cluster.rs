//! The scale-out comparison: the same Apple load (signed Idle check-ins, then command round
//! trips) against the gateway on SQLite, on PostgreSQL, and as two instances sharing one
//! PostgreSQL schema behind an ideal round-robin balancer (connection `k` goes to instance
//! `k % n`; device `i` talks to instance `i % n`).
//!
//! Every setup starts from nothing: a fresh data directory (and a fresh PostgreSQL schema,
//! dropped at the end), devices enrolled over the wire (Authenticate + TokenUpdate), then the
//! check-in load and the round trips. The instances of one setup share a data directory's
//! contents (CA, storage key, API key: a copy of the first instance's), as operators give every
//! instance the same secrets.
//!
//! What is measured beside throughput and latency: CPU of the gateway processes (summed) and of
//! every `postgres` process on the machine (the server and its backends), over the measured
//! window. PostgreSQL runs on the same 2 cores as everything else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

use super::child::GatewayChild;
use super::load::{self, LoadResult, LoadSpec, Prepared};
use super::proc;
use super::roundtrip::{self, RoundtripResult, RoundtripSpec, Waker};
use crate::apple::fleet::{ApiClient, Fleet, FleetConfig, Issuer};

/// Where a setup keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// One configuration under test: a store and a number of instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Setup {
    pub store: StoreKind,
    pub instances: usize,
}

impl Setup {
    /// `sqlite:1`, `postgres:2`, …
    pub fn parse(s: &str) -> Result<Setup, String> {
        let (store, n) = s.split_once(':').unwrap_or((s, "1"));
        let store = match store {
            "sqlite" => StoreKind::Sqlite,
            "postgres" => StoreKind::Postgres,
            other => return Err(format!("unknown store {other:?} (sqlite or postgres)")),
        };
        let instances: usize = n.parse().map_err(|_| format!("bad instance count {n:?}"))?;
        if instances == 0 || (store == StoreKind::Sqlite && instances > 1) {
            return Err("SQLite runs one instance; PostgreSQL one or more".into());
        }
        Ok(Setup { store, instances })
    }

    pub fn name(&self) -> String {
        let store = match self.store {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        };
        format!("{store}:{}", self.instances)
    }
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub gateway_bin: PathBuf,
    pub work_dir: PathBuf,
    /// A PostgreSQL server URL whose role may create schemas (needed by `postgres` setups).
    pub postgres_url: Option<String>,
    pub setups: Vec<Setup>,
    /// Devices enrolled over the wire; all of them send the check-ins and take the commands.
    pub devices: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Command round trips per second.
    pub rate: f64,
    pub roundtrip_duration: Duration,
}

/// What one setup measured.
#[derive(Debug, Clone, Serialize)]
pub struct SetupResult {
    pub setup: Setup,
    pub enrolled: u64,
    pub enroll_seconds: f64,
    pub checkins: LoadResult,
    /// CPU of all `postgres` processes during the measured check-in window (none for SQLite).
    pub checkins_db_cpu_seconds: Option<f64>,
    pub roundtrip: RoundtripResult,
    /// Gateway CPU (all instances) during the round trips, sending and draining.
    pub roundtrip_gateway_cpu_seconds: Option<f64>,
    pub roundtrip_db_cpu_seconds: Option<f64>,
    /// Check-ins/s divided by the first setup's, in this run.
    pub checkins_ratio_to_first: f64,
    /// Completed round trips/s divided by the first setup's.
    pub roundtrip_ratio_to_first: f64,
}

/// Runs every setup in turn.
pub async fn run(spec: &ClusterSpec) -> Result<Vec<SetupResult>, String> {
    let mut results: Vec<SetupResult> = Vec::new();
    for (i, setup) in spec.setups.iter().enumerate() {
        let mut r = run_setup(spec, *setup, i).await?;
        if let Some(first) = results.first() {
            r.checkins_ratio_to_first = r.checkins.requests_per_second / first.checkins.requests_per_second.max(1e-9);
            r.roundtrip_ratio_to_first = r.roundtrip.achieved_rate / first.roundtrip.achieved_rate.max(1e-9);
        }
        results.push(r);
    }
    Ok(results)
}

/// A fresh schema on the PostgreSQL server, dropped when this is dropped.
struct Schema {
    admin_url: String,
    name: String,
}

impl Schema {
    fn create(admin_url: &str, name: &str) -> Result<Schema, String> {
        psql(admin_url, &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"))?;
        Ok(Schema { admin_url: admin_url.to_owned(), name: name.to_owned() })
    }

    /// The URL a gateway connects with: the server's, with this schema as the search path.
    fn url(&self) -> String {
        let sep = if self.admin_url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options[search_path]={}", self.admin_url, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        if let Err(e) = psql(&self.admin_url, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)) {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql (install postgresql-client): {e}"))?;
    if !out.status.success() {
        return Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

fn db_cpu(setup: Setup) -> Option<f64> {
    (setup.store == StoreKind::Postgres).then(|| proc::cpu_seconds_of_named("postgres"))
}

fn cpu_sum(instances: &[GatewayChild]) -> Option<f64> {
    instances.iter().map(|g| g.server.sample().map(|s| s.cpu_seconds)).sum()
}

async fn run_setup(spec: &ClusterSpec, setup: Setup, index: usize) -> Result<SetupResult, String> {
    let name = setup.name();
    let root = spec.work_dir.join(format!("setup-{index}"));
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let schema = match setup.store {
        StoreKind::Sqlite => None,
        StoreKind::Postgres => {
            let url = spec.postgres_url.as_deref().ok_or("postgres setups need --postgres URL")?;
            Some(Schema::create(url, &format!("mdm_bench_{}_{index}", std::process::id()))?)
        }
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(s) = &schema {
        env.push(("MDM_GATEWAY_STORE__URL".into(), s.url()));
    }

    // The first instance creates the CA, keys and schema; the others get a copy of its
    // directory (same secrets), then all run at once.
    let first_dir = root.join("gw-0");
    eprintln!("[{name}] starting {} instance(s)", setup.instances);
    let mut instances = vec![GatewayChild::start_with_env(&spec.gateway_bin, &first_dir, None, &env).await?];
    for n in 1..setup.instances {
        let dir = root.join(format!("gw-{n}"));
        copy_dir(&first_dir, &dir)?;
        let _ = std::fs::remove_file(dir.join("gateway.db"));
        instances.push(GatewayChild::start_with_env(&spec.gateway_bin, &dir, None, &env).await?);
    }
    let outcome = measure(spec, setup, &instances).await;
    for g in &mut instances {
        if let Err(e) = g.stop() {
            eprintln!("[{name}] stopping an instance: {e}");
        }
    }
    drop(schema);
    outcome
}

async fn measure(spec: &ClusterSpec, setup: Setup, instances: &[GatewayChild]) -> Result<SetupResult, String> {
    let name = setup.name();
    let first = &instances[0];
    let ca_pem = std::fs::read(first.data_dir.join("ca.pem")).map_err(|e| format!("ca.pem: {e}"))?;
    let issuer = Issuer::from_data_dir(&first.data_dir).map_err(|e| e.to_string())?;
    let mut config = FleetConfig::new(spec.devices, &first.device_url(), ca_pem.clone(), issuer);
    config.udid_prefix = "CLUSTER".into();
    config.instance_urls = instances.iter().map(GatewayChild::device_url).collect();
    let fleet = Arc::new(Fleet::build(&config).map_err(|e| e.to_string())?);
    let started = std::time::Instant::now();
    fleet.enroll_all().await;
    let enroll_seconds = started.elapsed().as_secs_f64();
    let s = fleet.summary();
    if s.enrolled != spec.devices as u64 {
        return Err(format!("[{name}] enrollment failed: {} of {}; {:?}", s.enrolled, spec.devices, s.first_errors));
    }
    eprintln!("[{name}] enrolled {} devices over the wire in {enroll_seconds:.1} s", s.enrolled);

    // Check-ins: every device's signed Idle report, sent round-robin over the connections.
    let mut requests = Vec::with_capacity(spec.devices);
    for i in 0..fleet.len() {
        let d = fleet.device(i).ok_or("fleet device missing")?;
        let body = d.report_message("Idle", None, None, plist::Dictionary::new());
        let signature = HeaderValue::from_str(&d.sign(&body).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        requests.push(Prepared { body: Bytes::from(body), signature: Some(signature) });
    }
    let pids: Vec<u32> = instances.iter().map(|g| g.server.pid).collect();
    let load_spec = |warmup: Duration, duration: Duration| -> Result<LoadSpec, String> {
        Ok(LoadSpec {
            addrs: instances.iter().map(|g| g.device_addr).collect(),
            server_name: "localhost".into(),
            tls: vec![super::client_config(&ca_pem, &[b"http/1.1"])?],
            connections: spec.connections,
            warmup,
            duration,
            max_requests: None,
            requests: Arc::new(requests.clone()),
            method: http::Method::PUT,
            path: "/mdm".into(),
            content_type: HeaderValue::from_static("application/x-apple-aspen-mdm"),
        })
    };
    // Warm up on its own, so that the database CPU read around the measured run covers the
    // measured window only.
    eprintln!(
        "[{name}] check-ins: warm-up {:?}, then {:?} over {} connections",
        spec.warmup, spec.duration, spec.connections
    );
    let warm = load::run(load_spec(Duration::ZERO, spec.warmup)?, &pids).await;
    if warm.requests == 0 {
        return Err(format!("[{name}] warm-up failed: {:?}", warm.first_error));
    }
    let db_before = db_cpu(setup);
    let checkins = load::run(load_spec(Duration::ZERO, spec.duration)?, &pids).await;
    let db_after = db_cpu(setup);
    eprintln!(
        "[{name}] {:.0} check-ins/s, p99 {:.2} ms, {} not 2xx, {} errors",
        checkins.requests_per_second, checkins.latency.p99_ms, checkins.non_200, checkins.errors
    );

    // Round trips: commands through the first instance's API; the device (on whichever
    // instance it talks to) is woken by the driver as soon as the POST answers.
    let api = ApiClient::new(&first.api_url(), &first.api_key()?);
    let gw_before = cpu_sum(instances);
    let rt_db_before = db_cpu(setup);
    let roundtrip = roundtrip::run(
        fleet.clone(),
        api,
        RoundtripSpec {
            rate: spec.rate,
            duration: spec.roundtrip_duration,
            max_in_flight: 4096,
            waker: Waker::Direct,
            drain: Duration::from_secs(10),
        },
    )
    .await;
    let gw_after = cpu_sum(instances);
    let rt_db_after = db_cpu(setup);
    eprintln!(
        "[{name}] round trips: {} completed ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, {} lost",
        roundtrip.completed,
        roundtrip.achieved_rate,
        roundtrip.latency.p50_ms,
        roundtrip.latency.p99_ms,
        roundtrip.lost
    );
    Ok(SetupResult {
        setup,
        enrolled: s.enrolled,
        enroll_seconds,
        checkins,
        checkins_db_cpu_seconds: db_before.zip(db_after).map(|(b, a)| a - b),
        roundtrip,
        roundtrip_gateway_cpu_seconds: gw_before.zip(gw_after).map(|(b, a)| a - b),
        roundtrip_db_cpu_seconds: rt_db_before.zip(rt_db_after).map(|(b, a)| a - b),
        checkins_ratio_to_first: 1.0,
        roundtrip_ratio_to_first: 1.0,
    })
}
