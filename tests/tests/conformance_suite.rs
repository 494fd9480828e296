//! The conformance suite (issue 9) in CI: the project's own transcripts
//! (`conformance/transcripts`) replayed over real sockets and TLS against a gateway started on the
//! embedded default configuration, the same transcripts checked in process, and, when the shared
//! vectors are present (`MDM_VECTORS`), every raw capture decoded with the project's skip list.
//! Every outcome must pass or be skipped with a reason.

use std::path::{Path, PathBuf};

use mdm_conformance::suite::{self, Report, SkipList, Verdict, WireTarget};
use mdm_tests::{Harness, vectors_dir};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance")
}

fn assert_clean(report: &Report, what: &str) {
    println!("{}", report.text());
    assert_eq!(report.failed(), 0, "{what}: {:#?}", report.failures());
    for o in &report.outcomes {
        if let Verdict::Skipped(reason) = &o.verdict {
            assert!(
                !reason.trim().is_empty(),
                "{what}: {}/{} {} skipped without a reason",
                o.section,
                o.flow,
                o.exchange
            );
        }
    }
}

#[tokio::test]
async fn transcripts_pass_over_the_wire() {
    let h = Harness::start_public(|_| {}).await;
    h.upload_push_certificate("com.apple.mgmt.External.conformance", "").await;
    let flows = suite::load_flows(&conformance_dir().join("transcripts")).expect("transcripts load");
    assert!(flows.len() >= 4, "{} flows", flows.len());
    let data = h.dir.path().join("data");
    let target = WireTarget {
        gateway: h.device_url.clone(),
        api: Some(h.api_url.clone()),
        api_key: Some(h.api_key.clone()),
        ca_pem: h.ca_pem.clone(),
        enroll_secret: Some(h.enroll_secret()),
        pubsub_token: std::fs::read_to_string(data.join("pubsub-token")).ok().map(|s| s.trim().to_owned()),
    };
    let mut report = Report::default();
    suite::run_wire(&flows, &target, &SkipList::default(), &mut report).await;
    assert_clean(&report, "over the wire");
    let exchanges: usize = flows.iter().map(|f| f.flow.exchanges.len()).sum();
    assert_eq!(report.passed(), exchanges, "every exchange of every flow ran and passed");
    h.stop().await;
}

#[test]
fn transcripts_pass_in_process() {
    let flows = suite::load_flows(&conformance_dir().join("transcripts")).expect("transcripts load");
    let mut report = Report::default();
    suite::run_in_process(&flows, &SkipList::default(), &mut report);
    assert_clean(&report, "in process");
    assert!(report.passed() > report.skipped(), "most exchanges carry a decodable request");
}

#[test]
fn raw_captures_decode_or_are_skipped_with_a_reason() {
    let Some(dir) = vectors_dir() else {
        eprintln!("skipping: no vectors (set MDM_VECTORS)");
        return;
    };
    let skips = SkipList::load(&conformance_dir().join("captures-skip.toml")).expect("skip list");
    let mut report = Report::default();
    suite::run_captures(&dir, &skips, &mut report).expect("captures");
    assert_clean(&report, "captures");
    assert!(report.passed() >= 20, "only {} captures decoded", report.passed());
    // Every skip-list entry is used: a stale entry would hide a capture that now decodes or moved.
    for e in &skips.entries {
        assert!(
            report.outcomes.iter().any(|o| {
                let id = if o.flow.is_empty() { o.exchange.clone() } else { format!("{}/{}", o.flow, o.exchange) };
                skips.reason(&id).is_some() && SkipList { entries: vec![e.clone()] }.reason(&id).is_some()
            }),
            "skip entry {} matches no capture",
            e.id
        );
    }
}

