//! Windows enrollment end to end, over real sockets and TLS: the emulated Windows device
//! discovers, gets the policy, enrolls with a real CSR and renews; what the gateway stores is
//! checked, every fault the gateway can produce is checked for its SOAP shape and for storing
//! nothing, and the public captures of a real client replay through `mdm_windows::enroll`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mdm_certs::{PKey, Private, devpki, wstep};
use mdm_conformance::windows::{
    CsrStyle, EnrollCredential, HttpReply, WindowsEnrollError, WindowsEnroller, WindowsEnrollerConfig, WindowsIdentity,
};
use mdm_gateway::config::{Config, WindowsAuthPolicy};
use mdm_tests::{Harness, unix_now, vectors_dir};
use mdm_windows::enroll::client::{Discovery, Enrolled};
use mdm_windows::enroll::{
    AdditionalContext, ClientCredential, CsrFormat, DiscoverRequest, DiscoverResponse, ErrorType, Fault,
    GetPoliciesRequest, RequestSecurityToken, RequestSecurityTokenResponse, RequestType, Subcode, ns,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPN: &str = "alice@example.com";

/// A gateway whose public URL is its device listener's real address.
async fn start(adjust: impl FnOnce(&mut Config)) -> Harness {
    Harness::start_reachable(adjust).await
}

fn secret(h: &Harness) -> String {
    h.enroll_secret()
}

fn config(h: &Harness, device_id: &str) -> WindowsEnrollerConfig {
    WindowsEnrollerConfig::on_premise(device_id, UPN, &secret(h))
}

fn device_with(h: &Harness, c: WindowsEnrollerConfig) -> WindowsEnroller {
    WindowsEnroller::new(c, &h.device_url, &h.ca_pem).expect("device")
}

fn device(h: &Harness, device_id: &str) -> WindowsEnroller {
    h.windows_enroller(device_id, UPN)
}

fn url(h: &Harness, path: &str) -> String {
    format!("{}{path}", h.device_url)
}

fn msg_id() -> String {
    format!("urn:uuid:{}", uuid_like())
}

fn uuid_like() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Checks a fault reply on the wire: HTTP status, SOAP content type and length, the Intune
/// shape (`s:Receiver`, the prefixed subcode, the `DeviceEnrollmentServiceError` detail), and
/// returns it decoded.
fn check_fault(reply: &HttpReply, status: u16, subcode: &Subcode, error_type: &ErrorType) -> Fault {
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    assert_eq!(reply.status, status, "{text}");
    assert_eq!(reply.content_type.as_deref(), Some("application/soap+xml; charset=utf-8"));
    assert_eq!(reply.content_length.as_deref(), Some(reply.body.len().to_string().as_str()));
    assert_eq!(reply.transfer_encoding, None);
    assert!(text.contains("<s:Value>s:Receiver</s:Value>"), "{text}");
    assert!(
        text.contains(&format!("<s:Subcode><s:Value>{}:{}</s:Value></s:Subcode>", subcode.prefix(), subcode)),
        "{text}"
    );
    assert!(text.contains(&format!("<DeviceEnrollmentServiceError xmlns=\"{}\">", ns::ENROLLMENT)), "{text}");
    let fault = Fault::decode(&reply.body).expect("decodes").expect("a fault");
    assert_eq!((&fault.subcode, &fault.error_type), (subcode, error_type), "{text}");
    assert!(!fault.trace_id.is_empty() && !fault.message.is_empty());
    fault
}

fn generic(subcode: Subcode) -> (Subcode, ErrorType) {
    let t = ErrorType::of_subcode(&subcode);
    (subcode, t)
}

/// The fault an emulated step ended with.
fn fault_of(r: Result<WindowsIdentity, WindowsEnrollError>) -> (u16, Fault) {
    match r {
        Err(WindowsEnrollError::Fault { status, fault }) => (status, fault),
        other => panic!("expected a fault, got {other:?}"),
    }
}

// ---------------------------------------------------------------- the flow

#[tokio::test]
async fn discovery_get_answers_empty_200_for_any_host() {
    let h = start(|_| {}).await;
    let client = h.device_client(None);
    for host in ["EnterpriseEnrollment.example.com", "enterpriseenrollment.contoso.test", "localhost"] {
        let resp = client
            .get(url(&h, "/EnrollmentServer/Discovery.svc"))
            .header("Host", host)
            .header("User-Agent", "ENROLLClient")
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status().as_u16(), 200, "{host}");
        assert_eq!(resp.headers().get("content-length").and_then(|v| v.to_str().ok()), Some("0"));
        assert!(resp.bytes().await.expect("body").is_empty());
    }
    // Policy and enrollment take POST only.
    let resp = client.get(url(&h, "/EnrollmentServer/Policy.svc")).send().await.expect("get");
    assert_eq!(resp.status().as_u16(), 405);
    h.stop().await;
}

