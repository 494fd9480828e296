//! `POST /android/pubsub` end to end over TLS: the shared captures replayed, deduplication,
//! per-device order by publish time, token and OIDC authentication, dead letters, 503 on a store
//! failure, COMMAND results for operations bound to commands, and message id retention.

use std::path::PathBuf;

use base64::Engine;
use mdm_core::{CommandStatus, DeviceId, EventType};
use mdm_gateway::store::{AndroidOperation, CommandUpdate, EnrollmentState, NewCommand};
use mdm_tests::android::{OidcIssuer, PushCredentials, device_json, push_body};
use mdm_tests::{Harness, unix_now, vectors_dir};
use serde_json::{Value, json};

const DEAD_LETTERS: &str = "mdm_android_pubsub_dead_letters_total";
const MESSAGES: &str = "mdm_android_pubsub_messages_total";

fn did(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

async fn enrollment(h: &Harness, id: &str) -> mdm_gateway::store::Enrollment {
    h.gateway().state.store.enrollment(&did(id)).await.expect("read").unwrap_or_else(|| panic!("no enrollment {id}"))
}

async fn types_of(h: &Harness, device_id: &str) -> Vec<String> {
    h.events()
        .await
        .into_iter()
        .filter(|e| e["device_id"] == device_id)
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect()
}

// ---- Captures ----

/// The capture files: push envelopes as they are; a bare `Device` or `Operation` wrapped in an
/// envelope (STATUS_REPORT / COMMAND); anything else (a policy) wrapped as a STATUS_REPORT,
/// which can never be applied (no device name) and must be dead-lettered.
fn capture_pushes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("captures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(p).expect("read");
        let v: Value = serde_json::from_str(&text).expect("capture is JSON");
        if v.get("message").is_some() {
            out.push((name, text.into_bytes()));
            continue;
        }
        // Fleet's design doc writes `{enterpriseID}` where the enterprise id goes.
        let v: Value =
            serde_json::from_str(&text.replace("{enterpriseID}", "LCfleet1").replace("{enterpriseId}", "LCfleet1"))
                .expect("JSON");
        let id = format!("2200000000{i}");
        let body = if v.get("done").is_some() {
            push_body(&id, "2026-09-14T18:55:00Z", "COMMAND", Some(&v))
        } else {
            push_body(&id, "2025-08-11T12:17:31Z", "STATUS_REPORT", Some(&v))
        };
        out.push((name, body));
    }
    out
}

