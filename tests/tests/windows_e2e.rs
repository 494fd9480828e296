//! The whole Windows flow end to end over real sockets and TLS, nothing stored by hand: an
//! emulated device enrolls (discovery, policy, MS-WSTEP with its own key and CSR), manages over
//! OMA-DM with the certificate it got (session start with DevInfo, commands from
//! `POST /v1/commands`, results as events), renews (the new certificate opens sessions, the old
//! one no longer does), and unenrolls. Then the `mdm-emulate windows` CLI, in a short run.

use std::process::Command;

use mdm_conformance::windows::{DmIdentity, WindowsDevice};
use mdm_tests::Harness;
use mdm_windows::syncml::Command as SyncCommand;
use serde_json::{Value, json};

const UPN: &str = "dana@example.com";
const DEVICE: &str = "E2E0F1A2B3C4D5E6F708192A3B4C5D6E";

async fn enqueue(h: &Harness, device_id: &str, command: Value) -> String {
    let (code, body) = h.post("/v1/commands", &json!({ "device_id": device_id, "command": command })).await;
    assert_eq!(code, 202, "{body}");
    body["command_id"].as_str().expect("command_id").to_owned()
}

async fn command(h: &Harness, id: &str) -> Value {
    let (code, body) = h.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Types of the events of `device_id` that are not about commands, in order.
async fn device_event_types(h: &Harness, device_id: &str) -> Vec<String> {
    h.events()
        .await
        .into_iter()
        .filter(|e| e["device_id"] == device_id && e["command_id"].is_null())
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_manage_renew_unenroll() {
    let h = Harness::start_reachable(|_| {}).await;
    let id = format!("windows:{DEVICE}");

    // Enrollment, the real way: the management URL comes from the provisioning document.
    let enroller = h.windows_enroller(DEVICE, UPN);
    let first = enroller.enroll().await.expect("enrolled");
    assert_eq!(first.gateway_device_id(), id);
    assert_eq!(first.management_url, h.management_url());
    let device = WindowsDevice::new(DmIdentity::from(&first), &first.management_url, &h.ca_pem).expect("device");

    // Session start: Alert 1201, the sign-in state and DevInfo; nothing queued.
    let report = device.session().await.expect("first session");
    assert_eq!(report.messages, 1, "{report:?}");
    assert_eq!(report.server_statuses, [("Alert".into(), 200), ("Alert".into(), 200), ("Replace".into(), 200)]);
    let checked = h.events_of(&id, "device.checked_in").await;
    assert_eq!(checked.len(), 1);
    assert_eq!(checked[0]["data"]["alert"], 1201);
    let inventory = h.events_of(&id, "device.inventory").await;
    assert_eq!(inventory.len(), 1, "DevInfo of package 1 becomes inventory");
    assert_eq!(inventory[0]["data"]["udid"], DEVICE);
    assert_eq!(inventory[0]["data"]["model"], "Emulated PC 1");
    let (code, dev) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(code, 200, "{dev}");
    assert_eq!(dev["enrollment"]["state"], "enrolled");
    assert_eq!(dev["inventory"]["model"], "Emulated PC 1");
    let store = &h.gateway().state.store;
    let e = store.enrollment(&id.parse().expect("id")).await.expect("read").expect("enrollment");
    assert_eq!(e.attributes["upn"], UPN);
    assert_eq!(e.cert_sha256.as_deref(), Some(first.cert_sha256().as_str()));

    // Commands from the backend, delivered in the next session; results become events.
    let lock = enqueue(&h, &id, json!({"type": "lock"})).await;
    let info = enqueue(&h, &id, json!({"type": "device_info"})).await;
    assert_eq!(command(&h, &lock).await["status"], "queued");
    let report = device.session().await.expect("second session");
    assert_eq!(report.messages, 2, "package 1, then the statuses and results: {report:?}");
    assert_eq!(device.executed(), ["./Device/Vendor/MSFT/RemoteLock/Lock"]);
    let gets = report.handled.iter().filter(|c| c.cmd == "Get" && c.code == 200).count();
    assert_eq!(gets, mdm_windows::syncml::translate::DEFAULT_DEVICE_INFO_NODES.len());
    let c = command(&h, &lock).await;
    assert_eq!((c["status"].as_str(), c["request_type"].as_str()), (Some("acknowledged"), Some("Exec")), "{c}");
    let c = command(&h, &info).await;
    assert_eq!(c["status"], "acknowledged", "{c}");
    let swv =
        c["result"]["results"].as_array().expect("results").iter().find(|r| r["uri"] == "./DevDetail/SwV").cloned();
    assert_eq!(swv.expect("SwV")["data"], "10.0.22631.4460");
    let acks = h.events_of(&id, "command.acknowledged").await;
    let acked: Vec<&str> = acks.iter().map(|e| e["command_id"].as_str().unwrap_or_default()).collect();
    assert_eq!(acked, [lock.as_str(), info.as_str()]);
    assert_eq!(acks[0]["data"]["request_type"], "Exec");
    assert_eq!(acks[1]["data"]["request_type"], "Get");
    assert_eq!(acks[1]["raw"]["content_type"], "application/vnd.syncml.dm+xml");
    let (_, dev) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(dev["inventory"]["os_version"], "10.0.22631.4460");
    assert_eq!(dev["inventory"]["os_name"], "Windows 11 Enterprise");

    // Renewal (ROBO): a new key and certificate; the enrollment is rebound to it.
    let second = enroller.renew(&first).await.expect("renewed");
    assert_ne!(second.cert_sha256(), first.cert_sha256());
    let e = store.enrollment(&id.parse().expect("id")).await.expect("read").expect("enrollment");
    assert_eq!(e.cert_sha256.as_deref(), Some(second.cert_sha256().as_str()));
    let renewed = h.events_of(&id, "device.identity_renewed").await;
    assert_eq!(renewed.len(), 1);
    assert_eq!(renewed[0]["data"]["previous_sha256"], first.cert_sha256());

    // The old certificate opens no session, and storing nothing; the new one does, and gets
    // what was queued meanwhile.
    let before = h.snapshot(&[&lock, &info]).await;
    let err = device.session().await.expect_err("old certificate refused");
    assert!(err.to_string().contains("403") && err.to_string().contains("not_enrolled"), "{err}");
    assert_eq!(h.snapshot(&[&lock, &info]).await, before, "a refused session stored something");
    let renewed_device =
        WindowsDevice::new(DmIdentity::from(&second), &second.management_url, &h.ca_pem).expect("device");
    let restart = enqueue(&h, &id, json!({"type": "restart"})).await;
    let report = renewed_device.session().await.expect("session with the new certificate");
    assert_eq!(report.messages, 2, "{report:?}");
    assert_eq!(renewed_device.executed(), ["./Device/Vendor/MSFT/Reboot/RebootNow"]);
    assert_eq!(command(&h, &restart).await["status"], "acknowledged");
    assert_eq!(h.events_of(&id, "device.checked_in").await.len(), 3);

    // Unenrollment (Alert 1226): the device is unenrolled and its certificate opens nothing.
    let reply = renewed_device.unenroll().await.expect("unenroll");
    let statuses: Vec<(String, u16)> = reply
        .body
        .commands
        .iter()
        .map(|c| match c {
            SyncCommand::Status(s) => (s.cmd.clone(), s.code.0),
            other => panic!("only statuses expected, got {other:?}"),
        })
        .collect();
    assert_eq!(statuses, [("SyncHdr".into(), 200), ("Alert".into(), 200)]);
    let unenrolled = h.events_of(&id, "device.unenrolled").await;
    assert_eq!(unenrolled.len(), 1);
    assert_eq!(unenrolled[0]["data"]["reason"], "user_request");
    let (_, dev) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(dev["enrollment"]["state"], "unenrolled");
    let err = renewed_device.session().await.expect_err("unenrolled");
    assert!(err.to_string().contains("403") && err.to_string().contains("not_enrolled"), "{err}");

    // The device's story, in order.
    let types = device_event_types(&h, &id).await;
    assert_eq!(types.first().map(String::as_str), Some("device.enrolled"), "{types:?}");
    assert_eq!(types.last().map(String::as_str), Some("device.unenrolled"), "{types:?}");
    let at = |t: &str| types.iter().position(|x| x == t).unwrap_or(usize::MAX);
    assert!(at("device.checked_in") < at("device.identity_renewed"), "{types:?}");
    h.stop().await;
}

/// `mdm-emulate windows` against an in-process gateway: three devices enroll for real, get two
/// commands each through the API, answer them on their polls, and unenroll; the summary and the
/// store agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdm_emulate_windows_short_run() {
    let emulate = tokio::task::spawn_blocking(|| mdm_tests::workspace_binary("mdm-conformance", "mdm-emulate"))
        .await
        .expect("build");
    let h = Harness::start_reachable(|_| {}).await;
    let dir = tempfile::tempdir().expect("tmp");
    let json_path = dir.path().join("summary.json");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", h.enroll_secret())).expect("secret file");
    let args: Vec<std::ffi::OsString> = vec![
        "windows".into(),
        "--devices".into(),
        "3".into(),
        "--gateway".into(),
        h.device_url.clone().into(),
        "--ca-dir".into(),
        h.dir.path().join("data").into(),
        "--enroll-secret-file".into(),
        secret_file.into(),
        "--upn".into(),
        "cli{n}@example.org".into(),
        "--prefix".into(),
        "CLIWIN".into(),
        "--api".into(),
        h.api_url.clone().into(),
        "--commands".into(),
        "2".into(),
        "--poll".into(),
        "400ms".into(),
        "--duration".into(),
        "2s".into(),
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
    assert!(stdout.contains("mdm-emulate windows: summary"), "{stdout}");
    assert!(stdout.contains("commands queued      6 (gateway: 6 acknowledged, 0 error, 0 pending)"), "{stdout}");

    let s: Value = serde_json::from_slice(&std::fs::read(&json_path).expect("summary written")).expect("JSON");
    assert_eq!((s["devices"].as_u64(), s["enrolled"].as_u64(), s["unenrolled"].as_u64()), (Some(3), Some(3), Some(3)));
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["commands"]["queued"], 6, "{s}");
    assert_eq!(s["commands"]["acknowledged"], 6, "{s}");
    // A first session after enrollment each, then polls: the commands went out in some of them.
    let sessions = s["sessions"].as_u64().unwrap_or(0);
    assert!(sessions >= 6, "{s}");
    assert!(s["messages"].as_u64().unwrap_or(0) >= sessions + 3, "a second message where commands were answered: {s}");
    // Per device: 15 Gets (device_info) and one Exec (lock), all answered 200.
    assert_eq!(s["syncml_commands_ok"], 3 * 16, "{s}");
    assert_eq!(s["syncml_commands_failed"], 0, "{s}");
    assert_eq!(s["enroll_latency"]["count"], 3, "{s}");
    assert_eq!(s["session_latency"]["count"], sessions, "{s}");
    assert!(s["session_latency"]["p99_ms"].as_f64() >= s["session_latency"]["p50_ms"].as_f64(), "{s}");

    // What the gateway stored: three Windows devices, each enrolled as its own UPN, now
    // unenrolled, with a certificate record each; their commands acknowledged as events.
    let (code, list) = h.get("/v1/devices?platform=windows&limit=10").await;
    assert_eq!(code, 200, "{list}");
    let devices = list["devices"].as_array().expect("devices");
    let mut ids: Vec<&str> = devices.iter().map(|d| d["device_id"].as_str().unwrap_or_default()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["windows:CLIWIN-1-000000", "windows:CLIWIN-1-000001", "windows:CLIWIN-1-000002"]);
    assert!(devices.iter().all(|d| d["enrollment"]["state"] == "unenrolled"), "{list}");
    let store = &h.gateway().state.store;
    for (i, id) in ids.iter().enumerate() {
        let e = store.enrollment(&id.parse().expect("id")).await.expect("read").expect("enrollment");
        assert_eq!(e.attributes["upn"], format!("cli{i:06}@example.org"));
    }
    assert_eq!(store.windows_certificates(100).await.expect("certificates").len(), 3);
    let events = h.events().await;
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        (count("device.enrolled"), count("command.acknowledged"), count("device.unenrolled")),
        (3, 6, 3),
        "{events:?}"
    );
    h.stop().await;
}
