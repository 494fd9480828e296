//! The enrollment gate over the real wire, on every platform, with each platform's own answer:
//! the (N+1)th device of a user, a device enrollment manager past the user limit, a blocked OS
//! version, a blocked platform, personally owned devices and corporate identifiers (CSV import),
//! and the backend hook. A refused device leaves nothing stored but its `device.enrollment_denied`
//! event.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdm_conformance::android::{AmapiEmulator, DeviceSpec, DirectPublisher, EmulatorConfig, PushMessage};
use mdm_conformance::apple::DeviceError;
use mdm_conformance::windows::{WindowsEnrollError, WindowsEnroller, WindowsEnrollerConfig};
use mdm_core::{DeviceId, Platform};
use mdm_gateway::config::{Config, PlatformRules};
use mdm_gateway::store::EnrollmentState;
use mdm_tests::{Harness, eventually};
use mdm_windows::enroll::{ErrorType, Fault};
use serde_json::{Value, json};

fn rules(c: &mut Config, p: Platform, f: impl FnOnce(&mut PlatformRules)) {
    let mut r = PlatformRules::default();
    f(&mut r);
    c.enrollment.platforms.insert(p, r);
}

fn windows(h: &Harness, device_id: &str, upn: &str, os: &str) -> WindowsEnroller {
    let mut c = WindowsEnrollerConfig::on_premise(device_id, upn, &h.enroll_secret());
    c.os_version = os.into();
    WindowsEnroller::new(c, &h.device_url, &h.ca_pem).expect("enroller")
}

fn fault(r: Result<mdm_conformance::windows::WindowsIdentity, WindowsEnrollError>) -> Fault {
    match r {
        Err(WindowsEnrollError::Fault { fault, .. }) => fault,
        other => panic!("expected a SOAP fault, got {other:?}"),
    }
}

async fn denials(h: &Harness, device: &str) -> Vec<Value> {
    h.events_of(device, "device.enrollment_denied").await
}

