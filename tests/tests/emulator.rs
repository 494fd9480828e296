//! The device fleet emulator and the load tool themselves, in short runs: a fleet enrolls,
//! answers commands by ratio (woken by a session sweep, by hand-made push deliveries, and by the
//! gateway's real pushes through the APNs emulator), checks out; and `mdm-bench idle`,
//! `mdm-bench roundtrip` (with and without `--push`), `mdm-bench push` and `mdm-bench windows`
//! run for a second or two against the debug binaries.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mdm_conformance::apns::delivery::PushDelivery;
use mdm_conformance::apple::fleet::{FLEET_TOPIC, Fleet, FleetConfig, Issuer, Ratios, sample_command};
use mdm_tests::{Harness, unix_now};
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
            let (code, r) =
                h.post("/v1/commands", &json!({ "device_id": device_id, "command": sample_command(n) })).await;
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

/// The whole push path with a fleet: gateway → APNs emulator (real HTTP/2 + TLS, the uploaded
/// push certificate) → `Fleet::run_push` → sessions. Nobody wakes the devices but the pushes.
#[tokio::test]
async fn fleet_answers_commands_woken_by_real_pushes() {
    let (h, apns, deliveries, _dir) = mdm_tests::start_with_apns(|_| {}).await;
    let (cert, key) = apns.issue_push_certificate(FLEET_TOPIC, unix_now() + 365 * 86_400).expect("push cert");
    let (code, r) = h.put_bytes("/v1/pushcert", format!("{cert}{key}").into_bytes()).await;
    assert_eq!(code, 200, "{r}");

    let fleet = Arc::new(Fleet::build(&fleet_config(&h, 10)).expect("fleet"));
    fleet.enroll_all().await;
    assert_eq!(fleet.summary().enrolled, 10, "{:?}", fleet.summary().first_errors);
    let runner = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.run_push(deliveries, None).await })
    };
    let ids = queue(&h, &fleet, 2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.counters().answered() < 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner.abort();

    let s = fleet.summary();
    assert_eq!(s.errors, 0, "{:?}", s.first_errors);
    assert_eq!(s.acknowledged, 20, "every command answered after a push: {s:?}");
    let stats = apns.control().stats();
    // At least one push per device; at most one per command (coalescing may merge the second).
    assert!((10..=20).contains(&s.pushes), "{s:?}");
    assert_eq!(s.unknown_pushes, 0);
    assert_eq!(stats.accepted, s.pushes, "every accepted push reached the fleet: {stats:?}");
    assert!(stats.refused.is_empty(), "{stats:?}");
    assert_eq!(s.push_to_session_latency.count, s.pushes);
    assert!(s.sessions >= 10 && s.sessions <= s.pushes, "sessions only on pushes: {s:?}");
    for i in 0..10 {
        assert!(!apns.control().seen_for(&hex_token(&fleet, i)).is_empty(), "device {i} was pushed");
    }
    for id in ids {
        let (_, c) = h.get(&format!("/v1/commands/{id}")).await;
        assert_eq!(c["status"], "acknowledged", "{c}");
    }
    assert_eq!(count(&h.events().await, "command.acknowledged"), 20);
    h.stop().await;
    apns.stop().await;
}

fn hex_token(fleet: &Fleet, i: usize) -> String {
    let device = fleet.device(i).expect("enrolled");
    assert_eq!(fleet.token_hex(i), hex::encode(&device.push_token));
    fleet.token_hex(i)
}

