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

    let flows = suite::load_flows(out.path()).expect("recorded transcripts load");
    let names: Vec<String> = flows.iter().map(|f| f.id()).collect();
    assert_eq!(
        names,
        ["captured/apple/CAPTURE-APPLE-1", "captured/windows-enroll/CAPTUREWIN1", "captured/windows-omadm/CAPTUREWIN1"],
        "{names:?}"
    );
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

    // The recorded enrollment replays over the wire (fresh DeviceID, UPN and message ids).
    let target = WireTarget {
        gateway: h.device_url.clone(),
        api: Some(h.api_url.clone()),
        api_key: Some(h.api_key.clone()),
        ca_pem: h.ca_pem.clone(),
        enroll_secret: Some(secret),
        pubsub_token: None,
    };
    let mut report = Report::default();
    suite::run_wire(&flows[1..2], &target, &SkipList::default(), &mut report).await;
    assert_clean(&report, "recorded enrollment, over the wire");
    assert_eq!(report.passed(), flows[1].flow.exchanges.len());
    h.stop().await;
}