async fn not_stored(h: &Harness, device: &str) {
    let id: DeviceId = device.parse().expect("id");
    assert_eq!(h.gateway().state.store.enrollment(&id).await.expect("read"), None, "{device} must not be stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_user_limit_dem_and_os_range() {
    let h = Harness::start_reachable(|c| {
        c.enrollment.device_limit_per_user = 2;
        c.enrollment.dem_accounts = vec!["DEM@corp.example".into()];
        rules(c, Platform::Windows, |r| r.min_os = Some("10.0.19045".into()));
    })
    .await;
    let os = "10.0.26200.6584";
    windows(&h, "GATE-W1", "ann@corp.example", os).enroll().await.expect("first device");
    windows(&h, "GATE-W2", "ann@corp.example", os).enroll().await.expect("second device");
    // The third: DeviceCapReached, nothing stored, the denial reported.
    let f = fault(windows(&h, "GATE-W3", "Ann@Corp.Example", os).enroll().await);
    assert_eq!(f.error_type, ErrorType::DEVICE_CAP_REACHED, "{f:?}");
    assert!(f.message.contains("2 enrolled devices"), "{}", f.message);
    not_stored(&h, "windows:GATE-W3").await;
    let d = denials(&h, "windows:GATE-W3").await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["data"]["reason"], "device_limit_reached");
    assert_eq!(d[0]["data"]["user"], "ann@corp.example");
    // Re-enrolling one of the two is not a new device.
    windows(&h, "GATE-W2", "ann@corp.example", os).enroll().await.expect("re-enrollment");

    // A device enrollment manager goes past the user limit.
    for n in 1..=4 {
        windows(&h, &format!("GATE-DEM{n}"), "dem@corp.example", os).enroll().await.expect("DEM enrolls");
    }
    // Too old a Windows: DeviceNotSupported.
    let f = fault(windows(&h, "GATE-OLD", "bob@corp.example", "10.0.17763.1").enroll().await);
    assert_eq!(f.error_type, ErrorType::DEVICE_NOT_SUPPORTED, "{f:?}");
    not_stored(&h, "windows:GATE-OLD").await;
    assert_eq!(denials(&h, "windows:GATE-OLD").await[0]["data"]["reason"], "os_too_old");
    // Process-wide recorder: other tests in this binary count too.
    assert!(h.metric("mdm_enrollments_denied_total", "reason=\"os_too_old\"").await >= 1.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_blocked_platform_is_device_not_supported() {
    let h = Harness::start_reachable(|c| rules(c, Platform::Windows, |r| r.allow = false)).await;
    let f = fault(windows(&h, "GATE-BLK", "ann@corp.example", "10.0.26200.1").enroll().await);
    assert_eq!(f.error_type, ErrorType::DEVICE_NOT_SUPPORTED, "{f:?}");
    assert!(f.message.contains("Windows devices may not enroll"), "{}", f.message);
    not_stored(&h, "windows:GATE-BLK").await;
    assert_eq!(denials(&h, "windows:GATE-BLK").await[0]["data"]["reason"], "platform_blocked");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_corporate_serials_personal_devices_and_os_range() {
    let h = Harness::start_with(|c| {
        rules(c, Platform::Apple, |r| {
            r.personal_allowed = false;
            r.max_os = Some("17".into());
        })
    })
    .await;
    let corporate = h.device("C0A1C3D4-0000-4000-8000-00000000C0A1");
    let personal = h.device("C0A2C3D4-0000-4000-8000-00000000C0A2");
    assert_ne!(corporate.serial, personal.serial);

    // Import the corporate serials (the second row repeats the first with other details).
    let csv = format!("{},Ann's iPhone\nF00DF00DF00D,spare\n{},other details\n", corporate.serial, corporate.serial);
    let (code, r) = h.put_bytes("/v1/enrollment/corporate-identifiers?type=serial", csv.into_bytes()).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["imported"], 2);
    assert_eq!(r["duplicates"][0]["identifier"], corporate.serial.as_str());
    assert_eq!(r["duplicates"][0]["kept"], "Ann's iPhone");

    corporate.enroll().await.expect("a listed serial enrolls");
    let (_, dev) = h.get(&format!("/v1/devices/apple:{}", corporate.udid)).await;
    assert_eq!(dev["inventory"]["ownership"], "corporate", "{dev}");
    let (_, list) = h.get("/v1/enrollment/corporate-identifiers?type=serial").await;
    let states: BTreeMap<String, String> = list["identifiers"]
        .as_array()
        .expect("list")
        .iter()
        .map(|i| (i["identifier"].as_str().unwrap().to_owned(), i["state"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(states[&corporate.serial], "enrolled");
    assert_eq!(states["F00DF00DF00D"], "not_contacted");

    // Not listed: personal, and personal devices may not enroll. Apple gets 403, never 401.
    match personal.enroll().await {
        Err(DeviceError::Status { status, body }) => {
            assert_eq!(status, 403);
            assert!(body.contains("personal"), "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    not_stored(&h, &format!("apple:{}", personal.udid)).await;
    assert_eq!(denials(&h, &format!("apple:{}", personal.udid)).await[0]["data"]["reason"], "personal_not_allowed");
    h.stop().await;

    // An OS above the range (the emulated device reports 17.5.1): refused as too new.
    let h = Harness::start_with(|c| rules(c, Platform::Apple, |r| r.max_os = Some("16.7".into()))).await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-00000000C0A3");
    assert!(matches!(dev.enroll().await, Err(DeviceError::Status { status: 403, .. })));
    assert_eq!(denials(&h, &format!("apple:{}", dev.udid)).await[0]["data"]["reason"], "os_too_new");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corporate_identifier_files_are_checked() {
    let h = Harness::start().await;
    let path = "/v1/enrollment/corporate-identifiers";
    for (query, body, status, code) in [
        ("", "C02X,details\n".to_owned(), 422, "invalid_type"),
        ("?type=mac", "C02X,details\n".to_owned(), 422, "invalid_type"),
        ("?type=serial", "serial,details\nC02X,a\n".to_owned(), 422, "invalid_csv"),
        ("?type=serial", "C02X\n".to_owned(), 422, "invalid_csv"),
        ("?type=serial", "C02X,a,b\n".to_owned(), 422, "invalid_csv"),
        ("?type=serial", format!("C02X,{}\n", "x".repeat(129)), 422, "invalid_csv"),
        ("?type=imei", "12345,phone\n".to_owned(), 422, "invalid_csv"),
        ("?type=serial", (0..5001).map(|i| format!("S{i:05},d\n")).collect::<String>(), 422, "too_many_rows"),
        ("?type=serial", "S".repeat(5 * 1024 * 1024 + 1), 413, "file_too_large"),
    ] {
        let (s, r) = h.put_bytes(&format!("{path}{query}"), body.into_bytes()).await;
        assert_eq!((s, r["error"]["code"].as_str()), (status, Some(code)), "{query}: {r}");
    }
    let (_, list) = h.get(&format!("{path}?type=serial")).await;
    assert_eq!(list["identifiers"], json!([]), "refused files import nothing");
    // IMEIs are normalised (spaces and dashes dropped); quoted details may hold commas.
    let (s, r) = h.put_bytes(&format!("{path}?type=imei"), b"35 209900 176148 1,\"Ann, phone\"\n".to_vec()).await;
    assert_eq!((s, &r["imported"]), (200, &json!(1)), "{r}");
    let (_, list) = h.get(&format!("{path}?type=imei")).await;
    assert_eq!(list["identifiers"][0]["identifier"], "352099001761481");
    assert_eq!(list["identifiers"][0]["details"], "Ann, phone");
    h.stop().await;
}

/// A hook that records the facts it is asked about and answers by user: `deny@…` refused,
/// `slow@…` never in time, anyone else allowed.
async fn hook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/enroll", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        let facts: Value = serde_json::from_slice(&body).expect("json");
                        log.lock().unwrap().push(facts.clone());
                        let user = facts["user"].as_str().unwrap_or_default().to_owned();
                        if user.starts_with("slow@") {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        let answer = if user.starts_with("deny@") {
                            json!({"allow": false, "reason": "no licence for this user"})
                        } else {
                            json!({"allow": true})
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(answer.to_string()),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_allows_refuses_and_fails_closed() {
    let (url, seen) = hook().await;
    let h = Harness::start_reachable(|c| {
        c.enrollment.hook_url = Some(url);
        c.enrollment.hook_timeout_ms = 500;
    })
    .await;
    let os = "10.0.26200.1";
    windows(&h, "HOOK-OK", "ann@corp.example", os).enroll().await.expect("allowed");
    let f = fault(windows(&h, "HOOK-NO", "deny@corp.example", os).enroll().await);
    assert_eq!(f.error_type, ErrorType::DEVICE_NOT_SUPPORTED);
    assert!(f.message.contains("no licence"), "{}", f.message);
    let f = fault(windows(&h, "HOOK-SLOW", "slow@corp.example", os).enroll().await);
    assert_eq!(f.error_type, ErrorType::DEVICE_NOT_SUPPORTED);
    assert_eq!(denials(&h, "windows:HOOK-SLOW").await[0]["data"]["reason"], "hook_unavailable");
    not_stored(&h, "windows:HOOK-NO").await;
    let asked = seen.lock().unwrap().clone();
    assert_eq!(asked[0]["platform"], "windows");
    assert_eq!(asked[0]["user"], "ann@corp.example");
    assert_eq!(asked[0]["os_version"], os);
    assert_eq!(asked[0]["ownership"], "personal");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_tokens_and_devices_enrolling_against_the_rules() {
    let emu = AmapiEmulator::start(EmulatorConfig::default()).await.expect("AMAPI emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, ca) = (dir.path().join("sa.json"), dir.path().join("ca.pem"));
    emu.write_key(&key).expect("key");
    std::fs::write(&ca, emu.ca_pem()).expect("ca");
    let enterprise = emu.create_enterprise(None, &["ENROLLMENT", "STATUS_REPORT", "COMMAND"]).expect("enterprise");
    let h = Harness::start_with(|c| {
        c.android.api_base_url = emu.url();
        c.android.api_ca = Some(ca.clone());
        c.android.service_account_key = Some(key.clone());
        c.android.enterprise = Some(enterprise.clone());
        c.enrollment.device_limit_per_user = 1;
        rules(c, Platform::Android, |r| {
            r.personal_allowed = false;
            r.min_os = Some("12".into());
        })
    })
    .await;
    // A work profile is a personal device: no token.
    let (s, r) = h.post("/v1/android/enrollment-tokens", &json!({"mode": "work_profile", "policy": "default"})).await;
    assert_eq!((s, r["error"]["code"].as_str()), (403, Some("personal_not_allowed")), "{r}");
    // A fully managed token for ann.
    let (s, token) = h
        .post(
            "/v1/android/enrollment-tokens",
            &json!({"mode": "fully_managed", "policy": "default", "user": "ann@corp.example"}),
        )
        .await;
    assert_eq!(s, 201, "{token}");

    // A device enrolls with it, reporting Android 11: below min_os. The gateway refuses it,
    // removes it through AMAPI with the reason, and stores nothing but the denial.
    let mut spec = DeviceSpec::numbered(3);
    spec.android_version = Some("11".into());
    let name = emu.enroll_device(token["value"].as_str().expect("value"), &spec).expect("enroll");
    let device = emu.device(&name).expect("device");
    let parts: Vec<&str> = name.split('/').collect();
    let id = format!("android:{}:{}", parts[1], parts[3]);
    let ca_pem = String::from_utf8(h.ca_pem.clone()).expect("pem");
    let push_url = format!("{}/android/pubsub?token={}", h.device_url, h.pubsub_token());
    let push = DirectPublisher::new(&push_url, Some(&ca_pem)).expect("publisher");
    let (status, _, _) = push.push(&PushMessage::notification("ENROLLMENT", &device)).await.expect("push");
    assert_eq!(status, 204);
    not_stored(&h, &id).await;
    assert_eq!(denials(&h, &id).await[0]["data"]["reason"], "os_too_old");
    let deleted =
        eventually(Duration::from_secs(10), || async { emu.requests_matching("DELETE", &name).into_iter().next() })
            .await
            .expect("devices.delete called for the refused device");
    assert!(deleted.query.contains("wipeReasonMessage=Enrollment"), "{:?}", deleted.query);

    // An allowed device for ann, then her limit (1) is reached: no second token.
    let (_, token) = h
        .post(
            "/v1/android/enrollment-tokens",
            &json!({"mode": "fully_managed", "policy": "default", "user": "ann@corp.example"}),
        )
        .await;
    let name = emu.enroll_device(token["value"].as_str().expect("value"), &DeviceSpec::numbered(4)).expect("enroll");
    let device = emu.device(&name).expect("device");
    let (status, _, _) = push.push(&PushMessage::notification("ENROLLMENT", &device)).await.expect("push");
    assert_eq!(status, 204);
    let parts: Vec<&str> = name.split('/').collect();
    let id: DeviceId = format!("android:{}:{}", parts[1], parts[3]).parse().expect("id");
    let stored = h.gateway().state.store.enrollment(&id).await.expect("read").expect("stored");
    assert_eq!(stored.state, EnrollmentState::Enrolled);
    assert_eq!(stored.inventory.enrolled_user.as_deref(), Some("ann@corp.example"));
    let (s, r) = h
        .post(
            "/v1/android/enrollment-tokens",
            &json!({"mode": "fully_managed", "policy": "default", "user": "ann@corp.example"}),
        )
        .await;
    assert_eq!((s, r["error"]["code"].as_str()), (403, Some("device_limit_reached")), "{r}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_blocked_platform_gets_no_profile_and_no_enrollment() {
    let h = Harness::start_with(|c| rules(c, Platform::Apple, |r| r.allow = false)).await;
    let reply = h.device_client(None).get(format!("{}/mdm/enroll", h.device_url)).send().await.expect("request");
    assert_eq!(reply.status().as_u16(), 403);
    assert!(reply.text().await.expect("body").contains("not allowed"));
    let dev = h.device("B10CB10C-0000-4000-8000-000000000001");
    assert!(matches!(dev.enroll().await, Err(DeviceError::Status { status: 403, .. })));
    not_stored(&h, &format!("apple:{}", dev.udid)).await;
    assert_eq!(denials(&h, &format!("apple:{}", dev.udid)).await[0]["data"]["reason"], "platform_blocked");
    h.stop().await;
}
