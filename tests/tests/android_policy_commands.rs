//! Android `set_settings`, `install_app` and `app_config` over the real wire: `POST /v1/commands`
//! → the gateway patches the device's own AMAPI policy in the AMAPI emulator (seeded from its
//! current policy, the device moved to it with `devices.patch`) → the emulated device applies it
//! and publishes a STATUS_REPORT through Pub/Sub push to the gateway → the command is resolved.
//! Checked on both sides: the policy fields, the applied version, the installed app and its
//! managed configuration (placeholders filled per device) in the emulator; the command results
//! and events in the gateway. Also: non-compliance becomes `command.error` with the reason,
//! reconcile through `devices.get` when no report comes, and 422s for what Android cannot express.

use std::time::Duration;

use mdm_conformance::android::{DeviceSpec, DirectPublisher, EmulatorConfig, NonCompliance, PolicySettings, Publisher};
use mdm_gateway::config::Config;
use mdm_tests::android::{AMAPI_TOPIC, AmapiFixture};
use mdm_tests::{Harness, eventually};
use serde_json::{Value, json};

const TOPIC: &str = AMAPI_TOPIC;
/// Long enough that the gateway has recorded a command as sent before the device reports.
const APPLY_DELAY: Duration = Duration::from_millis(300);

fn policy_settings(non_compliance: Vec<NonCompliance>) -> PolicySettings {
    PolicySettings { apply_delay: APPLY_DELAY, apply: true, non_compliance }
}

type Amapi = AmapiFixture;

async fn emulator() -> Amapi {
    AmapiFixture::start(EmulatorConfig { policy: policy_settings(Vec::new()), ..EmulatorConfig::default() }).await
}

fn configure(c: &mut Config, a: &Amapi, enterprise: &str) {
    a.configure(c, Some(enterprise));
}

/// A gateway talking to the emulator, whose notifications are pushed to the gateway.
async fn start(a: &Amapi) -> (Harness, String) {
    let ent = a.emu.create_enterprise(Some(TOPIC), &["ENROLLMENT", "STATUS_REPORT", "COMMAND"]).expect("enterprise");
    let h = Harness::start_with(|c| configure(c, a, &ent)).await;
    connect(a, &h);
    (h, ent)
}

fn connect(a: &Amapi, h: &Harness) {
    let ca_pem = String::from_utf8(h.ca_pem.clone()).expect("pem");
    let url = format!("{}/android/pubsub?token={}", h.device_url, h.pubsub_token());
    a.emu.set_publisher(Some(Publisher::Direct(DirectPublisher::new(&url, Some(&ca_pem)).expect("publisher"))));
}

/// A device enrolled with the `default` policy, known to the gateway through its ENROLLMENT
/// notification: (gateway id, AMAPI name).
async fn enrolled(h: &Harness, a: &Amapi, ent: &str, n: u64) -> (String, String) {
    let token = a.emu.create_enrollment_token(ent, &json!({"policyName": "default"})).expect("token");
    let name = a.emu.enroll_device(token["value"].as_str().expect("value"), &DeviceSpec::numbered(n)).expect("enroll");
    let parts: Vec<&str> = name.split('/').collect();
    let id = format!("android:{}:{}", parts[1], parts[3]);
    let known = eventually(Duration::from_secs(10), || async {
        let (code, d) = h.get(&format!("/v1/devices/{id}")).await;
        (code == 200 && d["inventory"]["serial_number"].is_string()).then_some(())
    })
    .await;
    assert!(known.is_some(), "the gateway never recorded {id}");
    (id, name)
}

async fn command(h: &Harness, device: &str, command: Value) -> String {
    let (code, r) = h.post("/v1/commands", &json!({"device_id": device, "command": command})).await;
    assert_eq!(code, 202, "{command}: {r}");
    r["command_id"].as_str().expect("command_id").to_owned()
}

async fn until_status(h: &Harness, id: &str, status: &str) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let got = eventually(Duration::from_secs(15), || async {
        let (_, r) = h.get(&format!("/v1/commands/{id}")).await;
        *last.lock().unwrap() = r.clone();
        (r["status"] == status).then_some(r)
    })
    .await;
    got.unwrap_or_else(|| panic!("command {id} never reached {status}: {}", last.lock().unwrap()))
}

