//! The device fleet emulator and the load tool themselves, in short runs: a fleet enrolls,
//! answers commands by ratio (woken by a session sweep and by push deliveries), checks out; and
//! `mdm-bench idle` / `mdm-bench roundtrip` run for a second or two against the debug binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdm_conformance::apns::delivery::PushDelivery;
use mdm_conformance::apple::fleet::{Fleet, FleetConfig, Issuer, Ratios, sample_command};
use mdm_tests::Harness;
use serde_json::{Value, json};

fn fleet_config(h: &Harness, devices: usize) -> FleetConfig {
    let issuer = Issuer { cert: h.ca.clone(), key: h.ca_key.clone() };
    let mut c = FleetConfig::new(devices, &h.device_url, h.ca_pem.clone(), issuer);
    c.concurrency = 16;
    c
}

async fn queue(h: &Harness, fleet: &Fleet, per_device: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..per_device {
        for device_id in fleet.device_ids() {
            let (code, r) = h.post("/v1/commands", &json!({ "device_id": device_id, "command": sample_command(n) })).await;
            assert_eq!(code, 202, "{r}");
            ids.push(r["command_id"].as_str().expect("command_id").to_owned());
        }
    }
    ids
}

fn count(events: &[Value], t: &str) -> u64 {
    events.iter().filter(|e| e["type"] == t).count() as u64
}

#[tokio::test]
async fn fleet_enrolls_answers_by_ratio_and_checks_out() {
    let h = Harness::start().await;
    let mut config = fleet_config(&h, 20);
    config.ratios = Ratios { ack: 0.5, error: 0.25, not_now: 0.25 };
    config.seed = 3;
    config.user_channel = true;
    let fleet = Arc::new(Fleet::build(&config).expect("fleet"));
    fleet.enroll_all().await;
    let s = fleet.summary();
    assert_eq!((s.enrolled, s.user_channels, s.errors), (20, 20, 0), "{:?}", s.first_errors);
    assert_eq!(s.enroll_latency.count, 20);
    let (_, devices) = h.get("/v1/devices?limit=100").await;
    let listed = devices["devices"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(listed, 40, "20 device channels and 20 user channels: {devices}");

    queue(&h, &fleet, 2).await;
    fleet.session_all().await;
    let s = fleet.summary();
    assert_eq!(s.errors, 0, "{:?}", s.first_errors);
    assert_eq!(s.sessions, 20);
    // One session each: every command is answered once (NotNow ones stay queued for later).
    assert_eq!(s.answered(), 40, "{s:?}");
    assert!(s.acknowledged > 0 && s.errored > 0 && s.not_now > 0, "all three statuses drawn: {s:?}");
    assert_eq!(s.checkin_latency.count, 20 + 40, "one Idle per session plus one report per command");
    let events = h.events().await;
    assert_eq!(count(&events, "command.acknowledged"), s.acknowledged);
    assert_eq!(count(&events, "command.error"), s.errored);
    assert_eq!(count(&events, "command.not_now"), s.not_now);
    // DeviceInformation answers carry realistic inventory.
    let inv = events.iter().filter(|e| e["type"] == "device.inventory").count();
    assert!(inv > 0, "some DeviceInformation was acknowledged and merged");

    fleet.checkout_all().await;
    let s = fleet.summary();
    assert_eq!((s.checked_out, s.errors), (20, 0), "{:?}", s.first_errors);
    assert_eq!(count(&h.events().await, "device.unenrolled"), 20);
    print!("{}", s.table());
    h.stop().await;
}

#[tokio::test]
async fn fleet_wakes_on_push_deliveries() {
    let h = Harness::start().await;
    let fleet = Arc::new(Fleet::build(&fleet_config(&h, 10)).expect("fleet"));
    fleet.enroll_all().await;
    assert_eq!(fleet.summary().enrolled, 10);
    let ids = queue(&h, &fleet, 1).await;

    // What the APNs emulator would send: one delivery per device token, plus a duplicate
    // (coalesced or run again, never an error) and a token no device owns.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PushDelivery>();
    let runner = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.run_push(rx, None).await })
    };
    let delivery = |token_hex: String| PushDelivery {
        token_hex,
        topic: "com.apple.mgmt.External.emulated".into(),
        push_magic: "magic".into(),
        apns_id: "00000000-0000-0000-0000-000000000000".into(),
        accepted_at: std::time::Instant::now(),
    };
    for i in 0..10 {
        tx.send(delivery(hex_token(&fleet, i))).expect("send");
    }
    tx.send(delivery(hex_token(&fleet, 0))).expect("send");
    tx.send(delivery("ab".repeat(32))).expect("send");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), runner).await.expect("deliveries handled").expect("runner");

    let s = fleet.summary();
    assert_eq!((s.pushes, s.unknown_pushes, s.errors), (12, 1, 0), "{:?}", s.first_errors);
    assert_eq!(s.acknowledged, 10, "{s:?}");
    assert_eq!(s.push_to_session_latency.count, 11);
    for id in ids {
        let (_, c) = h.get(&format!("/v1/commands/{id}")).await;
        assert_eq!(c["status"], "acknowledged", "{c}");
    }
    h.stop().await;
}