/// Capture mode: an emulated Apple device and Windows device (enrollment and an OMA-DM session)
/// record their traffic as transcripts; the transcripts load, pass in process, and the recorded
/// Windows enrollment replays over the wire against the gateway with fresh identities.
#[tokio::test]
async fn capture_mode_writes_transcripts_that_replay() {
    use mdm_conformance::windows::{DmIdentity, WindowsDevice};
    let h = Harness::start_public(|_| {}).await;
    let out = tempfile::tempdir().expect("tmp");

    // Apple: Authenticate, TokenUpdate, a queued command answered in a session.
    let apple = h.device("CAPTURE-APPLE-1").record_to(out.path());
    apple.enroll().await.expect("enroll");
    let (code, r) = h
        .post("/v1/commands", &serde_json::json!({"device_id": "apple:CAPTURE-APPLE-1", "command": {"type": "device_info"}, "nopush": true}))
        .await;
    assert_eq!(code, 202, "{r}");
    let handled = apple.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);

    // Windows: the real enrollment, then one management session.
    let enroller = h.windows_enroller("CAPTUREWIN1", "capture@example.com").record_to(out.path());
    let id = enroller.enroll().await.expect("windows enroll");
    let device =
        WindowsDevice::new(DmIdentity::from(&id), &id.management_url, &h.ca_pem).expect("device").record_to(out.path());
    device.session().await.expect("omadm session");

    // Android: one ENROLLMENT pushed straight to the gateway.
    let token = std::fs::read_to_string(h.dir.path().join("data/pubsub-token")).expect("token").trim().to_owned();
    let publisher = mdm_conformance::android::DirectPublisher::new(
        &format!("{}/android/pubsub?token={token}", h.device_url),
        Some(std::str::from_utf8(&h.ca_pem).expect("pem")),
    )
    .expect("publisher")
    .record_to(out.path());
    let device_json = serde_json::json!({"name": "enterprises/LC0capture/devices/d1", "state": "ACTIVE",
        "hardwareInfo": {"model": "Pixel 8", "serialNumber": "SN-D1"}});
    let msg = mdm_conformance::android::PushMessage {
        data: Some(device_json.to_string().into_bytes()),
        attributes: vec![("notificationType".into(), "ENROLLMENT".into())],
        ..Default::default()
    };
    let (status, _, _) = publisher.push(&msg).await.expect("push");
    assert_eq!(status, 204);

    let flows = suite::load_flows(out.path()).expect("recorded transcripts load");
    let names: Vec<String> = flows.iter().map(|f| f.id()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names[0].starts_with("captured/android-pubsub/publisher-"), "{names:?}");
    assert_eq!(
        names[1..],
        ["captured/apple/CAPTURE-APPLE-1", "captured/windows-enroll/CAPTUREWIN1", "captured/windows-omadm/CAPTUREWIN1"],
        "{names:?}"
    );
    let push_flow = &flows[0];
    assert_eq!(push_flow.flow.exchanges[0].identity, "pubsub-token");
    assert!(!std::fs::read_to_string(push_flow.dir.join("flow.json")).expect("flow").contains(&token));
    let flows = flows[1..].to_vec();
    let apple_flow = &flows[0].flow;
    // Authenticate, TokenUpdate, Idle (→ command), Acknowledged (→ empty).
    assert_eq!(apple_flow.exchanges.len(), 4, "{:#?}", apple_flow.exchanges);
    let recorded = std::fs::read_to_string(flows[0].dir.join("04-request.plist")).expect("ack body");
    assert!(recorded.contains("{{udid}}") && recorded.contains("{{command_uuid_1}}"), "{recorded}");
    let secret = h.enroll_secret();
    for f in std::fs::read_dir(&flows[1].dir).expect("dir") {
        let text = std::fs::read_to_string(f.expect("entry").path()).expect("read");
        assert!(!text.contains(&secret), "the enrollment secret is not recorded");
    }

    let mut report = Report::default();
    suite::run_in_process(&flows, &SkipList::default(), &mut report);
    assert_clean(&report, "recorded, in process");
    assert_eq!(report.passed(), 9, "4 Apple, 4 enrollment, 1 OMA-DM exchanges");
    let mut pushed = Report::default();
    suite::run_in_process(std::slice::from_ref(push_flow), &SkipList::default(), &mut pushed);
    assert_clean(&pushed, "recorded push, in process");
    assert_eq!(pushed.passed(), 1);

    // The recorded enrollment replays over the wire (fresh DeviceID, UPN and message ids).
    let target = WireTarget {
        gateway: h.device_url.clone(),
        api: Some(h.api_url.clone()),
        api_key: Some(h.api_key.clone()),
        ca_pem: h.ca_pem.clone(),
        enroll_secret: Some(secret),
        pubsub_token: Some(token),
    };
    let mut report = Report::default();
    suite::run_wire(&flows[1..2], &target, &SkipList::default(), &mut report).await;
    assert_clean(&report, "recorded enrollment, over the wire");
    assert_eq!(report.passed(), flows[1].flow.exchanges.len());
    // The recorded push replays too (a redelivery: 204 again).
    let mut report = Report::default();
    suite::run_wire(std::slice::from_ref(push_flow), &target, &SkipList::default(), &mut report).await;
    assert_clean(&report, "recorded push, over the wire");
    assert_eq!(report.passed(), 1);
    h.stop().await;
}

