//! The gateway's AMAPI client against the AMAPI emulator, over real sockets and TLS: the
//! service-account token, each Android command from `POST /v1/commands` to the call the emulator
//! saw and what was stored, the error classes (429, 5xx, 400, 403, the 500-not-found quirk), the
//! request budget, merged policy patches, enterprise signup, enrollment tokens, and reconcile
//! through `operations.get` when no COMMAND notification comes.

use std::time::{Duration, Instant};

use mdm_conformance::android::{DeviceSpec, EmulatorConfig, Fault, FaultRule};
use mdm_core::{DeviceId, EventType};
use mdm_gateway::config::Config;
use mdm_gateway::store::{Enrollment, EnrollmentState};
use mdm_tests::android::{AMAPI_TOPIC, AmapiFixture};
use mdm_tests::{Harness, eventually, unix_now};
use serde_json::{Value, json};

const TOPIC: &str = AMAPI_TOPIC;

type Amapi = AmapiFixture;

async fn emulator() -> Amapi {
    AmapiFixture::start(EmulatorConfig::default()).await
}

/// The AMAPI client pointed at the emulator, with waits small enough for tests.
fn configure(c: &mut Config, a: &Amapi, enterprise: Option<&str>) {
    a.configure(c, enterprise);
}

fn enterprise(a: &Amapi) -> String {
    a.emu
        .create_enterprise(Some(TOPIC), &["ENROLLMENT", "STATUS_REPORT", "COMMAND", "USAGE_LOGS", "ENTERPRISE_UPGRADE"])
        .expect("enterprise")
}

/// A device enrolled in the emulator, and known to the gateway (as the Pub/Sub intake would
/// record it): its gateway device id and AMAPI name.
async fn device(h: &Harness, a: &Amapi, enterprise: &str, n: u64) -> (String, String) {
    let token = a.emu.create_enrollment_token(enterprise, &json!({"policyName": "default"})).expect("token");
    let name = a.emu.enroll_device(token["value"].as_str().expect("value"), &DeviceSpec::numbered(n)).expect("enroll");
    let parts: Vec<&str> = name.split('/').collect();
    let id: DeviceId = format!("android:{}:{}", parts[1], parts[3]).parse().expect("device id");
    let mut e = Enrollment::new(id.clone(), unix_now());
    e.state = EnrollmentState::Enrolled;
    h.gateway().state.store.save_enrollment(&e, &[]).await.expect("save enrollment");
    (id.as_str().to_owned(), name)
}

async fn command(h: &Harness, device: &str, command: Value) -> String {
    let (code, r) = h.post("/v1/commands", &json!({"device_id": device, "command": command})).await;
    assert_eq!(code, 202, "{r}");
    r["command_id"].as_str().expect("command_id").to_owned()
}

/// Waits until the command reaches `status`; returns its record.
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

