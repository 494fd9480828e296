//! Apple enrollment the real way, end to end over real TLS: the emulated device takes a ticket,
//! downloads the signed profile and verifies it, follows its SCEP payload (RSA key, PKCSReq with
//! the one-time challenge), then Authenticate / TokenUpdate to the profile's URLs with the issued
//! identity, and answers a command. The ticket's state is read over the wire after every step.
//! Also: a tampered profile, a reused challenge, renewal through SCEP, and `mdm-emulate apple
//! --enroll profile` against a gateway started here.

use std::process::Command;

use mdm_certs::scep::FailInfo;
use mdm_certs::{PKey, Private};
use mdm_conformance::apple::profile::ProfileError;
use mdm_conformance::apple::{AppleDevice, EnrollError, Enroller, IdentityMode, Ticket};
use mdm_core::DeviceId;
use mdm_tests::{Harness, eventually};
use plist::Dictionary;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOPIC: &str = "com.apple.mgmt.External.8f0e2c1a-e2e";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The stored id of a ticket: its SHA-256.
fn ticket_id(ticket: &Ticket) -> String {
    sha256_hex(ticket.ticket.as_bytes())
}

fn device_id(udid: &str) -> DeviceId {
    format!("apple:{udid}").parse().expect("device id")
}

async fn start() -> (Harness, Enroller) {
    let h = Harness::start_public(|_| {}).await;
    h.upload_push_certificate(TOPIC, "").await;
    let enroller = Enroller::new(&h.device_url, &h.ca_pem).expect("enroller");
    (h, enroller)
}

/// The ticket's state and device id, read over the wire.
async fn state(enroller: &Enroller, ticket: &Ticket) -> (String, Option<String>) {
    let s = enroller.ticket_status(ticket).await.expect("ticket status");
    assert!(!s.expired, "{}", s.raw);
    (s.state, s.device_id)
}

/// Queues DeviceInformation, lets the device run one session, and checks the round trip.
async fn command_round_trip(h: &Harness, device: &AppleDevice) {
    let id = format!("apple:{}", device.udid);
    let (code, queued) =
        h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "device_info" } })).await;
    assert_eq!(code, 202, "{queued}");
    let command_id = queued["command_id"].as_str().expect("command_id").to_owned();
    let handled = device.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1, "{handled:?}");
    assert_eq!((handled[0].0.as_str(), handled[0].1.as_str()), (command_id.as_str(), "DeviceInformation"));
    let (_, c) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(c["status"], "acknowledged", "{c}");
}

