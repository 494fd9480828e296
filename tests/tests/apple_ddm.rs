//! Declarative device management over the real wire: declarations set through the API reach an
//! emulated device through the `DeclarativeManagement` command and check-ins (`tokens`,
//! `declaration-items`, `declaration/…`), status reports become events, bad input stores
//! nothing, and a backend-made `DeclarativeManagement` command reaches the device.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use mdm_conformance::apple::{AppleDevice, UserChannel};
use mdm_tests::{Harness, unix_now};
use serde_json::{Value, json};

const TOPIC: &str = "com.apple.mgmt.External.emulated";

fn passcode(identifier: &str, server_token: &str, min_length: u32) -> Value {
    json!({
        "Type": "com.apple.configuration.passcode.settings",
        "Identifier": identifier,
        "ServerToken": server_token,
        "Payload": { "MinimumLength": min_length, "RequireAlphanumericPasscode": true }
    })
}

fn activation(identifier: &str, server_token: &str, configurations: &[&str]) -> Value {
    json!({
        "Type": "com.apple.activation.simple",
        "Identifier": identifier,
        "ServerToken": server_token,
        "Payload": { "StandardConfigurations": configurations }
    })
}

fn path(device: &str, identifier: &str) -> String {
    let enc = percent_encoding::utf8_percent_encode(identifier, percent_encoding::NON_ALPHANUMERIC);
    format!("/v1/devices/{device}/declarations/{enc}")
}

/// One Idle report; the command the gateway answers with (its `Command` dictionary and UUID).
async fn next_command(dev: &AppleDevice) -> Option<(String, plist::Dictionary)> {
    let reply = dev.send_report(dev.report_message("Idle", None, None, Default::default())).await.expect("idle");
    assert_eq!(reply.status, 200);
    if reply.body.is_empty() {
        return None;
    }
    let top: plist::Dictionary = plist::from_bytes(&reply.body).expect("command plist");
    let uuid = top.get("CommandUUID").and_then(|v| v.as_string()).expect("uuid").to_owned();
    Some((uuid, top.get("Command").and_then(|v| v.as_dictionary()).expect("Command").clone()))
}

async fn acknowledge(dev: &AppleDevice, uuid: &str) {
    let r =
        dev.send_report(dev.report_message("Acknowledged", Some(uuid), None, Default::default())).await.expect("ack");
    assert_eq!(r.status, 200);
}