async fn event_types(h: &Harness, command_id: &str) -> Vec<String> {
    h.events()
        .await
        .into_iter()
        .filter(|e| e["command_id"] == command_id)
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn each_command_type_reaches_amapi_and_is_resolved() {
    let a = emulator().await;
    // No publisher: COMMAND notifications never come, so issued commands are resolved by
    // reconcile (operations.get).
    let ent = enterprise(&a);
    let h = Harness::start_with(|c| configure(c, &a, Some(&ent))).await;
    let (dev, name) = device(&h, &a, &ent, 1).await;

    // Issued commands: AMAPI sees the Command, the command is sent, then reconciled.
    for (normalised, amapi_type) in [
        (json!({"type": "lock"}), "LOCK"),
        (json!({"type": "restart"}), "REBOOT"),
        (json!({"type": "clear_passcode"}), "RESET_PASSWORD"),
    ] {
        let id = command(&h, &dev, normalised.clone()).await;
        let sent = until_status(&h, &id, "sent").await;
        assert_eq!(sent["request_type"], amapi_type);
        let calls = a.emu.requests_matching("POST", &format!("{name}:issueCommand"));
        let call = calls.iter().rev().find(|r| r.json().is_some_and(|b| b["type"] == amapi_type)).expect("issued");
        assert_eq!(call.status, 200);
        let op = h.gateway().state.store.unresolved_android_operations(i64::MAX, 100).await.expect("ops");
        assert!(op.iter().any(|o| o.command_id == id && o.operation.starts_with(&format!("{name}/operations/"))));
        let done = until_status(&h, &id, "acknowledged").await;
        assert_eq!(done["result"]["command_type"], amapi_type, "{done}");
        assert_eq!(event_types(&h, &id).await, ["command.queued", "command.sent", "command.acknowledged"]);
        let ack = h.events_of(&dev, "command.acknowledged").await;
        assert!(ack.iter().any(|e| e["command_id"] == id && e["data"]["reconciled"] == true));
        assert!(!a.emu.requests_matching("GET", &format!("{name}/operations/")).is_empty());
    }

    // device_info: devices.get, acknowledged with the device, inventory event and stored inventory.
    let id = command(&h, &dev, json!({"type": "device_info"})).await;
    let done = until_status(&h, &id, "acknowledged").await;
    assert_eq!(done["result"]["name"], name);
    assert_eq!(done["result"]["hardwareInfo"]["serialNumber"], "EMU000000001");
    assert_eq!(event_types(&h, &id).await, ["command.queued", "command.acknowledged", "device.inventory"]);
    let (_, d) = h.get(&format!("/v1/devices/{dev}")).await;
    assert_eq!(d["inventory"]["serial_number"], "EMU000000001", "{d}");

    // raw: any call under the enterprise, acknowledged with the reply.
    let id = command(
        &h,
        &dev,
        json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": ent.clone()}}),
    )
    .await;
    let done = until_status(&h, &id, "acknowledged").await;
    assert_eq!(done["result"]["name"], ent);
    assert_eq!(done["result"]["pubsubTopic"], TOPIC);

    // wipe: devices.delete with the flag, acknowledged.
    let id = command(&h, &dev, json!({"type": "wipe", "preserve_data_plan": false})).await;
    until_status(&h, &id, "acknowledged").await;
    let del = a.emu.requests_matching("DELETE", &name);
    assert_eq!(del.len(), 1);
    assert_eq!(del[0].query_param("wipeDataFlags").as_deref(), Some("WIPE_ESIMS"));
    assert_eq!(a.emu.device(&name).expect("device")["state"], "DELETED");

    // Wrong for Android: refused, nothing queued (set_settings, install_app and app_config are
    // tests/tests/android_policy_commands.rs).
    let before = h.gateway().state.store.last_event_seq().await.expect("seq");
    let (code, r) = h
        .post("/v1/commands", &json!({"device_id": dev, "command": {"type": "install_app", "app": "361309726"}}))
        .await;
    assert_eq!((code, r["error"]["code"].as_str()), (422, Some("invalid_command")), "{r}");
    let (code, r) =
        h.post("/v1/commands", &json!({"device_id": dev, "command": {"type": "lock", "pin": "1234"}})).await;
    assert_eq!((code, r["error"]["code"].as_str()), (422, Some("invalid_command")), "{r}");
    assert_eq!(h.gateway().state.store.last_event_seq().await.expect("seq"), before);

    // One grant served every call.
    assert_eq!(a.emu.grants(), 1);
    h.stop().await;
}

#[tokio::test]
async fn the_access_token_is_cached_and_refreshed() {
    let a = emulator().await;
    a.emu.set_token_lifetime(Duration::from_secs(2));
    let ent = enterprise(&a);
    let h = Harness::start_with(|c| configure(c, &a, Some(&ent))).await;
    let (_, name) = device(&h, &a, &ent, 1).await;
    let id = name.rsplit('/').next().unwrap();
    for _ in 0..3 {
        let (code, r) = h.get(&format!("/v1/android/devices/{id}")).await;
        assert_eq!(code, 200, "{r}");
        assert_eq!(r["name"], name);
    }
    assert_eq!(a.emu.grants(), 1, "one grant for many calls");
    // Refreshed shortly before expiry (half the lifetime for so short a token).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (code, _) = h.get(&format!("/v1/android/devices/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(a.emu.grants(), 2, "refreshed after expiry");
    // A token AMAPI no longer accepts (401): one new grant, the call succeeds.
    a.emu.revoke_access_tokens();
    let (code, r) = h.get(&format!("/v1/android/devices/{id}")).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(a.emu.grants(), 3);
    // Concurrent callers with no valid token share one grant.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let device_path = format!("/v1/android/devices/{id}");
    let calls: Vec<_> = (0..8).map(|_| h.get(&device_path)).collect();
    for (code, _) in futures_util::future::join_all(calls).await {
        assert_eq!(code, 200);
    }
    assert_eq!(a.emu.grants(), 4, "single flight");
    h.stop().await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let a = emulator().await;
    let ent = enterprise(&a);
    let h = Harness::start_with(|c| configure(c, &a, Some(&ent))).await;
    let (dev, name) = device(&h, &a, &ent, 1).await;
    let issue = format!("{name}:issueCommand");

    // 429 twice: waits rate_limited_wait_ms (300) + jitter each time, then succeeds.
    a.emu.inject(FaultRule::new(&issue, Fault::TooManyRequests).times(2));
    let started = Instant::now();
    let id = command(&h, &dev, json!({"type": "lock"})).await;
    until_status(&h, &id, "sent").await;
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    let seen: Vec<u16> = a.emu.requests_matching("POST", &issue).iter().map(|r| r.status).collect();
    assert_eq!(seen, [429, 429, 200]);
    let gaps: Vec<Duration> =
        a.emu.requests_matching("POST", &issue).windows(2).map(|w| w[1].at.duration_since(w[0].at)).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(300)), "{gaps:?}");
    assert!(h.metric("mdm_amapi_retries_total", "reason=\"rate_limited\"").await >= 2.0);

    // 503 twice: backoff 50 ms then 100 ms, then succeeds.
    a.emu.clear_requests();
    a.emu.inject(FaultRule::new(&issue, Fault::Unavailable).times(2));
    let id = command(&h, &dev, json!({"type": "restart"})).await;
    until_status(&h, &id, "sent").await;
    let reqs = a.emu.requests_matching("POST", &issue);
    assert_eq!(reqs.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 503, 200]);
    assert!(reqs[1].at.duration_since(reqs[0].at) >= Duration::from_millis(50));
    assert!(reqs[2].at.duration_since(reqs[1].at) >= Duration::from_millis(100));

    // A timeout counts as a server error too.
    a.emu.clear_requests();
    a.emu.inject(FaultRule::new(&issue, Fault::Delay(Duration::from_millis(2_500))).times(1));
    let started = Instant::now();
    let id = command(&h, &dev, json!({"type": "lock"})).await;
    until_status(&h, &id, "sent").await;
    // The gateway gave up on the first attempt at request_timeout_ms (2 s; the emulator then
    // drops it unanswered and unlogged) and the retry went through.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(a.emu.pending_faults().is_empty());
    assert_eq!(a.emu.requests_matching("POST", &issue).iter().map(|r| r.status).collect::<Vec<_>>(), [200]);

    // Still failing after max_attempts (4): command.error, not dropped.
    a.emu.clear_requests();
    a.emu.inject(FaultRule::new(&issue, Fault::Unavailable).times(10));
    let id = command(&h, &dev, json!({"type": "lock"})).await;
    let failed = until_status(&h, &id, "error").await;
    assert_eq!(failed["error"]["code"], "amapi_unavailable", "{failed}");
    assert_eq!(a.emu.requests_matching("POST", &issue).len(), 4);
    assert_eq!(event_types(&h, &id).await, ["command.queued", "command.error"]);
    assert!(h.metric("mdm_amapi_calls_total", "outcome=\"amapi_unavailable\"").await >= 1.0);
    a.emu.clear_faults();
    h.stop().await;
}