async fn command_events(h: &Harness, command_id: &str) -> Vec<Value> {
    h.events().await.into_iter().filter(|e| e["command_id"] == command_id).collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_apps_and_app_config_are_applied_by_the_device() {
    let a = emulator().await;
    let (h, ent) = start(&a).await;
    // The device's current policy, set by an administrator: its own policy starts as a copy.
    let (code, r) = h.put_json("/v1/android/policies/default", &json!({"playStoreMode": "BLACKLIST"})).await;
    assert_eq!(code, 200, "{r}");
    let (dev, name) = enrolled(&h, &a, &ent, 7).await;
    let serial = "EMU000000007";
    let own = format!("{ent}/policies/device-{}", name.rsplit('/').next().expect("id"));

    let settings = command(
        &h,
        &dev,
        json!({"type": "set_settings", "settings": {"password_min_length": 6, "camera_disabled": true,
            "screen_capture_disabled": true, "storage_encryption_required": true, "screen_lock_timeout_s": 300}}),
    )
    .await;
    let install = command(
        &h,
        &dev,
        json!({"type": "install_app", "app": "com.example.mail",
            "managed_config": {"account": "{{SerialNumber}}@example.com"}}),
    )
    .await;
    let config = command(
        &h,
        &dev,
        json!({"type": "app_config", "app": "com.example.mail",
            "config": {"device": "{{DeviceId}}", "ids": ["{{ SerialNumber }}"], "port": 993}}),
    )
    .await;
    let done = [settings.clone(), install.clone(), config.clone()];
    let mut results = Vec::new();
    for c in &done {
        results.push(until_status(&h, c, "acknowledged").await);
    }

    // The emulator: the device's own policy holds every field, on top of the copied one.
    let policy = a.emu.policy(&own).expect("the device's own policy");
    assert_eq!(policy["playStoreMode"], "BLACKLIST", "seeded from the current policy: {policy}");
    assert_eq!(policy["cameraAccess"], "CAMERA_ACCESS_DISABLED");
    assert_eq!(policy["screenCaptureDisabled"], true);
    assert_eq!(policy["encryptionPolicy"], "ENABLED_WITHOUT_PASSWORD");
    assert_eq!(policy["maximumTimeToLock"], "300000");
    assert_eq!(policy["passwordPolicies"], json!([{"passwordQuality": "NUMERIC", "passwordMinimumLength": 6}]));
    assert_eq!(policy["statusReportingSettings"]["applicationReportsEnabled"], true);
    // app_config replaced the configuration install_app brought; placeholders were filled for
    // this device before AMAPI saw them.
    assert_eq!(
        policy["applications"],
        json!([{"packageName": "com.example.mail", "installType": "FORCE_INSTALLED",
            "managedConfiguration": {"device": dev, "ids": [serial], "port": 993}}])
    );
    let history = a.emu.policy_history(&own);
    assert_eq!(
        history[1]["applications"][0]["managedConfiguration"]["account"],
        format!("{serial}@example.com"),
        "install_app's configuration, filled: {history:?}"
    );
    // The device moved to its own policy once, and applied its newest version.
    let device = a.emu.device(&name).expect("device");
    assert_eq!(device["policyName"], own);
    assert_eq!(device["appliedPolicyName"], own);
    assert_eq!(device["appliedPolicyVersion"], policy["version"]);
    assert_eq!(device["applicationReports"][0]["packageName"], "com.example.mail");
    assert_eq!(device["applicationReports"][0]["state"], "INSTALLED");
    let applied = a.emu.applied_policy(&name).expect("applied");
    assert_eq!(applied["applications"][0]["managedConfiguration"]["device"], dev);
    let moves = a.emu.requests_matching("PATCH", &name);
    assert_eq!(moves.len(), 1, "devices.patch once");
    assert_eq!(moves[0].query_param("updateMask").as_deref(), Some("policyName"));
    // Later commands patch only what they touch.
    let patches = a.emu.requests_matching("PATCH", &own);
    assert_eq!(patches.len(), 3);
    assert_eq!(patches[0].query_param("updateMask"), None, "the first creates the policy whole");
    assert_eq!(
        patches[1].query_param("updateMask").as_deref(),
        Some("applications,statusReportingSettings"),
        "install_app turns app reports on"
    );
    assert_eq!(patches[2].query_param("updateMask").as_deref(), Some("applications"));

    // The gateway: each command acknowledged with the version the device applied.
    for (r, version) in results.iter().zip(1..) {
        assert_eq!(r["request_type"], "policies.patch");
        assert_eq!(r["result"]["policy"], own, "{r}");
        assert_eq!(r["result"]["policy_version"], version, "{r}");
        assert!(r["result"]["applied_policy_version"].as_i64().expect("applied") >= version, "{r}");
    }
    assert_eq!(results[1]["result"]["application"]["state"], "INSTALLED", "{}", results[1]);
    // The stored command keeps the backend's placeholders.
    assert_eq!(results[2]["command"]["config"]["device"], "{{DeviceId}}");
    for c in &done {
        let evs = command_events(&h, c).await;
        assert_eq!(types(&evs), ["command.queued", "command.sent", "command.acknowledged"], "{evs:?}");
        assert_eq!(evs[2]["data"]["resolved_by"], "STATUS_REPORT");
    }
    let sent = command_events(&h, &settings).await;
    assert_eq!(sent[1]["data"]["device_moved_to_policy"], true);
    assert_eq!(command_events(&h, &install).await[1]["data"]["device_moved_to_policy"], false);
    // The status reports also updated the device's stored facts.
    let (_, d) = h.get(&format!("/v1/devices/{dev}")).await;
    assert_eq!(d["inventory"]["encrypted"], true, "{d}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_compliance_fails_the_command_with_the_reason() {
    let a = emulator().await;
    let (h, ent) = start(&a).await;
    let (dev, _name) = enrolled(&h, &a, &ent, 8).await;
    a.emu.set_policy_settings(policy_settings(vec![
        NonCompliance::setting("cameraAccess", "MANAGEMENT_MODE"),
        NonCompliance::app_not_installed("com.example.missing", "NOT_FOUND"),
    ]));
    let camera = command(&h, &dev, json!({"type": "set_settings", "settings": {"camera_disabled": true}})).await;
    let r = until_status(&h, &camera, "error").await;
    assert_eq!(r["error"]["code"], "non_compliant", "{r}");
    assert!(r["error"]["message"].as_str().expect("message").contains("cameraAccess: MANAGEMENT_MODE"), "{r}");
    assert_eq!(r["error"]["non_compliance"][0]["setting_name"], "cameraAccess");
    // A setting the device can apply succeeds although the device is still non-compliant with
    // cameraAccess (it is not what this command touched).
    let capture =
        command(&h, &dev, json!({"type": "set_settings", "settings": {"screen_capture_disabled": true}})).await;
    until_status(&h, &capture, "acknowledged").await;
    let app = command(&h, &dev, json!({"type": "install_app", "app": "com.example.missing"})).await;
    let r = until_status(&h, &app, "error").await;
    assert!(r["error"]["message"].as_str().expect("message").contains("com.example.missing: NOT_FOUND"), "{r}");
    let evs = command_events(&h, &app).await;
    assert_eq!(types(&evs), ["command.queued", "command.sent", "command.error"]);
    assert_eq!(evs[2]["data"]["error"]["non_compliance"][0]["installation_failure_reason"], "NOT_FOUND");

    // What Android cannot express, or a reference that is not a package: 422, nothing queued.
    let before = h.gateway().state.store.last_event_seq().await.expect("seq");
    for (c, code, needle) in [
        (json!({"type": "set_settings", "settings": {"extra": {"knox_wifi": true}}}), "invalid_command", "knox_wifi"),
        (
            json!({"type": "set_settings", "settings": {"screen_lock_timeout_s": 0}}),
            "invalid_command",
            "screen_lock_timeout_s",
        ),
        (json!({"type": "install_app", "app": "361309726"}), "invalid_command", "app"),
        (
            json!({"type": "app_config", "app": "com.example.x", "config": {"u": "{{UDID}}"}}),
            "invalid_command",
            "config",
        ),
    ] {
        let (status, body) = h.post("/v1/commands", &json!({"device_id": dev, "command": c})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some(code)), "{c}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains(needle), "{c}: {body}");
    }
    assert_eq!(h.gateway().state.store.last_event_seq().await.expect("seq"), before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_status_report_reconcile_asks_devices_get() {
    let a = emulator().await;
    let (h, ent) = start(&a).await;
    let (dev, name) = enrolled(&h, &a, &ent, 9).await;
    // From now on no notification reaches the gateway; the device still applies its policy.
    a.emu.set_publisher(None);
    let id = command(&h, &dev, json!({"type": "set_settings", "settings": {"password_required": true}})).await;
    let r = until_status(&h, &id, "acknowledged").await;
    assert_eq!(r["result"]["policy_version"], 1, "{r}");
    let evs = command_events(&h, &id).await;
    assert_eq!(evs[2]["data"]["resolved_by"], "devices.get", "{evs:?}");
    assert!(a.emu.requests_matching("GET", &name).len() >= 2, "devices.get to send, and to reconcile");
    let policy = a.emu.device(&name).expect("device")["policyName"].as_str().expect("policy").to_owned();
    assert_eq!(a.emu.policy(&policy).expect("policy")["passwordPolicies"], json!([{"passwordQuality": "SOMETHING"}]));
    h.stop().await;
}