fn hex_token(fleet: &Fleet, i: usize) -> String {
    fleet.device(i).push_token.iter().map(|b| format!("{b:02x}")).collect()
}

/// `<target>/<profile>/<bin>` of `package`, built (or brought up to date) by cargo.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let mut cmd = Command::new(env!("CARGO"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let per_package = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"];
        if per_package.iter().any(|p| k.starts_with(p)) || k == "OUT_DIR" {
            cmd.env_remove(&k);
        }
    }
    cmd.current_dir(workspace).args(["build", "--quiet", "-p", package, "--bin", bin, "--target-dir"]).arg(&target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().expect("cargo build").success(), "cargo build -p {package} --bin {bin} failed");
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} missing", path.display());
    path
}

fn run_bench(args: &[&str]) -> Value {
    let gateway = workspace_binary("mdm-gateway", "mdm-gateway");
    let bench = workspace_binary("mdm-conformance", "mdm-bench");
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("out.json");
    let started = Instant::now();
    let out = Command::new(bench)
        .args(args)
        .arg("--gateway-bin")
        .arg(&gateway)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run mdm-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mdm-bench {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(started.elapsed() < Duration::from_secs(60), "mdm-bench stops by itself, quickly");
    println!("{stdout}");
    serde_json::from_slice(&std::fs::read(&json_path).expect("JSON written")).expect("JSON parses")
}

#[test]
fn mdm_bench_idle_short_run() {
    let r = run_bench(&["idle", "--enrolled", "300", "--active", "20", "--connections", "4", "--duration", "1s", "--warmup", "300ms"]);
    let ceiling = &r["ceiling"];
    assert!(ceiling["requests"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(ceiling["server_cpu_seconds"].as_f64().is_some(), "{r}");
    let g = &r["gateway"][0];
    assert_eq!(g["enrolled"], 300);
    assert_eq!(g["seed"]["rows"], 300);
    let load = &g["load"];
    assert!(load["requests"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(load["non_200"], 0, "{r}");
    assert!(load["requests_per_second"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(load["latency"]["p99_ms"].as_f64().unwrap_or(0.0) >= load["latency"]["p50_ms"].as_f64().unwrap_or(f64::MAX));
    assert!(load["server_peak_rss_kib"].as_u64().unwrap_or(0) > 1000, "{r}");
    assert!(load["server_cpu_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    let ratio = g["ratio_to_ceiling"].as_f64().expect("ratio present");
    assert!(ratio > 0.0 && ratio.is_finite(), "{ratio}");
    assert!(r["machine"]["cores"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn mdm_bench_roundtrip_short_run() {
    let r = run_bench(&["roundtrip", "--enrolled", "100", "--devices", "10", "--rate", "40", "--duration", "1s"]);
    let run = &r["runs"][0];
    assert!(run["completed"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(run["completed"], run["posted"], "{r}");
    assert_eq!(run["lost"], 0);
    assert!(run["latency"]["p50_ms"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
}
