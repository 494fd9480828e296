//! The Apple MDM round trip over real TLS: enroll, receive a normalised command, answer it, and
//! see every step in `/v1/events`, the device record and the command status.

use std::time::Duration;

use mdm_conformance::apple::{IdentityMode, UserChannel};
use mdm_tests::{Harness, eventually};
use serde_json::{Value, json};

fn types(events: &[Value], device_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["device_id"] == device_id)
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_command_result_round_trip() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000001");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");

    let (code, device) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(code, 200, "{device}");
    assert_eq!(device["platform"], "apple");
    assert_eq!(device["enrollment"]["state"], "enrolled");
    assert_eq!(device["enrollment"]["enrollment_type"], "device");
    assert_eq!(device["inventory"]["serial_number"], dev.serial);
    assert_eq!(device["inventory"]["os_version"], "17.5.1");
    assert_eq!(device["enrollment"]["push_topic"], dev.topic);

    let (code, queued) =
        h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "device_info" } })).await;
    assert_eq!(code, 202, "{queued}");
    assert_eq!(queued["status"], "queued");
    let command_id = queued["command_id"].as_str().expect("command id").to_owned();
    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "queued");

    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, command_id, "the device gets the command under the API's id");
    assert_eq!(handled[0].1, "DeviceInformation");

    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "acknowledged", "{status}");
    assert_eq!(status["device_id"], id);
    assert_eq!(status["result"]["status"], "Acknowledged", "{status}");

    let events = h.events().await;
    assert_eq!(
        types(&events, &id),
        [
            "device.authenticated",
            "device.inventory",
            "device.enrolled",
            "command.queued",
            "device.checked_in",
            "command.sent",
            "device.checked_in",
            "command.acknowledged",
            "device.inventory",
        ],
        "every step, in order (the session is Idle, then the Acknowledged report that ends it)"
    );
    let inventory = events.iter().rev().find(|e| e["type"] == "device.inventory").expect("inventory event");
    assert_eq!(inventory["data"]["imei"], "35 391108 563102 6");
    assert_eq!(inventory["data"]["storage_capacity_bytes"], 238_420_000_000u64);
    assert_eq!(inventory["data"]["battery_level"], 0.87);
    let ack = events.iter().find(|e| e["type"] == "command.acknowledged").expect("ack");
    assert_eq!(ack["command_id"], command_id.as_str());
    assert_eq!(ack["raw"]["content_type"], "application/x-apple-aspen-mdm");
    // Event ids are unique.
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().expect("id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len());

    let (_, device) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(device["inventory"]["model_name"], "iPhone");
    assert_eq!(device["inventory"]["wifi_mac"], "f0:18:98:12:34:56");
    assert!(device["last_seen"].is_string());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificate_identity_round_trip() {
    let h = Harness::start().await;
    let dev = h.device_with("A1B2C3D4-0000-4000-8000-0000000000C1", IdentityMode::TlsClientCertificate);
    dev.enroll().await.expect("enrolls over mTLS");
    let id = format!("apple:{}", dev.udid);
    let (code, _) = h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "restart" } })).await;
    assert_eq!(code, 202);
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled[0].1, "RestartDevice");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_rules_priority_age_not_now_and_error() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000002");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let mut ids = Vec::new();
    for (command, priority) in [
        (json!({"type": "restart"}), 0),
        (json!({"type": "device_info"}), 0),
        (json!({"type": "lock", "message": "hi"}), 5),
    ] {
        let (code, r) =
            h.post("/v1/commands", &json!({ "device_id": id, "command": command, "priority": priority })).await;
        assert_eq!(code, 202, "{r}");
        ids.push(r["command_id"].as_str().expect("id").to_owned());
    }
    // Lock (priority 5) first, then restart and device_info by age. Restart is deferred.
    let handled = dev
        .session(|rt| match rt {
            "RestartDevice" => "NotNow",
            "DeviceLock" => "Error",
            _ => "Acknowledged",
        })
        .await
        .expect("session");
    let order: Vec<&str> = handled.iter().map(|(_, rt, _)| rt.as_str()).collect();
    assert_eq!(
        order,
        ["DeviceLock", "RestartDevice", "DeviceInformation"],
        "priority then age; NotNow not re-sent in the session"
    );

    let (_, lock) = h.get(&format!("/v1/commands/{}", ids[2])).await;
    assert_eq!(lock["status"], "error");
    assert_eq!(lock["error"]["error_chain"][0]["error_code"], 12021, "{lock}");
    let (_, restart) = h.get(&format!("/v1/commands/{}", ids[0])).await;
    assert_eq!(restart["status"], "not_now");

    // The next session starts with Idle: the NotNow command is eligible again.
    let handled = dev.session(|_| "Acknowledged").await.expect("second session");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, ids[0]);
    let (_, restart) = h.get(&format!("/v1/commands/{}", ids[0])).await;
    assert_eq!(restart["status"], "acknowledged");
    assert_eq!(restart["sent_count"], 2);

    let events = h.events().await;
    assert_eq!(events.iter().filter(|e| e["type"] == "command.not_now").count(), 1);
    assert_eq!(events.iter().filter(|e| e["type"] == "command.error").count(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_but_unanswered_command_is_sent_again() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000003");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let (_, r) = h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "device_info" } })).await;
    let command_id = r["command_id"].as_str().expect("id").to_owned();
    // The device fetches the command but the connection drops before it answers.
    let first = dev.send_report(dev.report_message("Idle", None, None, Default::default())).await.expect("idle");
    assert!(!first.body.is_empty());
    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "sent");
    // Next Idle: the same command again.
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, command_id);
    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "acknowledged");
    assert_eq!(status["sent_count"], 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_commands_are_never_sent_and_reported() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000004");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
    let soon = soon.format(&time::format_description::well_known::Rfc3339).expect("format");
    let (_, a) =
        h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "restart" }, "expires_at": soon })).await;
    let (_, b) = h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "device_info" } })).await;
    let expiring = a["command_id"].as_str().expect("id").to_owned();
    let lasting = b["command_id"].as_str().expect("id").to_owned();
    // Two minutes later (on the gateway's clock) the first command has expired.
    h.clock.advance(120);
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), [lasting.as_str()]);
    let (_, status) = h.get(&format!("/v1/commands/{expiring}")).await;
    assert_eq!(status["status"], "expired");
    let expired = h.events_of(&id, "command.expired").await;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["command_id"], expiring.as_str());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_sweeper_reports_devices_that_never_return() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000005");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
    let soon = soon.format(&time::format_description::well_known::Rfc3339).expect("format");
    let (_, a) =
        h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "restart" }, "expires_at": soon })).await;
    let command_id = a["command_id"].as_str().expect("id").to_owned();
    h.clock.advance(60);
    let found = eventually(Duration::from_secs(15), || async {
        let (_, s) = h.get(&format!("/v1/commands/{command_id}")).await;
        (s["status"] == "expired").then_some(())
    })
    .await;
    assert!(found.is_some(), "the sweeper expires commands without a device check-in");
    assert_eq!(h.events_of(&id, "command.expired").await.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_channel_enrolls_and_takes_commands() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000006");
    dev.enroll().await.expect("device channel");
    let user = UserChannel {
        user_id: "0C5E1D2A-1111-2222-3333-444455556666".into(),
        short_name: "ada".into(),
        long_name: "Ada Lovelace".into(),
    };
    let reply = dev.send_checkin(dev.token_update_message(Some(&user))).await.expect("user token update");
    assert_eq!(reply.status, 200);
    let user_id = format!("apple:{}:{}", dev.udid, user.user_id);
    let (code, device) = h.get(&format!("/v1/devices/{user_id}")).await;
    assert_eq!(code, 200, "{device}");
    assert_eq!(device["enrollment"]["state"], "enrolled");
    assert_eq!(device["enrollment"]["parent_device_id"], format!("apple:{}", dev.udid));
    assert_eq!(device["enrollment"]["user_short_name"], "ada");
    assert_eq!(device["enrollment"]["enrollment_type"], "user");

    let (code, r) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": user_id, "command": { "type": "device_info", "fields": ["UDID"] } }),
        )
        .await;
    assert_eq!(code, 202, "{r}");
    let command_id = r["command_id"].as_str().expect("id").to_owned();
    // The device channel has nothing; the user channel has the command.
    let handled = dev.session(|_| "Acknowledged").await.expect("device session");
    assert!(handled.is_empty());
    let idle =
        dev.send_report(dev.report_message("Idle", None, Some(&user), Default::default())).await.expect("user idle");
    let cmd: plist::Dictionary = plist::from_bytes(&idle.body).expect("command plist");
    assert_eq!(cmd.get("CommandUUID").and_then(|v| v.as_string()), Some(command_id.as_str()));
    let done = dev
        .send_report(dev.report_message("Acknowledged", Some(&command_id), Some(&user), Default::default()))
        .await
        .expect("ack");
    assert_eq!(done.status, 200);
    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "acknowledged");
    assert_eq!(h.events_of(&user_id, "device.enrolled").await.len(), 1);

    // CheckOut of the device channel unenrolls the user channel too.
    let out = dev.send_checkin(dev.checkout_message()).await.expect("checkout");
    assert_eq!(out.status, 200);
    let (_, device) = h.get(&format!("/v1/devices/{user_id}")).await;
    assert_eq!(device["enrollment"]["state"], "unenrolled");
    let (_, device) = h.get(&format!("/v1/devices/apple:{}", dev.udid)).await;
    assert_eq!(device["enrollment"]["state"], "unenrolled");
    assert_eq!(h.events_of(&format!("apple:{}", dev.udid), "device.unenrolled").await.len(), 1);
    // An unenrolled device cannot fetch commands until it authenticates again.
    let idle = dev.send_report(dev.report_message("Idle", None, None, Default::default())).await.expect("idle");
    assert_eq!(idle.status, 400);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_checkin_messages_are_decoded_stored_and_answered() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000007");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let mut extra = plist::Dictionary::new();
    extra.insert("BootstrapToken".into(), plist::Value::Data(b"secret-bootstrap".to_vec()));
    let r = dev.send_checkin(dev.checkin_message("SetBootstrapToken", None, extra)).await.expect("set");
    assert_eq!(r.status, 200);
    let r = dev.send_checkin(dev.checkin_message("GetBootstrapToken", None, Default::default())).await.expect("get");
    assert_eq!(r.status, 200);
    let answer: plist::Dictionary = plist::from_bytes(&r.body).expect("plist answer");
    assert_eq!(answer.get("BootstrapToken").and_then(|v| v.as_data()), Some(&b"secret-bootstrap"[..]));

    let user = UserChannel {
        user_id: "0C5E1D2A-1111-2222-3333-444455556666".into(),
        short_name: "ada".into(),
        long_name: "Ada".into(),
    };
    let r =
        dev.send_checkin(dev.checkin_message("UserAuthenticate", Some(&user), Default::default())).await.expect("ua");
    assert_eq!(r.status, 410, "UserAuthenticate is declined with 410 by default");

    let mut dm = plist::Dictionary::new();
    dm.insert("Endpoint".into(), "tokens".into());
    let r = dev.send_checkin(dev.checkin_message("DeclarativeManagement", None, dm)).await.expect("dm");
    assert_eq!(r.status, 200, "DDM tokens are answered even before any declaration");
    let tokens: Value = serde_json::from_slice(&r.body).expect("JSON tokens");
    assert_eq!(tokens["SyncTokens"]["DeclarationsToken"], "none");
    let mut gt = plist::Dictionary::new();
    gt.insert("TokenServiceType".into(), "com.apple.maid".into());
    let r = dev.send_checkin(dev.checkin_message("GetToken", None, gt)).await.expect("gettoken");
    assert_eq!(r.status, 501, "no token service is configured by default");
    assert!(String::from_utf8_lossy(&r.body).contains("com.apple.maid"));

    let events = h.events().await;
    let t = types(&events, &id);
    for expected in [
        "device.bootstrap_token_set",
        "device.bootstrap_token_requested",
        "device.declarative_management",
        "device.token_requested",
    ] {
        assert!(t.iter().any(|x| x == expected), "{expected} in {t:?}");
    }
    assert_eq!(h.events_of(&format!("{id}:{}", user.user_id), "device.user_authenticate").await.len(), 1);
    // Secrets are not copied into event data.
    let set = events.iter().find(|e| e["type"] == "device.bootstrap_token_set").expect("set event");
    assert!(!set["data"].to_string().contains("c2VjcmV0LWJvb3RzdHJhcA"), "{}", set["data"]);
    let (_, device) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(device["enrollment"]["bootstrap_token_escrowed"], true);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_command() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000008");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let body = json!({ "device_id": id, "command": { "type": "restart" }, "idempotency_key": "k-1" });
    let (c1, a) = h.post("/v1/commands", &body).await;
    let (c2, b) = h.post("/v1/commands", &body).await;
    assert_eq!((c1, c2), (202, 202));
    assert_eq!(a["command_id"], b["command_id"]);
    assert_eq!(h.events_of(&id, "command.queued").await.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_long_poll_wakes_on_new_event() {
    let h = Harness::start().await;
    let (_, page) = h.get("/v1/events").await;
    let cursor = page["next"].as_str().expect("cursor").to_owned();
    let dev = h.device("A1B2C3D4-0000-4000-8000-000000000009");
    let poll = {
        let url = format!("{}/v1/events?after={cursor}&wait=20", h.api_url);
        let req = h.auth(h.raw_api().get(url));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let v: Value = req.send().await.expect("poll").json().await.expect("json");
            (started.elapsed(), v)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev.send_checkin(dev.authenticate_message()).await.expect("auth");
    let (elapsed, page) = poll.await.expect("join");
    assert!(elapsed < Duration::from_secs(10), "woke on the event, not the timeout ({elapsed:?})");
    assert_eq!(page["events"][0]["type"], "device.authenticated");
    // An empty poll with wait=0 returns immediately with the same cursor.
    let next = page["next"].as_str().expect("next");
    let (_, empty) = h
        .get(&format!(
            "/v1/events?after={}",
            page["events"].as_array().map(|a| a.len()).unwrap_or(0) as i64 + cursor.parse::<i64>().unwrap_or(0) + 100
        ))
        .await;
    assert_eq!(empty["events"].as_array().map(Vec::len), Some(0));
    assert!(!next.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_on_the_same_data_directory() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-00000000000A");
    dev.enroll().await.expect("enrolls");
    let id = format!("apple:{}", dev.udid);
    let (_, r) = h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "restart" } })).await;
    let command_id = r["command_id"].as_str().expect("id").to_owned();
    let data_dir = h.dir.path().join("data");
    let ca_before = std::fs::read(data_dir.join("ca.pem")).expect("ca");
    let Harness { gateway, dir, .. } = h;
    gateway.expect("running").shutdown().await.expect("stop");

    let config = mdm_tests::config_on(data_dir.clone());
    let g = mdm_gateway::Gateway::start(config).await.expect("restart");
    assert_eq!(std::fs::read(data_dir.join("ca.pem")).expect("ca"), ca_before, "CA reused");
    let url = format!("https://localhost:{}", g.device_addr.port());
    let again = mdm_conformance::apple::AppleDevice::new(
        &dev.udid,
        dev.key.clone(),
        dev.cert.clone(),
        IdentityMode::SignMessages,
        &url,
        &ca_before,
    )
    .expect("device");
    let handled = again.session(|_| "Acknowledged").await.expect("session after restart");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, command_id);
    g.shutdown().await.expect("stop");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_device_ca_is_trusted_besides_the_gateway_ca() {
    use mdm_certs::devpki;
    let ca_dir = tempfile::tempdir().expect("tmp");
    let now = mdm_tests::unix_now();
    let key = devpki::generate_key().expect("key");
    let ca = devpki::create_ca(&key, "Operator Device CA", now, 30, &mdm_tests::random_serial()).expect("ca");
    let ca_path = ca_dir.path().join("operator-ca.pem");
    std::fs::write(&ca_path, devpki::to_pem(&ca)).expect("write");
    let h = Harness::start_with(|c| c.apple.device_ca = vec![ca_path.clone()]).await;
    let device_key = devpki::generate_key().expect("key");
    let cert = devpki::issue_device_certificate(
        &ca,
        &key,
        &device_key,
        "operator-device",
        now - 60,
        now + 86_400,
        &mdm_tests::random_serial(),
    )
    .expect("cert");
    let dev = h.device_from("A1B2C3D4-0000-4000-8000-00000000000B", device_key, cert, IdentityMode::SignMessages);
    dev.enroll().await.expect("a device of the operator CA enrolls");
    // And the gateway's own CA still works.
    h.device("A1B2C3D4-0000-4000-8000-00000000000C").enroll().await.expect("own CA");
    h.stop().await;
}