fn is_rsa(key: &PKey<Private>, bits: u32) -> bool {
    key.id() == openssl::pkey::Id::RSA && key.bits() == bits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_enrollment_moves_the_ticket_through_every_state() {
    let (h, enroller) = start().await;
    let udid = "E2E-REAL-0001";
    let store = &h.gateway().state.store;

    let ticket = enroller.create_ticket().await.expect("ticket");
    assert_eq!(state(&enroller, &ticket).await, ("created".into(), None));

    // The profile: downloaded through the ticket, its signature verified against ca.pem.
    let der = enroller.download_profile(Some(&ticket)).await.expect("profile");
    assert_eq!(state(&enroller, &ticket).await, ("profile_downloaded".into(), None));
    let settings = enroller.read_profile(&der).expect("signature verifies, plist reads");
    assert_eq!(settings.mdm.server_url, format!("{}/mdm", h.device_url));
    assert_eq!(settings.mdm.check_in_url, format!("{}/checkin", h.device_url));
    assert_eq!(settings.mdm.topic, TOPIC);
    assert!(settings.mdm.sign_message);
    assert_eq!(settings.scep.url, format!("{}/scep", h.device_url));
    assert_eq!((settings.scep.key_type.as_str(), settings.scep.key_size), ("RSA", 2048));
    let challenge = settings.scep.challenge.clone().expect("a challenge");
    assert_eq!(settings.root_certificates().expect("roots")[0].to_der().ok(), h.ca.to_der().ok());

    // SCEP: an RSA 2048 key, the profile's subject; the ticket now says certificate_issued.
    let (key, cert) = enroller.request_identity(&settings).await.expect("SCEP PKCSReq");
    assert!(is_rsa(&key, 2048), "the key the profile asked for");
    assert_eq!(
        mdm_certs::scep::subject_text(cert.subject_name()),
        format!("CN=MDM identity {}", settings.uuid),
        "the profile's subject"
    );
    assert_eq!(state(&enroller, &ticket).await, ("certificate_issued".into(), None));
    let fp = mdm_certs::fingerprint_sha256(&cert);

    // Authenticate and TokenUpdate to the profile's CheckInURL, signed with the SCEP identity.
    let device = enroller.device(udid, &settings, key, cert.clone()).expect("device");
    assert_eq!(device.mode, IdentityMode::SignMessages);
    assert_eq!(device.topic, TOPIC);
    let reply = device.send_checkin(device.authenticate_message()).await.expect("Authenticate");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(state(&enroller, &ticket).await, ("certificate_issued".into(), Some(format!("apple:{udid}"))));
    let reply = device.send_checkin(device.token_update_message(None)).await.expect("TokenUpdate");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(state(&enroller, &ticket).await, ("enrolled".into(), Some(format!("apple:{udid}"))));

    command_round_trip(&h, &device).await;

    // Stored: the enrollment is bound to the SCEP certificate, which is tied to the ticket and to
    // the profile's challenge (consumed by it).
    let enrollment = store.enrollment(&device_id(udid)).await.expect("read").expect("enrollment");
    assert_eq!(enrollment.cert_sha256.as_deref(), Some(fp.as_str()));
    assert_eq!(enrollment.push.as_ref().map(|p| p.topic.as_str()), Some(TOPIC));
    let record = store.scep_certificate(&fp).await.expect("read").expect("SCEP record");
    assert_eq!(record.ticket.as_deref(), Some(ticket_id(&ticket).as_str()));
    assert_eq!(record.message_type, "PKCSReq");
    let challenge_hash = sha256_hex(challenge.as_bytes());
    assert_eq!(record.challenge_sha256.as_deref(), Some(challenge_hash.as_str()));
    let used = store.scep_challenge(&challenge_hash).await.expect("read").expect("challenge");
    assert_eq!(used.issued_cert_sha256.as_deref(), Some(fp.as_str()));
    assert_eq!(used.ticket.as_deref(), Some(ticket_id(&ticket).as_str()));
    assert_eq!(h.events_of(&format!("apple:{udid}"), "device.enrolled").await.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_profile_is_refused_before_scep() {
    let (h, enroller) = start().await;
    let der = enroller.download_profile(None).await.expect("profile");
    let settings = enroller.read_profile(&der).expect("the untouched profile verifies");
    let challenge = settings.scep.challenge.expect("challenge");
    // Flip one byte of the challenge inside the signed content.
    let at = der.windows(challenge.len()).position(|w| w == challenge.as_bytes()).expect("content is attached");
    let mut tampered = der.clone();
    tampered[at] ^= 0x01;
    match enroller.read_profile(&tampered) {
        Err(EnrollError::Profile(ProfileError::BadSignature(_))) => {}
        other => panic!("a tampered profile must be refused for its signature: {other:?}"),
    }
    // Signed by the gateway but checked against another root: untrusted.
    let other_key = mdm_certs::devpki::generate_key().expect("key");
    let other_ca =
        mdm_certs::devpki::create_ca(&other_key, "Other CA", mdm_tests::unix_now(), 30, &[7; 16]).expect("ca");
    let several_roots =
        Enroller::new(&h.device_url, &[other_ca.to_pem().expect("pem"), h.ca_pem.clone()].concat()).expect("enroller");
    let only_other = Enroller::with_client(&h.device_url, &other_ca.to_pem().expect("pem"), h.device_client(None))
        .expect("enroller");
    several_roots.read_profile(&der).expect("the gateway CA among several roots is enough");
    match only_other.read_profile(&der) {
        Err(EnrollError::Profile(ProfileError::Untrusted { .. })) => {}
        other => panic!("a profile from an untrusted signer must be refused: {other:?}"),
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_profile_challenge_gets_bad_request_and_nothing_is_stored() {
    let (h, enroller) = start().await;
    let ticket = enroller.create_ticket().await.expect("ticket");
    let settings = enroller.fetch_profile(Some(&ticket)).await.expect("profile");
    let (_, first) = enroller.request_identity(&settings).await.expect("first device");
    let status_before = enroller.ticket_status(&ticket).await.expect("status").raw;

    // A second device installs the same profile: same one-time challenge.
    let label = "reason=\"challenge_used\"";
    let refused_before = h.metric("mdm_scep_requests_total", label).await;
    let before = h.snapshot(&[]).await;
    let err = enroller.request_identity(&settings).await.expect_err("the challenge was used");
    assert_eq!(err.scep_fail_info(), Some(FailInfo::BAD_REQUEST), "{err}");
    assert_eq!(h.snapshot(&[]).await, before, "nothing stored for the refused request");
    assert!(h.metric("mdm_scep_requests_total", label).await >= refused_before + 1.0);
    assert_eq!(enroller.ticket_status(&ticket).await.expect("status").raw, status_before, "ticket unchanged");
    let fp = mdm_certs::fingerprint_sha256(&first);
    let record = h.gateway().state.store.scep_certificate(&fp).await.expect("read").expect("first recorded");
    assert_eq!(record.ticket.as_deref(), Some(ticket_id(&ticket).as_str()));
    assert_eq!(h.gateway().state.store.scep_certificates(100).await.expect("list").len(), 1);

    // A fresh download is a fresh challenge: the second device enrolls with that.
    let device = AppleDevice::enroll_with_profile("E2E-SECOND-0001", &enroller, None).await.expect("fresh profile");
    assert_ne!(mdm_certs::fingerprint_sha256(&device.cert), fp);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_through_scep_rebinds_the_enrollment() {
    let (h, enroller) = start().await;
    let udid = "E2E-RENEW-0001";
    let store = &h.gateway().state.store;
    let ticket = enroller.create_ticket().await.expect("ticket");
    let mut device = AppleDevice::enroll_with_profile(udid, &enroller, Some(&ticket)).await.expect("enrolled");
    let old = device.clone();
    let fp_old = mdm_certs::fingerprint_sha256(&old.cert);
    assert_eq!(state(&enroller, &ticket).await, ("enrolled".into(), Some(format!("apple:{udid}"))));

    // RenewalReq signed with the current identity: a new key and certificate, same subject.
    device.renew_identity().await.expect("RenewalReq");
    let fp_new = mdm_certs::fingerprint_sha256(&device.cert);
    assert_ne!(fp_new, fp_old);
    assert!(is_rsa(&device.key, 2048));
    assert!(!device.key.public_eq(&old.key), "a new key");
    assert_eq!(
        mdm_certs::scep::subject_text(device.cert.subject_name()),
        mdm_certs::scep::subject_text(old.cert.subject_name())
    );
    let record = store.scep_certificate(&fp_new).await.expect("read").expect("renewal recorded");
    assert_eq!((record.message_type.as_str(), record.renewal_of.as_deref()), ("RenewalReq", Some(fp_old.as_str())));
    let bound = |e: Option<mdm_gateway::store::Enrollment>| e.and_then(|e| e.cert_sha256);
    assert_eq!(bound(store.enrollment(&device_id(udid)).await.expect("read")), Some(fp_old.clone()), "not yet");

    // The next check-in with the new certificate is accepted and rebinds the enrollment.
    let reply = device.send_report(device.report_message("Idle", None, None, Dictionary::new())).await.expect("Idle");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(bound(store.enrollment(&device_id(udid)).await.expect("read")), Some(fp_new.clone()));
    let renewed = h.events_of(&format!("apple:{udid}"), "device.identity_renewed").await;
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    assert_eq!(
        (renewed[0]["data"]["previous_sha256"].as_str(), renewed[0]["data"]["sha256"].as_str()),
        (Some(fp_old.as_str()), Some(fp_new.as_str()))
    );
    command_round_trip(&h, &device).await;

    // The old certificate is refused from now on, for check-ins and reports alike.
    let before = h.snapshot(&[]).await;
    for reply in [
        old.send_report(old.report_message("Idle", None, None, Dictionary::new())).await.expect("Idle"),
        old.send_checkin(old.token_update_message(None)).await.expect("TokenUpdate"),
    ] {
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&reply.body));
    }
    assert_eq!(h.snapshot(&[]).await, before);
    // The ticket still names the device: the renewal continues the enrollment it started.
    assert_eq!(state(&enroller, &ticket).await, ("enrolled".into(), Some(format!("apple:{udid}"))));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdm_emulate_enroll_profile_short_run() {
    let emulate = tokio::task::spawn_blocking(|| mdm_tests::workspace_binary("mdm-conformance", "mdm-emulate"))
        .await
        .expect("build");
    let h = Harness::start_public(|_| {}).await;
    h.upload_push_certificate(TOPIC, "").await;
    let dir = tempfile::tempdir().expect("tmp");
    // Only ca.pem: enrolling by profile needs no CA key.
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).expect("dir");
    std::fs::write(ca_dir.join("ca.pem"), &h.ca_pem).expect("ca.pem");
    std::fs::write(ca_dir.join("api-key"), &h.api_key).expect("api-key");
    let json_path = dir.path().join("summary.json");
    let args: Vec<std::ffi::OsString> = vec![
        "apple".into(),
        "--enroll".into(),
        "profile".into(),
        "--devices".into(),
        "3".into(),
        "--prefix".into(),
        "CLI".into(),
        "--gateway".into(),
        h.device_url.clone().into(),
        "--ca-dir".into(),
        ca_dir.into(),
        "--api".into(),
        h.api_url.clone().into(),
        "--commands".into(),
        "2".into(),
        "--checkout".into(),
        "--json".into(),
        json_path.clone().into(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(emulate).args(args).output().expect("run mdm-emulate"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mdm-emulate failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("profile + SCEP: 3 identities issued, 3 tickets enrolled"), "{stdout}");
    assert!(stderr.contains("enroll through the enrollment profile and SCEP"), "{stderr}");
    let s: Value = serde_json::from_slice(&std::fs::read(&json_path).expect("summary written")).expect("JSON");
    assert_eq!(s["enroll_mode"], "profile", "{s}");
    assert_eq!(
        (s["enrolled"].as_u64(), s["scep_identities"].as_u64(), s["tickets_enrolled"].as_u64()),
        (Some(3), Some(3), Some(3)),
        "{s}"
    );
    assert_eq!((s["commands_queued"].as_u64(), s["acknowledged"].as_u64()), (Some(6), Some(6)), "{s}");
    assert_eq!((s["checked_out"].as_u64(), s["errors"].as_u64()), (Some(3), Some(0)), "{s}");

    // Each device is bound to a certificate the SCEP server issued for a ticket of its own.
    let store = &h.gateway().state.store;
    let mut tickets = std::collections::BTreeSet::new();
    for e in store.list_enrollments(None, None, 100).await.expect("list") {
        assert!(e.device_id.as_str().starts_with("apple:CLI-"), "{}", e.device_id);
        let fp = e.cert_sha256.expect("bound");
        let record = store.scep_certificate(&fp).await.expect("read").expect("issued through SCEP");
        assert_eq!(record.message_type, "PKCSReq");
        tickets.insert(record.ticket.expect("tied to a ticket"));
    }
    assert_eq!(tickets.len(), 3, "one ticket per device");
    let unenrolled = eventually(std::time::Duration::from_secs(5), || async {
        let n = h.events().await.iter().filter(|e| e["type"] == "device.unenrolled").count();
        (n == 3).then_some(n)
    })
    .await;
    assert_eq!(unenrolled, Some(3));
    h.stop().await;
}