#[tokio::test]
async fn captures_replay_into_events_and_enrollments() {
    let Some(vectors) = vectors_dir() else {
        eprintln!("skipping: no vectors (set MDM_VECTORS)");
        return;
    };
    let h = Harness::start().await;
    let pushes = capture_pushes(&vectors.join("android/captures"));
    assert!(pushes.len() >= 10, "{:?}", pushes.iter().map(|(n, _)| n).collect::<Vec<_>>());
    let dead_before = h.metric(DEAD_LETTERS, "reason=\"bad_resource_name\"").await;
    for (name, body) in &pushes {
        let r = h.post_pubsub(body.clone(), &h.pubsub_token()).await;
        assert_eq!(r.status, 204, "{name}: {}", r.body);
    }
    // Every message id is handled once, whatever became of it.
    let handled = h.pubsub_messages();
    assert_eq!(handled.len(), pushes.len(), "{handled:?}");
    assert!(handled.iter().any(|(id, o)| id == "11000000009" && o == "applied"), "test message: {handled:?}");

    // The BYOD device (files in name order: its command results first, no command id as no
    // command is bound), enrolled, then a newer non-compliant status report.
    let byod = "android:LC00synth1:333b5673b7649c99";
    assert_eq!(
        types_of(&h, byod).await,
        [
            "command.error",
            "command.acknowledged",
            "device.enrolled",
            "device.inventory",
            "device.status_report",
            "device.inventory"
        ]
    );
    let e = enrollment(&h, byod).await;
    assert_eq!(e.state, EnrollmentState::Enrolled);
    assert_eq!(e.inventory.serial_number.as_deref(), Some("B54Z-7OY3-NHH7-FASO6-MSPN-O24B-2"));
    assert_eq!(e.inventory.model.as_deref(), Some("SM-A055F"));
    assert_eq!(e.inventory.os_name.as_deref(), Some("Android"));
    assert_eq!(e.attributes["ownership"], "PERSONALLY_OWNED");
    assert_eq!(e.attributes["management_mode"], "PROFILE_OWNER");
    assert_eq!(e.attributes["applied_policy_version"], 3, "from the newer status report");
    assert_eq!(e.attributes["policy_compliant"], false);
    assert_eq!(e.attributes["user_name"], "enterprises/LC00synth1/users/115581330686717215569");
    assert!(
        e.attributes["enrollment_token_name"]
            .as_str()
            .expect("token")
            .starts_with("enterprises/LC00synth1/enrollmentTokens/")
    );
    assert_eq!(e.enrolled_at, Some(time::macros::datetime!(2025-08-05 12:09:50 UTC).unix_timestamp()));

    let events = h.events().await;
    let report = events.iter().find(|e| e["type"] == "device.status_report" && e["device_id"] == byod).expect("report");
    let data = &report["data"];
    assert_eq!(data["policy_compliant"], false);
    assert_eq!(data["applied_policy_version"], 3);
    assert_eq!(data["non_compliance"].as_array().expect("non_compliance").len(), 3);
    assert_eq!(data["non_compliance"][0]["reason"], "APP_NOT_INSTALLED");
    assert_eq!(data["device_posture"], "SECURE");
    assert_eq!(report["raw"]["content_type"], "application/json");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(report["raw"]["body_b64"].as_str().expect("raw"))
        .expect("b64");
    let raw: Value = serde_json::from_slice(&raw).expect("raw is the notification JSON");
    assert_eq!(raw["name"], "enterprises/LC00synth1/devices/333b5673b7649c99");
    let inventory =
        events.iter().rev().find(|e| e["type"] == "device.inventory" && e["device_id"] == byod).expect("inv");
    assert_eq!(inventory["data"]["os_version"], "14");
    assert_eq!(inventory["data"]["serial_number"], "B54Z-7OY3-NHH7-FASO6-MSPN-O24B-2");

    // COMMAND notifications for operations the gateway did not start: no command id.
    let error = events.iter().find(|e| e["type"] == "command.error").expect("command.error");
    assert_eq!(error["command_id"], Value::Null);
    assert_eq!(error["data"]["operation"], "enterprises/LC00synth1/devices/333b5673b7649c99/operations/1754900000000");
    assert_eq!(error["data"]["error"]["code"], 9);
    assert_eq!(error["data"]["error_code"], "MANAGEMENT_MODE");
    let wipes: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "command.acknowledged" && e["data"]["command_type"] == "WIPE").collect();
    assert_eq!(wipes.len(), 2, "the synthesized push and the wrapped Fleet operation");
    assert!(wipes.iter().all(|w| w["device_id"] == "android:LC01faqpoi:34d187efe6d96e2d"));

    // ENTERPRISE_UPGRADE: an event for the enterprise.
    let up = events.iter().find(|e| e["type"] == "android.enterprise_upgrade").expect("upgrade");
    assert_eq!(up["device_id"], "android:LC00synth1");
    assert_eq!(up["data"]["upgrade_state"], "UPGRADE_STATE_SUCCEEDED");

    // Fleet's BYOD device document as a status report of a device not seen before: enrolled.
    let fleet = "android:LCfleet1:333b5673b7649c99";
    assert_eq!(types_of(&h, fleet).await, ["device.enrolled", "device.status_report", "device.inventory"]);
    let enrolled = events.iter().find(|e| e["type"] == "device.enrolled" && e["device_id"] == fleet).expect("enrolled");
    assert_eq!(enrolled["data"]["inferred_from"], "STATUS_REPORT");
    // The notification is stored once per message: on the report's own event.
    assert!(enrolled["raw"].is_null(), "{enrolled}");
    let report =
        events.iter().find(|e| e["type"] == "device.status_report" && e["device_id"] == fleet).expect("report");
    assert_eq!(report["raw"]["content_type"], "application/json");
    assert_eq!(enrollment(&h, fleet).await.state, EnrollmentState::Enrolled);

    // The policy is no notification: dead-lettered, with its body.
    let dead = h.gateway().state.store.dead_letters(100).await.expect("dead letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "bad_resource_name");
    let policy = pushes.iter().find(|(n, _)| n.contains("test-policy")).expect("policy capture");
    assert_eq!(dead[0].body, policy.1);
    assert_eq!(h.metric(DEAD_LETTERS, "reason=\"bad_resource_name\"").await, dead_before + 1.0);

    // Replaying everything again changes nothing.
    let before = h.snapshot(&[]).await;
    for (name, body) in &pushes {
        let r = h.post_pubsub(body.clone(), &h.pubsub_token()).await;
        assert_eq!(r.status, 204, "{name} again: {}", r.body);
    }
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

// ---- Deduplication and order ----

#[tokio::test]
async fn duplicates_are_applied_once() {
    let h = Harness::start().await;
    let dev = device_json("LCdup", "d1", "ACTIVE", 1);
    let body = push_body("dup-1", "2026-02-01T10:00:00Z", "STATUS_REPORT", Some(&dev));
    let dups = h.metric(MESSAGES, "outcome=\"duplicate\"").await;
    h.push_ok(body.clone()).await;
    let after_first = h.snapshot(&[]).await;
    h.push_ok(body.clone()).await;
    // Only the snake-case spelling of the id: the same message.
    let mut v: Value = serde_json::from_slice(&body).expect("json");
    v["message"].as_object_mut().expect("message").remove("messageId");
    h.push_ok(serde_json::to_vec(&v).expect("json")).await;
    assert_eq!(h.snapshot(&[]).await, after_first, "redeliveries change nothing");
    assert_eq!(types_of(&h, "android:LCdup:d1").await, ["device.enrolled", "device.status_report", "device.inventory"]);
    assert!(h.metric(MESSAGES, "outcome=\"duplicate\"").await >= dups + 2.0);
    h.stop().await;
}

#[tokio::test]
async fn out_of_order_status_reports_keep_the_newest() {
    let h = Harness::start().await;
    let id = "android:LCord:d1";
    h.push_ok(push_body("o-1", "2026-02-01T10:00:00Z", "ENROLLMENT", Some(&device_json("LCord", "d1", "ACTIVE", 1))))
        .await;
    // Published at 10:20 with version 5, delivered first; then the 10:10 one with version 4.
    h.push_ok(push_body(
        "o-3",
        "2026-02-01T10:20:00Z",
        "STATUS_REPORT",
        Some(&device_json("LCord", "d1", "ACTIVE", 5)),
    ))
    .await;
    let stale = h.metric(MESSAGES, "outcome=\"stale\"").await;
    h.push_ok(push_body(
        "o-2",
        "2026-02-01T10:10:00Z",
        "STATUS_REPORT",
        Some(&device_json("LCord", "d1", "ACTIVE", 4)),
    ))
    .await;
    assert!(h.metric(MESSAGES, "outcome=\"stale\"").await >= stale + 1.0);
    let e = enrollment(&h, id).await;
    assert_eq!(e.attributes["applied_policy_version"], 5);
    let reports = h.events_of(id, "device.status_report").await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["data"]["applied_policy_version"], 5);
    assert!(h.pubsub_messages().contains(&("o-2".into(), "stale".into())));
    // Fractional publish times order too.
    h.push_ok(push_body(
        "o-4",
        "2026-02-01T10:20:00.5Z",
        "STATUS_REPORT",
        Some(&device_json("LCord", "d1", "ACTIVE", 6)),
    ))
    .await;
    assert_eq!(enrollment(&h, id).await.attributes["applied_policy_version"], 6);
    h.stop().await;
}