/// The suite can fail: a request that does not decode as its kind, a recorded reply that does not
/// satisfy the expectation, and a capture from an unknown folder are reported as failures.
#[test]
fn wrong_vectors_fail() {
    let dir = tempfile::tempdir().expect("tmp");
    let flow = dir.path().join("apple/checkin/broken");
    std::fs::create_dir_all(&flow).expect("mkdir");
    std::fs::write(flow.join("reply.txt"), "not_plist: nope").expect("write");
    std::fs::write(
        flow.join("flow.json"),
        r#"{"description": "deliberately wrong", "exchanges": [
            {"name": "claims to decode", "request": {"method": "PUT", "path": "/mdm", "body": "not a plist", "kind": "apple-checkin"}},
            {"name": "recorded 400, expects 200", "request": {"method": "PUT", "path": "/mdm"},
             "expect": {"status": 200},
             "recorded": {"status": 400, "content_type": "text/plain", "body_file": "reply.txt"}},
            {"name": "recorded body fails a check", "request": {"method": "PUT", "path": "/mdm"},
             "expect": {"status": 400, "body": "text", "checks": [{"path": ".", "is": {"regex": "^no_identity"}}]},
             "recorded": {"status": 400, "content_type": "text/plain", "body_file": "reply.txt"}}
        ]}"#,
    )
    .expect("write");
    let flows = suite::load_flows(dir.path()).expect("load");
    assert_eq!(flows[0].id(), "apple/checkin/broken");
    let mut report = Report::default();
    suite::run_in_process(&flows, &SkipList::default(), &mut report);
    assert_eq!((report.passed(), report.failed()), (0, 3), "{}", report.text());
    assert!(report.text().ends_with("0 passed, 3 failed\n"));

    let captures = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(captures.path().join("other")).expect("mkdir");
    std::fs::write(captures.path().join("other/thing.bin"), b"?").expect("write");
    let mut report = Report::default();
    suite::run_captures(captures.path(), &SkipList::default(), &mut report).expect("captures");
    assert_eq!(report.failed(), 1, "{}", report.text());
    let skips = SkipList::parse("[[skip]]\nid = \"other/\"\nreason = \"not traffic\"\n").expect("skip list");
    let mut report = Report::default();
    suite::run_captures(captures.path(), &skips, &mut report).expect("captures");
    assert_eq!((report.failed(), report.skipped()), (0, 1));
}

/// The `mdm-conformance` binary: the in-process run over the project's vectors with JUnit output,
/// and a skip list without a reason refused (exit status 2).
#[test]
fn the_binary_reports_and_writes_junit() {
    let exe = mdm_tests::workspace_binary("mdm-conformance", "mdm-conformance");
    let dir = tempfile::tempdir().expect("tmp");
    let junit = dir.path().join("junit.xml");
    let out = std::process::Command::new(&exe)
        .args(["run", "--in-process"])
        .arg(conformance_dir().join("transcripts"))
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.contains(" passed, 0 failed"), "{last}");
    assert!(stdout.contains("== windows/oma-dm\n"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains("<testsuite name=\"apple/checkin\"") && xml.contains("failures=\"0\""), "{xml}");

    let skip = dir.path().join("skip.toml");
    std::fs::write(&skip, "[[skip]]\nid = \"apple/\"\n").expect("write");
    let out = std::process::Command::new(&exe)
        .args(["run", "--in-process"])
        .arg(conformance_dir().join("transcripts"))
        .arg("--skip")
        .arg(&skip)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no reason"));
}