#[tokio::test]
async fn permanent_errors_become_command_errors() {
    let a = emulator().await;
    let ent = enterprise(&a);
    let other = enterprise(&a);
    let h = Harness::start_with(|c| configure(c, &a, Some(&ent))).await;
    let (dev, name) = device(&h, &a, &ent, 1).await;
    let (dev2, _) = device(&h, &a, &other, 2).await;

    // 400: command.error with Google's message, one attempt.
    a.emu.inject(FaultRule::new(
        &format!("{name}:issueCommand"),
        Fault::InvalidArgument("Invalid command type.".into()),
    ));
    let id = command(&h, &dev, json!({"type": "lock"})).await;
    let failed = until_status(&h, &id, "error").await;
    assert_eq!(failed["error"], json!({"code": "amapi_invalid_argument", "message": "Invalid command type."}));
    let ev = h.events_of(&dev, "command.error").await;
    assert_eq!(ev.last().expect("event")["data"]["error"]["message"], "Invalid command type.");
    assert_eq!(a.emu.requests_matching("POST", &format!("{name}:issueCommand")).len(), 1);

    // The 500 "Requested entity was not found." quirk is a 404, not retried.
    a.emu.inject(FaultRule::new(&name, Fault::InternalNotFound).method("GET"));
    let id = command(&h, &dev, json!({"type": "device_info"})).await;
    let failed = until_status(&h, &id, "error").await;
    assert_eq!(failed["error"]["code"], "amapi_not_found", "{failed}");
    assert_eq!(a.emu.requests_matching("GET", &name).len(), 1);
    a.emu.inject(FaultRule::new("/devices/", Fault::InternalNotFound).method("GET"));
    let (code, r) = h.get("/v1/android/devices/abc").await;
    assert_eq!((code, r["error"]["code"].as_str()), (404, Some("amapi_not_found")), "{r}");
    let (code, r) = h.get("/v1/android/devices/0000").await;
    assert_eq!((code, r["error"]["code"].as_str()), (404, Some("amapi_not_found")), "{r}");

    // 403: that enterprise is failing; the other one carries on.
    a.emu.inject(FaultRule::new(&ent, Fault::PermissionDenied("The caller does not have permission".into())));
    let id = command(&h, &dev, json!({"type": "restart"})).await;
    let failed = until_status(&h, &id, "error").await;
    assert_eq!(failed["error"]["code"], "amapi_permission_denied");
    let (_, status) = h.get("/v1/android/status").await;
    assert_eq!(status["failing_enterprises"][&ent]["message"], "The caller does not have permission", "{status}");
    assert!(status["failing_enterprises"].get(&other).is_none());
    // Shown in /readyz too, without making the gateway unready.
    let r = h.raw_api().get(format!("{}/readyz", h.api_url)).send().await.expect("readyz");
    assert_eq!(r.status().as_u16(), 200);
    let ready: Value = r.json().await.expect("json");
    assert!(ready["android"]["failing_enterprises"].get(&ent).is_some(), "{ready}");
    let id2 = command(&h, &dev2, json!({"type": "restart"})).await;
    until_status(&h, &id2, "sent").await;
    // A later success clears the mark.
    let id = command(&h, &dev, json!({"type": "restart"})).await;
    until_status(&h, &id, "sent").await;
    let (_, status) = h.get("/v1/android/status").await;
    assert_eq!(status["failing_enterprises"], json!({}), "{status}");
    h.stop().await;
}