fn run_bench(args: &[&str]) -> Value {
    let gateway = mdm_tests::workspace_binary("mdm-gateway", "mdm-gateway");
    let bench = mdm_tests::workspace_binary("mdm-conformance", "mdm-bench");
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
    let r = run_bench(&[
        "idle",
        "--enrolled",
        "300",
        "--active",
        "20",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
    ]);
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
    assert!(
        load["latency"]["p99_ms"].as_f64().unwrap_or(0.0) >= load["latency"]["p50_ms"].as_f64().unwrap_or(f64::MAX)
    );
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

#[test]
fn mdm_bench_roundtrip_push_short_run() {
    let r =
        run_bench(&["roundtrip", "--push", "--enrolled", "100", "--devices", "10", "--rate", "20", "--duration", "1s"]);
    assert_eq!(r["waker"], "push", "{r}");
    let run = &r["runs"][0];
    assert!(run["posted"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(run["completed"], run["posted"], "{r}");
    assert_eq!(run["lost"], 0);
    assert_eq!(run["waker"], "push");
    let push = &r["push"];
    let accepted = push["apns_accepted"].as_u64().unwrap_or(0);
    // Only pushes woke the devices: at least one per device commanded, and each reached the fleet.
    assert!(accepted >= 10, "{r}");
    assert!(accepted <= run["posted"].as_u64().unwrap_or(0), "at most one push per command: {r}");
    assert_eq!(push["deliveries_received"], accepted, "{r}");
    assert_eq!(push["apns_refused"], 0, "{r}");
    assert!(push["push_to_session_latency"]["count"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn mdm_bench_push_short_run() {
    let r = run_bench(&["push", "--devices", "200", "--batch", "20", "--concurrency", "2", "--duration", "1s"]);
    assert_eq!(r["scenario"], "push");
    let run = &r["run"];
    let ok = run["succeeded"].as_u64().unwrap_or(0);
    assert!(ok > 0, "{r}");
    assert_eq!(run["failed"], 0, "{r}");
    assert_eq!(run["request_errors"], 0, "{r}");
    assert_eq!(run["pushes"], ok, "{r}");
    assert_eq!(run["apns_accepted"], ok, "the emulator accepted exactly what the API reported: {r}");
    assert_eq!(run["pushes"].as_u64(), run["batches"].as_u64().map(|b| b * 20), "{r}");
    assert!(run["pushes_per_second"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(
        run["batch_latency"]["p99_ms"].as_f64().unwrap_or(0.0)
            >= run["batch_latency"]["p50_ms"].as_f64().unwrap_or(f64::MAX),
        "{r}"
    );
    assert!(r["gateway_cpu_seconds"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["gateway_cpu_us_per_push"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["apns_connections"].as_u64().unwrap_or(0) >= 1, "{r}");
}

#[test]
fn mdm_bench_windows_short_run() {
    let r = run_bench(&[
        "windows",
        "--enroll-requests",
        "40",
        "--connections",
        "4",
        "--devices",
        "400",
        "--concurrency",
        "4",
        "--command",
        "device-info",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
    ]);
    assert_eq!(r["scenario"], "windows", "{r}");
    // Enrollment: certificates signed for real, one per 200 answer, and the ceiling beside it.
    let e = &r["enroll"];
    let g = &e["gateway"];
    assert!(g["requests"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!((g["non_200"].as_u64(), g["errors"].as_u64()), (Some(0), Some(0)), "{r}");
    assert_eq!(e["certificates_stored"], g["ok_total"], "{r}");
    assert_eq!(e["windows_enrollments_stored"], 40, "every distinct request enrolled its device: {r}");
    assert!(g["server_cpu_us_per_request"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(e["ceiling"]["requests"].as_u64().unwrap_or(0) > 0, "{r}");
    let ratio = e["ratio_to_ceiling"].as_f64().expect("ratio");
    assert!(ratio > 0.0 && ratio.is_finite(), "{r}");
    // Sessions: each completed session acknowledged its command in the store.
    let s = &r["sessions"];
    let g = &s["gateway"];
    assert!(g["sessions"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(g["failed"], 0, "{r}");
    assert_eq!(s["commands_acknowledged"], g["sessions_total"], "{r}");
    assert_eq!(s["command"], "device_info");
    assert!(g["latency"]["p99_ms"].as_f64() >= g["latency"]["p50_ms"].as_f64(), "{r}");
    assert!(g["server_peak_rss_kib"].as_u64().unwrap_or(0) > 1000, "{r}");
    assert!(s["ceiling"]["sessions"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(s["ratio_to_ceiling"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert_eq!(s["messages"].as_array().map(Vec::len), Some(3));
}

/// `mdm-emulate apple --apns-listen`: the CLI's push mode against an in-process gateway
/// configured beforehand with the CA that `--apns-print-config` made (kept in `--apns-dir`).
#[tokio::test]
async fn mdm_emulate_push_mode_short_run() {
    let emulate = tokio::task::spawn_blocking(|| mdm_tests::workspace_binary("mdm-conformance", "mdm-emulate"))
        .await
        .expect("build");
    let dir = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let listen = format!("127.0.0.1:{port}");
    let apns_dir = dir.path().join("apns");
    let ca_out = dir.path().join("apns-ca.pem");
    let out = Command::new(&emulate)
        .args(["apple", "--apns-listen", &listen, "--apns-print-config", "--apns-dir"])
        .arg(&apns_dir)
        .arg("--apns-ca-out")
        .arg(&ca_out)
        .output()
        .expect("run mdm-emulate");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains(&format!("apns_url = \"https://{listen}\"")), "{printed}");
    assert!(printed.contains("apns_ca = "), "{printed}");

    let ca = ca_out.clone();
    let h = Harness::start_with(|c| {
        c.apple.apns_url = format!("https://{listen}");
        c.apple.apns_ca = Some(ca);
        c.apple.push_timeout_ms = 5_000;
    })
    .await;
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, &h.api_key).expect("key file");
    let ca_dir = h.dir.path().join("data");
    let json_path = dir.path().join("summary.json");
    let args: Vec<std::ffi::OsString> = vec![
        "apple".into(),
        "--devices".into(),
        "8".into(),
        "--gateway".into(),
        h.device_url.clone().into(),
        "--ca-dir".into(),
        ca_dir.into(),
        "--api".into(),
        h.api_url.clone().into(),
        "--api-key-file".into(),
        key_file.into(),
        "--commands".into(),
        "2".into(),
        "--apns-listen".into(),
        format!("127.0.0.1:{port}").into(),
        "--apns-dir".into(),
        apns_dir.into(),
        "--duration".into(),
        "20s".into(),
        "--quiet".into(),
        "--json".into(),
        json_path.clone().into(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(emulate).args(args).output().expect("run mdm-emulate"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "mdm-emulate failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("push certificate for com.apple.mgmt.External.emulated uploaded"), "{stdout}");
    let s: Value = serde_json::from_slice(&std::fs::read(&json_path).expect("summary written")).expect("JSON");
    assert_eq!(s["enrolled"], 8, "{s}");
    assert_eq!(s["commands_queued"], 16, "{s}");
    assert_eq!(s["acknowledged"], 16, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    // One probe push to the first device, then at least one per device for its commands.
    let pushes = s["pushes"].as_u64().unwrap_or(0);
    assert!((9..=17).contains(&pushes), "{s}");
    assert_eq!(s["apns"]["accepted"], pushes, "{s}");
    assert_eq!(s["unknown_pushes"], 0, "{s}");
    assert_eq!(count(&h.events().await, "command.acknowledged"), 16);
    h.stop().await;
}
