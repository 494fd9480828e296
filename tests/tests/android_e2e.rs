//! The whole Android loop over real sockets, with Google's own Pub/Sub emulator between the
//! AMAPI emulator and the gateway: an enrollment token made through the gateway's API, a device
//! enrolling with it, ENROLLMENT → `device.enrolled`; a STATUS_REPORT → `device.inventory`;
//! `POST /v1/commands` (`lock`, `clear_passcode`) → `devices.issueCommand` → the emulated device
//! carries it out → COMMAND notification through Pub/Sub → `command.acknowledged`.
//!
//! `reconcile_after_s` is a day, so only the COMMAND notification can resolve a command: the test
//! also checks that the gateway never asked `operations.get`.
//!
//! Needs `/usr/lib/google-cloud-sdk/platform/pubsub-emulator` and Java 17 (CI installs them); it
//! fails without them, like `android_pubsub_emulator.rs`.

use std::path::PathBuf;
use std::time::Duration;

use mdm_conformance::android::{AmapiEmulator, DeviceSpec, EmulatorConfig, PubSubEmulator, Publisher};
use mdm_core::DeviceId;
use mdm_gateway::config::Config;
use mdm_gateway::store::EnrollmentState;
use mdm_tests::{Harness, eventually};
use serde_json::{Value, json};

const TOPIC: &str = "projects/gw-e2e/topics/amapi";
const SUBSCRIPTION: &str = "projects/gw-e2e/subscriptions/gateway";
const WAIT: Duration = Duration::from_secs(60);

/// The AMAPI client pointed at the emulator; reconcile far in the future.
fn configure(c: &mut Config, emu: &AmapiEmulator, key: PathBuf, ca: PathBuf, enterprise: &str) {
    let a = &mut c.android;
    a.api_base_url = emu.url();
    a.api_ca = Some(ca);
    a.service_account_key = Some(key);
    a.enterprise = Some(enterprise.to_owned());
    a.pubsub_topic = Some(TOPIC.into());
    a.request_timeout_ms = 5_000;
    a.reconcile_after_s = 86_400;
}

/// The first event of `event_type` for `device` (and `command_id` when given), waiting for it.
async fn event(
    h: &Harness,
    pubsub: &PubSubEmulator,
    device: &str,
    event_type: &str,
    command_id: Option<&str>,
) -> Value {
    let found = eventually(WAIT, || async {
        h.events_of(device, event_type).await.into_iter().find(|e| command_id.is_none_or(|c| e["command_id"] == c))
    })
    .await;
    found.unwrap_or_else(|| {
        panic!("no {event_type} for {device} ({command_id:?}); Pub/Sub emulator log:\n{}", pubsub.log())
    })
}

async fn command(h: &Harness, device: &str, command: Value) -> String {
    let (code, r) = h.post("/v1/commands", &json!({"device_id": device, "command": command})).await;
    assert_eq!(code, 202, "{r}");
    r["command_id"].as_str().expect("command_id").to_owned()
}