#[tokio::test]
async fn the_request_budget_makes_calls_wait() {
    let a = emulator().await;
    let ent = enterprise(&a);
    let h = Harness::start_with(|c| {
        configure(c, &a, Some(&ent));
        c.android.budget_requests = 3;
        c.android.budget_window_s = 1;
    })
    .await;
    let (_, name) = device(&h, &a, &ent, 1).await;
    let id = name.rsplit('/').next().unwrap();
    let started = Instant::now();
    for _ in 0..7 {
        let (code, _) = h.get(&format!("/v1/android/devices/{id}")).await;
        assert_eq!(code, 200);
    }
    // 7 calls at 3 per second: the 4th waits for the first window, the 7th for the second.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    let times: Vec<std::time::Instant> = a.emu.requests_matching("GET", &name).iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 7);
    // (Arrival times: a grant's request may take a little longer to arrive than a later one's.)
    let gaps: Vec<Duration> = times.windows(4).map(|w| w[3].duration_since(w[0])).collect();
    assert!(gaps.iter().all(|g| *g >= Duration::from_millis(900)), "4 calls within a window: {gaps:?}");
    let (_, status) = h.get("/v1/android/status").await;
    assert_eq!(status["budget"]["limit"], 3);
    h.stop().await;
}

#[tokio::test]
async fn policy_patches_are_merged() {
    let a = emulator().await;
    let ent = enterprise(&a);
    let h = Harness::start_with(|c| {
        configure(c, &a, Some(&ent));
        c.android.policy_merge_ms = 300;
    })
    .await;
    let path = "/v1/android/policies/p1";
    let (p1, p2, p3) = (
        format!("{path}?update_mask=cameraDisabled"),
        format!("{path}?update_mask=screenCaptureDisabled"),
        format!("{path}?update_mask=statusReportingSettings"),
    );
    let (b1, b2, b3) = (
        json!({"cameraDisabled": true}),
        json!({"screenCaptureDisabled": true}),
        json!({"statusReportingSettings": {"hardwareStatusEnabled": true}}),
    );
    let (r1, r2, r3) = tokio::join!(h.put_json(&p1, &b1), h.put_json(&p2, &b2), h.put_json(&p3, &b3));
    for (code, r) in [&r1, &r2, &r3] {
        assert_eq!(*code, 200, "{r}");
        assert_eq!(r["name"], format!("{ent}/policies/p1"));
    }
    assert_eq!(a.emu.policy_patches(), 1, "three patches, one PATCH");
    let policy = a.emu.policy(&format!("{ent}/policies/p1")).expect("policy");
    assert_eq!(policy["cameraDisabled"], true);
    assert_eq!(policy["screenCaptureDisabled"], true);
    assert_eq!(policy["statusReportingSettings"]["hardwareStatusEnabled"], true);
    let patch = a.emu.requests_matching("PATCH", "/policies/p1");
    assert_eq!(
        patch[0].query_param("updateMask").as_deref(),
        Some("cameraDisabled,screenCaptureDisabled,statusReportingSettings")
    );
    // Later, a full replacement is its own PATCH.
    let (code, r) = h.put_json(path, &json!({"cameraDisabled": false})).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(a.emu.policy_patches(), 2);
    let policy = a.emu.policy(&format!("{ent}/policies/p1")).expect("policy");
    assert_eq!(policy["cameraDisabled"], false);
    assert!(policy.get("screenCaptureDisabled").is_none(), "{policy}");
    // Not a policy object: refused before AMAPI.
    let (code, r) = h.put_json(path, &json!([1])).await;
    assert_eq!((code, r["error"]["code"].as_str()), (422, Some("invalid_policy")));
    assert_eq!(a.emu.policy_patches(), 2);
    h.stop().await;
}

