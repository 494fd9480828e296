//! SCEP over real TLS: GetCACaps / GetCACert, PKCSReq with one-time and static challenges, the
//! issued certificate used as an Apple identity, every refusal (FAILURE CertRep with the right
//! failInfo, or HTTP 400) storing nothing, RenewalReq and the rebinding that follows, and a real
//! peer: micromdm's `scepclient` (Debian package `scep`) when it is installed.

use mdm_certs::scep::{FailInfo, MessageType, PkiStatus, build_csr};
use mdm_certs::{PKey, Private, X509, devpki};
use mdm_conformance::apple::IdentityMode;
use mdm_conformance::apple::scep::{PendingRequest, ScepClient};
use mdm_tests::{Harness, random_serial, unix_now};
use openssl::nid::Nid;
use openssl::rsa::Rsa;
use openssl::x509::{X509Name, X509VerifyResult};
use plist::Dictionary;

const SCEP_REQUESTS: &str = "mdm_scep_requests_total";

fn rsa_key(bits: u32) -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(bits).expect("rsa")).expect("pkey")
}

fn subject(cn: &str) -> X509Name {
    let mut b = X509Name::builder().expect("name");
    b.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    b.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Example Fleet").expect("o");
    b.build()
}

fn fingerprint(cert: &X509) -> String {
    mdm_certs::fingerprint_sha256(cert)
}

struct Scep {
    client: ScepClient,
    ra: X509,
}

async fn scep(h: &Harness) -> Scep {
    let client = ScepClient::new(&format!("{}/scep", h.device_url), h.device_client(None));
    let certs = client.ca_certs().await.expect("GetCACert");
    let ra = ScepClient::recipient(&certs).expect("RA");
    Scep { client, ra }
}

/// `POST /v1/scep/challenges`, optionally with a ticket.
async fn one_time_challenge(h: &Harness, ticket: Option<&str>) -> String {
    let body = match ticket {
        Some(t) => serde_json::json!({ "ticket": t }),
        None => serde_json::json!({}),
    };
    let (code, reply) = h.post("/v1/scep/challenges", &body).await;
    assert_eq!(code, 201, "{reply}");
    assert!(reply["expires_at"].as_str().is_some_and(|e| e.ends_with('Z')), "{reply}");
    reply["challenge"].as_str().expect("challenge").to_owned()
}

fn static_challenge(h: &Harness) -> String {
    std::fs::read_to_string(h.dir.path().join("data/scep-challenge")).expect("scep-challenge").trim().to_owned()
}

/// Sends `req` and checks: 200 FAILURE CertRep with `fail_info`, the metric for `reason` went up,
/// and nothing was stored.
async fn assert_failure(h: &Harness, s: &Scep, req: &PendingRequest, fail_info: FailInfo, reason: &str) {
    let label = format!("reason=\"{reason}\"");
    let before_metric = h.metric(SCEP_REQUESTS, &label).await;
    let before = h.snapshot(&[]).await;
    let reply = s.client.post_pki(&req.der).await.expect("PKIOperation");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.content_type.as_deref(), Some("application/x-pki-message"));
    let rep = req.read_reply(&reply.body, &s.ra).expect("CertRep");
    assert_eq!((rep.status, rep.fail_info), (PkiStatus::FAILURE, Some(fail_info)), "expected {reason}");
    assert!(rep.certificates.is_empty());
    assert_eq!(h.snapshot(&[]).await, before, "a refused request ({reason}) changed the store");
    let after_metric = h.metric(SCEP_REQUESTS, &label).await;
    assert!(after_metric >= before_metric + 1.0, "{SCEP_REQUESTS}{{{label}}}: {before_metric} -> {after_metric}");
}