#[tokio::test]
async fn stale_deleted_does_not_unenroll_a_reenrolled_device() {
    let h = Harness::start().await;
    let id = "android:LCdel:d1";
    h.push_ok(push_body("s-1", "2026-03-01T09:00:00Z", "ENROLLMENT", Some(&device_json("LCdel", "d1", "ACTIVE", 1))))
        .await;
    // Re-enrolled at 11:00; the DELETED published at 10:00 arrives after that.
    h.push_ok(push_body("s-3", "2026-03-01T11:00:00Z", "ENROLLMENT", Some(&device_json("LCdel", "d1", "ACTIVE", 2))))
        .await;
    h.push_ok(push_body(
        "s-2",
        "2026-03-01T10:00:00Z",
        "STATUS_REPORT",
        Some(&device_json("LCdel", "d1", "DELETED", 1)),
    ))
    .await;
    let e = enrollment(&h, id).await;
    assert_eq!(e.state, EnrollmentState::Enrolled, "a stale DELETED must not unenroll");
    assert!(h.events_of(id, "device.unenrolled").await.is_empty());
    // A DELETED newer than the re-enrollment does.
    h.push_ok(push_body(
        "s-4",
        "2026-03-01T12:00:00Z",
        "STATUS_REPORT",
        Some(&device_json("LCdel", "d1", "DELETED", 2)),
    ))
    .await;
    assert_eq!(enrollment(&h, id).await.state, EnrollmentState::Unenrolled);
    let un = h.events_of(id, "device.unenrolled").await;
    assert_eq!(un.len(), 1);
    assert_eq!(un[0]["data"]["state"], "DELETED");
    assert_eq!(
        types_of(&h, id).await,
        ["device.enrolled", "device.inventory", "device.enrolled", "device.inventory", "device.unenrolled"]
    );
    h.stop().await;
}