#[tokio::test]
async fn enroll_report_and_commands_through_google_pubsub_emulator() {
    let emu = AmapiEmulator::start(EmulatorConfig::default()).await.expect("AMAPI emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, amapi_ca) = (dir.path().join("sa.json"), dir.path().join("amapi-ca.pem"));
    emu.write_key(&key).expect("key");
    std::fs::write(&amapi_ca, emu.ca_pem()).expect("ca");
    let enterprise =
        emu.create_enterprise(Some(TOPIC), &["ENROLLMENT", "STATUS_REPORT", "COMMAND"]).expect("enterprise");
    let h = Harness::start_with(|c| configure(c, &emu, key.clone(), amapi_ca.clone(), &enterprise)).await;

    // Google's Pub/Sub emulator, trusting the gateway's CA, pushing to its HTTPS endpoint.
    let ca = String::from_utf8(h.ca_pem.clone()).expect("pem");
    let pubsub = PubSubEmulator::start_trusting(0, &[&ca])
        .await
        .unwrap_or_else(|e| panic!("this test needs Google's Pub/Sub emulator and Java 17 (CI installs them): {e}"));
    pubsub.client().create_topic(TOPIC).await.expect("topic");
    let endpoint = format!("{}/android/pubsub?token={}", h.device_url, h.pubsub_token());
    pubsub.client().create_push_subscription(SUBSCRIPTION, TOPIC, &endpoint, None).await.expect("subscription");
    emu.set_publisher(Some(Publisher::PubSub(pubsub.client().clone())));

    // An enrollment token made through the gateway; the device enrolls with its value.
    let (code, token) =
        h.post("/v1/android/enrollment-tokens", &json!({"mode": "fully_managed", "policy": "default"})).await;
    assert_eq!(code, 201, "{token}");
    let value = token["value"].as_str().expect("value");
    let name = emu.enroll_device(value, &DeviceSpec::numbered(42)).expect("enroll");
    let parts: Vec<&str> = name.split('/').collect();
    let id: DeviceId = format!("android:{}:{}", parts[1], parts[3]).parse().expect("device id");
    let dev = id.as_str();
    let amapi_device = emu.device(&name).expect("device in AMAPI");

    // ENROLLMENT → device.enrolled, with the notification as `raw`, and the stored enrollment.
    let enrolled = event(&h, &pubsub, dev, "device.enrolled", None).await;
    assert_eq!(enrolled["platform"], "android");
    assert_eq!(enrolled["data"]["name"], name.as_str());
    assert_eq!(enrolled["data"]["management_mode"], "DEVICE_OWNER");
    assert_eq!(enrolled["data"]["enrollment_token_name"], token["name"]);
    assert_eq!(enrolled["data"]["policy_name"], format!("{enterprise}/policies/default"));
    assert_eq!(enrolled["raw"]["content_type"], "application/json");
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        enrolled["raw"]["body_b64"].as_str().expect("raw body"),
    )
    .expect("base64");
    let raw: Value = serde_json::from_slice(&raw).expect("raw is the Device JSON");
    assert_eq!(raw["name"], name.as_str());
    let store = h.gateway().state.store.clone();
    let e = store.enrollment(&id).await.expect("read").expect("enrollment stored");
    assert_eq!(e.state, EnrollmentState::Enrolled);
    assert_eq!(e.inventory.serial_number.as_deref(), Some("EMU000000042"));
    assert_eq!(e.inventory.imei.as_deref(), amapi_device["networkInfo"]["imei"].as_str());
    assert_eq!(e.inventory.ownership.as_deref(), Some("corporate"));
    assert_eq!(e.attributes["name"], name.as_str());
    assert_eq!(e.attributes["enrollment_token_name"], token["name"]);
    assert!(e.enrolled_at.is_some());

    // STATUS_REPORT → device.status_report and device.inventory, fields filled; stored.
    emu.update_device(&name, |d| {
        d["softwareInfo"]["androidVersion"] = json!("15");
        d["softwareInfo"]["securityPatchLevel"] = json!("2026-03-05");
    })
    .expect("update device");
    emu.status_report(&name).expect("status report");
    let report = event(&h, &pubsub, dev, "device.status_report", None).await;
    assert_eq!(report["data"]["security_patch_level"], "2026-03-05");
    assert_eq!(report["data"]["state"], "ACTIVE");
    assert!(report["data"]["last_status_report_time"].is_string(), "{report}");
    assert!(report["raw"]["body_b64"].is_string(), "the report carries the notification");
    let inventory = eventually(WAIT, || async {
        h.events_of(dev, "device.inventory").await.into_iter().find(|e| e["data"]["os_version"] == "15")
    })
    .await
    .expect("device.inventory after the report");
    let inv = &inventory["data"];
    assert_eq!(inv["os_name"], "Android");
    assert_eq!(inv["serial_number"], "EMU000000042");
    assert_eq!(inv["model"], "Pixel 8");
    assert_eq!(inv["manufacturer"], "Google");
    assert_eq!(inv["imei"], amapi_device["networkInfo"]["imei"]);
    assert!(inv["wifi_mac"].is_string(), "{inv}");
    assert_eq!(inv["ownership"], "corporate");
    let (code, d) = h.get(&format!("/v1/devices/{dev}")).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["inventory"]["os_version"], "15", "{d}");
    let e = store.enrollment(&id).await.expect("read").expect("enrollment");
    assert_eq!(e.attributes["security_patch_level"], "2026-03-05");
    assert_eq!(e.attributes["last_status_report_time"], report["data"]["last_status_report_time"]);

    // Commands: issueCommand, carried out, COMMAND through Pub/Sub, acknowledged.
    emu.clear_requests();
    for (normalised, amapi_type) in
        [(json!({"type": "lock"}), "LOCK"), (json!({"type": "clear_passcode"}), "RESET_PASSWORD")]
    {
        let cid = command(&h, dev, normalised).await;
        let ack = event(&h, &pubsub, dev, "command.acknowledged", Some(&cid)).await;
        let operation = ack["data"]["operation"].as_str().expect("operation").to_owned();
        assert!(operation.starts_with(&format!("{name}/operations/")), "{ack}");
        assert_eq!(ack["data"]["command_type"], amapi_type);
        assert_eq!(ack["data"]["request_type"], amapi_type);
        assert_eq!(ack["data"]["status"], "Acknowledged");
        assert!(ack["data"].get("reconciled").is_none(), "resolved by the notification: {ack}");
        let raw = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            ack["raw"]["body_b64"].as_str().expect("raw"),
        )
        .expect("base64");
        let raw: Value = serde_json::from_slice(&raw).expect("raw is the Operation JSON");
        assert_eq!((raw["name"].as_str(), raw["done"].as_bool()), (Some(operation.as_str()), Some(true)));

        // What AMAPI saw and what the emulated device did.
        let issued = emu.requests_matching("POST", &format!("{name}:issueCommand"));
        assert!(issued.iter().any(|r| r.json().is_some_and(|b| b["type"] == amapi_type)), "{amapi_type} not issued");
        let op = emu.operation(&operation).expect("operation in AMAPI");
        assert_eq!(op["done"], true);
        assert_eq!(op["metadata"]["type"], amapi_type);

        // The command record, through the API.
        let (code, rec) = h.get(&format!("/v1/commands/{cid}")).await;
        assert_eq!(code, 200, "{rec}");
        assert_eq!(rec["status"], "acknowledged", "{rec}");
        assert_eq!(rec["request_type"], amapi_type);
        assert_eq!(rec["result"]["operation"], operation.as_str(), "{rec}");
        let types: Vec<String> = h
            .events()
            .await
            .into_iter()
            .filter(|e| e["command_id"] == cid.as_str())
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(types, ["command.queued", "command.sent", "command.acknowledged"]);
        let sent = h.events_of(dev, "command.sent").await;
        let sent = sent.iter().find(|e| e["command_id"] == cid.as_str()).expect("command.sent");
        assert_eq!(sent["data"]["operation"], operation.as_str(), "{sent}");
    }
    // Only the notifications resolved them: operations.get was never asked.
    assert!(
        emu.requests_matching("GET", "/operations/").is_empty(),
        "{:?}",
        emu.requests_matching("GET", "/operations/")
    );
    assert!(store.unresolved_android_operations(i64::MAX, 10).await.expect("ops").is_empty());

    // Everything Pub/Sub delivered was applied once, with its own message ids; nothing dead.
    let handled = h.pubsub_messages();
    assert!(handled.len() >= 4, "ENROLLMENT, STATUS_REPORT, 2 × COMMAND: {handled:?}");
    assert!(handled.iter().all(|(m, o)| m.parse::<u64>().is_ok() && o == "applied"), "{handled:?}");
    assert!(store.dead_letters(10).await.expect("dead letters").is_empty());
    assert_eq!(h.events_of(dev, "device.enrolled").await.len(), 1);
    assert_eq!(h.events_of(dev, "command.acknowledged").await.len(), 2);
    emu.stop().await;
    drop(pubsub);
    h.stop().await;
}
