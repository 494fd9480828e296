//! NATS JetStream over real sockets against a real `nats-server` (one per test): the event sink
//! (every event on `MDM_EVENTS` exactly once by `Nats-Msg-Id`, subjects
//! `mdm.events.<platform>.<type>`, events kept in the outbox while NATS is down) and the command
//! intake on `mdm.commands` (stored and delivered to an emulated Apple device, invalid commands
//! answered by `command.rejected` and terminated, duplicates queued once).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use mdm_gateway::config::NatsConfig;
use mdm_tests::nats::{NatsServer, read_all};
use mdm_tests::{Harness, eventually};
use serde_json::{Value, json};

async fn start(nats: &NatsServer) -> Harness {
    let url = nats.url();
    Harness::start_with(move |c| {
        let mut n = NatsConfig::new(url);
        n.max_backoff_ms = 300;
        n.publish_timeout_ms = 1_000;
        n.ack_wait_s = 1;
        n.nak_delay_ms = 200;
        c.nats = Some(n);
    })
    .await
}

/// Waits until every event of the gateway's log is on the stream, then returns both.
async fn all_on_stream(h: &Harness, js: &jetstream::Context) -> (Vec<Value>, Vec<(String, String, Value)>) {
    let last = std::sync::Mutex::new((0, 0));
    let done = eventually(Duration::from_secs(30), || async {
        let events = h.events().await;
        let on_stream: Vec<_> = read_all(js, "MDM_EVENTS")
            .await
            .into_iter()
            .filter(|(_, _, body)| body["type"] != "command.rejected")
            .collect();
        let ids: BTreeSet<&str> = on_stream.iter().map(|(_, id, _)| id.as_str()).collect();
        let complete = events.iter().all(|e| ids.contains(e["id"].as_str().unwrap_or_default()));
        *last.lock().expect("lock") = (events.len(), on_stream.len());
        complete.then_some((events, on_stream))
    })
    .await;
    done.unwrap_or_else(|| {
        let (log, stream) = *last.lock().expect("lock");
        panic!("not every event reached NATS: {log} in the log, {stream} on the stream")
    })
}

fn assert_exactly_once(events: &[Value], on_stream: &[(String, String, Value)]) {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, id, _) in on_stream {
        *count.entry(id.as_str()).or_default() += 1;
    }
    let dupes: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "events on the stream more than once: {dupes:?}");
    assert_eq!(on_stream.len(), events.len(), "the stream holds the log's events and nothing else");
    let by_id: BTreeMap<&str, &(String, String, Value)> = on_stream.iter().map(|m| (m.1.as_str(), m)).collect();
    for e in events {
        let (subject, _, body) = by_id[e["id"].as_str().expect("id")];
        let expected =
            format!("mdm.events.{}.{}", e["platform"].as_str().expect("platform"), e["type"].as_str().expect("type"));
        assert_eq!(subject, &expected);
        assert_eq!(body, e, "the body is the event as stored");
    }
}

async fn readyz(h: &Harness) -> (u16, Value) {
    let resp = h.raw_api().get(format!("{}/readyz", h.api_url)).send().await.expect("readyz");
    let code = resp.status().as_u16();
    (code, resp.json().await.expect("json"))
}

