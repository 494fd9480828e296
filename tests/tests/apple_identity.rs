//! Apple device identity over real TLS: every failure is answered 400, names its reason in the
//! body and in `mdm_identity_failures_total`, and stores nothing. Plus the accepted paths: TLS
//! client certificates, trusted proxy headers and certificate renewal.

use base64::Engine;
use mdm_certs::devpki::{self, LeafProfile, Usage};
use mdm_certs::{PKey, Private, X509};
use mdm_conformance::apple::IdentityMode;
use mdm_tests::{DeviceReply, Harness, random_serial, unix_now};
use plist::Dictionary;

const CHECKIN: &str = "application/x-apple-aspen-mdm-checkin";
const REPORT: &str = "application/x-apple-aspen-mdm";
const IDENTITY_FAILURES: &str = "mdm_identity_failures_total";

/// Runs `send` and checks: 400, the body names `reason`, the identity-failure counter for
/// `reason` went up, and the store is exactly as before.
async fn assert_refused<F>(h: &Harness, reason: &str, send: F) -> DeviceReply
where
    F: std::future::Future<Output = DeviceReply>,
{
    let label = format!("reason=\"{reason}\"");
    let before_metric = h.metric(IDENTITY_FAILURES, &label).await;
    let before = h.snapshot(&[]).await;
    let reply = send.await;
    assert_eq!(reply.status, 400, "expected 400 {reason}, got {}: {}", reply.status, reply.body);
    assert!(reply.body.contains(reason), "body should name {reason}: {}", reply.body);
    assert_eq!(h.snapshot(&[]).await, before, "a refused request ({reason}) changed the store");
    let after_metric = h.metric(IDENTITY_FAILURES, &label).await;
    assert!(
        after_metric >= before_metric + 1.0,
        "{IDENTITY_FAILURES}{{{label}}} went {before_metric} -> {after_metric}"
    );
    reply
}

fn reply(r: mdm_conformance::apple::Reply) -> DeviceReply {
    DeviceReply { status: r.status, body: String::from_utf8_lossy(&r.body).into_owned() }
}

/// A CA unrelated to the gateway's and a client-auth device certificate from it.
fn foreign_identity(cn: &str) -> (PKey<Private>, X509) {
    let now = unix_now();
    let ca_key = devpki::generate_key().expect("key");
    let ca = devpki::create_ca(&ca_key, "Some Other CA", now, 30, &random_serial()).expect("ca");
    let key = devpki::generate_key().expect("key");
    let cert = devpki::issue_device_certificate(&ca, &ca_key, &key, cn, now - 3600, now + 86_400, &random_serial())
        .expect("cert");
    (key, cert)
}

