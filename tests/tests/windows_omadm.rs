//! Windows management end to end: emulated Windows devices speak OMA-DM SyncML over mutual TLS
//! to `/ManagementServer/MDM.svc`; commands go in through `POST /v1/commands`; results come out
//! as stored command results and events. Refusals are checked against the store: nothing may
//! change. The public SyncML captures are replayed through `mdm_windows::syncml`.

use std::sync::Arc;
use std::time::Duration;

use mdm_certs::devpki;
use mdm_conformance::windows::{DmIdentity, WindowsDevice};
use mdm_tests::{Harness, random_serial, unix_now, vectors_dir};
use mdm_windows::syncml::{self, Command, StatusCode, SyncMl};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SYNCML: &str = "application/vnd.syncml.dm+xml";

async fn enqueue(h: &Harness, device: &WindowsDevice, command: Value) -> String {
    let (code, body) = h.post("/v1/commands", &json!({ "device_id": device.gateway_id(), "command": command })).await;
    assert_eq!(code, 202, "{body}");
    body["command_id"].as_str().expect("command_id").to_owned()
}

async fn command(h: &Harness, id: &str) -> Value {
    let (code, body) = h.get(&format!("/v1/commands/{id}")).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// A reply from the management endpoint, body as text.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn post(client: &reqwest::Client, h: &Harness, content_type: &str, body: Vec<u8>) -> Answer {
    let r =
        client.post(h.management_url()).header("Content-Type", content_type).body(body).send().await.expect("request");
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    Answer { status, content_type, body: r.text().await.expect("body") }
}

/// Sends, then checks the status, that the answer names `reason`, and that nothing was stored.
async fn refused(h: &Harness, status: u16, reason: &str, send: impl std::future::Future<Output = Answer>) -> Answer {
    let before = h.snapshot(&[]).await;
    let a = send.await;
    assert_eq!(a.status, status, "expected {status} {reason}: {a:?}");
    assert!(a.body.contains(reason), "answer should name {reason}: {a:?}");
    assert_eq!(h.snapshot(&[]).await, before, "refused request ({reason}) changed the store");
    a
}