fn sink<'a>(ready: &'a Value, name: &str) -> &'a Value {
    ready["sinks"].as_array().expect("sinks").iter().find(|s| s["name"] == name).expect("sink listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_flow_events_arrive_on_nats_exactly_once() {
    let Some(nats) = NatsServer::start() else { return };
    let h = start(&nats).await;
    let dev = h.device("7E57AB1E-0000-4000-8000-00000000A701");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let (code, queued) =
        h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "device_info" } })).await;
    assert_eq!(code, 202, "{queued}");
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);

    let js = jetstream::new(nats.client().await);
    let (events, on_stream) = all_on_stream(&h, &js).await;
    assert_exactly_once(&events, &on_stream);
    let subjects: BTreeSet<&str> = on_stream.iter().map(|m| m.0.as_str()).collect();
    for s in [
        "mdm.events.apple.device.enrolled",
        "mdm.events.apple.device.checked_in",
        "mdm.events.apple.command.queued",
        "mdm.events.apple.command.acknowledged",
    ] {
        assert!(subjects.contains(s), "{s} in {subjects:?}");
    }

    // The stream as documented (docs/nats.md).
    let mut stream = js.get_stream("MDM_EVENTS").await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.subjects, ["mdm.events.>"]);
    assert_eq!(info.config.retention, jetstream::stream::RetentionPolicy::Limits);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(2 * 3600));
    assert_eq!(info.config.max_age, Duration::from_secs(7 * 24 * 3600));

    // A repeated publish (what the relay does after a lost ack) is dropped by the stream.
    let first = &events[0];
    let again = js
        .send_publish(
            format!("mdm.events.apple.{}", first["type"].as_str().expect("type")),
            jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(first).expect("json").into())
                .message_id(first["id"].as_str().expect("id")),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert!(again.duplicate, "same Nats-Msg-Id within the window is a duplicate");
    assert_eq!(read_all(&js, "MDM_EVENTS").await.len(), on_stream.len());

    let (code, ready) = readyz(&h).await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(sink(&ready, "nats")["failing"], false);
    assert_eq!(sink(&ready, "nats-commands")["failing"], false);

    // Retention waits for the event relay only (the command intake has no log cursor): once
    // NATS took them, old events can be pruned.
    h.clock.advance(2 * 86_400);
    let pruned = mdm_gateway::retention::sweep(&h.gateway().state, 1).await.expect("sweep");
    assert_eq!(pruned as usize, events.len());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_the_outbox_while_nats_is_down() {
    let Some(mut nats) = NatsServer::start() else { return };
    let h = start(&nats).await;
    let dev = h.device("7E57AB1E-0000-4000-8000-00000000A702");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    {
        let js = jetstream::new(nats.client().await);
        all_on_stream(&h, &js).await;
    }

    nats.stop();
    // Load while NATS is down: devices and the API keep working; events pile up in the log.
    let mut others = Vec::new();
    for i in 0..4 {
        let d = h.device(&format!("7E57AB1E-0000-4000-8000-00000000B7{i:02}"));
        d.enroll().await.expect("enrolls while NATS is down");
        others.push(d);
    }
    for _ in 0..25 {
        let (code, body) = h.post("/v1/commands", &json!({ "device_id": id, "command": { "type": "restart" } })).await;
        assert_eq!(code, 202, "{body}");
    }
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 25);
    let unready = eventually(Duration::from_secs(15), || async {
        let (code, ready) = readyz(&h).await;
        (code == 503 && sink(&ready, "nats")["failing"] == true).then_some(ready)
    })
    .await;
    assert!(unready.is_some(), "readiness reports the NATS sink failing");

    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart();
    let js = jetstream::new(nats.client().await);
    let (events, on_stream) = all_on_stream(&h, &js).await;
    assert!(events.len() > 25 * 3, "{} events", events.len());
    assert_exactly_once(&events, &on_stream);
    let ready = eventually(Duration::from_secs(15), || async {
        let (code, ready) = readyz(&h).await;
        (code == 200).then_some(ready)
    })
    .await;
    assert!(ready.is_some(), "ready again once NATS is back");
    h.stop().await;
}

async fn commands_stream(js: &jetstream::Context) -> jetstream::stream::Stream {
    eventually(Duration::from_secs(15), || async { js.get_stream("MDM_COMMANDS").await.ok() })
        .await
        .expect("the gateway creates MDM_COMMANDS")
}

async fn publish(js: &jetstream::Context, body: &[u8], msg_id: Option<&str>) -> jetstream::publish::PublishAck {
    let mut msg = jetstream::message::PublishMessage::build().payload(body.to_vec().into());
    if let Some(m) = msg_id {
        msg = msg.message_id(m);
    }
    js.send_publish("mdm.commands", msg).await.expect("publish").await.expect("publish ack")
}

