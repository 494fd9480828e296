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