#[tokio::test]
async fn a_whole_enrollment_and_what_is_stored() {
    let h = start(|_| {}).await;
    let dev = device(&h, "6F9A1C2B3D4E5F60718293A4B5C6D7E8");
    let before = h.snapshot(&[]).await;

    // Discovery answers with the URLs of the public URL, with a Content-Length.
    let req = dev.discover_request().expect("request");
    let d_url = url(&h, "/EnrollmentServer/Discovery.svc");
    let reply = dev.post(&d_url, Discovery::new(req).request("urn:uuid:1", &d_url)).await.expect("discover");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_length.as_deref(), Some(reply.body.len().to_string().as_str()));
    assert_eq!(reply.transfer_encoding, None);
    let discovered = DiscoverResponse::decode(&reply.body).expect("a DiscoverResponse");
    assert_eq!(discovered.auth_policy.as_str(), "OnPremise");
    assert_eq!(discovered.enrollment_version.as_deref(), Some("4.0"));
    assert_eq!(discovered.enrollment_policy_service_url, Some(url(&h, "/EnrollmentServer/Policy.svc")));
    assert_eq!(discovered.enrollment_service_url, url(&h, "/EnrollmentServer/Enrollment.svc"));
    assert!(String::from_utf8_lossy(&reply.body).contains("<a:RelatesTo>urn:uuid:1</a:RelatesTo>"));
    // Discovery and policy store nothing.
    dev.discover_and_get_policy().await.expect("policy");
    assert_eq!(h.snapshot(&[]).await, before);

    let id = dev.enroll().await.expect("enrolled");

    // The identity: a client-auth certificate for the device, from the gateway CA, for the key
    // the device generated; the document names it and the CA by their SHA-1 thumbprints.
    let anchors = mdm_certs::TrustAnchors::new(vec![h.ca.clone()]);
    mdm_certs::verify_device_certificate(&id.cert, &[], &anchors, unix_now()).expect("a valid device identity");
    let cn = id.cert.subject_name().entries().next().expect("cn").data().to_string().expect("utf-8");
    assert_eq!(cn, "6F9A1C2B3D4E5F60718293A4B5C6D7E8");
    assert_eq!(id.provisioned.client.thumbprint, wstep::thumbprint_sha1(&id.cert));
    assert_eq!(id.roots.len(), 1);
    assert_eq!(id.roots[0].to_der().expect("der"), h.ca.to_der().expect("der"));
    assert_eq!(id.provisioned.roots[0].thumbprint, wstep::thumbprint_sha1(&h.ca));
    assert_eq!(id.management_url, url(&h, "/ManagementServer/MDM.svc"));
    assert_eq!(id.provider_id, "MDM Gateway");
    assert_eq!(id.store, "User");
    let renew = id.renew.expect("renewal settings");
    assert_eq!((renew.robo_support, renew.renew_period_days, renew.retry_interval_days), (true, 42, 7));
    let poll = id.poll.expect("poll schedule");
    assert_eq!((poll.interval_for_first_set_of_retries, poll.number_of_first_retries), (Some(3), Some(5)));
    assert_eq!(poll.number_of_remaining_scheduled_retries, Some(0));
    assert_eq!(
        id.provisioned.client_cert_search.as_deref(),
        Some("Subject=CN%3D6F9A1C2B3D4E5F60718293A4B5C6D7E8&Stores=My%5CUser")
    );
    let doc = String::from_utf8(id.provisioning_doc.clone()).expect("utf-8");
    assert!(doc.contains(r#"<parm name="APPID" value="w7"/>"#), "{doc}");
    assert!(doc.contains(r#"<characteristic type="APPAUTH">"#), "{doc}");

    // What is stored: the enrollment bound to the issued certificate, the certificate record,
    // one device.enrolled event.
    let store = &h.gateway().state.store;
    let device_id: mdm_core::DeviceId = "windows:6F9A1C2B3D4E5F60718293A4B5C6D7E8".parse().expect("id");
    let e = store.enrollment(&device_id).await.expect("read").expect("enrolled");
    assert_eq!(e.state, mdm_gateway::store::EnrollmentState::Enrolled);
    assert_eq!(e.cert_sha256.as_deref(), Some(id.cert_sha256().as_str()));
    assert_eq!(e.attributes["upn"], UPN);
    assert_eq!(e.attributes["auth_policy"], "OnPremise");
    assert_eq!(e.inventory.device_name.as_deref(), Some(dev.config.device_name.as_str()));
    assert_eq!(store.enrollment_by_cert(&id.cert_sha256()).await.expect("by cert"), Some(device_id.clone()));
    let rec = store.windows_certificate(&id.cert_sha256()).await.expect("read").expect("recorded");
    assert_eq!(
        (rec.kind.as_str(), rec.upn.as_deref(), rec.thumbprint.clone()),
        ("enroll", Some(UPN), wstep::thumbprint_sha1(&id.cert))
    );
    let events = h.events_of("windows:6F9A1C2B3D4E5F60718293A4B5C6D7E8", "device.enrolled").await;
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev["platform"], "windows");
    assert_eq!(ev["data"]["upn"], UPN);
    assert_eq!(ev["data"]["cert_sha256"], id.cert_sha256());
    assert_eq!(ev["data"]["re_enrollment"], false);
    assert!(ev.get("raw").is_none_or(Value::is_null), "the request holds the password: no raw");
    // The backend sees the device.
    let (code, body) = h.get("/v1/devices/windows:6F9A1C2B3D4E5F60718293A4B5C6D7E8").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["platform"], "windows");
    h.stop().await;
}

#[tokio::test]
async fn quirky_windows_requests_enroll() {
    let h = start(|_| {}).await;
    // `!` and NULs in a PrintableString subject, sha1WithRSA under the ISO OID, the device id
    // only in the CSR extension.
    let mut c = config(&h, "QUIRKS01");
    c.csr_style = CsrStyle::WindowsQuirks;
    c.device_id_in_context = false;
    let id = device_with(&h, c).enroll().await.expect("enrolled");
    assert_eq!(id.gateway_device_id(), "windows:QUIRKS01");
    let store = &h.gateway().state.store;
    let e = store.enrollment(&"windows:QUIRKS01".parse().expect("id")).await.expect("read").expect("enrolled");
    assert_eq!(e.attributes["csr_subject"], format!(r"CN={UPN}!\x00\x00"));
    // The issued certificate does not copy that subject.
    let cn = id.cert.subject_name().entries().next().expect("cn").data().to_string().expect("utf-8");
    assert_eq!(cn, "QUIRKS01");

    // PKCS#7 around the PKCS#10, and a device enrollment (machine store).
    let mut c = config(&h, "{5B8C0F4E-PKCS7}");
    c.csr_style = CsrStyle::Pkcs7Wrapped;
    c.enrollment_type = "Device".into();
    let id = device_with(&h, c).enroll().await.expect("enrolled");
    assert_eq!(id.store, "System");
    assert_eq!(
        id.provisioned.client_cert_search.as_deref(),
        Some("Subject=CN%3D%7B5B8C0F4E-PKCS7%7D&Stores=My%5CSystem")
    );
    h.stop().await;
}

#[tokio::test]
async fn renewal_rebinds_the_device() {
    let h = start(|_| {}).await;
    let dev = device(&h, "RENEW0001");
    let first = dev.enroll().await.expect("enrolled");
    let second = dev.renew(&first).await.expect("renewed");
    assert_ne!(first.cert_sha256(), second.cert_sha256());
    assert!(!second.key.public_eq(&first.key), "a renewal certifies a new key");
    assert_eq!(second.management_url, first.management_url);

    let store = &h.gateway().state.store;
    let device_id: mdm_core::DeviceId = "windows:RENEW0001".parse().expect("id");
    let e = store.enrollment(&device_id).await.expect("read").expect("enrolled");
    assert_eq!(e.cert_sha256.as_deref(), Some(second.cert_sha256().as_str()));
    assert_eq!(store.enrollment_by_cert(&first.cert_sha256()).await.expect("by cert"), None);
    let rec = store.windows_certificate(&second.cert_sha256()).await.expect("read").expect("recorded");
    assert_eq!(
        (rec.kind.as_str(), rec.renewal_of.clone(), rec.upn.as_deref()),
        ("renew", Some(first.cert_sha256()), Some(UPN))
    );
    let renewed = h.events_of("windows:RENEW0001", "device.identity_renewed").await;
    assert_eq!(renewed.len(), 1);
    assert_eq!(renewed[0]["data"]["previous_sha256"], first.cert_sha256());
    assert_eq!(renewed[0]["data"]["sha256"], second.cert_sha256());
    assert_eq!(renewed[0]["data"]["via"], "wstep_renewal");

    // The replaced certificate may not renew again; the new one may.
    let before = h.snapshot(&[]).await;
    let (status, fault) = fault_of(dev.renew(&first).await);
    assert_eq!(
        (status, fault.subcode, fault.error_type),
        (500, Subcode::AUTHORIZATION, ErrorType::NOT_ELIGIBLE_TO_RENEW)
    );
    assert_eq!(h.snapshot(&[]).await, before);
    let third = dev.renew(&second).await.expect("renewed again");
    assert_eq!(
        store.enrollment(&device_id).await.expect("read").expect("enrolled").cert_sha256.as_deref(),
        Some(third.cert_sha256().as_str())
    );
    h.stop().await;
}

#[tokio::test]
async fn renewal_refusals() {
    let h = start(|_| {}).await;
    let dev = device(&h, "RENEW0002");
    let id = dev.enroll().await.expect("enrolled");
    let before = h.snapshot(&[]).await;
    let (nb, na) = (unix_now() - 60, unix_now() + 86_400);

    // A certificate of the gateway CA that no enrollment is bound to.
    let (key, cert) = h.issue("RENEW0002", nb, na);
    let stranger = WindowsIdentity { cert, key, ..id.clone() };
    let (_, f) = fault_of(dev.renew(&stranger).await);
    assert_eq!((f.subcode, f.error_type), (Subcode::AUTHORIZATION, ErrorType::NOT_ELIGIBLE_TO_RENEW));

    // The bound certificate over TLS, but the PKCS#7 signed with another one.
    let (other_key, other_cert) = h.issue("someone-else", nb, na);
    let new_key = devpki::generate_rsa_key(2048).expect("key");
    let csr = wstep::build_windows_csr(
        &new_key,
        &wstep::CsrOptions { subject_cn: b"x", signature: wstep::CsrSignature::Sha256, device_id_extension: None },
    )
    .expect("csr");
    let p7 = wstep::wrap_pkcs7(&csr, &other_cert, &other_key).expect("p7");
    let reply = dev.renew_raw(&id, p7).await.expect("reply");
    check_fault(&reply, 500, &Subcode::AUTHORIZATION, &ErrorType::NOT_ELIGIBLE_TO_RENEW);

    // No client certificate at all.
    let body = Enrolled::renewal_request(&id.enrollment_url, &msg_id(), csr.clone(), AdditionalContext::default());
    let reply = dev.post(&id.enrollment_url, body).await.expect("reply");
    let (s, t) = generic(Subcode::AUTHENTICATION);
    check_fault(&reply, 500, &s, &t);

    // A bad CSR inside a correctly signed PKCS#7.
    let mut bad_csr = csr.clone();
    let last = bad_csr.len() - 1;
    bad_csr[last] ^= 1;
    let p7 = wstep::wrap_pkcs7(&bad_csr, &id.cert, &id.key).expect("p7");
    let reply = dev.renew_raw(&id, p7).await.expect("reply");
    check_fault(&reply, 500, &Subcode::CERTIFICATE_REQUEST, &ErrorType::INVALID_ENROLLMENT_DATA);
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;

    // Renewal switched off: not eligible, and the document offers no renewal.
    let h = start(|c| c.windows.renewal = false).await;
    let dev = device(&h, "RENEW0003");
    let id = dev.enroll().await.expect("enrolled");
    assert_eq!(id.renew, None);
    let before = h.snapshot(&[]).await;
    let (_, f) = fault_of(dev.renew(&id).await);
    assert_eq!((f.subcode, f.error_type), (Subcode::AUTHORIZATION, ErrorType::NOT_ELIGIBLE_TO_RENEW));
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

// ---------------------------------------------------------------- faults

/// Posts `body` to `path` and checks the fault and that nothing was stored.
async fn refused(h: &Harness, path: &str, body: Vec<u8>, status: u16, kind: (Subcode, ErrorType)) -> Fault {
    let before = h.snapshot(&[]).await;
    let dev = device(h, "PROBE");
    let reply = dev.post(&url(h, path), body).await.expect("reply");
    let f = check_fault(&reply, status, &kind.0, &kind.1);
    assert_eq!(h.snapshot(&[]).await, before, "a refused request stored something");
    f
}

fn rst(h: &Harness, credential: &ClientCredential, csr: Vec<u8>, context: AdditionalContext) -> Vec<u8> {
    let u = url(h, "/EnrollmentServer/Enrollment.svc");
    RequestSecurityToken {
        message_id: None,
        security: None,
        request_type: RequestType::Issue,
        csr_format: CsrFormat::Pkcs10,
        csr,
        context,
    }
    .encode(&msg_id(), &u, credential)
}

fn good_csr(key: &PKey<Private>) -> Vec<u8> {
    wstep::build_windows_csr(
        key,
        &wstep::CsrOptions {
            subject_cn: UPN.as_bytes(),
            signature: wstep::CsrSignature::Sha256,
            device_id_extension: None,
        },
    )
    .expect("csr")
}

fn ctx(device_id: &str) -> AdditionalContext {
    let mut c = AdditionalContext::default();
    c.push("DeviceID", device_id).push("EnrollmentType", "Full");
    c
}

#[tokio::test]
async fn credential_and_message_faults() {
    let h = start(|_| {}).await;
    let good = ClientCredential::UsernameToken { username: UPN.into(), password: secret(&h) };
    let wrong = ClientCredential::UsernameToken { username: UPN.into(), password: "not-the-secret".into() };
    let key = devpki::generate_rsa_key(2048).expect("key");
    let policy = "/EnrollmentServer/Policy.svc";
    let enroll = "/EnrollmentServer/Enrollment.svc";
    let discovery = "/EnrollmentServer/Discovery.svc";

    // Wrong password, at the policy step and at the enrollment step.
    let body = GetPoliciesRequest::encode(&msg_id(), &url(&h, policy), &wrong, &ctx("D1"));
    let f = refused(&h, policy, body, 500, generic(Subcode::AUTHENTICATION)).await;
    assert!(!f.message.contains(&secret(&h)));
    refused(&h, enroll, rst(&h, &wrong, good_csr(&key), ctx("D1")), 500, generic(Subcode::AUTHENTICATION)).await;
    // No security header; a UsernameToken without password.
    refused(
        &h,
        enroll,
        rst(&h, &ClientCredential::None, good_csr(&key), ctx("D1")),
        500,
        generic(Subcode::INVALID_SECURITY),
    )
    .await;
    let text = String::from_utf8(rst(&h, &good, good_csr(&key), ctx("D1"))).expect("utf-8");
    let start_pw = text.find("<wsse:Password").expect("password");
    let end_pw = text.find("</wsse:Password>").expect("end") + "</wsse:Password>".len();
    let no_password = format!("{}{}", &text[..start_pw], &text[end_pw..]);
    refused(&h, enroll, no_password.into_bytes(), 500, generic(Subcode::INVALID_SECURITY)).await;
    // A federated token where OnPremise is configured.
    refused(
        &h,
        enroll,
        rst(&h, &ClientCredential::UserToken(b"a.b.c".to_vec()), good_csr(&key), ctx("D1")),
        500,
        generic(Subcode::AUTHENTICATION),
    )
    .await;

    // Malformed SOAP: not XML, not an envelope, SOAP 1.1, the wrong operation, a truncated body.
    for bad in [
        b"not xml at all".to_vec(),
        b"<html><body>hi</body></html>".to_vec(),
        br#"<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>"#.to_vec(),
        GetPoliciesRequest::encode(&msg_id(), "x", &good, &ctx("D1")),
        text.as_bytes()[..text.len() / 2].to_vec(),
        Vec::new(),
    ] {
        refused(&h, enroll, bad, 500, generic(Subcode::MESSAGE_FORMAT)).await;
    }
    // An RST with another RequestType, and a token that is not base64.
    let cancel = text.replace(ns::REQUEST_TYPE_ISSUE, "http://docs.oasis-open.org/ws-sx/ws-trust/200512/Cancel");
    refused(&h, enroll, cancel.into_bytes(), 500, generic(Subcode::MESSAGE_FORMAT)).await;

    // Discovery: an old protocol version; an auth policy this server does not offer.
    let dev = device(&h, "D1");
    let mut req = dev.discover_request().expect("request");
    req.request_version = mdm_windows::enroll::RequestVersion::parse("3.0").expect("v");
    let body = Discovery::new(req).request(&msg_id(), &url(&h, discovery));
    refused(&h, discovery, body, 500, (Subcode::AUTHORIZATION, ErrorType::DEVICE_NOT_SUPPORTED)).await;
    let mut req = dev.discover_request().expect("request");
    req.auth_policies = vec![mdm_windows::enroll::AuthPolicy::Certificate];
    let body = Discovery::new(req).request(&msg_id(), &url(&h, discovery));
    refused(&h, discovery, body, 500, (Subcode::AUTHENTICATION, ErrorType::NOT_SUPPORTED)).await;

    // Certificate requests: a broken signature, a weak key, garbage.
    let mut broken = good_csr(&key);
    let last = broken.len() - 1;
    broken[last] ^= 0x40;
    let kind = (Subcode::CERTIFICATE_REQUEST, ErrorType::INVALID_ENROLLMENT_DATA);
    refused(&h, enroll, rst(&h, &good, broken, ctx("D1")), 500, kind.clone()).await;
    let weak = PKey::from_rsa(openssl::rsa::Rsa::generate(1024).expect("rsa")).expect("key");
    refused(&h, enroll, rst(&h, &good, good_csr(&weak), ctx("D1")), 500, kind.clone()).await;
    refused(&h, enroll, rst(&h, &good, b"\x30\x03\x02\x01\x00".to_vec(), ctx("D1")), 500, kind).await;

    // Device ids: none at all, or not an identifier.
    let invalid = (Subcode::MESSAGE_FORMAT, ErrorType::INVALID_ENROLLMENT_DATA);
    refused(&h, enroll, rst(&h, &good, good_csr(&key), AdditionalContext::default()), 500, invalid.clone()).await;
    refused(&h, enroll, rst(&h, &good, good_csr(&key), ctx("has space")), 500, invalid.clone()).await;
    refused(&h, enroll, rst(&h, &good, good_csr(&key), ctx(&"X".repeat(65))), 500, invalid).await;

    // And with all that, the right request still enrolls.
    let reply =
        device(&h, "D1").post(&url(&h, enroll), rst(&h, &good, good_csr(&key), ctx("D1"))).await.expect("reply");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    RequestSecurityTokenResponse::decode(&reply.body).expect("an RSTR");
    h.stop().await;
}

#[tokio::test]
async fn xml_attacks_are_refused() {
    let h = start(|_| {}).await;
    let enroll = "/EnrollmentServer/Enrollment.svc";
    let lol = r#"<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><x>&d;&d;&d;&d;</x></s:Body></s:Envelope>"#;
    let f = refused(&h, enroll, lol.as_bytes().to_vec(), 500, generic(Subcode::MESSAGE_FORMAT)).await;
    assert!(f.message.contains("document type declaration"), "{}", f.message);
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><x>&xxe;</x></s:Body></s:Envelope>"#;
    let f =
        refused(&h, "/EnrollmentServer/Discovery.svc", xxe.as_bytes().to_vec(), 500, generic(Subcode::MESSAGE_FORMAT))
            .await;
    assert!(!f.message.contains("root:"), "never expanded");
    // An entity reference without a DTD is refused, not left as is.
    let undeclared =
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><x>&ext;</x></s:Body></s:Envelope>"#;
    refused(&h, enroll, undeclared.as_bytes().to_vec(), 500, generic(Subcode::MESSAGE_FORMAT)).await;
    // Deep nesting.
    let deep = format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>{}{}</s:Body></s:Envelope>"#,
        "<a>".repeat(5000),
        "</a>".repeat(5000)
    );
    let f = refused(&h, enroll, deep.into_bytes(), 500, generic(Subcode::MESSAGE_FORMAT)).await;
    assert!(f.message.contains("nested deeper"), "{}", f.message);
    // A huge body: 413 with a fault, whether announced by Content-Length or streamed.
    let huge = format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><x>{}</x></s:Body></s:Envelope>"#,
        "A".repeat(300 * 1024)
    );
    refused(&h, enroll, huge.clone().into_bytes(), 413, generic(Subcode::MESSAGE_FORMAT)).await;
    // Streamed without a length: cut off at the limit, answered 413 with the fault.
    let before = h.snapshot(&[]).await;
    let mut tls = raw_tls(&h).await;
    let head = format!(
        "POST {enroll} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/soap+xml; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..300 {
        tls.write_all(b"400\r\n").await.expect("size");
        tls.write_all(&[b'A'; 1024]).await.expect("chunk");
        tls.write_all(b"\r\n").await.expect("end");
    }
    tls.flush().await.expect("flush");
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(5), read_answer(&mut tls)).await.expect("413 in time");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-length:"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("head end") + 4..];
    let f = Fault::decode(body.as_bytes()).expect("decodes").expect("fault");
    assert_eq!(f.subcode, Subcode::MESSAGE_FORMAT);
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