fn client_for(h: &Harness, identity: &DmIdentity) -> reqwest::Client {
    h.device_client(Some((&identity.key, &identity.cert)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_start_with_1201_and_devinfo() {
    let h = Harness::start().await;
    let device = h.windows_device("B5B954E81FBCB94EB79BD08BE625F4EE").await;
    let report = device.session().await.expect("session");
    assert_eq!(report.messages, 1, "nothing queued: one message, answered with statuses only");
    // The gateway answered Alert 1201, Alert 1224 and the DevInfo Replace with 200.
    assert_eq!(report.server_statuses, vec![("Alert".into(), 200), ("Alert".into(), 200), ("Replace".into(), 200)]);

    let id = device.gateway_id();
    let checked = h.events_of(&id, "device.checked_in").await;
    assert_eq!(checked.len(), 1);
    assert_eq!(checked[0]["data"]["alert"], 1201);
    assert_eq!(checked[0]["data"]["login_status"], "user");
    assert_eq!(checked[0]["raw"]["content_type"], SYNCML);
    let inventory = h.events_of(&id, "device.inventory").await;
    assert_eq!(inventory.len(), 1);
    assert_eq!(inventory[0]["data"]["udid"], "B5B954E81FBCB94EB79BD08BE625F4EE");
    assert_eq!(inventory[0]["data"]["model"], "Emulated PC 1");

    let (code, dev) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(code, 200, "{dev}");
    assert_eq!(dev["platform"], "windows");
    assert_eq!(dev["inventory"]["model"], "Emulated PC 1");
    assert!(dev["last_seen"].is_string(), "{dev}");

    // The session is stored, ended (the reply carried no command).
    let sessions = h.gateway().state.store.omadm_sessions(10).await.expect("sessions");
    assert_eq!(sessions.len(), 1);
    let state: syncml::Session = serde_json::from_str(&sessions[0].state).expect("state");
    assert!(state.is_ended());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_command_is_delivered_in_the_next_session_and_its_results_become_events() {
    let h = Harness::start().await;
    let device = h.windows_device("DEVINFO-0001").await;
    device.session().await.expect("first session");
    let cid = enqueue(&h, &device, json!({"type": "device_info"})).await;
    assert_eq!(command(&h, &cid).await["status"], "queued");

    let report = device.session().await.expect("session");
    assert_eq!(report.messages, 2, "package 1, then the statuses and results");
    let gets = report.handled.iter().filter(|c| c.cmd == "Get" && c.code == 200).count();
    assert_eq!(gets, mdm_windows::syncml::translate::DEFAULT_DEVICE_INFO_NODES.len());

    let c = command(&h, &cid).await;
    assert_eq!(c["status"], "acknowledged", "{c}");
    assert_eq!(c["sent_count"], 1);
    let results = c["result"]["results"].as_array().expect("results");
    let swv = results.iter().find(|r| r["uri"] == "./DevDetail/SwV").expect("SwV");
    assert_eq!(swv["data"], "10.0.22631.4460");
    assert!(c["result"]["statuses"].as_array().expect("statuses").iter().all(|s| s["code"] == 200));

    let id = device.gateway_id();
    let events = h.events().await;
    let mine: Vec<&Value> = events.iter().filter(|e| e["command_id"] == cid.as_str()).collect();
    assert_eq!(
        mine.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
        ["command.queued", "command.sent", "command.acknowledged"]
    );
    let ack = mine[2];
    assert_eq!(ack["data"]["request_type"], "Get");
    assert_eq!(ack["raw"]["content_type"], SYNCML);
    let inv = h.events_of(&id, "device.inventory").await;
    let last = inv.last().expect("inventory event");
    assert_eq!(last["data"]["os_version"], "10.0.22631.4460");
    assert_eq!(last["data"]["os_name"], "Windows 11 Enterprise");
    assert_eq!(last["data"]["storage_capacity_bytes"], 256_000u64 * 1024 * 1024);
    let (_, dev) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(dev["inventory"]["serial_number"], device.node("./DevDetail/Ext/Microsoft/SMBIOSSerialNumber").unwrap());

    // Delivered once: the next session has nothing to do.
    let again = device.session().await.expect("third session");
    assert_eq!(again.messages, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_restart_wipe() {
    let h = Harness::start().await;
    let device = h.windows_device("ACTIONS-0001").await;
    let lock = enqueue(&h, &device, json!({"type": "lock"})).await;
    let restart = enqueue(&h, &device, json!({"type": "restart"})).await;
    let wipe = enqueue(&h, &device, json!({"type": "wipe"})).await;
    let report = device.session().await.expect("session");
    assert_eq!(
        device.executed(),
        [
            "./Device/Vendor/MSFT/RemoteLock/Lock",
            "./Device/Vendor/MSFT/Reboot/RebootNow",
            "./Device/Vendor/MSFT/RemoteWipe/doWipe"
        ]
    );
    assert_eq!(report.handled.iter().filter(|c| c.cmd == "Exec" && c.code == 200).count(), 3);
    for cid in [&lock, &restart, &wipe] {
        let c = command(&h, cid).await;
        assert_eq!(c["status"], "acknowledged", "{c}");
        assert_eq!(c["request_type"], "Exec");
        assert_eq!(c["result"]["statuses"][0]["cmd"], "Exec");
    }
    let acks = h.events_of(&device.gateway_id(), "command.acknowledged").await;
    assert_eq!(acks.len(), 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_syncml_commands_and_device_errors() {
    let h = Harness::start().await;
    let device = h.windows_device("RAW-0001").await;
    let uri = "./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera";
    let raw = format!(
        "<Replace><CmdID>1</CmdID><Item><Target><LocURI>{uri}</LocURI></Target><Meta><Format xmlns=\"syncml:metinf\">int</Format></Meta><Data>0</Data></Item></Replace>\
         <Get><CmdID>2</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>"
    );
    let ok = enqueue(&h, &device, json!({"type": "raw", "platform": "windows", "payload": raw})).await;
    let atomic = "<Atomic><CmdID>1</CmdID><Replace><CmdID>2</CmdID><Item><Target><LocURI>./Vendor/MSFT/A</LocURI></Target><Data>1</Data></Item></Replace>\
         <Exec><CmdID>3</CmdID><Item><Target><LocURI>./Vendor/MSFT/NoSuchNode</LocURI></Target></Item></Exec></Atomic>";
    let failed = enqueue(&h, &device, json!({"type": "raw", "platform": "windows", "payload": atomic})).await;
    device.session().await.expect("session");

    assert_eq!(device.node(uri).as_deref(), Some("0"));
    let c = command(&h, &ok).await;
    assert_eq!(c["status"], "acknowledged", "{c}");
    assert_eq!(c["request_type"], "Replace+Get");
    assert_eq!(c["result"]["results"][0]["uri"], uri);
    assert_eq!(c["result"]["results"][0]["data"], "0");

    // Atomic with a failing Exec: 507, the Replace rolled back (216), reported as an error.
    assert_eq!(device.node("./Vendor/MSFT/A"), None);
    let c = command(&h, &failed).await;
    assert_eq!(c["status"], "error", "{c}");
    let codes: Vec<(String, i64)> = c["error"]["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| (s["cmd"].as_str().unwrap_or_default().to_owned(), s["code"].as_i64().unwrap_or_default()))
        .collect();
    assert_eq!(codes, [("Atomic".to_owned(), 507), ("Replace".to_owned(), 216), ("Exec".to_owned(), 404)]);
    let errors = h.events_of(&device.gateway_id(), "command.error").await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["command_id"], failed.as_str());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_and_invalid_commands_are_422_and_queue_nothing() {
    let h = Harness::start().await;
    let device = h.windows_device("REFUSE-0001").await;
    let before = h.snapshot(&[]).await;
    for (command, code) in [
        (json!({"type": "clear_passcode"}), "unsupported_on_platform"),
        (json!({"type": "set_settings", "settings": {}}), "invalid_command"),
        (json!({"type": "install_app", "app": "9WZDNCRFJ3Q2"}), "invalid_command"),
        (json!({"type": "app_config", "app": "x", "config": {}}), "unsupported_on_platform"),
        (json!({"type": "lock", "pin": "123456"}), "invalid_command"),
        (json!({"type": "wipe", "preserve_data_plan": true}), "invalid_command"),
        (json!({"type": "device_info", "fields": ["not a uri"]}), "invalid_command"),
        (json!({"type": "raw", "platform": "windows", "payload": "<Get><CmdID>1</CmdID>"}), "invalid_command"),
        (json!({"type": "raw", "platform": "windows", "payload": {"Get": "x"}}), "invalid_command"),
        (json!({"type": "raw", "platform": "apple", "payload": "<Get/>"}), "invalid_command"),
    ] {
        let (status, body) =
            h.post("/v1/commands", &json!({ "device_id": device.gateway_id(), "command": command })).await;
        assert_eq!(status, 422, "{command}: {body}");
        assert_eq!(body["error"]["code"], code, "{command}: {body}");
    }
    assert_eq!(h.snapshot(&[]).await, before);
    let (status, _) =
        h.post("/v1/commands", &json!({ "device_id": "windows:NOBODY", "command": {"type": "lock"} })).await;
    assert_eq!(status, 404);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_in_both_directions_with_a_small_max_msg_size() {
    let h = Harness::start_with(|c| c.omadm.max_msg_size = 2048).await;
    let mut device = h.windows_device("CHUNKS-0001").await;
    device.max_msg_size = 1536;

    // Server → device: a Replace whose data is four times the device's MaxMsgSize.
    let big: String = (0..6000).map(|i| char::from(b'A' + (i % 26) as u8)).collect::<String>() + " <&> end";
    let escaped = big.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let raw = format!(
        "<Replace><CmdID>1</CmdID><Item><Target><LocURI>./Vendor/MSFT/Big/In</LocURI></Target><Data>{escaped}</Data></Item></Replace>"
    );
    let down = enqueue(&h, &device, json!({"type": "raw", "platform": "windows", "payload": raw})).await;
    let report = device.session().await.expect("session");
    assert!(report.chunks_received >= 4, "{report:?}");
    assert!(report.largest_reply <= 1536, "a reply of {} bytes exceeds the device's MaxMsgSize", report.largest_reply);
    assert_eq!(device.node("./Vendor/MSFT/Big/In").as_deref(), Some(big.as_str()));
    assert_eq!(command(&h, &down).await["status"], "acknowledged");

    // Device → server: a Get of a value larger than the gateway's MaxMsgSize comes in chunks.
    let value: String = (0..9000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    device.set_node("./Vendor/MSFT/Big/Out", value.clone());
    let up = enqueue(&h, &device, json!({"type": "device_info", "fields": ["./Vendor/MSFT/Big/Out"]})).await;
    let report = device.session().await.expect("session");
    assert!(report.chunks_sent >= 4, "{report:?}");
    assert!(report.server_statuses.iter().any(|(cmd, code)| cmd == "Results" && *code == 213), "{report:?}");
    let c = command(&h, &up).await;
    assert_eq!(c["status"], "acknowledged", "{c}");
    assert_eq!(c["result"]["results"][0]["data"].as_str().map(str::len), Some(value.len()));
    assert_eq!(c["result"]["results"][0]["data"], value);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unenrollment_1226_unenrolls_the_device() {
    let h = Harness::start().await;
    let device = h.windows_device("UNENROLL-0001").await;
    let pending = enqueue(&h, &device, json!({"type": "lock"})).await;
    let reply = device.unenroll().await.expect("unenroll");
    let statuses: Vec<(String, u16)> = reply
        .body
        .commands
        .iter()
        .map(|c| match c {
            Command::Status(s) => (s.cmd.clone(), s.code.0),
            other => panic!("only statuses expected, got {other:?}"),
        })
        .collect();
    assert_eq!(statuses, [("SyncHdr".into(), 200), ("Alert".into(), 200)]);
    assert!(device.executed().is_empty(), "nothing is sent to an unenrolling device");

    let id = device.gateway_id();
    let unenrolled = h.events_of(&id, "device.unenrolled").await;
    assert_eq!(unenrolled.len(), 1);
    assert_eq!(unenrolled[0]["data"]["reason"], "user_request");
    let (_, dev) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(dev["enrollment"]["state"], "unenrolled");
    assert_eq!(command(&h, &pending).await["status"], "queued");

    // The certificate no longer opens a session.
    let err = device.session().await.expect_err("refused");
    assert!(err.to_string().contains("403") && err.to_string().contains("not_enrolled"), "{err}");
    h.stop().await;
}

fn foreign_identity(device_id: &str) -> DmIdentity {
    let now = unix_now();
    let ca_key = devpki::generate_key().expect("key");
    let ca = devpki::create_ca(&ca_key, "Some Other CA", now, 30, &random_serial()).expect("ca");
    let key = devpki::generate_key().expect("key");
    let cert =
        devpki::issue_device_certificate(&ca, &ca_key, &key, device_id, now - 3600, now + 86_400, &random_serial())
            .expect("cert");
    DmIdentity { device_id: device_id.to_owned(), key, cert }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_certificates_are_refused() {
    let h = Harness::start().await;
    let a = h.windows_device("DEVICE-A").await;
    let b = h.windows_device("DEVICE-B").await;
    let body = a.package1("1").encode();

    // No client certificate.
    refused(&h, 403, "no_identity", post(&h.device_client(None), &h, SYNCML, body.clone())).await;
    // A certificate from another CA.
    let foreign = foreign_identity("DEVICE-A");
    refused(&h, 403, "untrusted_issuer", post(&client_for(&h, &foreign), &h, SYNCML, body.clone())).await;
    // Our CA, but bound to no enrollment.
    let stranger = h.windows_identity("DEVICE-A");
    refused(&h, 403, "not_enrolled", post(&client_for(&h, &stranger), &h, SYNCML, body.clone())).await;
    // Device B's certificate, message claiming device A: refused, in SyncML.
    let answer =
        refused(&h, 403, "device_mismatch", post(&client_for(&h, &b.identity), &h, SYNCML, body.clone())).await;
    assert_eq!(answer.content_type, SYNCML);
    let msg = syncml::decode(answer.body.as_bytes()).expect("SyncML refusal");
    let Command::Status(s) = &msg.body.commands[0] else { panic!("{msg:?}") };
    assert_eq!((s.cmd.as_str(), s.code), ("SyncHdr", StatusCode::FORBIDDEN));
    assert_eq!(msg.hdr.target, "DEVICE-A");
    // An Apple enrollment's certificate cannot manage a Windows device either.
    let apple = h.device("APPLE-0001");
    apple.enroll().await.expect("apple enroll");
    let apple_identity =
        DmIdentity { device_id: "APPLE-0001".into(), key: apple.key.clone(), cert: apple.cert.clone() };
    refused(&h, 403, "not_a_windows_enrollment", post(&client_for(&h, &apple_identity), &h, SYNCML, body.clone()))
        .await;
    // A and B themselves are fine.
    a.session().await.expect("A");
    b.session().await.expect("B");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_answer_and_nothing_stored() {
    let h = Harness::start_with(|c| c.device.max_body_bytes = 64 * 1024).await;
    let device = h.windows_device("BADINPUT-0001").await;
    let client = client_for(&h, &device.identity);
    let good = String::from_utf8(device.package1("7").encode()).expect("utf-8");

    refused(&h, 400, "malformed_xml", post(&client, &h, SYNCML, b"<SyncML><SyncHdr>".to_vec())).await;
    refused(&h, 400, "malformed_xml", post(&client, &h, SYNCML, Vec::new())).await;
    refused(&h, 400, "not_syncml", post(&client, &h, SYNCML, b"<html><body/></html>".to_vec())).await;
    refused(&h, 400, "not_utf8", post(&client, &h, SYNCML, b"<SyncML>\xff\xfe</SyncML>".to_vec())).await;
    // Entity declarations are refused before anything is expanded (a billion laughs).
    let bomb = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE SyncML [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]>{}",
        good.replacen("<Data>user</Data>", "<Data>&c;</Data>", 1)
    );
    refused(&h, 400, "doctype_refused", post(&client, &h, SYNCML, bomb.into_bytes())).await;
    let undefined = good.replacen("<Data>user</Data>", "<Data>&xxe;</Data>", 1);
    refused(&h, 400, "entity_refused", post(&client, &h, SYNCML, undefined.into_bytes())).await;
    let deep =
        good.replacen("<Final/>", &format!("{}{}<Final/>", "<Sequence>".repeat(1000), "</Sequence>".repeat(1000)), 1);
    refused(&h, 400, "too_deep", post(&client, &h, SYNCML, deep.into_bytes())).await;
    let no_msg_id = good.replacen("<MsgID>1</MsgID>", "<MsgID>one</MsgID>", 1);
    refused(&h, 400, "invalid_value", post(&client, &h, SYNCML, no_msg_id.into_bytes())).await;
    // Too large: refused on Content-Length, before the body is read.
    let huge = good.replacen("<Data>user</Data>", &format!("<Data>{}</Data>", "x".repeat(100 * 1024)), 1);
    refused(&h, 413, "body_too_large", post(&client, &h, SYNCML, huge.into_bytes())).await;
    refused(&h, 415, "wrong_content_type", post(&client, &h, "application/xml", good.clone().into_bytes())).await;
    refused(
        &h,
        415,
        "wrong_content_type",
        post(&client, &h, "application/vnd.syncml.dm+wbxml", good.clone().into_bytes()),
    )
    .await;
    // Session rules: a session opens with MsgID 1 and Alert 1201; MsgIDs follow on.
    let late = good.replacen("<MsgID>1</MsgID>", "<MsgID>2</MsgID>", 1);
    let a = refused(&h, 400, "session_not_started", post(&client, &h, SYNCML, late.into_bytes())).await;
    assert_eq!(a.content_type, SYNCML);
    let no_alert = good.replacen("<Data>1201</Data>", "<Data>1100</Data>", 1);
    refused(&h, 400, "session_not_started", post(&client, &h, SYNCML, no_alert.into_bytes())).await;
    let before = h.snapshot(&[]).await;
    let r = client.get(h.management_url()).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(h.snapshot(&[]).await, before);

    // The device still works, and a message out of order is refused inside its session (kept
    // open by a queued command), as is anything after a session ended.
    enqueue(&h, &device, json!({"type": "lock"})).await;
    let a = post(&client, &h, SYNCML, good.clone().into_bytes()).await;
    assert_eq!(a.status, 200, "{a:?}");
    let skip = good.replacen("<MsgID>1</MsgID>", "<MsgID>3</MsgID>", 1);
    refused(&h, 400, "msg_id_out_of_order", post(&client, &h, SYNCML, skip.into_bytes())).await;
    let reused = good.replacen("<Data>user</Data>", "<Data>none</Data>", 1);
    refused(&h, 400, "msg_id_reused", post(&client, &h, SYNCML, reused.into_bytes())).await;
    let report = device.session().await.expect("a new session");
    let next = format!("<MsgID>{}</MsgID>", report.messages + 1);
    let ended = String::from_utf8(device.package1(&report.session_id).encode()).expect("utf-8").replacen(
        "<MsgID>1</MsgID>",
        &next,
        1,
    );
    refused(&h, 400, "session_ended", post(&client, &h, SYNCML, ended.into_bytes())).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_gets_the_same_reply_and_is_not_applied_twice() {
    let h = Harness::start().await;
    let device = h.windows_device("REPEAT-0001").await;
    enqueue(&h, &device, json!({"type": "restart"})).await;
    let body = device.package1("5").encode();
    let first = device.post(body.clone()).await.expect("first");
    assert_eq!(first.status, 200);
    let before = h.snapshot(&[]).await;
    let again = device.post(body).await.expect("again");
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "the stored reply is replayed");
    assert_eq!(h.snapshot(&[]).await, before, "a replay stores nothing");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_schedule_runs_sessions() {
    let h = Harness::start().await;
    let device = h.windows_device("POLL-0001").await;
    let cid = enqueue(&h, &device, json!({"type": "device_info", "fields": ["./DevDetail/SwV"]})).await;
    let reports = device.poll(3, Duration::from_millis(50)).await.expect("poll");
    assert_eq!(reports.iter().map(|r| r.messages).collect::<Vec<_>>(), [2, 1, 1]);
    assert_eq!(h.events_of(&device.gateway_id(), "device.checked_in").await.len(), 3);
    assert_eq!(command(&h, &cid).await["status"], "acknowledged");
    h.stop().await;
}

/// A raw TLS connection presenting `identity`, HTTP/1.1.
async fn raw_tls(h: &Harness, identity: &DmIdentity) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(h.ca.to_der().expect("der"))).expect("root");
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(identity.key.private_key_to_pkcs8().expect("pkcs8")).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![rustls::pki_types::CertificateDer::from(identity.cert.to_der().expect("der"))], key)
        .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(h.gateway().device_addr).await.expect("connect");
    connector.connect("localhost".try_into().expect("name"), tcp).await.expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_429_with_retry_after() {
    let h = Harness::start_with(|c| {
        c.omadm.max_in_flight = 1;
        c.omadm.retry_after_s = 17;
    })
    .await;
    let device = h.windows_device("BUSY-0001").await;
    let body = device.package1("9").encode();
    // One request holds the only slot: its body arrives slowly.
    let mut slow = raw_tls(&h, &device.identity).await;
    let head = format!(
        "POST /ManagementServer/MDM.svc HTTP/1.1\r\nHost: localhost\r\nContent-Type: {SYNCML}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(&body[..10]).await.expect("some body");
    slow.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = h.snapshot(&[]).await;
    let r = client_for(&h, &device.identity)
        .post(h.management_url())
        .header("Content-Type", SYNCML)
        .body(body.clone())
        .send()
        .await
        .expect("second request");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("17"));
    assert_eq!(h.snapshot(&[]).await, before);

    // The slow request completes normally and frees the slot.
    slow.write_all(&body[10..]).await.expect("rest");
    slow.flush().await.expect("flush");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&answer).contains("</SyncML>") {
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await.expect("answer").expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    device.session().await.expect("slot free again");
    h.stop().await;
}

// ---- The public captures, through mdm_windows::syncml ----

fn captures() -> Option<Vec<(String, Vec<u8>)>> {
    let Some(dir) = vectors_dir() else {
        eprintln!("skipping: no vectors (set MDM_VECTORS)");
        return None;
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("windows/captures")).expect("captures dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.contains("syncml") || name.starts_with("ms-mdm-spec") || name.contains("FRAGMENT") {
            out.push((name, std::fs::read(&p).expect("read")));
        }
    }
    out.sort();
    Some(out)
}

fn capture(all: &[(String, Vec<u8>)], part: &str) -> Vec<u8> {
    all.iter().find(|(n, _)| n.contains(part)).unwrap_or_else(|| panic!("no capture {part}")).1.clone()
}

#[test]
fn captures_decode_and_round_trip() {
    let Some(all) = captures() else { return };
    assert!(all.len() >= 4, "{:?}", all.iter().map(|(n, _)| n).collect::<Vec<_>>());
    for (name, bytes) in &all {
        let doc = if name.contains("FRAGMENT") {
            // The fragment uses an undeclared `A:` prefix: embed it in a message declaring it.
            let fragment = String::from_utf8(bytes.clone()).expect("utf-8");
            format!(
                "<SyncML xmlns=\"SYNCML:SYNCML1.2\" xmlns:A=\"syncml:metinf\"><SyncHdr><VerDTD>1.2</VerDTD><VerProto>DM/1.2</VerProto><SessionID>1</SessionID><MsgID>2</MsgID><Target><LocURI>DEV</LocURI></Target><Source><LocURI>https://mdm.example/ManagementServer/MDM.svc</LocURI></Source></SyncHdr><SyncBody>{fragment}<Final/></SyncBody></SyncML>"
            )
            .into_bytes()
        } else {
            bytes.clone()
        };
        let msg = syncml::decode(&doc).unwrap_or_else(|e| panic!("{name}: {e}"));
        let again = syncml::decode(&msg.encode()).unwrap_or_else(|e| panic!("{name} re-encoded: {e}"));
        assert_eq!(again, msg, "{name}: decode(encode(m)) != m");
        assert!(msg.all_commands().iter().all(|c| !matches!(c, Command::Unknown(_))), "{name}: unknown commands");
    }

    let p1 = syncml::decode(&capture(&all, "09-syncml")).expect("package 1");
    assert_eq!((p1.hdr.session_id.as_str(), p1.hdr.msg_id), ("1", 1));
    assert_eq!(p1.hdr.source, "B5B954E81FBCB94EB79BD08BE625F4EE");
    let alerts: Vec<u16> =
        p1.body.commands.iter().filter_map(|c| if let Command::Alert(a) = c { Some(a.code.0) } else { None }).collect();
    assert_eq!(alerts, [1201, 1224]);
    assert!(p1.body.final_);

    let fragment = String::from_utf8(capture(&all, "FRAGMENT")).expect("utf-8");
    let cmds = syncml::decode_commands(&fragment.replace("A:", "")).expect("fragment");
    let Command::Atomic(atomic) = &cmds[0] else { panic!("{cmds:?}") };
    assert_eq!(atomic.commands.iter().map(Command::name).collect::<Vec<_>>(), ["Add", "Exec"]);
    let exec = atomic.commands[1].items().expect("items");
    assert_eq!(exec.items[0].meta.as_ref().and_then(|m| m.format()), Some("xml"));
    assert!(exec.items[0].data.as_deref().unwrap_or_default().starts_with("<MsiInstallJob"));

    let results = syncml::decode(&capture(&all, "ms-mdm-spec")).expect("results");
    let uris: Vec<&str> = results
        .body
        .commands
        .iter()
        .filter_map(|c| if let Command::Results(r) = c { r.items[0].uri() } else { None })
        .collect();
    assert_eq!(uris, ["./DevDetail/SwV", "./DevDetail/HwV"]);
}

/// Package 1 of the real Windows 10 capture through the session: the reply's statuses are the
/// ones the capture's server sent (SyncHdr, both alerts, the DevInfo Replace, all 200).
#[test]
fn captured_package1_through_the_session() {
    let Some(all) = captures() else { return };
    let p1 = syncml::decode(&capture(&all, "09-syncml")).expect("package 1");
    let captured: SyncMl = syncml::decode(&capture(&all, "10-syncml")).expect("server reply");
    let cfg = syncml::ServerConfig {
        server_uri: p1.hdr.target.clone(),
        max_msg_size: 512 * 1024,
        max_obj_size: 4 * 1024 * 1024,
        default_client_max_msg_size: 512 * 1024,
    };
    let step = syncml::handle(None, &p1, &[], &cfg, 0).expect("session");
    let triple = |m: &SyncMl| -> Vec<(String, String, String, u16)> {
        m.body
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Status(s) => Some((s.msg_ref.clone(), s.cmd_ref.clone(), s.cmd.clone(), s.code.0)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(triple(&step.reply), triple(&captured));
    assert_eq!(step.reply.hdr.target, captured.hdr.target);
    assert_eq!(step.reply.hdr.source, captured.hdr.source);
    assert_eq!(step.reply.body.final_, captured.body.final_);
    assert!(
        step.effects
            .iter()
            .any(|e| matches!(e, syncml::Effect::SessionStarted { login_status: Some(s), .. } if s == "user"))
    );
}

/// Behind a load balancer that ends TLS: the client certificate comes in `Client-Cert`
/// (RFC 9440), trusted only from the configured proxy addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_a_trusted_proxy_header() {
    use base64::Engine;
    let h = Harness::start_with(|c| c.device.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")]).await;
    let device = h.windows_device("PROXIED-0001").await;
    let header =
        format!(":{}:", base64::engine::general_purpose::STANDARD.encode(device.identity.cert.to_der().expect("der")));
    let proxy = h.device_client(None);
    let send = |body: Vec<u8>| {
        proxy
            .post(h.management_url())
            .header("Content-Type", SYNCML)
            .header("Client-Cert", header.clone())
            .body(body)
            .send()
    };
    let r = send(device.package1("P1").encode()).await.expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let reply = syncml::decode(&r.bytes().await.expect("body")).expect("SyncML");
    assert_eq!(reply.hdr.target, "PROXIED-0001");
    assert_eq!(h.events_of(&device.gateway_id(), "device.checked_in").await.len(), 1);
    // The header does not let one device speak for another.
    let other = h.windows_device("PROXIED-0002").await;
    let a = refused(&h, 403, "device_mismatch", async {
        let r = send(other.package1("P2").encode()).await.expect("request");
        Answer { status: r.status().as_u16(), content_type: String::new(), body: r.text().await.expect("body") }
    })
    .await;
    assert!(a.body.contains("PROXIED-0002"));
    h.stop().await;

    // From an address that is not a trusted proxy, the header is refused.
    let h = Harness::start().await;
    let device = h.windows_device("PROXIED-0003").await;
    let header =
        format!(":{}:", base64::engine::general_purpose::STANDARD.encode(device.identity.cert.to_der().expect("der")));
    refused(&h, 403, "untrusted_proxy_header", async {
        let r = h
            .device_client(None)
            .post(h.management_url())
            .header("Content-Type", SYNCML)
            .header("Client-Cert", header)
            .body(device.package1("P3").encode())
            .send()
            .await
            .expect("request");
        Answer { status: r.status().as_u16(), content_type: String::new(), body: r.text().await.expect("body") }
    })
    .await;
    h.stop().await;
}

/// A session idle longer than `omadm.session_ttl_s` cannot be continued; a new one can start,
/// and the command that was in flight in the old one goes out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires() {
    let h = Harness::start_with(|c| c.omadm.session_ttl_s = 60).await;
    let device = h.windows_device("TTL-0001").await;
    let cid = enqueue(&h, &device, json!({"type": "restart"})).await;
    let client = client_for(&h, &device.identity);
    let first = String::from_utf8(device.package1("77").encode()).expect("utf-8");
    let a = post(&client, &h, SYNCML, first.clone().into_bytes()).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(command(&h, &cid).await["status"], "sent");
    h.clock.advance(61);
    let second = first.replacen("<MsgID>1</MsgID>", "<MsgID>2</MsgID>", 1);
    refused(&h, 400, "session_not_started", post(&client, &h, SYNCML, second.into_bytes())).await;
    let report = device.session().await.expect("new session");
    assert_eq!(report.handled.iter().filter(|c| c.cmd == "Exec").count(), 1);
    let c = command(&h, &cid).await;
    assert_eq!((c["status"].as_str(), c["sent_count"].as_i64()), (Some("acknowledged"), Some(2)));
    h.stop().await;
}