#[tokio::test]
async fn enterprise_signup_end_to_end() {
    let a = emulator().await;
    let h = Harness::start_with(|c| configure(c, &a, None)).await;
    // Without an enterprise, enrollment tokens cannot be made.
    let (code, r) = h.post("/v1/android/enrollment-tokens", &json!({"mode": "fully_managed", "policy": "p"})).await;
    assert_eq!((code, r["error"]["code"].as_str()), (409, Some("android_enterprise_unset")), "{r}");

    let callback = format!("{}/android/signup/callback", h.api_url);
    let (code, signup) = h.post("/v1/android/signup-urls", &json!({"callback_url": callback})).await;
    assert_eq!(code, 201, "{signup}");
    let name = signup["name"].as_str().expect("name");
    assert!(signup["url"].as_str().expect("url").starts_with("https://"));
    let sent = a.emu.requests_matching("POST", "/v1/signupUrls");
    assert_eq!(sent[0].query_param("projectId").as_deref(), Some("emulated-project"));
    assert!(sent[0].query_param("callbackUrl").expect("callbackUrl").starts_with(&format!("{callback}?state=")));

    // The admin finishes Google's page; the browser follows the redirect (no API key).
    let redirect = a.emu.complete_signup(name).expect("redirect");
    let resp = reqwest::get(&redirect).await.expect("callback");
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.expect("json");
    let ent = body["enterprise"].as_str().expect("enterprise").to_owned();
    let created = a.emu.enterprise(&ent).expect("created in AMAPI");
    assert_eq!(created["pubsubTopic"], TOPIC);
    let mut types: Vec<&str> =
        created["enabledNotificationTypes"].as_array().expect("types").iter().map(|t| t.as_str().unwrap()).collect();
    types.sort();
    assert_eq!(types, ["COMMAND", "ENROLLMENT", "ENTERPRISE_UPGRADE", "STATUS_REPORT", "USAGE_LOGS"]);
    let stored = h.gateway().state.store.android_enterprises().await.expect("enterprises");
    assert_eq!(stored[0].name, ent);
    let (_, status) = h.get("/v1/android/status").await;
    assert_eq!(status["enterprise"], ent.as_str());

    // A replayed callback creates nothing; an unknown state neither.
    let creates = enterprise_creates(&a);
    let resp = reqwest::get(&redirect).await.expect("callback");
    assert_eq!(resp.status().as_u16(), 409);
    let resp = reqwest::get(format!("{callback}?state=forged&enterpriseToken=x")).await.expect("callback");
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(enterprise_creates(&a), creates);

    // The stored enterprise is the gateway's: enrollment tokens now work.
    let (code, r) = h.post("/v1/android/enrollment-tokens", &json!({"mode": "fully_managed", "policy": "p"})).await;
    assert_eq!(code, 201, "{r}");
    assert_eq!(r["policy_name"], format!("{ent}/policies/p"));

    // enterprises.create failing (503) is reported, never retried.
    let (_, signup) = h.post("/v1/android/signup-urls", &json!({"callback_url": callback})).await;
    let redirect = a.emu.complete_signup(signup["name"].as_str().unwrap()).expect("redirect");
    a.emu.inject(FaultRule::new("/v1/enterprises", Fault::Unavailable).method("POST"));
    let resp = reqwest::get(&redirect).await.expect("callback");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(enterprise_creates(&a), creates + 1);
    assert_eq!(h.gateway().state.store.android_enterprises().await.expect("enterprises").len(), 1);
    // No callback URL at all: refused.
    let (code, r) = h.post("/v1/android/signup-urls", &json!({})).await;
    assert_eq!((code, r["error"]["code"].as_str()), (422, Some("callback_url_required")));
    h.stop().await;
}