fn dict(pairs: &[(&str, plist::Value)]) -> Vec<u8> {
    let mut d = plist::Dictionary::new();
    for (k, v) in pairs {
        d.insert((*k).to_owned(), v.clone());
    }
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &plist::Value::Dictionary(d)).expect("plist");
    out
}

/// User Enrollment (BYOD): the device is named by `EnrollmentID`, never by UDID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_enrollment_is_identified_by_enrollment_id() {
    use plist::Value;
    let h = Harness::start().await;
    // The emulator's builders name a UDID; User Enrollment messages are built here instead.
    let dev = h.device("unused-udid");
    let eid = "BYOD-ENROLLMENT-7F3A";
    let topic = || ("Topic", Value::from("com.apple.mgmt.External.emulated"));
    let auth = dict(&[("MessageType", "Authenticate".into()), ("EnrollmentID", eid.into()), topic()]);
    assert_eq!(dev.send_checkin(auth).await.expect("auth").status, 200);
    let token = dict(&[
        ("MessageType", "TokenUpdate".into()),
        ("EnrollmentID", eid.into()),
        topic(),
        ("Token", Value::Data(vec![7; 32])),
        ("PushMagic", "magic".into()),
    ]);
    assert_eq!(dev.send_checkin(token).await.expect("token").status, 200);
    let id = format!("apple:{eid}");
    let (code, device) = h.get(&format!("/v1/devices/{id}")).await;
    assert_eq!(code, 200, "{device}");
    assert_eq!(device["enrollment"]["enrollment_type"], "user_enrollment_device");
    let (code, r) = h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "device_info" } })).await;
    assert_eq!(code, 202, "{r}");
    let idle = dev.send_report(dict(&[("EnrollmentID", eid.into()), ("Status", "Idle".into())])).await.expect("idle");
    let cmd: plist::Dictionary = plist::from_bytes(&idle.body).expect("command");
    let uuid = cmd.get("CommandUUID").and_then(Value::as_string).expect("uuid").to_owned();
    assert_eq!(uuid, r["command_id"].as_str().expect("id"));
    let ack =
        dict(&[("EnrollmentID", eid.into()), ("Status", "Acknowledged".into()), ("CommandUUID", uuid.as_str().into())]);
    assert_eq!(dev.send_report(ack).await.expect("ack").status, 200);
    let (_, status) = h.get(&format!("/v1/commands/{uuid}")).await;
    assert_eq!(status["status"], "acknowledged");
    h.stop().await;
}

/// Shared iPad: the user channel's UserID is all F's; the user is named by UserShortName.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_ipad_user_channel_is_named_by_short_name() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-00000000000D");
    dev.enroll().await.expect("device channel");
    let user = UserChannel {
        user_id: mdm_apple::SHARED_IPAD_USER_ID.into(),
        short_name: "student42@school.example".into(),
        long_name: "Student".into(),
    };
    let r = dev.send_checkin(dev.token_update_message(Some(&user))).await.expect("token update");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (code, devices) = h.get("/v1/devices?platform=apple").await;
    assert_eq!(code, 200);
    let user_channel = devices["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["enrollment"]["enrollment_type"] == "shared_ipad")
        .cloned()
        .expect("a shared iPad user channel");
    let id = user_channel["device_id"].as_str().expect("id");
    assert!(id.starts_with(&format!("apple:{}:", dev.udid)), "{id}");
    assert!(id.contains("student42"), "named by the short name, not the all-F UserID: {id}");
    h.stop().await;
}