fn types_of(events: &[Value], device: &str) -> Vec<String> {
    events.iter().filter(|e| e["device_id"] == device).map(|e| e["type"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_reach_the_device_and_status_comes_back() {
    let (h, apns, mut deliveries, _dir) = mdm_tests::start_with_apns(|_| {}).await;
    let (cert, key) = apns.issue_push_certificate(TOPIC, unix_now() + 86_400).expect("push cert");
    let (code, r) = h.put_bytes("/v1/pushcert", format!("{cert}{key}").into_bytes()).await;
    assert_eq!(code, 200, "{r}");
    let dev = h.device("DDM00000-0000-4000-8000-000000000001");
    dev.enroll().await.expect("enrolls");
    let id = format!("apple:{}", dev.udid);

    // Before any declaration: a fixed token, an empty manifest.
    let before = dev.ddm_sync(None, None, None).await.expect("sync");
    assert_eq!((before.token.as_str(), before.declarations.len()), ("none", 0));
    assert_eq!(before.timestamp, "1970-01-01T00:00:00Z");

    let (code, first) = h.put_json(&path(&id, "passcode"), &passcode("passcode", "v1", 6)).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["changed"], true);
    assert_eq!(first["push"], true);
    let sync_id = first["sync_command_id"].as_str().expect("a sync command is queued").to_owned();
    let (code, second) = h.put_json(&path(&id, "act/1"), &activation("act/1", "a1", &["passcode"])).await;
    assert_eq!(code, 200, "{second}");
    assert_eq!(second["sync_command_id"], Value::Null, "the waiting sync command serves this change too");
    let token = second["declarations_token"].as_str().expect("token").to_owned();
    assert_ne!(token, first["declarations_token"].as_str().expect("token"), "every change gives a new token");

    // The change pushed the device through the APNs emulator.
    let push = tokio::time::timeout(Duration::from_secs(20), deliveries.recv()).await.expect("a push").expect("open");
    assert_eq!(push.token_hex, hex::encode(&dev.push_token));

    // The device's session: the DeclarativeManagement command (no Data: it fetches the tokens).
    let (uuid, command) = next_command(&dev).await.expect("the sync command");
    assert_eq!(uuid, sync_id);
    assert_eq!(command.get("RequestType").and_then(|v| v.as_string()), Some("DeclarativeManagement"));
    assert!(command.get("Data").is_none(), "{command:?}");
    acknowledge(&dev, &uuid).await;
    let (_, status) = h.get(&format!("/v1/commands/{sync_id}")).await;
    assert_eq!(status["status"], "acknowledged", "{status}");

    let synced = dev.ddm_sync(None, Some(&before.token), None).await.expect("sync");
    assert!(synced.changed);
    assert_eq!(synced.token, token);
    assert!(synced.timestamp.ends_with('Z') && synced.timestamp.starts_with("20"), "{}", synced.timestamp);
    // Activations come first in the manifest, then configurations: exactly what was PUT.
    assert_eq!(synced.declarations, [activation("act/1", "a1", &["passcode"]), passcode("passcode", "v1", 6)]);
    // Nothing changed since: the device's token matches and it fetches nothing more.
    let again = dev.ddm_sync(None, Some(&synced.token), None).await.expect("sync");
    assert!(!again.changed);

    // Fetching what the device was not given: 404; an unknown endpoint: 400 with the reason.
    let r = dev.ddm_request("declaration/configuration/unknown", None, None).await.expect("request");
    assert_eq!(r.status, 404);
    assert!(String::from_utf8_lossy(&r.body).contains("declaration_not_found"));
    let r = dev.ddm_request("declaration/asset/passcode", None, None).await.expect("request");
    assert_eq!(r.status, 404, "a declaration is served only under its own class");
    let stored_before = h.snapshot(&[]).await;
    let r = dev.ddm_request("inventory", None, None).await.expect("request");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("unknown_endpoint"), "{:?}", r.body);
    let r = dev.ddm_request("declaration/profile/x", None, None).await.expect("request");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("unknown_declaration_class"));
    let r = dev.ddm_request("status", Some(b"not json".to_vec()), None).await.expect("request");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("status_not_json"));
    let r = dev.ddm_request("status", None, None).await.expect("request");
    assert_eq!(r.status, 400);
    assert_eq!(h.snapshot(&[]).await, stored_before, "refused DDM requests stored nothing");

    // A status report: 200 with an empty body, and an event with the decoded report.
    let report = json!({
        "StatusItems": {
            "device": { "model": { "family": "iPhone", "identifier": "iPhone15,3" } },
            "management": { "declarations": { "configurations": [
                { "identifier": "passcode", "active": true, "valid": "valid", "server-token": "v1" }
            ] } }
        },
        "Errors": []
    });
    let r = dev.ddm_status(&report, None).await.expect("status");
    assert_eq!((r.status, r.body.len()), (200, 0));
    let events = h.events_of(&id, "device.status_report").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"], report);
    assert_eq!(events[0]["platform"], "apple");
    let raw = B64.decode(events[0]["raw"]["body_b64"].as_str().expect("raw")).expect("base64");
    assert!(String::from_utf8_lossy(&raw).contains("<string>status</string>"));

    // The backend API sees what the device has.
    let (code, list) = h.get(&format!("/v1/devices/{id}/declarations")).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["declarations_token"], token.as_str());
    assert_eq!(list["timestamp"], synced.timestamp.as_str());
    let ids: Vec<&str> =
        list["declarations"].as_array().expect("list").iter().map(|d| d["identifier"].as_str().unwrap_or("")).collect();
    assert_eq!(ids, ["act/1", "passcode"]);
    assert_eq!(list["declarations"][1]["declaration"], passcode("passcode", "v1", 6));
    assert_eq!(list["declarations"][1]["type"], "com.apple.configuration.passcode.settings");
    let (code, one) = h.get(&path(&id, "act/1")).await;
    assert_eq!((code, one["server_token"].as_str()), (200, Some("a1")));

    // The same declaration again changes nothing: same token, no command, no event.
    let seq = h.gateway().state.store.last_event_seq().await.expect("seq");
    let (code, same) = h.put_json(&path(&id, "passcode"), &passcode("passcode", "v1", 6)).await;
    assert_eq!(code, 200, "{same}");
    assert_eq!((same["changed"].as_bool(), same["declarations_token"].as_str()), (Some(false), Some(token.as_str())));
    assert_eq!(h.gateway().state.store.last_event_seq().await.expect("seq"), seq);
    // Other content under the same ServerToken would never reach devices: refused.
    let (code, conflict) = h.put_json(&path(&id, "passcode"), &passcode("passcode", "v1", 8)).await;
    assert_eq!(code, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "server_token_unchanged");

    // A new revision with ?nopush=1: queued, not pushed; the device picks it up next session.
    // (First let the earlier pushes settle: the coalescer may push once more at its window's end.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while deliveries.try_recv().is_ok() {}
    let (code, rev) = h.put_json(&format!("{}?nopush=1", path(&id, "passcode")), &passcode("passcode", "v2", 8)).await;
    assert_eq!(code, 200, "{rev}");
    assert_eq!((rev["changed"].as_bool(), rev["push"].as_bool()), (Some(true), Some(false)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(deliveries.try_recv().is_err(), "nopush must not push");
    let (uuid, command) = next_command(&dev).await.expect("the sync command");
    assert_eq!(command.get("RequestType").and_then(|v| v.as_string()), Some("DeclarativeManagement"));
    acknowledge(&dev, &uuid).await;
    let resynced = dev.ddm_sync(None, Some(&synced.token), None).await.expect("sync");
    assert_eq!(resynced.declarations[1], passcode("passcode", "v2", 8));

    // Deleting: a new token, and the manifest no longer lists it.
    let (code, del) = h.delete(&path(&id, "act/1")).await;
    assert_eq!(code, 200, "{del}");
    assert_eq!(del["changed"], true);
    let after = dev.ddm_sync(None, Some(&resynced.token), None).await.expect("sync");
    assert_eq!(after.token, del["declarations_token"].as_str().expect("token"));
    assert_eq!(after.declarations, [passcode("passcode", "v2", 8)]);
    let (code, missing) = h.delete(&path(&id, "act/1")).await;
    assert_eq!((code, missing["error"]["code"].as_str()), (404, Some("declaration_not_found")));

    let events = h.events().await;
    let t = types_of(&events, &id);
    assert_eq!(t.iter().filter(|x| *x == "device.declarations_changed").count(), 4, "{t:?}");
    let changed: Vec<&Value> = events.iter().filter(|e| e["type"] == "device.declarations_changed").collect();
    assert_eq!(changed[0]["data"]["action"], "put");
    assert_eq!(changed[0]["data"]["identifier"], "passcode");
    assert_eq!(changed[0]["data"]["server_token"], "v1");
    assert_eq!(changed[3]["data"]["action"], "delete");
    assert_eq!(changed[3]["data"]["declarations_token"], after.token.as_str());
    assert!(t.iter().any(|x| x == "device.declarative_management"), "fetches are recorded: {t:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_channels_have_their_own_declarations() {
    let h = Harness::start().await;
    let dev = h.device("DDM00000-0000-4000-8000-000000000002");
    dev.enroll().await.expect("enrolls");
    let user = UserChannel {
        user_id: "A1B2C3D4-1111-2222-3333-444455556666".into(),
        short_name: "ann".into(),
        long_name: "Ann".into(),
    };
    let r = dev.send_checkin(dev.token_update_message(Some(&user))).await.expect("user token update");
    assert_eq!(r.status, 200);
    let device_id = format!("apple:{}", dev.udid);
    let user_id = format!("{device_id}:{}", user.user_id);

    let (code, r) = h.put_json(&path(&user_id, "u1"), &passcode("u1", "1", 4)).await;
    assert_eq!(code, 200, "{r}");
    let for_user = dev.ddm_sync(None, None, Some(&user)).await.expect("user sync");
    assert_eq!(for_user.declarations, [passcode("u1", "1", 4)]);
    let for_device = dev.ddm_sync(None, None, None).await.expect("device sync");
    assert_eq!((for_device.token.as_str(), for_device.declarations.len()), ("none", 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_declarations_are_refused_and_store_nothing() {
    let h = Harness::start().await;
    let dev = h.device("DDM00000-0000-4000-8000-000000000003");
    dev.enroll().await.expect("enrolls");
    let id = format!("apple:{}", dev.udid);
    let store = &h.gateway().state.store;
    let device_id: mdm_core::DeviceId = id.parse().expect("id");

    let mut no_payload = passcode("x", "1", 4);
    no_payload.as_object_mut().expect("object").remove("Payload");
    let cases: Vec<(String, Vec<u8>, u16, &str, &str)> = vec![
        (path(&id, "x"), b"{not json".to_vec(), 400, "invalid_json", "not JSON"),
        (path(&id, "x"), b"[1, 2]".to_vec(), 422, "invalid_declaration", "not a JSON object"),
        (path(&id, "x"), no_payload.to_string().into_bytes(), 422, "invalid_declaration", "Payload"),
        (
            path(&id, "x"),
            json!({"Type": "com.apple.profile.x", "Identifier": "x", "ServerToken": "1", "Payload": {}}).to_string().into_bytes(),
            422,
            "invalid_declaration",
            "Type",
        ),
        (
            path(&id, "x"),
            json!({"Type": "com.apple.configuration.x", "Identifier": "x", "ServerToken": "", "Payload": {}}).to_string().into_bytes(),
            422,
            "invalid_declaration",
            "ServerToken",
        ),
        (
            path(&id, "x"),
            json!({"Type": "com.apple.configuration.x", "Identifier": "x", "ServerToken": "1", "Payload": [], "Extra": 1}).to_string().into_bytes(),
            422,
            "invalid_declaration",
            "Extra",
        ),
        (path(&id, "other"), passcode("x", "1", 4).to_string().into_bytes(), 422, "invalid_declaration", "path"),
        (
            path("apple:NO-SUCH-DEVICE", "x"),
            passcode("x", "1", 4).to_string().into_bytes(),
            404,
            "device_not_found",
            "NO-SUCH-DEVICE",
        ),
        (path("windows:W1", "x"), passcode("x", "1", 4).to_string().into_bytes(), 404, "device_not_found", "W1"),
        (path("not a device", "x"), passcode("x", "1", 4).to_string().into_bytes(), 400, "invalid_device_id", ""),
    ];
    for (p, body, status, code, mentions) in cases {
        let before = h.snapshot(&[]).await;
        let resp = h.auth(h.raw_api().put(format!("{}{p}", h.api_url))).body(body).send().await.expect("put");
        assert_eq!(resp.status().as_u16(), status, "{p}");
        let err: Value = resp.json().await.expect("JSON error");
        assert_eq!(err["error"]["code"], code, "{p}: {err}");
        assert!(err["error"]["message"].as_str().expect("message").contains(mentions), "{p}: {err}");
        assert_eq!(h.snapshot(&[]).await, before, "{p}: a refused declaration changed the store");
        let set = store.declaration_set(&device_id).await.expect("read");
        assert!(set.token.is_none() && set.declarations.is_empty(), "{p}: {set:?}");
    }
    assert!(store.pending(&device_id, 10).await.expect("pending").is_empty(), "no sync command was queued");
    let resp = h.auth(h.raw_api().post(format!("{}{}", h.api_url, path(&id, "x")))).send().await.expect("post");
    assert_eq!(resp.status().as_u16(), 405);

    // An unenrolled device takes no new declarations.
    let r = dev.send_checkin(dev.checkout_message()).await.expect("checkout");
    assert_eq!(r.status, 200);
    let (code, r) = h.put_json(&path(&id, "x"), &passcode("x", "1", 4)).await;
    assert_eq!((code, r["error"]["code"].as_str()), (409, Some("device_unenrolled")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarative_management_command_from_the_backend_reaches_the_device() {
    let h = Harness::start().await;
    let dev = h.device("DDM00000-0000-4000-8000-000000000004");
    dev.enroll().await.expect("enrolls");
    let id = format!("apple:{}", dev.udid);
    let (code, r) = h.put_json(&format!("{}?nopush=1", path(&id, "p")), &passcode("p", "1", 6)).await;
    assert_eq!(code, 200, "{r}");
    let token = r["declarations_token"].as_str().expect("token").to_owned();
    // Take the gateway's own sync command out of the way first.
    let (uuid, _) = next_command(&dev).await.expect("sync command");
    acknowledge(&dev, &uuid).await;

    // The backend sends its own, with the SyncTokens in Data, through the `raw` command.
    let (_, list) = h.get(&format!("/v1/devices/{id}/declarations")).await;
    let sync = json!({ "SyncTokens": { "DeclarationsToken": token, "Timestamp": list["timestamp"] } });
    let data = serde_json::to_vec(&sync).expect("json");
    let payload = json!({ "RequestType": "DeclarativeManagement", "Data": { "$data": B64.encode(&data) } });
    let (code, queued) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": id, "command": { "type": "raw", "platform": "apple", "payload": payload } }),
        )
        .await;
    assert_eq!(code, 202, "{queued}");
    let command_id = queued["command_id"].as_str().expect("id").to_owned();

    let (uuid, command) = next_command(&dev).await.expect("the backend's command");
    assert_eq!(uuid, command_id);
    assert_eq!(command.get("RequestType").and_then(|v| v.as_string()), Some("DeclarativeManagement"));
    let got = command.get("Data").and_then(|v| v.as_data()).expect("Data is plist data");
    assert_eq!(got, data.as_slice(), "the device gets the exact SyncTokens bytes");
    // The device uses those tokens instead of asking for them, and syncs.
    let synced = dev.ddm_sync(Some(got), None, None).await.expect("sync");
    assert_eq!(synced.token, token);
    assert_eq!(synced.declarations, [passcode("p", "1", 6)]);
    acknowledge(&dev, &uuid).await;
    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "acknowledged", "{status}");
    assert_eq!(status["request_type"], "DeclarativeManagement");

    // The same through the NanoMDM-compatible enqueue, as a plist.
    let mut inner = plist::Dictionary::new();
    inner.insert("RequestType".into(), "DeclarativeManagement".into());
    inner.insert("Data".into(), plist::Value::Data(data.clone()));
    let mut top = plist::Dictionary::new();
    top.insert("CommandUUID".into(), "5d0c1b7e-1111-4a2b-9c3d-000000000001".into());
    top.insert("Command".into(), plist::Value::Dictionary(inner));
    let mut xml = Vec::new();
    plist::to_writer_xml(&mut xml, &plist::Value::Dictionary(top)).expect("xml");
    let (code, r) = h.put_bytes(&format!("/v1/enqueue/{}?nopush=1", dev.udid), xml).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["request_type"], "DeclarativeManagement");
    let (uuid, command) = next_command(&dev).await.expect("the enqueued command");
    assert_eq!(uuid, "5d0c1b7e-1111-4a2b-9c3d-000000000001");
    assert_eq!(command.get("Data").and_then(|v| v.as_data()), Some(data.as_slice()));
    acknowledge(&dev, &uuid).await;
    h.stop().await;
}