#[tokio::test]
async fn concurrent_pushes_for_one_device_all_apply() {
    let h = Harness::start().await;
    let id = "android:LCcon:d1";
    h.push_ok(push_body("c-0", "2026-04-01T00:00:00Z", "ENROLLMENT", Some(&device_json("LCcon", "d1", "ACTIVE", 1))))
        .await;
    let token = h.pubsub_token();
    let mut tasks = Vec::new();
    for i in 1..=20 {
        let mut dev = device_json("LCcon", "d1", "ACTIVE", i);
        // Odd reports carry only an IMEI, even ones only a serial number: the stored inventory
        // must hold the newest of each, which an interleaved read-merge-write would lose.
        if i % 2 == 1 {
            dev["hardwareInfo"] = json!({});
            dev["networkInfo"] = json!({ "imei": format!("imei-{i}") });
        } else {
            dev["hardwareInfo"] = json!({ "serialNumber": format!("sn-{i}") });
            dev["networkInfo"] = json!({});
        }
        let body = push_body(&format!("c-{i}"), &format!("2026-04-01T00:00:{i:02}Z"), "STATUS_REPORT", Some(&dev));
        tasks.push(h.post_pubsub(body, &token));
    }
    for r in futures_join(tasks).await {
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let e = enrollment(&h, id).await;
    let applied: Vec<i64> = h
        .pubsub_messages()
        .iter()
        .filter(|(m, o)| o == "applied" && m != "c-0")
        .map(|(m, _)| m[2..].parse().expect("n"))
        .collect();
    let reports = h.events_of(id, "device.status_report").await;
    assert_eq!(applied.len(), reports.len(), "every applied report has its event");
    let newest = applied.iter().max().expect("the newest report always applies");
    assert_eq!(*newest, 20);
    assert_eq!(e.attributes["applied_policy_version"], 20);
    let last_odd = applied.iter().filter(|i| *i % 2 == 1).max();
    let last_even = applied.iter().filter(|i| *i % 2 == 0).max();
    assert_eq!(e.inventory.imei, Some(last_odd.map_or("358240051111110".to_owned(), |i| format!("imei-{i}"))));
    assert_eq!(e.inventory.serial_number, Some(last_even.map_or("SN-d1".to_owned(), |i| format!("sn-{i}"))));
    h.stop().await;
}

async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = fs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    results.into_iter().map(|r| r.expect("done")).collect()
}

/// A routine report (only its time and report facts differ) writes only the enrollment's
/// report columns; the same facts again write nothing to it; a changed inventory rewrites it.
#[tokio::test]
async fn routine_status_reports_write_only_what_changed() {
    let h = Harness::start().await;
    let id = "android:LCrep:d1";
    let mut dev = device_json("LCrep", "d1", "ACTIVE", 1);
    h.push_ok(push_body("r-0", "2025-05-01T00:00:00Z", "ENROLLMENT", Some(&dev))).await;
    let enrolled = enrollment(&h, id).await;
    let conn = rusqlite::Connection::open(h.db_path()).expect("open db");
    conn.execute_batch(
        "CREATE TRIGGER report_columns_only BEFORE UPDATE OF platform, parent, state, cert_sha256, push_token, \
         push_magic, push_topic, unlock_token, bootstrap_token, inventory, enrolled_at, checked_in_event_at, \
         created_at ON enrollments BEGIN SELECT RAISE(ABORT, 'the whole row was rewritten'); END;",
    )
    .expect("trigger");

    dev["lastStatusReportTime"] = json!("2025-05-01T00:05:00Z");
    dev["securityPosture"] = json!({"devicePosture": "AT_RISK"});
    h.push_ok(push_body("r-1", "2025-05-01T00:05:01Z", "STATUS_REPORT", Some(&dev))).await;
    let reported = enrollment(&h, id).await;
    assert_eq!(reported.attributes["last_status_report_time"], "2025-05-01T00:05:00Z");
    assert_eq!(reported.attributes["device_posture"], "AT_RISK");
    assert_eq!(
        (&reported.inventory, reported.state, reported.enrolled_at),
        (&enrolled.inventory, enrolled.state, enrolled.enrolled_at)
    );
    assert_eq!(
        types_of(&h, id).await,
        ["device.enrolled", "device.inventory", "device.status_report", "device.inventory"]
    );

    // The same facts in a new message: its events, and the enrollment is not written at all.
    h.push_ok(push_body("r-2", "2025-05-01T00:05:02Z", "STATUS_REPORT", Some(&dev))).await;
    assert_eq!(enrollment(&h, id).await, reported, "not even updated_at");
    assert_eq!(h.events_of(id, "device.status_report").await.len(), 2);

    // A new OS version changes the inventory: the whole row is written (which the trigger
    // refuses: 503, nothing stored), and once allowed, applied.
    dev["softwareInfo"]["androidVersion"] = json!("16");
    let body = push_body("r-3", "2025-05-01T00:10:00Z", "STATUS_REPORT", Some(&dev));
    let before = h.snapshot(&[]).await;
    let r = h.post_pubsub(body.clone(), &h.pubsub_token()).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(h.snapshot(&[]).await, before);
    conn.execute_batch("DROP TRIGGER report_columns_only;").expect("drop trigger");
    h.push_ok(body).await;
    assert_eq!(enrollment(&h, id).await.inventory.os_version.as_deref(), Some("16"));
    assert_eq!(h.events_of(id, "device.status_report").await.len(), 3);
    h.stop().await;
}