/// Sends raw bytes and checks a 400 whose body names `reason`, with nothing stored.
async fn assert_http_400(h: &Harness, reply: mdm_conformance::apple::scep::ScepReply, before: &str, reason: &str) {
    let body = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 400, "{body}");
    assert!(body.starts_with(reason), "body should name {reason}: {body}");
    assert_eq!(h.snapshot(&[]).await, before, "a refused request ({reason}) changed the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ca_caps_and_ca_cert() {
    let h = Harness::start().await;
    let s = scep(&h).await;
    let caps = s.client.ca_caps().await.expect("caps");
    for cap in ["POSTPKIOperation", "SHA-256", "AES", "Renewal", "SCEPStandard"] {
        assert!(caps.lines().any(|l| l == cap), "{cap} missing from {caps:?}");
    }
    let raw = s.client.get("GetCACert", &[]).await.expect("GetCACert");
    assert_eq!(raw.content_type.as_deref(), Some("application/x-x509-ca-ra-cert"));
    let certs = mdm_certs::scep::parse_certs_only(&raw.body).expect("certs-only PKCS#7");
    assert_eq!(certs.len(), 2);
    assert!(certs.iter().any(|c| c.to_der().ok() == h.ca.to_der().ok()), "the CA is included");
    // The RA: RSA (key transport needs it), issued by the CA, not a CA itself.
    let ra = &s.ra;
    assert_eq!(ra.public_key().expect("key").id(), openssl::pkey::Id::RSA);
    assert_eq!(h.ca.issued(ra), X509VerifyResult::OK);
    assert!(ra.verify(&h.ca.public_key().expect("ca key")).expect("verify"));
    // Other operations and methods are transport errors.
    let before = h.snapshot(&[]).await;
    assert_http_400(&h, s.client.get("GetNextCACert", &[]).await.expect("get"), &before, "unsupported_operation").await;
    assert_http_400(&h, s.client.get("", &[]).await.expect("get"), &before, "missing_operation").await;
    let put =
        h.device_client(None).put(format!("{}/scep?operation=GetCACert", h.device_url)).send().await.expect("put");
    let reply = mdm_conformance::apple::scep::ScepReply {
        status: put.status().as_u16(),
        content_type: None,
        body: put.bytes().await.expect("body"),
    };
    assert_http_400(&h, reply, &before, "wrong_method").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs_req_with_one_time_challenge_then_apple_enrollment() {
    let h = Harness::start().await;
    let s = scep(&h).await;
    let scep_svc = h.gateway().state.scep.clone();
    let challenge = one_time_challenge(&h, Some("ticket-0001")).await;
    let status = scep_svc.ticket_status("ticket-0001").await.expect("status").expect("known ticket");
    assert!(!status.challenge_used && status.issued_cert_sha256.is_none());
    assert_eq!(scep_svc.ticket_status("no-such-ticket").await.expect("status"), None);

    let udid = "SCEP-0001-UDID";
    let key = rsa_key(2048);
    let req = PendingRequest::pkcs_req(key.clone(), &subject(udid), Some(&challenge), &s.ra, unix_now()).expect("req");
    let rep = s.client.send(&req, &s.ra).await.expect("CertRep");
    assert_eq!(rep.status, PkiStatus::SUCCESS);
    let cert = rep.certificates[0].clone();
    // Chains to the gateway CA, carries the CSR's subject and key, clientAuth.
    mdm_certs::verify_device_certificate(&cert, &[], &mdm_certs::TrustAnchors::new(vec![h.ca.clone()]), unix_now())
        .expect("a device identity under the gateway CA");
    assert_eq!(mdm_certs::scep::subject_text(cert.subject_name()), format!("CN={udid},O=Example Fleet"));
    assert!(cert.public_key().expect("key").public_eq(&key));
    let text = String::from_utf8(cert.to_text().expect("text")).expect("utf8");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Digital Signature, Key Encipherment"), "{text}");
    let validity_days = (devpki_not_after(&cert) - unix_now()) / 86_400;
    assert!((364..=365).contains(&validity_days), "{validity_days} days");

    // Recorded, with its challenge and ticket; the challenge is used and the ticket says so.
    let fp = fingerprint(&cert);
    let store = &h.gateway().state.store;
    let record = store.scep_certificate(&fp).await.expect("read").expect("recorded");
    assert_eq!(record.ticket.as_deref(), Some("ticket-0001"));
    assert_eq!(record.message_type, "PKCSReq");
    assert_eq!(record.transaction_id, req.transaction_id);
    assert_eq!(record.renewal_of, None);
    assert_eq!(record.serial, hex::encode(cert.serial_number().to_bn().expect("bn").to_vec()));
    let hash = mdm_gateway::scep::challenge_sha256(&challenge);
    assert_eq!(record.challenge_sha256.as_deref(), Some(hash.as_str()));
    let stored = store.scep_challenge(&hash).await.expect("read").expect("stored");
    assert_eq!(stored.issued_cert_sha256.as_deref(), Some(fp.as_str()));
    // Hashed at rest: the challenge text appears nowhere in the store.
    assert!(!h.snapshot(&[]).await.contains(&challenge));
    let status = scep_svc.ticket_status("ticket-0001").await.expect("status").expect("known");
    assert!(status.challenge_used);
    assert_eq!(status.issued_cert_sha256.as_deref(), Some(fp.as_str()));

    // The certificate works as the device's MDM identity, signed messages and TLS alike.
    let device = h.device_from(udid, key.clone(), cert.clone(), IdentityMode::SignMessages);
    device.enroll().await.expect("Authenticate + TokenUpdate");
    let enrollment =
        store.enrollment(&format!("apple:{udid}").parse().expect("id")).await.expect("read").expect("enrolled");
    assert_eq!(enrollment.cert_sha256.as_deref(), Some(fp.as_str()));
    let (code, body) = h.get(&format!("/v1/devices/apple:{udid}")).await;
    assert_eq!((code, body["enrollment"]["state"].as_str()), (200, Some("enrolled")), "{body}");
    let tls = h.device_from(udid, key, cert, IdentityMode::TlsClientCertificate);
    assert!(tls.session(|_| "Acknowledged").await.expect("Idle over TLS identity").is_empty());
    h.stop().await;
}

fn devpki_not_after(cert: &X509) -> i64 {
    mdm_gateway::pki::not_after_unix(cert).expect("not after")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_challenge_over_get_and_post_and_turned_off() {
    let h = Harness::start().await;
    let s = scep(&h).await;
    let challenge = static_challenge(&h);
    for (i, get) in [false, true, false].into_iter().enumerate() {
        let req = PendingRequest::pkcs_req(
            rsa_key(2048),
            &subject(&format!("STATIC-{i}")),
            Some(&challenge),
            &s.ra,
            unix_now(),
        )
        .expect("req");
        let reply =
            if get { s.client.get_pki(&req.der).await } else { s.client.post_pki(&req.der).await }.expect("send");
        assert_eq!(reply.status, 200);
        let rep = req.read_reply(&reply.body, &s.ra).expect("CertRep");
        assert_eq!(rep.status, PkiStatus::SUCCESS, "static challenge, request {i}");
    }
    let certs = h.gateway().state.store.scep_certificates(10).await.expect("list");
    assert_eq!(certs.len(), 3, "usable many times");
    assert!(certs.iter().all(|c| c.challenge_sha256.is_none() && c.ticket.is_none()));
    h.stop().await;

    let h = Harness::start_with(|c| c.apple.scep_static_challenge = false).await;
    let s = scep(&h).await;
    let req =
        PendingRequest::pkcs_req(rsa_key(2048), &subject("STATIC-OFF"), Some(&static_challenge(&h)), &s.ra, unix_now())
            .expect("req");
    assert_failure(&h, &s, &req, FailInfo::BAD_REQUEST, "wrong_challenge").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_refusals_store_nothing_and_consume_nothing() {
    let h = Harness::start().await;
    let s = scep(&h).await;
    let key = rsa_key(2048);
    let pkcs = |challenge: Option<&str>, cn: &str| {
        PendingRequest::pkcs_req(key.clone(), &subject(cn), challenge, &s.ra, unix_now()).expect("req")
    };
    assert_failure(&h, &s, &pkcs(Some("not-a-challenge-we-issued"), "WRONG"), FailInfo::BAD_REQUEST, "wrong_challenge")
        .await;
    assert_failure(&h, &s, &pkcs(None, "NONE"), FailInfo::BAD_REQUEST, "missing_challenge").await;

    // Used once, refused the second time.
    let challenge = one_time_challenge(&h, None).await;
    let rep = s.client.send(&pkcs(Some(&challenge), "FIRST"), &s.ra).await.expect("first");
    assert_eq!(rep.status, PkiStatus::SUCCESS);
    assert_failure(&h, &s, &pkcs(Some(&challenge), "SECOND"), FailInfo::BAD_REQUEST, "challenge_used").await;

    // A request refused for another reason (a 1024-bit key: badAlg) leaves its challenge usable.
    let fresh = one_time_challenge(&h, None).await;
    let weak = rsa_key(1024);
    let csr = build_csr(&weak, &subject("WEAK"), Some(&fresh)).expect("csr");
    let signer = mdm_certs::scep::self_signed_certificate(
        &weak,
        &subject("WEAK"),
        unix_now() - 60,
        unix_now() + 60,
        &random_serial(),
    )
    .expect("self-signed");
    let req = PendingRequest::build(MessageType::PKCS_REQ, &csr, signer, weak.clone(), weak, &s.ra).expect("req");
    assert_failure(&h, &s, &req, FailInfo::BAD_ALG, "weak_key").await;
    let rep = s.client.send(&pkcs(Some(&fresh), "AFTER-WEAK"), &s.ra).await.expect("fresh still works");
    assert_eq!(rep.status, PkiStatus::SUCCESS);

    // Expired: the gateway's clock moves past the TTL (default 3600 s).
    let expiring = one_time_challenge(&h, None).await;
    h.clock.advance(3601);
    assert_failure(&h, &s, &pkcs(Some(&expiring), "LATE"), FailInfo::BAD_REQUEST, "challenge_expired").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_http_400_and_bad_signatures_bad_message_check() {
    let h = Harness::start().await;
    let s = scep(&h).await;
    let before = h.snapshot(&[]).await;
    assert_http_400(&h, s.client.post_pki(b"garbage, not PKCS#7").await.expect("post"), &before, "not_cms").await;
    assert_http_400(&h, s.client.post_pki(&[]).await.expect("post"), &before, "not_cms").await;
    let not_b64 = s.client.get("PKIOperation", &[("message", "%%% not base64 %%%")]).await.expect("get");
    assert_http_400(&h, not_b64, &before, "bad_base64").await;
    assert_http_400(&h, s.client.get("PKIOperation", &[]).await.expect("get"), &before, "missing_message").await;
    // A PKCS#7 that is not a PKI message: a certs-only bundle (GetCACert's own answer).
    let raw = s.client.get("GetCACert", &[]).await.expect("GetCACert");
    assert_http_400(&h, s.client.post_pki(&raw.body).await.expect("post"), &before, "signer_count").await;
    let malformed = h.metric(SCEP_REQUESTS, "result=\"malformed\"").await;
    assert!(malformed >= 5.0, "{malformed}");

    // Signed with another key than the signer certificate's: badMessageCheck.
    let key = rsa_key(2048);
    let challenge = one_time_challenge(&h, None).await;
    let csr = build_csr(&key, &subject("BADSIG"), Some(&challenge)).expect("csr");
    let signer = mdm_certs::scep::self_signed_certificate(
        &key,
        &subject("BADSIG"),
        unix_now() - 60,
        unix_now() + 60,
        &random_serial(),
    )
    .expect("self-signed");
    let req = PendingRequest::build(MessageType::PKCS_REQ, &csr, signer, rsa_key(2048), key, &s.ra).expect("req");
    assert_failure(&h, &s, &req, FailInfo::BAD_MESSAGE_CHECK, "signature_invalid").await;
    // GetCertInitial (polling) is not served: badRequest.
    let key = rsa_key(2048);
    let csr = build_csr(&key, &subject("POLL"), Some(&challenge)).expect("csr");
    let signer = mdm_certs::scep::self_signed_certificate(
        &key,
        &subject("POLL"),
        unix_now() - 60,
        unix_now() + 60,
        &random_serial(),
    )
    .expect("self-signed");
    let req = PendingRequest::build(MessageType::CERT_POLL, &csr, signer, key.clone(), key, &s.ra).expect("req");
    assert_failure(&h, &s, &req, FailInfo::BAD_REQUEST, "unsupported_message_type").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_req_then_check_in_rebinds_the_enrollment() {
    // The default: apple.allow_cert_renewal is off, and SCEP renewals rebind anyway.
    let h = Harness::start().await;
    assert!(!h.gateway().state.config.apple.allow_cert_renewal);
    let s = scep(&h).await;
    let udid = "SCEP-RENEW-0001";
    let key_a = rsa_key(2048);
    let challenge = one_time_challenge(&h, Some("renew-ticket")).await;
    let req =
        PendingRequest::pkcs_req(key_a.clone(), &subject(udid), Some(&challenge), &s.ra, unix_now()).expect("req");
    let cert_a = s.client.send(&req, &s.ra).await.expect("PKCSReq").certificates[0].clone();
    let device_a = h.device_from(udid, key_a.clone(), cert_a.clone(), IdentityMode::SignMessages);
    device_a.enroll().await.expect("enroll with A");

    // RenewalReq signed with A for a new key: B, recorded as the renewal of A.
    let key_b = rsa_key(2048);
    let renew =
        PendingRequest::renewal_req(cert_a.clone(), key_a.clone(), key_b.clone(), &subject(udid), &s.ra).expect("req");
    let rep = s.client.send(&renew, &s.ra).await.expect("RenewalReq");
    assert_eq!(rep.status, PkiStatus::SUCCESS);
    let cert_b = rep.certificates[0].clone();
    assert!(cert_b.public_key().expect("key").public_eq(&key_b));
    let (fp_a, fp_b) = (fingerprint(&cert_a), fingerprint(&cert_b));
    let store = &h.gateway().state.store;
    let record = store.scep_certificate(&fp_b).await.expect("read").expect("recorded");
    assert_eq!((record.message_type.as_str(), record.renewal_of.as_deref()), ("RenewalReq", Some(fp_a.as_str())));
    let id: mdm_core::DeviceId = format!("apple:{udid}").parse().expect("id");
    assert_eq!(store.enrollment(&id).await.expect("read").expect("e").cert_sha256.as_deref(), Some(fp_a.as_str()));

    // The device checks in with B: accepted, rebound, one identity_renewed event.
    let device_b = h.device_from(udid, key_b, cert_b, IdentityMode::SignMessages);
    let reply =
        device_b.send_report(device_b.report_message("Idle", None, None, Dictionary::new())).await.expect("Idle");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(store.enrollment(&id).await.expect("read").expect("e").cert_sha256.as_deref(), Some(fp_b.as_str()));
    let renewed = h.events_of(&format!("apple:{udid}"), "device.identity_renewed").await;
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    assert_eq!(renewed[0]["data"]["previous_sha256"], fp_a.as_str());
    assert_eq!(renewed[0]["data"]["sha256"], fp_b.as_str());
    // A is no longer the device's identity.
    let reply =
        device_a.send_report(device_a.report_message("Idle", None, None, Dictionary::new())).await.expect("Idle");
    assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&reply.body));

    // Renewal signed by a certificate the gateway CA did not issue: badCertId.
    let other_key = devpki::generate_key().expect("key");
    let other_ca = devpki::create_ca(&other_key, "Other CA", unix_now(), 30, &random_serial()).expect("ca");
    let foreign_key = rsa_key(2048);
    let foreign = devpki::issue_device_certificate(
        &other_ca,
        &other_key,
        &foreign_key,
        udid,
        unix_now() - 60,
        unix_now() + 3600,
        &random_serial(),
    )
    .expect("cert");
    let req = PendingRequest::renewal_req(foreign, foreign_key, rsa_key(2048), &subject(udid), &s.ra).expect("req");
    assert_failure(&h, &s, &req, FailInfo::BAD_CERT_ID, "renewal_cert_not_ours").await;
    h.stop().await;
}

/// micromdm's scepclient (Debian: `apt-get install scep`, binary `/usr/bin/scepclient`) enrolls
/// against the gateway. It encrypts with single DES, so the gateway runs with
/// `apple.scep_allow_des`. Skipped, with the reason printed, when the binary is absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micromdm_scepclient_enrolls() {
    let bin = std::env::var_os("MDM_SCEPCLIENT").map(std::path::PathBuf::from).unwrap_or_else(|| "scepclient".into());
    let found = std::process::Command::new(&bin).arg("-version").output();
    let Ok(version) = found else {
        eprintln!("SKIPPED micromdm_scepclient_enrolls: {} not found (apt-get install scep)", bin.display());
        return;
    };
    eprintln!("scepclient version {}", String::from_utf8_lossy(&version.stdout).trim());
    let h = Harness::start_with(|c| c.apple.scep_allow_des = true).await;
    let s = scep(&h).await;
    let ra_fingerprint = fingerprint(&s.ra);
    let ca_file = h.dir.path().join("ca-for-scepclient.pem");
    std::fs::write(&ca_file, &h.ca_pem).expect("write CA");
    let url = format!("{}/scep", h.device_url);
    let run = |dir: std::path::PathBuf, challenge: String| {
        let (bin, url, ca_file, ra_fingerprint) = (bin.clone(), url.clone(), ca_file.clone(), ra_fingerprint.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).expect("dir");
            std::process::Command::new(bin)
                .env("SSL_CERT_FILE", &ca_file)
                .args(["-server-url", &url, "-challenge", &challenge, "-cn", "scep-peer-0001", "-ca-fingerprint"])
                .arg(&ra_fingerprint)
                .arg("-private-key")
                .arg(dir.join("key.pem"))
                .output()
                .expect("run scepclient")
        })
    };

    // A wrong challenge: scepclient reports the FAILURE and exits non-zero; nothing stored.
    let before = h.snapshot(&[]).await;
    let out = run(h.dir.path().join("peer-wrong"), "wrong-challenge".into()).await.expect("join");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("failInfo"), "{text}");
    assert_eq!(h.snapshot(&[]).await, before);

    let challenge = one_time_challenge(&h, Some("peer-ticket")).await;
    let dir = h.dir.path().join("peer");
    let out = run(dir.clone(), challenge).await.expect("join");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "scepclient failed: {text}");
    let cert = X509::from_pem(&std::fs::read(dir.join("client.pem")).expect("client.pem")).expect("pem");
    mdm_certs::verify_device_certificate(&cert, &[], &mdm_certs::TrustAnchors::new(vec![h.ca.clone()]), unix_now())
        .expect("chains to the gateway CA");
    assert!(mdm_certs::scep::subject_text(cert.subject_name()).contains("CN=scep-peer-0001"));
    let status = h.gateway().state.scep.ticket_status("peer-ticket").await.expect("status").expect("known");
    assert_eq!(status.issued_cert_sha256, Some(fingerprint(&cert)));
    h.stop().await;
}