async fn device_state(h: &Harness, udid: &str) -> Option<String> {
    let (code, body) = h.get(&format!("/v1/devices/apple:{udid}")).await;
    match code {
        200 => Some(body["enrollment"]["state"].as_str().expect("state").to_owned()),
        404 => None,
        other => panic!("GET device: {other} {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signature_and_no_client_certificate() {
    let h = Harness::start().await;
    let device = h.device("NOSIG-0001");
    let client = h.device_client(None);
    assert_refused(&h, "no_identity", h.device_put(&client, "/mdm", Some(CHECKIN), &[], device.authenticate_message()))
        .await;
    // Same for a report, and on /checkin.
    assert_refused(
        &h,
        "no_identity",
        h.device_put(&client, "/mdm", Some(REPORT), &[], device.report_message("Idle", None, None, Dictionary::new())),
    )
    .await;
    assert_refused(
        &h,
        "no_identity",
        h.device_put(&client, "/checkin", Some(CHECKIN), &[], device.authenticate_message()),
    )
    .await;
    assert_eq!(device_state(&h, "NOSIG-0001").await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_over_other_bytes() {
    let h = Harness::start().await;
    let device = h.device("SIGSWAP-0001");
    let signed = device.authenticate_message();
    let sig = device.sign(&signed).expect("sign");
    // Same message with one value changed: the signature no longer covers what is sent.
    let sent = String::from_utf8(signed).expect("utf8").replace("17.5.1", "17.5.2").into_bytes();
    let client = h.device_client(None);
    assert_refused(
        &h,
        "signature_invalid",
        h.device_put(&client, "/mdm", Some(CHECKIN), &[("Mdm-Signature", sig.clone())], sent),
    )
    .await;
    // A signature that is not base64 / not CMS at all.
    assert_refused(
        &h,
        "bad_base64",
        h.device_put(
            &client,
            "/mdm",
            Some(CHECKIN),
            &[("Mdm-Signature", "not base64!".into())],
            device.authenticate_message(),
        ),
    )
    .await;
    assert_refused(
        &h,
        "not_cms",
        h.device_put(
            &client,
            "/mdm",
            Some(CHECKIN),
            &[("Mdm-Signature", base64::engine::general_purpose::STANDARD.encode(b"hello"))],
            device.authenticate_message(),
        ),
    )
    .await;
    assert_eq!(device_state(&h, "SIGSWAP-0001").await, None);
    // The untouched body with its own signature is fine: the refusals were about the bytes.
    let ok =
        h.device_put(&client, "/mdm", Some(CHECKIN), &[("Mdm-Signature", sig)], device.authenticate_message()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    h.stop().await;
}

/// The gateway remembers successful `Mdm-Signature` verifications by the exact header and body
/// bytes: a signature it has already accepted must still fail over any other body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_signature_over_other_bytes() {
    let h = Harness::start().await;
    let device = h.device("SIGMEMO-0001");
    let signed = device.authenticate_message();
    let sig = device.sign(&signed).expect("sign");
    let client = h.device_client(None);
    let ok = h.device_put(&client, "/mdm", Some(CHECKIN), &[("Mdm-Signature", sig.clone())], signed.clone()).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let sent = String::from_utf8(signed.clone()).expect("utf8").replace("17.5.1", "17.5.2").into_bytes();
    assert_ne!(sent, signed);
    assert_refused(
        &h,
        "signature_invalid",
        h.device_put(&client, "/mdm", Some(CHECKIN), &[("Mdm-Signature", sig.clone())], sent),
    )
    .await;
    // One byte more or less is another message too.
    let mut longer = signed.clone();
    longer.push(b'\n');
    assert_refused(
        &h,
        "signature_invalid",
        h.device_put(&client, "/mdm", Some(CHECKIN), &[("Mdm-Signature", sig)], longer),
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_unknown_ca() {
    let h = Harness::start().await;
    let (key, cert) = foreign_identity("FOREIGN-0001");
    let device = h.device_from("FOREIGN-0001", key, cert, IdentityMode::SignMessages);
    assert_refused(&h, "untrusted_issuer", async {
        reply(device.send_checkin(device.authenticate_message()).await.expect("send"))
    })
    .await;
    assert_eq!(device_state(&h, "FOREIGN-0001").await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate() {
    let h = Harness::start().await;
    let now = unix_now();
    let (key, cert) = h.issue("EXPIRED-0001", now - 86_400 * 30, now - 3600);
    let device = h.device_from("EXPIRED-0001", key, cert, IdentityMode::SignMessages);
    assert_refused(&h, "expired", async {
        reply(device.send_checkin(device.authenticate_message()).await.expect("send"))
    })
    .await;
    assert_eq!(device_state(&h, "EXPIRED-0001").await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_certificate() {
    let h = Harness::start().await;
    let now = unix_now();
    let (key, cert) = h.issue("FUTURE-0001", now + 3600, now + 86_400 * 30);
    let device = h.device_from("FUTURE-0001", key, cert, IdentityMode::SignMessages);
    assert_refused(&h, "not_yet_valid", async {
        reply(device.send_checkin(device.authenticate_message()).await.expect("send"))
    })
    .await;
    assert_eq!(device_state(&h, "FUTURE-0001").await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_without_client_auth() {
    let h = Harness::start().await;
    let now = unix_now();
    let key = devpki::generate_key().expect("key");
    let serial = random_serial();
    let profile = LeafProfile {
        common_name: Some("SERVERAUTH-0001"),
        names: &[],
        usage: Usage::ServerAuth,
        not_before: now - 3600,
        not_after: now + 86_400,
        serial: &serial,
    };
    let cert = devpki::issue_leaf_certificate(&h.ca, &h.ca_key, &key, &profile).expect("leaf");
    let device = h.device_from("SERVERAUTH-0001", key, cert, IdentityMode::SignMessages);
    assert_refused(&h, "not_for_client_auth", async {
        reply(device.send_checkin(device.authenticate_message()).await.expect("send"))
    })
    .await;
    assert_eq!(device_state(&h, "SERVERAUTH-0001").await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_enrolled_devices_certificate() {
    let h = Harness::start().await;
    let a = h.device("DEVICE-A-0001");
    a.enroll().await.expect("A enrolls");
    let (_, a_before) = h.get("/v1/devices/apple:DEVICE-A-0001").await;
    assert_eq!(a_before["enrollment"]["state"], "enrolled");

    // B with its own identity authenticates fine.
    let b = h.device("DEVICE-B-0001");
    let r = b.send_checkin(b.authenticate_message()).await.expect("B auth");
    assert_eq!(r.status, 200);

    // B speaking with A's key and certificate.
    let b_as_a = h.device_from("DEVICE-B-0001", a.key.clone(), a.cert.clone(), IdentityMode::SignMessages);
    assert_refused(&h, "certificate_bound_elsewhere", async {
        reply(b_as_a.send_checkin(b_as_a.authenticate_message()).await.expect("send"))
    })
    .await;
    assert_refused(&h, "certificate_mismatch", async {
        reply(b_as_a.send_checkin(b_as_a.token_update_message(None)).await.expect("send"))
    })
    .await;
    assert_refused(&h, "certificate_mismatch", async {
        reply(b_as_a.send_report(b_as_a.report_message("Idle", None, None, Dictionary::new())).await.expect("send"))
    })
    .await;
    // A third UDID that never authenticated cannot borrow A's certificate either.
    let c_as_a = h.device_from("DEVICE-C-0001", a.key.clone(), a.cert.clone(), IdentityMode::SignMessages);
    assert_refused(&h, "certificate_bound_elsewhere", async {
        reply(c_as_a.send_checkin(c_as_a.authenticate_message()).await.expect("send"))
    })
    .await;

    let (_, a_after) = h.get("/v1/devices/apple:DEVICE-A-0001").await;
    assert_eq!(a_after, a_before, "A's enrollment changed");
    assert_eq!(device_state(&h, "DEVICE-B-0001").await.as_deref(), Some("authenticated"));
    assert_eq!(device_state(&h, "DEVICE-C-0001").await, None);
    // A still works with its own certificate.
    assert!(a.session(|_| "Acknowledged").await.expect("A session").is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_enrolled_devices_certificate_with_renewal_allowed() {
    let h = Harness::start_with(|c| c.apple.allow_cert_renewal = true).await;
    let a = h.device("RENEW-A-0001");
    a.enroll().await.expect("A enrolls");
    let b = h.device("RENEW-B-0001");
    b.enroll().await.expect("B enrolls");
    let b_as_a = h.device_from("RENEW-B-0001", a.key.clone(), a.cert.clone(), IdentityMode::SignMessages);
    assert_refused(&h, "certificate_bound_elsewhere", async {
        reply(b_as_a.send_report(b_as_a.report_message("Idle", None, None, Dictionary::new())).await.expect("send"))
    })
    .await;
    assert!(h.events_of("apple:RENEW-B-0001", "device.identity_renewed").await.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_certificate_for_enrolled_udid() {
    let h = Harness::start().await;
    let udid = "REBIND-0001";
    let device = h.device(udid);
    device.enroll().await.expect("enroll");
    let (_, before) = h.get(&format!("/v1/devices/apple:{udid}")).await;
    let now = unix_now();
    let (key, cert) = h.issue(udid, now - 60, now + 86_400);
    let other = h.device_from(udid, key, cert, IdentityMode::SignMessages);
    assert_refused(&h, "certificate_mismatch", async {
        reply(other.send_report(other.report_message("Idle", None, None, Dictionary::new())).await.expect("send"))
    })
    .await;
    assert_refused(&h, "certificate_mismatch", async {
        reply(other.send_checkin(other.token_update_message(None)).await.expect("send"))
    })
    .await;
    let (_, after) = h.get(&format!("/v1/devices/apple:{udid}")).await;
    assert_eq!(after, before);
    assert!(h.events_of(&format!("apple:{udid}"), "device.identity_renewed").await.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_same_subject_is_accepted() {
    let h = Harness::start_with(|c| c.apple.allow_cert_renewal = true).await;
    let udid = "RENEWOK-0001";
    let device = h.device(udid);
    device.enroll().await.expect("enroll");
    let old_fp = mdm_certs::fingerprint_sha256(&device.cert);
    let now = unix_now();
    let (key, cert) = h.issue(udid, now - 60, now + 86_400 * 2);
    let new_fp = mdm_certs::fingerprint_sha256(&cert);
    assert_ne!(old_fp, new_fp);
    let renewed = h.device_from(udid, key, cert, IdentityMode::SignMessages);
    let r = renewed.send_report(renewed.report_message("Idle", None, None, Dictionary::new())).await.expect("send");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let events = h.events_of(&format!("apple:{udid}"), "device.identity_renewed").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["previous_sha256"], old_fp.as_str());
    assert_eq!(events[0]["data"]["sha256"], new_fp.as_str());
    let (_, d) = h.get(&format!("/v1/devices/apple:{udid}")).await;
    assert_eq!(d["enrollment"]["certificate_sha256"], new_fp.as_str());
    assert_eq!(d["enrollment"]["state"], "enrolled");
    // The renewed certificate is now the bound one: no second renewal event.
    let r = renewed.send_checkin(renewed.token_update_message(None)).await.expect("send");
    assert_eq!(r.status, 200);
    assert_eq!(h.events_of(&format!("apple:{udid}"), "device.identity_renewed").await.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_different_subject_is_refused() {
    let h = Harness::start_with(|c| c.apple.allow_cert_renewal = true).await;
    let udid = "RENEWBAD-0001";
    let device = h.device(udid);
    device.enroll().await.expect("enroll");
    let now = unix_now();
    let (key, cert) = h.issue("SOMEONE-ELSE", now - 60, now + 86_400);
    let other = h.device_from(udid, key, cert, IdentityMode::SignMessages);
    assert_refused(&h, "certificate_mismatch", async {
        reply(other.send_report(other.report_message("Idle", None, None, Dictionary::new())).await.expect("send"))
    })
    .await;
    assert!(h.events_of(&format!("apple:{udid}"), "device.identity_renewed").await.is_empty());
    h.stop().await;
}

fn rfc9440(cert: &X509) -> String {
    format!(":{}:", base64::engine::general_purpose::STANDARD.encode(cert.to_der().expect("der")))
}

fn nginx_escaped(cert: &X509) -> String {
    let pem = cert.to_pem().expect("pem");
    percent_encoding::percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_from_untrusted_peer() {
    let h = Harness::start().await;
    let device = h.device("PROXY-0001");
    let client = h.device_client(None);
    assert_refused(
        &h,
        "untrusted_proxy_header",
        h.device_put(
            &client,
            "/mdm",
            Some(CHECKIN),
            &[("Client-Cert", rfc9440(&device.cert))],
            device.authenticate_message(),
        ),
    )
    .await;
    assert_eq!(device_state(&h, "PROXY-0001").await, None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_rfc9440_from_trusted_proxy() {
    let h = Harness::start_with(|c| c.device.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")]).await;
    let device = h.device("PROXY-OK-0001");
    let client = h.device_client(None);
    let header = [("Client-Cert", rfc9440(&device.cert))];
    let r = h.device_put(&client, "/mdm", Some(CHECKIN), &header, device.authenticate_message()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(device_state(&h, "PROXY-OK-0001").await.as_deref(), Some("authenticated"));
    let r = h.device_put(&client, "/mdm", Some(CHECKIN), &header, device.token_update_message(None)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(device_state(&h, "PROXY-OK-0001").await.as_deref(), Some("enrolled"));
    let (_, d) = h.get("/v1/devices/apple:PROXY-OK-0001").await;
    assert_eq!(d["enrollment"]["certificate_sha256"], mdm_certs::fingerprint_sha256(&device.cert).as_str());

    // The header is still checked like any identity: a foreign certificate in it is refused.
    let (_, foreign) = foreign_identity("PROXY-BAD-0001");
    let other = h.device("PROXY-BAD-0001");
    assert_refused(
        &h,
        "untrusted_issuer",
        h.device_put(
            &client,
            "/mdm",
            Some(CHECKIN),
            &[("Client-Cert", rfc9440(&foreign))],
            other.authenticate_message(),
        ),
    )
    .await;
    // And a malformed header value.
    assert_refused(
        &h,
        "bad_certificate_header",
        h.device_put(
            &client,
            "/mdm",
            Some(CHECKIN),
            &[("Client-Cert", "garbage".into())],
            other.authenticate_message(),
        ),
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_nginx_escaped_pem() {
    let h = Harness::start_with(|c| {
        c.device.trusted_proxies = vec!["127.0.0.0/8".parse().expect("net")];
        c.device.client_cert_header = "X-SSL-Client-Cert".into();
    })
    .await;
    let device = h.device("NGINX-0001");
    let client = h.device_client(None);
    let header = [("X-SSL-Client-Cert", nginx_escaped(&device.cert))];
    let r = h.device_put(&client, "/mdm", Some(CHECKIN), &header, device.authenticate_message()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = h.device_put(&client, "/mdm", Some(CHECKIN), &header, device.token_update_message(None)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(device_state(&h, "NGINX-0001").await.as_deref(), Some("enrolled"));
    // With this header configured, an RFC 9440 `Client-Cert` header means nothing.
    let other = h.device("NGINX-0002");
    assert_refused(
        &h,
        "no_identity",
        h.device_put(
            &client,
            "/mdm",
            Some(CHECKIN),
            &[("Client-Cert", rfc9440(&other.cert))],
            other.authenticate_message(),
        ),
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_full_enrollment() {
    let h = Harness::start().await;
    let udid = "TLSID-0001";
    let device = h.device_with(udid, IdentityMode::TlsClientCertificate);
    device.enroll().await.expect("enroll over TLS client certificate");
    let (_, d) = h.get(&format!("/v1/devices/apple:{udid}")).await;
    assert_eq!(d["enrollment"]["state"], "enrolled");
    assert_eq!(d["enrollment"]["certificate_sha256"], mdm_certs::fingerprint_sha256(&device.cert).as_str());

    // A command round trip over the same identity.
    let (code, q) = h
        .post(
            "/v1/commands",
            &serde_json::json!({"device_id": format!("apple:{udid}"), "command": {"type": "device_info"}}),
        )
        .await;
    assert_eq!(code, 202, "{q}");
    let handled = device.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);
    let (_, c) = h.get(&format!("/v1/commands/{}", q["command_id"].as_str().expect("id"))).await;
    assert_eq!(c["status"], "acknowledged");

    // Another valid TLS certificate for the same UDID is not the bound one.
    let other = h.device_with(udid, IdentityMode::TlsClientCertificate);
    assert_refused(&h, "certificate_mismatch", async {
        reply(other.send_report(other.report_message("Idle", None, None, Dictionary::new())).await.expect("send"))
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_from_unknown_ca_gets_http_400() {
    let h = Harness::start().await;
    let (key, cert) = foreign_identity("TLSFOREIGN-0001");
    let device = h.device_from("TLSFOREIGN-0001", key, cert, IdentityMode::TlsClientCertificate);
    // The TLS handshake succeeds (send() returns a reply instead of an error) and the answer is 400.
    let r = assert_refused(&h, "untrusted_issuer", async {
        reply(device.send_checkin(device.authenticate_message()).await.expect("TLS and HTTP work"))
    })
    .await;
    assert!(r.body.contains("untrusted_issuer"));
    // Expired TLS client certificate from our CA: also a 400, not a handshake failure.
    let now = unix_now();
    let (key, cert) = h.issue("TLSEXPIRED-0001", now - 86_400 * 10, now - 60);
    let expired = h.device_from("TLSEXPIRED-0001", key, cert, IdentityMode::TlsClientCertificate);
    assert_refused(&h, "expired", async {
        reply(expired.send_checkin(expired.authenticate_message()).await.expect("TLS and HTTP work"))
    })
    .await;
    h.stop().await;
}
