//! Malformed and misdirected input on both listeners: the device listener (plists, content types,
//! sizes, methods, paths) and the backend API (credentials, command requests). Every refusal
//! is checked against the store: nothing may change.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use mdm_tests::{DeviceReply, Harness};
use plist::Dictionary;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHECKIN: &str = "application/x-apple-aspen-mdm-checkin";
const REPORT: &str = "application/x-apple-aspen-mdm";

/// Runs `send`, checks the status, that the body names `reason` and that nothing was stored.
async fn assert_refused<F>(h: &Harness, status: u16, reason: &str, send: F) -> DeviceReply
where
    F: std::future::Future<Output = DeviceReply>,
{
    let before = h.snapshot(&[]).await;
    let reply = send.await;
    assert_eq!(reply.status, status, "expected {status} {reason}, got {}: {}", reply.status, reply.body);
    assert!(reply.body.contains(reason), "body should name {reason}: {}", reply.body);
    assert_eq!(h.snapshot(&[]).await, before, "refused request ({reason}) changed the store");
    reply
}

/// `body` signed by `device`, PUT with `content_type` to `path`.
async fn signed(
    h: &Harness,
    device: &mdm_conformance::apple::AppleDevice,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> DeviceReply {
    let sig = device.sign(&body).expect("sign");
    h.device_put(&h.device_client(None), path, content_type, &[("Mdm-Signature", sig)], body).await
}

fn plist_xml(v: plist::Value) -> Vec<u8> {
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &v).expect("plist");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_checkin_bodies_are_refused() {
    let h = Harness::start().await;
    let device = h.device("BADPLIST-0001");
    device.enroll().await.expect("enroll");

    // Not a plist at all, and a truncated one (signed correctly: the bytes are the device's).
    assert_refused(&h, 400, "not_plist", signed(&h, &device, "/mdm", Some(CHECKIN), b"this is not a plist".to_vec()))
        .await;
    let mut truncated = device.token_update_message(None);
    truncated.truncate(truncated.len() / 2);
    assert_refused(&h, 400, "not_plist", signed(&h, &device, "/mdm", Some(CHECKIN), truncated)).await;
    assert_refused(&h, 400, "not_plist", signed(&h, &device, "/mdm", Some(CHECKIN), Vec::new())).await;

    // A plist whose top level is not a dictionary.
    let array = plist_xml(plist::Value::Array(vec!["MessageType".into(), "TokenUpdate".into()]));
    assert_refused(&h, 400, "not_dictionary", signed(&h, &device, "/mdm", Some(CHECKIN), array)).await;
    let string = plist_xml(plist::Value::String("TokenUpdate".into()));
    assert_refused(&h, 400, "not_dictionary", signed(&h, &device, "/mdm", Some(CHECKIN), string)).await;

    // No MessageType.
    let mut d = Dictionary::new();
    d.insert("UDID".into(), device.udid.clone().into());
    d.insert("Topic".into(), device.topic.clone().into());
    assert_refused(&h, 400, "missing_message_type", signed(&h, &device, "/mdm", Some(CHECKIN), plist_xml(d.into())))
        .await;

    // Neither UDID nor EnrollmentID.
    let mut d = Dictionary::new();
    d.insert("MessageType".into(), "TokenUpdate".into());
    d.insert("Topic".into(), device.topic.clone().into());
    d.insert("Token".into(), plist::Value::Data(device.push_token.clone()));
    d.insert("PushMagic".into(), device.push_magic.clone().into());
    let r = assert_refused(&h, 400, "", signed(&h, &device, "/mdm", Some(CHECKIN), plist_xml(d.into()))).await;
    assert!(r.body.contains("no_device_identifier") || r.body.contains("missing_field"), "{}", r.body);

    // Unknown MessageType, from an enrolled device with its bound certificate.
    let unknown = device.checkin_message("FancyNewMessage", None, Dictionary::new());
    assert_refused(&h, 400, "unsupported_message_type", signed(&h, &device, "/mdm", Some(CHECKIN), unknown.clone()))
        .await;
    assert_refused(&h, 400, "unsupported_message_type", signed(&h, &device, "/checkin", Some(CHECKIN), unknown)).await;

    // The device still works afterwards.
    assert!(device.session(|_| "Acknowledged").await.expect("session").is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reports_are_refused() {
    let h = Harness::start().await;
    let device = h.device("BADREPORT-0001");
    device.enroll().await.expect("enroll");
    assert_refused(&h, 400, "not_plist", signed(&h, &device, "/mdm", Some(REPORT), b"<plist><dict><key>UDID".to_vec()))
        .await;
    assert_refused(
        &h,
        400,
        "not_dictionary",
        signed(&h, &device, "/mdm", Some(REPORT), plist_xml(plist::Value::Integer(7.into()))),
    )
    .await;
    let mut d = Dictionary::new();
    d.insert("UDID".into(), device.udid.clone().into());
    assert_refused(&h, 400, "missing_status", signed(&h, &device, "/mdm", Some(REPORT), plist_xml(d.into()))).await;
    let mut d = Dictionary::new();
    d.insert("Status".into(), "Idle".into());
    let r = assert_refused(&h, 400, "", signed(&h, &device, "/mdm", Some(REPORT), plist_xml(d.into()))).await;
    assert!(r.body.contains("no_device_identifier") || r.body.contains("missing_field"), "{}", r.body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_from_device_that_never_authenticated() {
    let h = Harness::start().await;
    let device = h.device("NEVERAUTH-0001");
    let idle = device.report_message("Idle", None, None, Dictionary::new());
    assert_refused(&h, 400, "not_enrolled", signed(&h, &device, "/mdm", Some(REPORT), idle)).await;
    let ack =
        device.report_message("Acknowledged", Some("0190f0a0-0000-7000-8000-000000000001"), None, Dictionary::new());
    assert_refused(&h, 400, "not_enrolled", signed(&h, &device, "/mdm", Some(REPORT), ack)).await;
    // Nor can it skip Authenticate with a TokenUpdate.
    assert_refused(
        &h,
        400,
        "not_enrolled",
        signed(&h, &device, "/mdm", Some(CHECKIN), device.token_update_message(None)),
    )
    .await;
    let (code, _) = h.get("/v1/devices/apple:NEVERAUTH-0001").await;
    assert_eq!(code, 404);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_types_are_415() {
    let h = Harness::start().await;
    let device = h.device("CTYPE-0001");
    let auth = device.authenticate_message();
    assert_refused(&h, 415, "wrong_content_type", signed(&h, &device, "/mdm", Some("text/plain"), auth.clone())).await;
    assert_refused(&h, 415, "wrong_content_type", signed(&h, &device, "/mdm", Some("application/xml"), auth.clone()))
        .await;
    assert_refused(&h, 415, "wrong_content_type", signed(&h, &device, "/mdm", None, auth.clone())).await;
    // /checkin takes check-ins only, not command reports.
    assert_refused(&h, 415, "wrong_content_type", signed(&h, &device, "/checkin", Some(REPORT), auth.clone())).await;
    let idle = device.report_message("Idle", None, None, Dictionary::new());
    assert_refused(&h, 415, "wrong_content_type", signed(&h, &device, "/checkin", Some(REPORT), idle)).await;
    // Parameters and case do not matter for the media type.
    let r = signed(&h, &device, "/checkin", Some("Application/X-Apple-Aspen-MDM-Checkin; charset=utf-8"), auth).await;
    assert_eq!(r.status, 200, "{}", r.body);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_paths() {
    let h = Harness::start().await;
    let client = h.device_client(None);
    let before = h.snapshot(&[]).await;
    for path in ["/mdm", "/checkin"] {
        let r = client.get(format!("{}{path}", h.device_url)).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 405, "GET {path}");
        assert_eq!(r.headers().get("allow").and_then(|v| v.to_str().ok()), Some("PUT"));
        let r = client
            .post(format!("{}{path}", h.device_url))
            .header("Content-Type", CHECKIN)
            .body("x")
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 405, "POST {path}");
    }
    for path in ["/", "/nope", "/mdm/extra", "/v1/devices"] {
        let r = client
            .put(format!("{}{path}", h.device_url))
            .header("Content-Type", CHECKIN)
            .body("x")
            .send()
            .await
            .expect("put");
        assert_eq!(r.status().as_u16(), 404, "PUT {path}");
    }
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413() {
    let h = Harness::start_with(|c| c.device.max_body_bytes = 4096).await;
    let device = h.device("BIG-0001");
    // A real (signed) Authenticate padded to 64 KiB.
    let mut extra = Dictionary::new();
    extra.insert("Padding".into(), "x".repeat(64 * 1024).into());
    let mut big = device.checkin_message("Authenticate", None, extra);
    assert!(big.len() > 64 * 1024);
    assert_refused(&h, 413, "body_too_large", signed(&h, &device, "/mdm", Some(CHECKIN), big.clone())).await;
    big.truncate(4096 + 1);
    assert_refused(&h, 413, "body_too_large", signed(&h, &device, "/mdm", Some(CHECKIN), big)).await;
    // Under the limit is fine.
    let r = signed(&h, &device, "/mdm", Some(CHECKIN), device.authenticate_message()).await;
    assert_eq!(r.status, 200, "{}", r.body);
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

/// Reads until the status line and headers are complete (or the peer closes).
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_content_length_is_refused_without_reading_the_body() {
    let h = Harness::start_with(|c| c.device.max_body_bytes = 4096).await;
    let before = h.snapshot(&[]).await;
    let mut tls = raw_tls(&h).await;
    let head = format!(
        "PUT /mdm HTTP/1.1\r\nHost: localhost\r\nContent-Type: {CHECKIN}\r\nContent-Length: {}\r\n\r\n",
        1u64 << 30
    );
    tls.write_all(head.as_bytes()).await.expect("write head");
    tls.write_all(&[b'x'; 1024]).await.expect("write some body");
    tls.flush().await.expect("flush");
    // The body never comes; the answer must anyway.
    let answer = tokio::time::timeout(Duration::from_secs(3), read_head(&mut tls))
        .await
        .expect("413 within 3 s, without the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_chunked_body_is_cut_off_at_the_limit() {
    let h = Harness::start_with(|c| c.device.max_body_bytes = 4096).await;
    let before = h.snapshot(&[]).await;
    let mut tls = raw_tls(&h).await;
    let head = format!(
        "PUT /mdm HTTP/1.1\r\nHost: localhost\r\nContent-Type: {CHECKIN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.expect("write head");
    // 8 KiB in 1 KiB chunks, then silence (no terminating chunk).
    for _ in 0..8 {
        tls.write_all(b"400\r\n").await.expect("chunk size");
        tls.write_all(&[b'x'; 1024]).await.expect("chunk");
        tls.write_all(b"\r\n").await.expect("chunk end");
    }
    tls.flush().await.expect("flush");
    let answer = tokio::time::timeout(Duration::from_secs(3), read_head(&mut tls)).await.expect("413 within 3 s");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(h.snapshot(&[]).await, before);
    h.stop().await;
}

// ---- Backend API ----

async fn raw_api(h: &Harness, req: reqwest::RequestBuilder) -> (u16, http::HeaderMap, Value) {
    let _ = h;
    let resp = req.send().await.expect("api");
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    (code, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_authentication() {
    let h = Harness::start().await;
    let api = h.raw_api();
    let url = format!("{}/v1/devices", h.api_url);

    let (code, headers, body) = raw_api(&h, api.get(&url)).await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let challenge = headers.get("www-authenticate").and_then(|v| v.to_str().ok()).expect("WWW-Authenticate");
    assert!(challenge.contains("Bearer") && challenge.contains("Basic"), "{challenge}");

    let (code, headers, body) = raw_api(&h, api.get(&url).bearer_auth("not-the-key")).await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(headers.contains_key("www-authenticate"));
    // A prefix of the right key is still wrong.
    let (code, _, _) = raw_api(&h, api.get(&url).bearer_auth(&h.api_key[..h.api_key.len() - 1])).await;
    assert_eq!(code, 401);

    let (code, _, body) = raw_api(&h, api.get(&url).header("Authorization", basic("nanomdm", &h.api_key))).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["devices"].is_array());
    let (code, _, body) = raw_api(&h, api.get(&url).header("Authorization", basic("admin", &h.api_key))).await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (code, _, _) = raw_api(&h, api.get(&url).header("Authorization", basic("nanomdm", "wrong"))).await;
    assert_eq!(code, 401);
    let (code, _, _) = raw_api(&h, api.get(&url).bearer_auth(&h.api_key)).await;
    assert_eq!(code, 200);

    // A command POST without credentials is refused before anything is queued.
    let device = h.device("AUTH-0001");
    device.enroll().await.expect("enroll");
    let before = h.snapshot(&[]).await;
    let (code, _, body) = raw_api(
        &h,
        api.post(format!("{}/v1/commands", h.api_url))
            .json(&json!({"device_id": "apple:AUTH-0001", "command": {"type": "restart"}})),
    )
    .await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(h.snapshot(&[]).await, before);
    assert!(h.events_of("apple:AUTH-0001", "command.queued").await.is_empty());
    // Operational endpoints need no key.
    let (code, _, _) = raw_api(&h, api.get(format!("{}/healthz", h.api_url))).await;
    assert_eq!(code, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_command_requests_queue_nothing() {
    let h = Harness::start().await;
    let udid = "CMDBAD-0001";
    let device = h.device(udid);
    device.enroll().await.expect("enroll");
    let dev = format!("apple:{udid}");

    async fn refused(
        h: &Harness,
        status: u16,
        code: &str,
        send: impl std::future::Future<Output = (u16, Value)>,
    ) -> Value {
        let before = h.snapshot(&[]).await;
        let (got, body) = send.await;
        assert_eq!(got, status, "expected {status} {code}: {body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(h.snapshot(&[]).await, before, "refused command ({code}) changed the store");
        body
    }

    // Not JSON.
    let post_raw = |body: &'static str| {
        let req = h
            .auth(h.raw_api().post(format!("{}/v1/commands", h.api_url)))
            .header("Content-Type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.expect("post");
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    refused(&h, 400, "invalid_json", post_raw("{\"device_id\": ")).await;
    refused(&h, 400, "invalid_json", post_raw("")).await;
    // Unknown command type, unknown field in a command.
    refused(
        &h,
        422,
        "invalid_command",
        h.post("/v1/commands", &json!({"device_id": dev, "command": {"type": "self_destruct"}})),
    )
    .await;
    refused(
        &h,
        422,
        "invalid_command",
        h.post("/v1/commands", &json!({"device_id": dev, "command": {"type": "restart", "now": true}})),
    )
    .await;
    // Unknown device.
    refused(
        &h,
        404,
        "device_not_found",
        h.post("/v1/commands", &json!({"device_id": "apple:NO-SUCH-DEVICE", "command": {"type": "restart"}})),
    )
    .await;
    // A raw payload for another platform.
    refused(
        &h,
        422,
        "invalid_command",
        h.post(
            "/v1/commands",
            &json!({"device_id": dev, "command": {"type": "raw", "platform": "android", "payload": {"type": "LOCK"}}}),
        ),
    )
    .await;
    // An unknown placeholder in app configuration.
    refused(
        &h,
        422,
        "invalid_command",
        h.post(
            "/v1/commands",
            &json!({"device_id": dev, "command": {"type": "app_config", "app": "com.example.app", "config": {"u": "{{Nope}}"}}}),
        ),
    )
    .await;
    // Lock PIN must be six digits on Apple.
    let body = refused(
        &h,
        422,
        "invalid_command",
        h.post("/v1/commands", &json!({"device_id": dev, "command": {"type": "lock", "pin": "1234"}})),
    )
    .await;
    assert!(body["error"]["message"].as_str().expect("message").contains("pin"), "{body}");
    // Already expired.
    refused(
        &h,
        422,
        "invalid_expires_at",
        h.post(
            "/v1/commands",
            &json!({"device_id": dev, "command": {"type": "restart"}, "expires_at": "2001-01-01T00:00:00Z"}),
        ),
    )
    .await;
    refused(
        &h,
        422,
        "invalid_expires_at",
        h.post("/v1/commands", &json!({"device_id": dev, "command": {"type": "restart"}, "expires_at": "tomorrow"})),
    )
    .await;

    assert!(h.events_of(&dev, "command.queued").await.is_empty());
    // Nothing for the device to fetch.
    assert!(device.session(|_| "Acknowledged").await.expect("session").is_empty());
    // The same device accepts a valid command: the refusals were about the requests.
    let (code, body) =
        h.post("/v1/commands", &json!({"device_id": dev, "command": {"type": "lock", "pin": "123456"}})).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(h.events_of(&dev, "command.queued").await.len(), 1);
    h.stop().await;
}