#[tokio::test]
async fn test_message_is_recorded_as_handled_only() {
    let h = Harness::start().await;
    let seq = h.gateway().state.store.last_event_seq().await.expect("seq");
    h.push_ok(push_body("t-1", "2026-01-01T00:00:00Z", "test", None)).await;
    assert_eq!(h.pubsub_messages(), [("t-1".to_owned(), "applied".to_owned())]);
    assert_eq!(h.gateway().state.store.last_event_seq().await.expect("seq"), seq, "no event");
    h.stop().await;
}

// ---- Authentication ----

#[tokio::test]
async fn bad_or_missing_token_is_refused_and_nothing_stored() {
    let h = Harness::start().await;
    let body =
        push_body("a-1", "2026-01-01T00:00:00Z", "STATUS_REPORT", Some(&device_json("LCauth", "d1", "ACTIVE", 1)));
    let before = h.snapshot(&[]).await;
    let missing = h.metric("mdm_device_requests_rejected_total", "reason=\"no_token\"").await;
    let r = h.post_pubsub_with(body.clone(), &PushCredentials::default()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("no_token"), "{}", r.body);
    let r = h.post_pubsub(body.clone(), "not-the-token").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("wrong_token"), "{}", r.body);
    let r = h.post_pubsub(body.clone(), &h.pubsub_token()[1..]).await;
    assert_eq!(r.status, 403, "a prefix is not the token");
    // A bearer token where only ?token= is configured is no credential.
    let r = h.post_pubsub_with(body.clone(), &PushCredentials::bearer("a.b.c")).await;
    assert_eq!(r.status, 401);
    assert_eq!(h.snapshot(&[]).await, before, "refused pushes stored something");
    assert!(h.metric("mdm_device_requests_rejected_total", "reason=\"no_token\"").await >= missing + 2.0);

    // Method, content type, size.
    let url = format!("{}/android/pubsub?token={}", h.device_url, h.pubsub_token());
    let client = h.device_client(None);
    let r = client.get(&url).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let r = client.post(&url).header("Content-Type", "text/plain").body(body.clone()).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 415);
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let r = client.post(&url).header("Content-Type", "application/json").body(big).send().await.expect("post");
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(h.snapshot(&[]).await, before);
    // The right token works.
    h.push_ok(body).await;
    assert_eq!(h.pubsub_messages().len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn previous_token_is_accepted_during_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (current, previous) = (dir.path().join("current"), dir.path().join("previous"));
    std::fs::write(&current, "new-token-0123456789\n").expect("write");
    std::fs::write(&previous, "old-token-9876543210\n").expect("write");
    let (c, p) = (current.clone(), previous.clone());
    let h = Harness::start_with(move |cfg| {
        cfg.android.pubsub_token_file = Some(c);
        cfg.android.pubsub_previous_token_file = Some(p);
    })
    .await;
    let push = |id: &str| push_body(id, "2026-01-01T00:00:00Z", "test", None);
    assert_eq!(h.post_pubsub(push("r-1"), "new-token-0123456789").await.status, 204);
    assert_eq!(h.post_pubsub(push("r-2"), "old-token-9876543210").await.status, 204);
    let before = h.snapshot(&[]).await;
    let r = h.post_pubsub(push("r-3"), &h.pubsub_token()).await;
    assert_eq!(r.status, 403, "the data directory's token is not the configured one: {}", r.body);
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

#[tokio::test]
async fn oidc_bearer_tokens() {
    let google = OidcIssuer::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("google-certs.json");
    std::fs::write(&keys, google.jwks("key-1")).expect("write keys");
    let audience = "https://mdm.example.com/android/pubsub";
    let email = "pubsub-push@project.iam.gserviceaccount.com";
    let h = Harness::start_with(move |cfg| {
        cfg.android.pubsub_auth = mdm_gateway::config::PubSubAuth::Oidc;
        cfg.android.oidc.audience = Some(audience.into());
        cfg.android.oidc.service_account_email = Some(email.into());
        cfg.android.oidc.keys = vec![keys];
    })
    .await;
    let now = unix_now();
    let push = |id: &str| push_body(id, "2026-01-01T00:00:00Z", "test", None);
    let ok = google.sign(&OidcIssuer::claims(audience, email, now), Some("key-1"));
    let r = h.post_pubsub_with(push("oidc-1"), &PushCredentials::bearer(&ok)).await;
    assert_eq!(r.status, 204, "{}", r.body);

    let before = h.snapshot(&[]).await;
    let forger = OidcIssuer::generate();
    let mut cases: Vec<(&str, String, &str)> = vec![
        ("forged", forger.sign(&OidcIssuer::claims(audience, email, now), Some("key-1")), "jwt_bad_signature"),
        (
            "wrong aud",
            google.sign(&OidcIssuer::claims("https://other.example/push", email, now), Some("key-1")),
            "jwt_wrong_audience",
        ),
        (
            "wrong email",
            google.sign(&OidcIssuer::claims(audience, "evil@project.iam.gserviceaccount.com", now), Some("key-1")),
            "jwt_wrong_email",
        ),
        ("expired", google.sign(&OidcIssuer::claims(audience, email, now - 7200), Some("key-1")), "jwt_expired"),
    ];
    let mut unverified = OidcIssuer::claims(audience, email, now);
    unverified["email_verified"] = false.into();
    cases.push(("unverified email", google.sign(&unverified, Some("key-1")), "jwt_email_not_verified"));
    let mut issuer = OidcIssuer::claims(audience, email, now);
    issuer["iss"] = "https://issuer.example".into();
    cases.push(("wrong issuer", google.sign(&issuer, Some("key-1")), "jwt_wrong_issuer"));
    for (what, token, reason) in &cases {
        let r = h.post_pubsub_with(push(&format!("oidc-{what}")), &PushCredentials::bearer(token)).await;
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert!(r.body.contains(reason), "{what}: {}", r.body);
    }
    // No bearer: 401 with a challenge, even with the ?token=.
    let r = h.post_pubsub(push("oidc-none"), &h.pubsub_token()).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let raw = h
        .device_client(None)
        .post(format!("{}/android/pubsub", h.device_url))
        .header("Content-Type", "application/json")
        .body(push("oidc-none"))
        .send()
        .await
        .expect("post");
    assert_eq!(raw.headers()["www-authenticate"], "Bearer");
    assert_eq!(h.snapshot(&[]).await, before, "refused pushes stored something");
    h.stop().await;
}

#[tokio::test]
async fn token_and_oidc_requires_both() {
    let google = OidcIssuer::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("google.pem");
    std::fs::write(&keys, google.public_pem()).expect("write keys");
    let (audience, email) = ("https://mdm.example.com/android/pubsub", "push@p.iam.gserviceaccount.com");
    let h = Harness::start_with(move |cfg| {
        cfg.android.pubsub_auth = mdm_gateway::config::PubSubAuth::TokenAndOidc;
        cfg.android.oidc.audience = Some(audience.into());
        cfg.android.oidc.service_account_email = Some(email.into());
        cfg.android.oidc.keys = vec![keys];
    })
    .await;
    let jwt = google.sign(&OidcIssuer::claims(audience, email, unix_now()), None);
    let push = |id: &str| push_body(id, "2026-01-01T00:00:00Z", "test", None);
    let both = PushCredentials { token: Some(h.pubsub_token()), bearer: Some(jwt.clone()) };
    assert_eq!(h.post_pubsub_with(push("b-1"), &both).await.status, 204);
    assert_eq!(h.post_pubsub_with(push("b-2"), &PushCredentials::bearer(&jwt)).await.status, 401);
    assert_eq!(h.post_pubsub(push("b-3"), &h.pubsub_token()).await.status, 401);
    let wrong = PushCredentials { token: Some("nope".into()), bearer: Some(jwt) };
    assert_eq!(h.post_pubsub_with(push("b-4"), &wrong).await.status, 403);
    assert_eq!(h.pubsub_messages().len(), 1);
    h.stop().await;
}

// ---- Dead letters and store failures ----

#[tokio::test]
async fn malformed_messages_are_dead_lettered() {
    let h = Harness::start().await;
    let envelope = |data: &str, t: &str| {
        serde_json::to_vec(&json!({"message": {"messageId": format!("bad-{t}"), "publishTime": "2026-01-01T00:00:00Z",
            "attributes": {"notificationType": "STATUS_REPORT"}, "data": data}}))
        .expect("json")
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad_base64", envelope("%%%not base64%%%", "b64")),
        ("bad_payload", envelope(&b64("{not json"), "json")),
        ("bad_resource_name", envelope(&b64(r#"{"state":"ACTIVE"}"#), "noname")),
        ("bad_resource_name", envelope(&b64(r#"{"name":"enterprises/E1/policies/p"}"#), "policyname")),
        ("not_json", b"{\"message\": {".to_vec()),
        ("missing_message_id", br#"{"message":{"publishTime":"2026-01-01T00:00:00Z"}}"#.to_vec()),
        (
            "missing_data",
            br#"{"message":{"messageId":"bad-nodata","publishTime":"2026-01-01T00:00:00Z","attributes":{"notificationType":"COMMAND"}}}"#.to_vec(),
        ),
    ];
    let seq = h.gateway().state.store.last_event_seq().await.expect("seq");
    for (reason, body) in &cases {
        let label = format!("reason=\"{reason}\"");
        let before = h.metric(DEAD_LETTERS, &label).await;
        let r = h.post_pubsub(body.clone(), &h.pubsub_token()).await;
        assert_eq!(r.status, 204, "{reason}: {}", r.body);
        let dead = h.gateway().state.store.dead_letters(1).await.expect("dead letters");
        assert_eq!(dead[0].reason, *reason);
        assert_eq!(dead[0].body, *body);
        assert!(!dead[0].detail.is_empty());
        assert_eq!(h.metric(DEAD_LETTERS, &label).await, before + 1.0, "{reason}");
    }
    assert_eq!(h.gateway().state.store.dead_letters(100).await.expect("dead").len(), cases.len());
    assert_eq!(h.gateway().state.store.last_event_seq().await.expect("seq"), seq, "no events");
    let handled = h.pubsub_messages();
    assert!(handled.contains(&("bad-b64".into(), "dead_letter".into())), "{handled:?}");
    // A redelivery of a dead-lettered message (same id) is a duplicate: no second row.
    let r = h.post_pubsub(cases[0].1.clone(), &h.pubsub_token()).await;
    assert_eq!(r.status, 204);
    assert_eq!(h.gateway().state.store.dead_letters(100).await.expect("dead").len(), cases.len());
    h.stop().await;
}

#[tokio::test]
async fn store_failure_is_503_and_the_redelivery_applies() {
    let h = Harness::start().await;
    let id = "android:LCfail:d1";
    let body = push_body("f-1", "2026-01-01T00:00:00Z", "ENROLLMENT", Some(&device_json("LCfail", "d1", "ACTIVE", 1)));
    let conn = rusqlite::Connection::open(h.db_path()).expect("open db");
    conn.execute_batch(
        "CREATE TRIGGER fail_pubsub BEFORE INSERT ON pubsub_messages BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
    )
    .expect("trigger");
    let before = h.snapshot(&[]).await;
    let r = h.post_pubsub(body.clone(), &h.pubsub_token()).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(!r.body.contains("disk on fire"), "store details stay in the log: {}", r.body);
    // A malformed message cannot be dead-lettered either: 503 too, so it is not lost.
    let r = h.post_pubsub(b"{\"message\":{\"messageId\":\"f-bad\"}}".to_vec(), &h.pubsub_token()).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(h.snapshot(&[]).await, before, "a failed push stored something");
    conn.execute_batch("DROP TRIGGER fail_pubsub;").expect("drop trigger");
    h.push_ok(body).await;
    assert_eq!(enrollment(&h, id).await.state, EnrollmentState::Enrolled);
    assert_eq!(h.events_of(id, "device.enrolled").await.len(), 1);
    h.stop().await;
}

// ---- COMMAND results ----

async fn bound_command(h: &Harness, device: &DeviceId, command_id: &str, operation: &str) {
    let store = &h.gateway().state.store;
    let now = unix_now();
    let cmd = NewCommand {
        command_id: command_id.into(),
        device_id: device.clone(),
        request_type: "LOCK".into(),
        normalised: Some(json!({"type": "lock"})),
        payload: br#"{"type":"LOCK"}"#.to_vec(),
        priority: 0,
        expires_at: None,
        idempotency_key: None,
        created_at: now,
    };
    store.enqueue(&[cmd], &[]).await.expect("enqueue");
    let op = AndroidOperation {
        operation: operation.into(),
        device_id: device.clone(),
        command_id: command_id.into(),
        created_at: now,
    };
    let update = CommandUpdate {
        device_id: device,
        command_id,
        from: &[CommandStatus::Queued],
        to: CommandStatus::Sent,
        result: None,
        error: None,
        now,
    };
    store.record_android_operation(&op, Some(update), &[]).await.expect("bind");
}

#[tokio::test]
async fn command_results_for_bound_operations() {
    let h = Harness::start().await;
    let device = did("android:LCcmd:d1");
    let ok_op = "enterprises/LCcmd/devices/d1/operations/1700000000001";
    let err_op = "enterprises/LCcmd/devices/d1/operations/1700000000002";
    bound_command(&h, &device, "cmd-lock", ok_op).await;
    bound_command(&h, &device, "cmd-reset", err_op).await;

    let done = json!({"name": ok_op, "done": true,
        "metadata": {"@type": "type.googleapis.com/google.android.devicemanagement.v1.Command", "type": "LOCK",
                     "createTime": "2026-05-01T10:00:00Z"}});
    // Still running: nothing changes.
    let running = json!({"name": ok_op, "done": false, "metadata": {"type": "LOCK"}});
    h.push_ok(push_body("k-0", "2026-05-01T10:00:01Z", "COMMAND", Some(&running))).await;
    let store = &h.gateway().state.store;
    assert_eq!(
        store.command_for_device(&device, "cmd-lock").await.expect("read").expect("cmd").status,
        CommandStatus::Sent
    );

    h.push_ok(push_body("k-1", "2026-05-01T10:00:05Z", "COMMAND", Some(&done))).await;
    let c = store.command_for_device(&device, "cmd-lock").await.expect("read").expect("cmd");
    assert_eq!(c.status, CommandStatus::Acknowledged);
    assert_eq!(c.result.as_ref().expect("result")["operation"], ok_op);
    let acks = h.events_of(device.as_str(), "command.acknowledged").await;
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["command_id"], "cmd-lock");
    assert_eq!(acks[0]["data"]["command_type"], "LOCK");
    assert_eq!(acks[0]["data"]["request_type"], "LOCK");

    let failed = json!({"name": err_op, "done": true,
        "metadata": {"type": "RESET_PASSWORD", "errorCode": "INVALID_VALUE"},
        "error": {"code": 3, "message": "Password does not meet requirements."}});
    h.push_ok(push_body("k-2", "2026-05-01T10:01:00Z", "COMMAND", Some(&failed))).await;
    let c = store.command_for_device(&device, "cmd-reset").await.expect("read").expect("cmd");
    assert_eq!(c.status, CommandStatus::Error);
    let errors = h.events_of(device.as_str(), "command.error").await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["command_id"], "cmd-reset");
    assert_eq!(errors[0]["data"]["error"]["message"], "Password does not meet requirements.");
    assert_eq!(errors[0]["data"]["error_code"], "INVALID_VALUE");
    assert_eq!(c.error.as_ref().expect("error")["error"]["code"], 3);

    // Another notification for the already final command (a new message id): no second event.
    h.push_ok(push_body("k-3", "2026-05-01T10:02:00Z", "COMMAND", Some(&done))).await;
    assert_eq!(h.events_of(device.as_str(), "command.acknowledged").await.len(), 1);
    let types: Vec<String> = types_of(&h, device.as_str()).await;
    assert_eq!(types, [EventType::COMMAND_ACKNOWLEDGED.as_str(), EventType::COMMAND_ERROR.as_str()]);
    h.stop().await;
}

// ---- Retention ----

#[tokio::test]
async fn retention_forgets_old_message_ids() {
    let h = Harness::start().await;
    h.push_ok(push_body("old-1", "2026-01-01T00:00:00Z", "test", None)).await;
    let state = h.gateway().state.clone();
    assert_eq!(mdm_gateway::retention::sweep_pubsub_ids(&state).await.expect("sweep"), 0, "kept 7 days");
    h.clock.advance(6 * 86_400);
    h.push_ok(push_body("new-1", "2026-01-07T00:00:00Z", "test", None)).await;
    h.clock.advance(86_400 + 1);
    assert_eq!(mdm_gateway::retention::sweep_pubsub_ids(&state).await.expect("sweep"), 1);
    assert_eq!(h.pubsub_messages(), [("new-1".to_owned(), "applied".to_owned())]);
    h.stop().await;
}