fn enterprise_creates(a: &Amapi) -> usize {
    a.emu.requests_matching("POST", "/v1/enterprises").iter().filter(|r| r.path == "/v1/enterprises").count()
}

#[tokio::test]
async fn enrollment_tokens_with_qr_payload_and_link() {
    let a = emulator().await;
    let ent = enterprise(&a);
    let h = Harness::start_with(|c| configure(c, &a, Some(&ent))).await;

    let (code, t) = h
        .post("/v1/android/enrollment-tokens", &json!({"mode": "fully_managed", "policy": "kiosk", "duration_s": 3600}))
        .await;
    assert_eq!(code, 201, "{t}");
    let value = t["value"].as_str().expect("value");
    assert_eq!(t["enrollment_link"], format!("https://enterprise.google.com/android/enroll?et={value}"));
    assert_eq!(
        t["qr_code"]["android.app.extra.PROVISIONING_ADMIN_EXTRAS_BUNDLE"]["com.google.android.apps.work.clouddpc.EXTRA_ENROLLMENT_TOKEN"],
        value
    );
    let stored = a.emu.enrollment_token(value).expect("token in AMAPI");
    assert_eq!(stored["allowPersonalUsage"], "PERSONAL_USAGE_DISALLOWED");
    assert_eq!(stored["policyName"], format!("{ent}/policies/kiosk"));
    assert_eq!(stored["duration"], "3600s");

    let (code, t) = h
        .post(
            "/v1/android/enrollment-tokens",
            &json!({"mode": "work_profile", "policy": format!("{ent}/policies/byod"), "user": "alice", "one_time": true}),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let stored = a.emu.enrollment_token(t["value"].as_str().unwrap()).expect("token");
    assert_eq!(stored["allowPersonalUsage"], "PERSONAL_USAGE_ALLOWED");
    assert_eq!(stored["oneTimeOnly"], true);
    assert_eq!(stored["user"]["accountIdentifier"], "alice");
    // A device enrolls with it.
    let dev = a.emu.enroll_device(t["value"].as_str().unwrap(), &DeviceSpec::numbered(7)).expect("enrolls");
    let (code, list) = h.get("/v1/android/devices?page_size=10").await;
    assert_eq!(code, 200, "{list}");
    assert!(list["devices"].as_array().unwrap().iter().any(|d| d["name"] == dev.as_str()));

    // Refusals: bad mode, bad policy, and Google's own 400 passed on.
    let (code, _) = h.post("/v1/android/enrollment-tokens", &json!({"mode": "kiosk", "policy": "p"})).await;
    assert_eq!(code, 422);
    let (code, r) = h.post("/v1/android/enrollment-tokens", &json!({"mode": "fully_managed", "policy": "a/b"})).await;
    assert_eq!((code, r["error"]["code"].as_str()), (422, Some("invalid_policy")));
    let (code, r) = h
        .post("/v1/android/enrollment-tokens", &json!({"mode": "fully_managed", "policy": "p", "duration_s": 5}))
        .await;
    assert_eq!((code, r["error"]["code"].as_str()), (422, Some("amapi_invalid_argument")), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("duration"), "{r}");
    h.stop().await;
}

#[tokio::test]
async fn without_a_key_android_calls_are_refused() {
    let h = Harness::start().await;
    let mut e = Enrollment::new("android:E:D".parse().unwrap(), unix_now());
    e.state = EnrollmentState::Enrolled;
    h.gateway().state.store.save_enrollment(&e, &[]).await.expect("save");
    let (code, r) = h.post("/v1/commands", &json!({"device_id": "android:E:D", "command": {"type": "lock"}})).await;
    assert_eq!((code, r["error"]["code"].as_str()), (503, Some("android_not_configured")), "{r}");
    let (code, r) = h.get("/v1/android/status").await;
    assert_eq!((code, &r), (200, &json!({"enabled": false})));
    assert!(h.events().await.iter().all(|e| e["type"] != EventType::COMMAND_QUEUED.as_str()));
    h.stop().await;
}

#[tokio::test]
async fn reconcile_applies_failed_operations_and_leaves_pending_ones() {
    use mdm_conformance::android::{CommandFailure, CommandSettings};
    let a = emulator().await;
    let ent = enterprise(&a);
    a.emu.set_command_settings(CommandSettings {
        failures: vec![CommandFailure::of_type("REBOOT", "API_LEVEL", "Reboot needs API level 24.")],
        ..CommandSettings::default()
    });
    let h = Harness::start_with(|c| configure(c, &a, Some(&ent))).await;
    let (dev, name) = device(&h, &a, &ent, 1).await;

    // The operation ends in an error and no notification comes: reconcile finds it.
    let id = command(&h, &dev, json!({"type": "restart"})).await;
    until_status(&h, &id, "sent").await;
    let failed = until_status(&h, &id, "error").await;
    assert_eq!(failed["error"]["message"], "Reboot needs API level 24.", "{failed}");
    let ev = h.events_of(&dev, "command.error").await;
    let ev = ev.iter().find(|e| e["command_id"] == id).expect("command.error");
    assert_eq!(ev["data"]["error_code"], "API_LEVEL");
    assert_eq!(ev["data"]["reconciled"], true);

    // A device that never runs the command: the command stays sent, asked about with backoff.
    a.emu.set_command_settings(CommandSettings { never_finish: true, ..CommandSettings::default() });
    let id = command(&h, &dev, json!({"type": "lock"})).await;
    until_status(&h, &id, "sent").await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (_, r) = h.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(r["status"], "sent");
    let ops = h.gateway().state.store.unresolved_android_operations(i64::MAX, 10).await.expect("ops");
    let op = ops.iter().find(|o| o.command_id == id).expect("bound operation");
    assert!(op.operation.starts_with(&format!("{name}/operations/")));
    let asked = a.emu.requests_matching("GET", &op.operation).len();
    // reconcile_after_s = 1: asked after 1 s, then 1 s later, then 2 s later (backoff), so
    // at most 3 times in 3.5 s although the loop runs every 0.5 s.
    assert!((1..=3).contains(&asked), "{asked}");
    assert_eq!(event_types(&h, &id).await, ["command.queued", "command.sent"]);
    h.stop().await;
}

#[tokio::test]
async fn an_unusable_key_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("sa.json");
    for (content, expect) in [
        (json!({"type": "service_account"}).to_string(), "not a service-account key"),
        (
            json!({"type": "service_account", "client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "token_uri": "https://oauth2.googleapis.com/token"})
            .to_string(),
            "private_key",
        ),
        (
            json!({"type": "authorized_user", "client_email": "a@b", "private_key": "x PRIVATE KEY-----", "token_uri": "https://t/"})
                .to_string(),
            "authorized_user",
        ),
    ] {
        std::fs::write(&bad, content).expect("write");
        let mut config = mdm_tests::config_on(dir.path().join("data"));
        config.android.service_account_key = Some(bad.clone());
        let err = mdm_gateway::Gateway::start(config).await.expect_err("refused");
        assert_eq!(err.exit_code(), 64, "{err}");
        let text = err.to_string();
        assert!(text.contains("android.service_account_key") && text.contains(expect), "{text}");
    }
}