/// A raw TLS connection to the device listener, HTTP/1.1 only.
async fn raw_tls(h: &Harness) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(h.ca.to_der().expect("der"))).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(h.gateway().device_addr).await.expect("connect");
    connector.connect("localhost".try_into().expect("name"), tcp).await.expect("TLS handshake")
}

/// Reads a whole HTTP/1.1 answer with a Content-Length (or until the peer closes).
async fn read_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|l| buf.len() >= end + 4 + l) {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn service_state_faults() {
    // Maintenance: discovery still answers; policy and enrollment say InMaintenance.
    let h = start(|c| c.windows.maintenance = true).await;
    let dev = device(&h, "MAINT01");
    let (_, f) = fault_of(dev.enroll().await);
    assert_eq!((f.subcode, f.error_type), (Subcode::ENROLLMENT_SERVER, ErrorType::IN_MAINTENANCE));
    let key = devpki::generate_rsa_key(2048).expect("key");
    let good = ClientCredential::UsernameToken { username: UPN.into(), password: secret(&h) };
    refused(
        &h,
        "/EnrollmentServer/Enrollment.svc",
        rst(&h, &good, good_csr(&key), ctx("MAINT01")),
        500,
        (Subcode::ENROLLMENT_SERVER, ErrorType::IN_MAINTENANCE),
    )
    .await;
    h.stop().await;

    // Disabled: GET is 404, Discover is NotSupported.
    let h = start(|c| c.windows.enabled = false).await;
    let dev = device(&h, "OFF01");
    assert_eq!(dev.get_discovery().await.expect("get").status, 404);
    let body = Discovery::new(dev.discover_request().expect("r")).request(&msg_id(), &dev.discovery_url());
    refused(&h, "/EnrollmentServer/Discovery.svc", body, 500, (Subcode::ENROLLMENT_SERVER, ErrorType::NOT_SUPPORTED))
        .await;
    h.stop().await;

    // Allowed domains: another domain's user is not authorized.
    let h = start(|c| c.windows.allowed_domains = vec!["corp.example".into()]).await;
    let (_, f) = fault_of(device(&h, "DOM01").enroll().await);
    assert_eq!(f.subcode, Subcode::AUTHORIZATION);
    let mut c = config(&h, "DOM02");
    c.credential = EnrollCredential::Password { upn: "Bob@Corp.Example".into(), password: secret(&h) };
    device_with(&h, c).enroll().await.expect("an allowed domain enrolls");
    h.stop().await;
}

#[tokio::test]
async fn device_cap_per_user() {
    // The deprecated `windows.max_devices_per_user` is an alias: it lowers the enrollment gate's
    // per-user limit, which is what refuses the third device.
    let h = start(|c| c.windows.max_devices_per_user = 2).await;
    assert_eq!(h.gateway().state.gate.config.device_limit_per_user, 2);
    device(&h, "CAP01").enroll().await.expect("first");
    device(&h, "CAP02").enroll().await.expect("second");
    let store = &h.gateway().state.store;
    let before = (
        store.list_enrollments(None, None, 100).await.expect("list"),
        store.windows_certificates(100).await.expect("certs"),
    );
    let (status, f) = fault_of(device(&h, "CAP03").enroll().await);
    assert_eq!((status, f.subcode, f.error_type), (500, Subcode::AUTHORIZATION, ErrorType::DEVICE_CAP_REACHED));
    let after = (
        store.list_enrollments(None, None, 100).await.expect("list"),
        store.windows_certificates(100).await.expect("certs"),
    );
    assert_eq!(after, before, "nothing stored for the refused device");
    let denied = h.events_of("windows:CAP03", "device.enrollment_denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["data"]["reason"], "device_limit_reached");
    // Re-enrolling a device the user has is not a new device.
    device(&h, "CAP02").enroll().await.expect("re-enrollment");
    let events = h.events_of("windows:CAP02", "device.enrolled").await;
    assert_eq!(
        events.iter().map(|e| e["data"]["re_enrollment"].clone()).collect::<Vec<_>>(),
        [json!(false), json!(true)]
    );
    // Another user is not counted against.
    let mut c = config(&h, "CAP03");
    c.credential = EnrollCredential::Password { upn: "carol@example.com".into(), password: secret(&h) };
    device_with(&h, c).enroll().await.expect("another user");
    h.stop().await;
}

// ---------------------------------------------------------------- pluggable credentials

#[derive(Debug, Clone, Default)]
struct HookLog(Arc<Mutex<Vec<Value>>>);

/// A credential hook: `ok@…` allowed, `nolicense@…` denied with UserLicense, `broken@…` 500,
/// anyone else 403.
async fn start_hook() -> (String, HookLog) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/check", listener.local_addr().expect("addr"));
    let log = HookLog::default();
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let l = l.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let l = l.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        l.0.lock().expect("lock").push(v.clone());
                        let upn = v["upn"].as_str().unwrap_or_default().to_owned();
                        let (status, answer) = if upn.starts_with("ok@") && v["password"] == "hook-pass" {
                            (200, json!({"allowed": true}))
                        } else if upn.starts_with("nolicense@") {
                            (
                                200,
                                json!({"allowed": false, "error_type": "UserLicense", "message": "no Intune licence"}),
                            )
                        } else if upn.starts_with("broken@") {
                            (500, json!({}))
                        } else {
                            (403, json!({}))
                        };
                        let mut r = hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (url, log)
}

#[tokio::test]
async fn credential_hook_decides() {
    let (hook, log) = start_hook().await;
    let h = start(|c| c.windows.credential_hook_url = Some(hook)).await;
    let with = |id: &str, upn: &str, pw: &str| {
        let mut c = config(&h, id);
        c.credential = EnrollCredential::Password { upn: upn.into(), password: pw.into() };
        device_with(&h, c)
    };
    let id = with("HOOK01", "ok@example.com", "hook-pass").enroll().await.expect("allowed by the hook");
    assert_eq!(id.gateway_device_id(), "windows:HOOK01");
    let asked = log.0.lock().expect("lock").clone();
    assert_eq!(
        asked.iter().map(|v| v["operation"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
        ["policy", "enroll"]
    );
    assert_eq!(asked[1]["device_id"], "HOOK01");

    let before = h.snapshot(&[]).await;
    // The enrollment secret means nothing once a hook decides.
    let (_, f) = fault_of(with("HOOK02", "someone@example.com", &secret(&h)).enroll().await);
    assert_eq!(f.subcode, Subcode::AUTHENTICATION);
    let (_, f) = fault_of(with("HOOK03", "nolicense@example.com", "x").enroll().await);
    assert_eq!(
        (f.subcode, f.error_type, f.message.as_str()),
        (Subcode::AUTHORIZATION, ErrorType::USER_LICENSE, "no Intune licence")
    );
    let (_, f) = fault_of(with("HOOK04", "broken@example.com", "x").enroll().await);
    assert_eq!(f.subcode, Subcode::ENROLLMENT_SERVER);
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

// ---------------------------------------------------------------- federated

#[tokio::test]
async fn federated_tokens() {
    let idp = devpki::generate_key().expect("idp key");
    let keys_dir = tempfile::tempdir().expect("tmp");
    let keys = keys_dir.path().join("idp.pem");
    std::fs::write(&keys, idp.public_key_to_pem().expect("pem")).expect("write");
    let h = start(|c| {
        c.windows.auth_policy = WindowsAuthPolicy::Federated;
        c.windows.federated.authentication_url = Some("https://sts.example.com/enroll".into());
        c.windows.federated.issuer = Some("https://sts.example.com".into());
        c.windows.federated.audiences = vec!["urn:mdm-gateway".into()];
        c.windows.federated.keys = vec![keys.clone()];
    })
    .await;
    let now = unix_now();
    let token = |claims: Value| mdm_certs::jwt::sign_jwt(&claims, &idp, None).expect("sign");
    let fed = |id: &str, t: String| {
        let mut c = config(&h, id);
        c.credential = EnrollCredential::Token(t);
        device_with(&h, c)
    };
    let good = json!({"iss": "https://sts.example.com", "aud": "urn:mdm-gateway", "exp": now + 600, "upn": "Dave@Example.com"});

    // Discovery names the STS.
    let dev = fed("FED01", token(good.clone()));
    let body = Discovery::new(dev.discover_request().expect("r")).request(&msg_id(), &dev.discovery_url());
    let reply = dev.post(&dev.discovery_url(), body).await.expect("discover");
    let d = DiscoverResponse::decode(&reply.body).expect("response");
    assert_eq!(
        (d.auth_policy.as_str(), d.authentication_service_url.as_deref()),
        ("Federated", Some("https://sts.example.com/enroll"))
    );

    let id = dev.enroll().await.expect("enrolled with a token");
    let store = &h.gateway().state.store;
    let e = store.enrollment(&"windows:FED01".parse().expect("id")).await.expect("read").expect("enrolled");
    assert_eq!(
        (e.attributes["upn"].as_str(), e.attributes["auth_policy"].as_str()),
        (Some("dave@example.com"), Some("Federated"))
    );
    assert_eq!(e.cert_sha256.as_deref(), Some(id.cert_sha256().as_str()));

    let before = h.snapshot(&[]).await;
    let mut expired = good.clone();
    expired["exp"] = json!(now - 3600);
    let mut other_aud = good.clone();
    other_aud["aud"] = json!("urn:someone-else");
    let forged = mdm_certs::jwt::sign_jwt(&good, &devpki::generate_key().expect("k"), None).expect("sign");
    for t in [token(expired), token(other_aud), forged, "not-a-token".into()] {
        let (_, f) = fault_of(fed("FED02", t).enroll().await);
        assert_eq!(f.subcode, Subcode::AUTHENTICATION);
    }
    // A password where a token is expected.
    let pw = ClientCredential::UsernameToken { username: UPN.into(), password: secret(&h) };
    let key = devpki::generate_rsa_key(2048).expect("key");
    refused(
        &h,
        "/EnrollmentServer/Enrollment.svc",
        rst(&h, &pw, good_csr(&key), ctx("FED03")),
        500,
        generic(Subcode::AUTHENTICATION),
    )
    .await;
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

// ---------------------------------------------------------------- captures

fn capture(name: &str) -> Option<Vec<u8>> {
    let Some(dir) = vectors_dir() else {
        eprintln!("skipping: no vectors folder (set MDM_VECTORS)");
        return None;
    };
    let path = dir.join("windows/captures").join(name);
    Some(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[tokio::test]
async fn captured_client_requests_decode_and_are_answered() {
    let (Some(discover), Some(policies), Some(get)) = (
        capture("fleetdm-fleet__poc-dump__02-discover-request.xml"),
        capture("fleetdm-fleet__poc-dump__04-getpolicies-request.xml"),
        capture("fleetdm-fleet__poc-dump__01-discovery-get.http"),
    ) else {
        return;
    };
    // Decoded through the protocol crate, as the real Windows 10 21H1 client sent them.
    let d = DiscoverRequest::decode(&discover).expect("the real Discover decodes");
    assert_eq!(d.email_address.as_deref(), Some("demo@fleetdm.ngrok.io"));
    assert_eq!((d.request_version.major, d.request_version.minor), (4, 0));
    assert_eq!(d.auth_policies.iter().map(|p| p.as_str()).collect::<Vec<_>>(), ["OnPremise", "Federated"]);
    let p = GetPoliciesRequest::decode(&policies).expect("the real GetPolicies decodes");
    let token = p.security.as_ref().and_then(|s| s.username_token.clone()).expect("a UsernameToken");
    assert_eq!((token.username.as_str(), token.password.as_str()), ("demio", "demo"));

    // Replayed against a gateway whose enrollment secret is the capture's password.
    let dir = tempfile::tempdir().expect("tmp");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "demo\n").expect("write");
    let h = start(|c| c.windows.enroll_secret_file = Some(secret_file.clone())).await;
    let dev = device(&h, "REPLAY");
    let get = String::from_utf8(get).expect("utf-8");
    let first = get.lines().next().expect("request line");
    assert_eq!(first, "GET /EnrollmentServer/Discovery.svc HTTP/1.1");
    let user_agent = get.lines().find_map(|l| l.strip_prefix("User-Agent: ")).expect("user agent");
    let host = get.lines().find_map(|l| l.strip_prefix("Host: ")).expect("host");
    let resp = h
        .device_client(None)
        .get(url(&h, "/EnrollmentServer/Discovery.svc"))
        .header("Host", host)
        .header("User-Agent", user_agent)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);

    let before = h.snapshot(&[]).await;
    let reply = dev.post(&url(&h, "/EnrollmentServer/Discovery.svc"), discover).await.expect("discover");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let r = DiscoverResponse::decode(&reply.body).expect("our answer");
    assert_eq!(r.enrollment_service_url, url(&h, "/EnrollmentServer/Enrollment.svc"));
    assert!(
        String::from_utf8_lossy(&reply.body)
            .contains("<a:RelatesTo>urn:uuid:748132ec-a575-4329-b01b-6171a9cf8478</a:RelatesTo>")
    );
    let reply = dev.post(&url(&h, "/EnrollmentServer/Policy.svc"), policies.clone()).await.expect("policies");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let policy = mdm_windows::enroll::GetPoliciesResponse::decode(&reply.body).expect("a policy");
    assert_eq!(policy.minimal_key_length, 2048);
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;

    // With another secret, the same capture is an Authentication fault.
    let h = start(|_| {}).await;
    refused(&h, "/EnrollmentServer/Policy.svc", policies, 500, generic(Subcode::AUTHENTICATION)).await;
    h.stop().await;
}

#[test]
fn captured_server_answers_are_understood_by_the_emulator() {
    let (Some(discover), Some(rstr), Some(doc)) = (
        capture("fleetdm-fleet__poc-dump__03-discover-response.xml"),
        capture("fleetdm-fleet__poc-dump__07-rstr-response.xml"),
        capture("fleetdm-fleet__poc-dump__07b-rstr-provisioningdoc-decoded.xml"),
    ) else {
        return;
    };
    let discovered = Discovery::new(
        DiscoverRequest::decode(&Discovery::new(dummy_discover()).request("m", "https://x/")).expect("request"),
    )
    .on_response(&discover)
    .expect("the emulator reads a real DiscoverResponse");
    assert_eq!(discovered.response.auth_policy.as_str(), "OnPremise");
    assert_eq!(
        discovered.response.enrollment_service_url,
        "https://windows.fleetdm.ngrok.io/EnrollmentServer/Enrollment.svc"
    );

    // The RSTR's token is the provisioning document, byte for byte the decoded capture.
    let from_rstr = Enrolled::from_reply(&rstr).expect("the emulator reads a real RSTR");
    let enrolled = Enrolled::from_doc(doc).expect("the emulator reads the real provisioning document");
    assert_eq!(from_rstr.identity, enrolled.identity);
    let id = &enrolled.identity;
    assert_eq!(id.management_url, "https://windows.fleetdm.ngrok.io/ManagementServer/MDM.svc");
    assert_eq!(id.provider_id, "DEMO MDM");
    assert_eq!(id.store, "User");
    assert_eq!(id.poll.and_then(|p| p.number_of_first_retries), Some(8));
    // The document names certificates by SHA-1 thumbprint: check the capture does.
    let client = openssl::x509::X509::from_der(&id.client.der).expect("client certificate");
    assert_eq!(id.client.thumbprint, wstep::thumbprint_sha1(&client));
    let root = openssl::x509::X509::from_der(&id.roots[0].der).expect("root");
    assert_eq!(id.roots[0].thumbprint, wstep::thumbprint_sha1(&root));
    // The client certificate's CN is the DevId the device later uses in SyncML.
    let cn = client.subject_name().entries().next().expect("cn").data().to_string().expect("utf-8");
    assert_eq!(cn, "B5B954E81FBCB94EB79BD08BE625F4EE");
}

fn dummy_discover() -> DiscoverRequest {
    DiscoverRequest {
        message_id: None,
        email_address: Some("demo@fleetdm.ngrok.io".into()),
        request_version: mdm_windows::enroll::RequestVersion::parse("4.0").expect("v"),
        device_type: None,
        application_version: None,
        os_edition: None,
        os_version: None,
        auth_policies: Vec::new(),
    }
}

#[tokio::test]
async fn unusable_federated_keys_stop_the_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys.json");
    std::fs::write(&keys, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).expect("write");
    let mut c = mdm_tests::config_on(dir.path().join("data"));
    c.windows.auth_policy = WindowsAuthPolicy::Federated;
    c.windows.federated.authentication_url = Some("https://sts.example.com/enroll".into());
    c.windows.federated.issuer = Some("https://sts.example.com".into());
    c.windows.federated.audiences = vec!["urn:mdm-gateway".into()];
    c.windows.federated.keys = vec![keys];
    let e = mdm_gateway::Gateway::start(c).await.expect_err("refused");
    assert_eq!(e.exit_code(), 64);
    assert!(e.to_string().contains("windows.federated.keys"), "{e}");
}