/// Waits until the shared consumer has handled everything published.
async fn consumer_drained(stream: &jetstream::stream::Stream) -> jetstream::consumer::Info {
    eventually(Duration::from_secs(20), || async {
        let info = stream.consumer_info("mdm-gateway").await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0).then_some(info)
    })
    .await
    .expect("the intake handles every command")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_nats_are_stored_and_delivered_to_the_device() {
    let Some(nats) = NatsServer::start() else { return };
    let h = start(&nats).await;
    let dev = h.device("7E57AB1E-0000-4000-8000-00000000A703");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let js = jetstream::new(nats.client().await);
    let stream = commands_stream(&js).await;

    publish(&js, json!({ "device_id": id, "command": { "type": "device_info" } }).to_string().as_bytes(), None).await;
    let queued =
        eventually(Duration::from_secs(20), || async { h.events_of(&id, "command.queued").await.into_iter().next() })
            .await
            .expect("command.queued");
    let command_id = queued["command_id"].as_str().expect("command id").to_owned();
    let info = consumer_drained(&stream).await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.config.durable_name.as_deref(), Some("mdm-gateway"));

    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, command_id);
    assert_eq!(handled[0].1, "DeviceInformation");
    let (_, status) = h.get(&format!("/v1/commands/{command_id}")).await;
    assert_eq!(status["status"], "acknowledged", "{status}");

    // The stored command carries the key derived from the stream sequence: the same request over
    // HTTP with that key is the same command.
    let (code, again) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": id, "command": { "type": "device_info" }, "idempotency_key": "nats:MDM_COMMANDS:1" }),
        )
        .await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["command_id"], command_id.as_str());

    // Work-queue retention: the acknowledged command left the stream.
    let mut stream = stream;
    assert_eq!(stream.info().await.expect("info").state.messages, 0);
    // And its events reach the events stream.
    let (events, on_stream) = all_on_stream(&h, &js).await;
    assert_exactly_once(&events, &on_stream);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_are_rejected_once_and_not_redelivered() {
    let Some(nats) = NatsServer::start() else { return };
    let h = start(&nats).await;
    let dev = h.device("7E57AB1E-0000-4000-8000-00000000A704");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let js = jetstream::new(nats.client().await);
    let stream = commands_stream(&js).await;
    let before = h.snapshot(&[]).await;
    let rejected_before = h.metric("mdm_nats_commands_total", "outcome=\"rejected\"").await;

    let not_json = publish(&js, b"{not json", None).await;
    let unknown_device = publish(
        &js,
        json!({ "device_id": "apple:NO-SUCH-DEVICE", "command": { "type": "device_info" } }).to_string().as_bytes(),
        Some("bad-device-1"),
    )
    .await;
    let bad_command = publish(
        &js,
        json!({ "device_id": id, "command": { "type": "teleport" }, "idempotency_key": "k-teleport" })
            .to_string()
            .as_bytes(),
        None,
    )
    .await;

    let rejected = |all: Vec<(String, String, Value)>| -> Vec<(String, String, Value)> {
        all.into_iter().filter(|(_, _, b)| b["type"] == "command.rejected").collect()
    };
    let got = eventually(Duration::from_secs(20), || async {
        let r = rejected(read_all(&js, "MDM_EVENTS").await);
        (r.len() >= 3).then_some(r)
    })
    .await
    .expect("three command.rejected events");
    let by_seq: BTreeMap<u64, &(String, String, Value)> =
        got.iter().map(|m| (m.2["data"]["nats"]["sequence"].as_u64().expect("sequence"), m)).collect();

    let (subject, msg_id, body) = by_seq[&not_json.sequence];
    assert_eq!(subject, "mdm.events.unknown.command.rejected");
    assert_eq!(msg_id, body["id"].as_str().expect("id"), "Nats-Msg-Id = event id");
    assert_eq!(body["data"]["error"]["code"], "invalid_json");
    assert_eq!(body["data"]["status"], 400);
    assert_eq!(body["device_id"], Value::Null);

    let (subject, _, body) = by_seq[&unknown_device.sequence];
    assert_eq!(subject, "mdm.events.apple.command.rejected");
    assert_eq!(body["data"]["error"]["code"], "device_not_found");
    assert_eq!(body["data"]["status"], 404);
    assert_eq!(body["data"]["nats"]["msg_id"], "bad-device-1");
    assert_eq!(body["data"]["idempotency_key"], "nats-msg:bad-device-1");

    let (subject, _, body) = by_seq[&bad_command.sequence];
    assert_eq!(subject, "mdm.events.apple.command.rejected");
    assert_eq!(body["device_id"], id.as_str());
    assert_eq!(body["data"]["error"]["code"], "invalid_command");
    assert_eq!(body["data"]["idempotency_key"], "k-teleport");

    // Terminated, not redelivered: wait past several ack_wait periods (1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = consumer_drained(&stream).await;
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    assert_eq!(info.delivered.stream_sequence, bad_command.sequence);
    assert_eq!(rejected(read_all(&js, "MDM_EVENTS").await).len(), 3, "each rejection once");
    assert_eq!(h.snapshot(&[]).await, before, "nothing stored");
    assert!(h.metric("mdm_nats_commands_total", "outcome=\"rejected\"").await >= rejected_before + 3.0);
    assert!(h.events_of(&id, "command.queued").await.is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_command_publishes_queue_one_command() {
    let Some(nats) = NatsServer::start() else { return };
    let h = start(&nats).await;
    let dev = h.device("7E57AB1E-0000-4000-8000-00000000A705");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let js = jetstream::new(nats.client().await);
    let stream = commands_stream(&js).await;

    // Same Nats-Msg-Id twice: JetStream drops the second.
    let lock = json!({ "device_id": id, "command": { "type": "lock", "message": "found" } }).to_string();
    let a = publish(&js, lock.as_bytes(), Some("cmd-lock-1")).await;
    let b = publish(&js, lock.as_bytes(), Some("cmd-lock-1")).await;
    assert!(!a.duplicate);
    assert!(b.duplicate);
    // Same idempotency key under different message ids: two messages, one command.
    let restart =
        json!({ "device_id": id, "command": { "type": "restart" }, "idempotency_key": "restart-1" }).to_string();
    let c = publish(&js, restart.as_bytes(), Some("cmd-restart-a")).await;
    let d = publish(&js, restart.as_bytes(), Some("cmd-restart-b")).await;
    assert!(!c.duplicate && !d.duplicate);

    let info = consumer_drained(&stream).await;
    assert_eq!(info.delivered.stream_sequence, d.sequence);
    let queued = h.events_of(&id, "command.queued").await;
    assert_eq!(queued.len(), 2, "{queued:?}");

    // The lock got the key derived from its message id.
    let (code, again) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": id, "command": { "type": "lock", "message": "found" }, "idempotency_key": "nats-msg:cmd-lock-1" }),
        )
        .await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["command_id"], queued[0]["command_id"]);

    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    let types: Vec<&str> = handled.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, ["DeviceLock", "RestartDevice"], "each command delivered once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_commands_in_flight_and_flushes_their_events() {
    let Some(nats) = NatsServer::start() else { return };
    let url = nats.url();
    let h = Harness::start_with(move |c| {
        let mut n = NatsConfig::new(url);
        n.max_backoff_ms = 300;
        // Long enough that a message left half-handled would still show as pending below.
        n.ack_wait_s = 60;
        c.nats = Some(n);
    })
    .await;
    let dev = h.device("7E57AB1E-0000-4000-8000-00000000A706");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");
    let js = jetstream::new(nats.client().await);
    let stream = commands_stream(&js).await;
    // Wait until the intake pulls, so the shutdown below interrupts real work.
    eventually(Duration::from_secs(15), || async {
        let info = stream.consumer_info("mdm-gateway").await.ok()?;
        (info.num_waiting > 0).then_some(())
    })
    .await
    .expect("the intake is pulling");

    const N: u64 = 40;
    for i in 0..N {
        let body = json!({ "device_id": id, "command": { "type": "restart" }, "idempotency_key": format!("sd-{i}") });
        publish(&js, body.to_string().as_bytes(), None).await;
    }
    h.stop().await;

    let info = stream.consumer_info("mdm-gateway").await.expect("consumer");
    assert_eq!(info.num_ack_pending, 0, "every delivered command was answered before exit: {info:?}");
    let stored = info.ack_floor.stream_sequence;
    assert_eq!(stored + info.num_pending, N, "the rest waits on the stream for another instance: {info:?}");
    assert!(stored > 0, "some commands were handled before the shutdown");
    eprintln!("stored before exit: {stored} of {N}");
    // Every command stored before exit has its command.queued on NATS: relays flush after the intake stops.
    let queued = read_all(&js, "MDM_EVENTS")
        .await
        .into_iter()
        .filter(|(s, _, _)| s == "mdm.events.apple.command.queued")
        .count();
    assert_eq!(queued as u64, stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_starts_and_serves_devices_before_nats_is_up() {
    let Some(mut nats) = NatsServer::start() else { return };
    nats.stop();
    let h = start(&nats).await;
    let dev = h.device("7E57AB1E-0000-4000-8000-00000000A707");
    dev.enroll().await.expect("enrolls while NATS has never been reachable");
    let unready = eventually(Duration::from_secs(15), || async {
        let (code, ready) = readyz(&h).await;
        (code == 503 && sink(&ready, "nats")["failing"] == true && sink(&ready, "nats-commands")["failing"] == true)
            .then_some(())
    })
    .await;
    assert!(unready.is_some(), "both NATS parts report failing");

    nats.restart();
    let js = jetstream::new(nats.client().await);
    let (events, on_stream) = all_on_stream(&h, &js).await;
    assert_exactly_once(&events, &on_stream);
    // The intake came up too: a command published now is queued.
    let stream = commands_stream(&js).await;
    let id = format!("apple:{}", dev.udid);
    publish(&js, json!({ "device_id": id, "command": { "type": "device_info" } }).to_string().as_bytes(), None).await;
    consumer_drained(&stream).await;
    assert_eq!(h.events_of(&id, "command.queued").await.len(), 1);
    h.stop().await;
}
