//! APNs push end to end: the gateway's push client against the APNs emulator over real TLS
//! (the push certificate as client certificate), emulated devices that run a session when their
//! push arrives, and each APNs failure the gateway must handle.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mdm_conformance::apns::{ApnsEmulator, PushDelivery, TokenMark};
use mdm_conformance::apple::AppleDevice;
use mdm_gateway::config::Config;
use mdm_tests::{Harness, eventually, unix_now};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

const TOPIC: &str = "com.apple.mgmt.External.emulated";
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    h: Harness,
    apns: ApnsEmulator,
    deliveries: Option<UnboundedReceiver<PushDelivery>>,
    _dir: tempfile::TempDir,
}

/// An APNs emulator, a gateway pointed at it, and a push certificate for [`TOPIC`] uploaded.
async fn setup(adjust: impl FnOnce(&mut Config)) -> Setup {
    let (h, apns, deliveries, dir) = mdm_tests::start_with_apns(adjust).await;
    let s = Setup { h, apns, deliveries: Some(deliveries), _dir: dir };
    let (code, r) = s.upload_cert(TOPIC, unix_now() + 365 * 86_400, "").await;
    assert_eq!(code, 200, "{r}");
    s
}

impl Setup {
    async fn upload_cert(&self, topic: &str, not_after: i64, query: &str) -> (u16, Value) {
        let (cert, key) = self.apns.issue_push_certificate(topic, not_after).expect("push cert");
        self.h.put_bytes(&format!("/v1/pushcert{query}"), format!("{cert}{key}").into_bytes()).await
    }

    async fn enrolled(&self, udid: &str) -> Arc<AppleDevice> {
        let d = self.h.device(udid);
        d.enroll().await.expect("enroll");
        Arc::new(d)
    }

    /// Every delivery wakes the device owning the token, which runs a session answering
    /// everything `Acknowledged`. Returns the task; it ends when the emulator stops.
    fn run_fleet(&mut self, devices: &[Arc<AppleDevice>]) -> JoinHandle<()> {
        let mut rx = self.deliveries.take().expect("deliveries not taken yet");
        let by_token: HashMap<String, Arc<AppleDevice>> =
            devices.iter().map(|d| (hex::encode(&d.push_token), d.clone())).collect();
        tokio::spawn(async move {
            while let Some(push) = rx.recv().await {
                let Some(device) = by_token.get(&push.token_hex).cloned() else { continue };
                assert_eq!(push.push_magic, device.push_magic, "the push carries the device's PushMagic");
                tokio::spawn(async move {
                    device.session(|_| "Acknowledged").await.expect("session after push");
                });
            }
        })
    }

    async fn next_delivery(&mut self) -> PushDelivery {
        let rx = self.deliveries.as_mut().expect("deliveries");
        tokio::time::timeout(WAIT, rx.recv()).await.expect("a push within the wait").expect("emulator running")
    }

    async fn command(&self, device: &AppleDevice, body: Value) -> String {
        let mut req = json!({ "device_id": format!("apple:{}", device.udid), "command": { "type": "device_info" } });
        if let (Some(r), Some(extra)) = (req.as_object_mut(), body.as_object()) {
            r.extend(extra.clone());
        }
        let (code, r) = self.h.post("/v1/commands", &req).await;
        assert_eq!(code, 202, "{r}");
        r["command_id"].as_str().expect("command id").to_owned()
    }

    /// One `device_info` per device, all posted concurrently.
    async fn commands_at_once(&self, devices: &[Arc<AppleDevice>]) -> Vec<String> {
        let mut posts = tokio::task::JoinSet::new();
        for d in devices {
            let (api, key, d) = (self.h.api_url.clone(), self.h.api_key.clone(), d.clone());
            posts.spawn(async move {
                let body = json!({ "device_id": format!("apple:{}", d.udid), "command": { "type": "device_info" } });
                let resp = reqwest::Client::new()
                    .post(format!("{api}/v1/commands"))
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .expect("post");
                assert_eq!(resp.status().as_u16(), 202);
                let r: Value = resp.json().await.expect("json");
                r["command_id"].as_str().expect("id").to_owned()
            });
        }
        let mut ids = Vec::new();
        while let Some(id) = posts.join_next().await {
            ids.push(id.expect("post task"));
        }
        ids
    }

    async fn wait_status(&self, command_id: &str, status: &str) {
        let got = eventually(WAIT, || async {
            let (_, c) = self.h.get(&format!("/v1/commands/{command_id}")).await;
            (c["status"] == status).then_some(())
        })
        .await;
        assert!(got.is_some(), "command {command_id} did not become {status}");
    }

    async fn device_json(&self, udid: &str) -> Value {
        let (code, d) = self.h.get(&format!("/v1/devices/apple:{udid}")).await;
        assert_eq!(code, 200, "{d}");
        d
    }

    async fn stop(self) {
        self.h.stop().await;
        self.apns.stop().await;
    }
}

fn token_hex(d: &AppleDevice) -> String {
    hex::encode(&d.push_token)
}

fn udid(i: usize) -> String {
    format!("A9B8C7D6-0000-4000-8000-{i:012}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_pushes_and_the_device_answers() {
    let mut s = setup(|_| {}).await;
    let dev = s.enrolled(&udid(1)).await;
    let before = unix_now();
    let id = s.command(&dev, json!({})).await;

    let push = s.next_delivery().await;
    assert_eq!(push.token_hex, token_hex(&dev));
    assert_eq!(push.push_magic, dev.push_magic);
    assert_eq!(push.topic, TOPIC);
    let seen = s.apns.control().seen_for(&token_hex(&dev));
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!((req.method.as_str(), req.status), ("POST", 200));
    assert_eq!(req.header("apns-push-type"), Some("mdm"));
    assert_eq!(req.header("apns-topic"), Some(TOPIC));
    assert_eq!(req.header("apns-priority"), Some("10"));
    let expiration: i64 = req.header("apns-expiration").expect("expiration").parse().expect("integer");
    assert!((before + 86_400..=unix_now() + 86_400).contains(&expiration), "{expiration}");
    assert_eq!(serde_json::from_slice::<Value>(&req.body).expect("json"), json!({ "mdm": dev.push_magic }));
    assert_eq!(req.client_topic, TOPIC, "the push certificate was the TLS client certificate");
    assert_eq!(push.apns_id, req.apns_id);

    // The device wakes on the push and answers.
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].0, id);
    s.wait_status(&id, "acknowledged").await;

    // `nopush`: queued, nobody woken.
    let quiet = s.command(&dev, json!({ "nopush": true })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(s.apns.control().seen_for(&token_hex(&dev)).len(), 1, "no push for nopush");
    s.wait_status(&quiet, "queued").await;
    let metrics = s.h.metrics_text().await;
    assert!(mdm_tests::metric_value(&metrics, "mdm_pushes_total", "result=\"delivered\"") >= 1.0, "{metrics}");
    assert!(metrics.contains("mdm_apns_connections{topic=\"com.apple.mgmt.External.emulated\"}"), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_at_once_all_get_their_command() {
    let mut s = setup(|_| {}).await;
    let mut devices = Vec::new();
    for i in 0..50 {
        devices.push(s.enrolled(&udid(100 + i)).await);
    }
    let _fleet = s.run_fleet(&devices);
    let ids = s.commands_at_once(&devices).await;
    for id in &ids {
        s.wait_status(id, "acknowledged").await;
    }
    let stats = s.apns.control().stats();
    assert_eq!(stats.accepted, 50, "{stats:?}");
    assert!(stats.connections <= 2, "pushes share the pool's connections: {stats:?}");
    s.stop().await;
}

/// `/v1/push` waits for APNs: after `n` answers of `status`, the retry succeeds.
async fn retried_after(status: u16, reason: &str) {
    let s = setup(|_| {}).await;
    let dev = s.enrolled(&udid(200)).await;
    s.apns.control().fail_next(2, status);
    let (code, r) = s.h.get(&format!("/v1/push/{}", dev.udid)).await;
    assert_eq!(code, 200, "{r}");
    let seen = s.apns.control().recent();
    assert_eq!(seen.iter().map(|r| r.status).collect::<Vec<_>>(), [status, status, 200]);
    assert_eq!(r["status"][&dev.udid]["push_result"], seen[2].apns_id.as_str(), "{r}");
    assert_eq!(s.apns.control().stats().refused.get(reason), Some(&2));
    assert!(s.h.events_of(&format!("apple:{}", dev.udid), "push.failed").await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_is_retried() {
    retried_after(429, "TooManyRequests").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_server_error_is_retried() {
    retried_after(500, "InternalServerError").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_failure_gives_up_with_an_event() {
    let s = setup(|_| {}).await;
    let dev = s.enrolled(&udid(250)).await;
    s.apns.control().fail_next(100, 503);
    let (code, r) = s.h.get(&format!("/v1/push/{}", dev.udid)).await;
    assert_eq!(code, 500, "{r}");
    let err = r["status"][&dev.udid]["push_error"].as_str().expect("push_error");
    assert!(err.contains("ServiceUnavailable") && err.contains("5 attempts"), "{err}");
    assert_eq!(s.apns.control().stats().requests, 5, "bounded attempts");
    let events = s.h.events_of(&format!("apple:{}", dev.udid), "push.failed").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["reason"], "ServiceUnavailable");
    assert_eq!(events[0]["data"]["status"], 503);
    // Not the token's fault: the device is not marked.
    assert!(s.device_json(&dev.udid).await["enrollment"].get("push_token_invalid").is_none());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_midway_loses_no_push() {
    let mut s = setup(|_| {}).await;
    let mut devices = Vec::new();
    for i in 0..30 {
        devices.push(s.enrolled(&udid(300 + i)).await);
    }
    s.apns.control().goaway_after(Some(4));
    let _fleet = s.run_fleet(&devices);
    // All at once, so streams are in flight on a connection when its GOAWAY arrives.
    let ids = s.commands_at_once(&devices).await;
    for id in &ids {
        s.wait_status(id, "acknowledged").await;
    }
    let stats = s.apns.control().stats();
    // 30 pushes over at most 2 connections: one of them passed 4 requests and was told to go.
    assert!(stats.goaways >= 1, "{stats:?}");
    let mut woken: Vec<String> =
        s.apns.control().recent().into_iter().filter(|r| r.status == 200).map(|r| r.path).collect();
    woken.sort();
    woken.dedup();
    assert_eq!(woken.len(), 30, "every device was pushed");

    // Then one push at a time: whether the first wave's streams were all in flight before a
    // GOAWAY arrived depends on timing, but here every connection is told to go after 4
    // requests, so 12 sequential pushes need new connections, each opened after a GOAWAY.
    let before = s.apns.control().stats();
    for d in &devices[..12] {
        let id = s.command(d, json!({})).await;
        s.wait_status(&id, "acknowledged").await;
    }
    let after = s.apns.control().stats();
    assert_eq!(after.accepted - before.accepted, 12, "{after:?}");
    assert!(after.connections >= before.connections + 2, "the pool reconnected after GOAWAY: {before:?} → {after:?}");
    assert!(after.goaways > before.goaways, "{after:?}");
    // Whether a stream was caught in flight by a GOAWAY (and retried on a new connection)
    // depends on timing; run alone, this test fails without the retry (checked by setting
    // MAX_ATTEMPTS to 1), but that is not asserted here because it is not deterministic.
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refusals_mark_the_device_until_token_update() {
    let s = setup(|_| {}).await;
    let bad = s.enrolled(&udid(400)).await;
    let gone = s.enrolled(&udid(401)).await;
    s.apns.control().mark_token(&token_hex(&bad), TokenMark::BadDeviceToken);
    s.apns.control().mark_token(&token_hex(&gone), TokenMark::Unregistered);

    let (code, r) = s.h.get(&format!("/v1/push/{},{}", bad.udid, gone.udid)).await;
    assert_eq!(code, 500, "{r}");
    assert!(r["status"][&bad.udid]["push_error"].as_str().expect("err").contains("400 BadDeviceToken"), "{r}");
    assert!(r["status"][&gone.udid]["push_error"].as_str().expect("err").contains("410 Unregistered"), "{r}");
    assert_eq!(s.apns.control().stats().requests, 2, "no retry for token refusals");

    for (dev, reason, status) in [(&bad, "BadDeviceToken", 400), (&gone, "Unregistered", 410)] {
        let events = s.h.events_of(&format!("apple:{}", dev.udid), "push.failed").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["data"]["reason"], reason);
        assert_eq!(events[0]["data"]["status"], status);
        assert_eq!(events[0]["data"]["token_invalid"], true);
        assert!(events[0]["data"]["apns_id"].is_string());
        let d = s.device_json(&dev.udid).await;
        assert_eq!(d["enrollment"]["push_token_invalid"], true, "{d}");
        assert_eq!(d["enrollment"]["push_token_invalid_reason"], reason, "{d}");
    }

    // Refused fast: APNs is not asked again, and the error says why and what fixes it.
    let cmd = s.command(&gone, json!({})).await;
    let (code, r) = s.h.get(&format!("/v1/push/{}", gone.udid)).await;
    assert_eq!(code, 500);
    let err = r["status"][&gone.udid]["push_error"].as_str().expect("err");
    assert!(err.contains("Unregistered") && err.contains("TokenUpdate"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.apns.control().stats().requests, 2, "refused without asking APNs");
    assert_eq!(
        s.h.events_of(&format!("apple:{}", gone.udid), "push.failed").await.len(),
        1,
        "no event per refused push"
    );

    // A TokenUpdate brings the device back.
    s.apns.control().clear_token(&token_hex(&gone));
    let r = gone.send_checkin(gone.token_update_message(None)).await.expect("token update");
    assert_eq!(r.status, 200);
    assert!(s.device_json(&gone.udid).await["enrollment"].get("push_token_invalid").is_none());
    let (code, r) = s.h.get(&format!("/v1/push/{}", gone.udid)).await;
    assert_eq!(code, 200, "{r}");
    gone.session(|_| "Acknowledged").await.expect("session");
    s.wait_status(&cmd, "acknowledged").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_certificate_rules() {
    let s = setup(|_| {}).await;
    let year = unix_now() + 365 * 86_400;

    let (code, r) = s.upload_cert("com.example.not-mdm", year, "").await;
    assert_eq!(code, 500);
    assert!(r["error"].as_str().expect("error").contains("not an MDM topic"), "{r}");

    let (code, r) = s.upload_cert(TOPIC, unix_now() - 86_400, "").await;
    assert_eq!(code, 500);
    assert!(r["error"].as_str().expect("error").contains("expired"), "{r}");

    let other = "com.apple.mgmt.External.second";
    let (code, r) = s.upload_cert(other, year, "").await;
    assert_eq!(code, 500);
    let e = r["error"].as_str().expect("error");
    assert!(e.contains("differs from the stored topic") && e.contains(TOPIC) && e.contains("?add=1"), "{r}");
    let (_, got) = s.h.get("/v1/pushcert").await;
    assert_eq!(got["push_certs"].as_array().map(Vec::len), Some(1), "refusals store nothing: {got}");

    // An additional topic on purpose; both are served at once.
    let (code, r) = s.upload_cert(other, unix_now() + 10 * 86_400 + 600, "?add=1").await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["days_left"], 10);
    assert!(r["warning"].as_str().expect("warning").contains("expires in 10 days"), "{r}");
    let (_, got) = s.h.get("/v1/pushcert").await;
    let all = got["push_certs"].as_array().expect("list");
    assert_eq!(all.len(), 2, "{got}");
    assert!(all.iter().all(|c| c["days_left"].is_i64() && c["not_after"].is_string()), "{got}");

    let first = s.enrolled(&udid(500)).await;
    let mut second = s.h.device(&udid(501));
    second.topic = other.into();
    second.enroll().await.expect("enroll");
    let (code, r) = s.h.get(&format!("/v1/push/{},{}", first.udid, second.udid)).await;
    assert_eq!(code, 200, "{r}");
    let topics: Vec<(String, String)> = s
        .apns
        .control()
        .recent()
        .into_iter()
        .map(|r| (r.client_topic.clone(), r.header("apns-topic").unwrap_or("").to_owned()))
        .collect();
    assert!(
        topics.contains(&(TOPIC.into(), TOPIC.into())) && topics.contains(&(other.into(), other.into())),
        "{topics:?}"
    );

    // Renewal (same topic) replaces the certificate, and pushes use the new one.
    let connections = s.apns.control().stats().connections;
    let (code, r) = s.upload_cert(TOPIC, year + 86_400, "").await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["renewal"], true);
    let (code, _) = s.h.get(&format!("/v1/push/{}", first.udid)).await;
    assert_eq!(code, 200);
    assert!(
        s.apns.control().stats().connections > connections,
        "a new pool (new connection) for the renewed certificate"
    );
    let metrics = s.h.metrics_text().await;
    assert!(
        metrics.contains("mdm_push_certificate_expiry_seconds{topic=\"com.apple.mgmt.External.second\"}"),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_enqueues_coalesce_into_one_push() {
    let window = Duration::from_millis(1500);
    let s = setup(|c| c.apple.push_coalesce_ms = 1500).await;
    let dev = s.enrolled(&udid(600)).await;
    let token = token_hex(&dev);
    let started = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(s.command(&dev, json!({})).await);
    }
    assert!(started.elapsed() < window / 2, "enqueues were not rapid enough for this test: {:?}", started.elapsed());
    tokio::time::sleep_until(started + window / 2 + Duration::from_millis(200)).await;
    assert_eq!(s.apns.control().seen_for(&token).len(), 1, "one push within the window");
    // The device did not fetch meanwhile, so one more push follows when the window closes.
    let two = eventually(WAIT, || async { (s.apns.control().seen_for(&token).len() >= 2).then_some(()) }).await;
    assert!(two.is_some());
    assert!(started.elapsed() >= window, "the second push waited for the window");
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled.len(), 10);
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    assert_eq!(s.apns.control().seen_for(&token).len(), 2, "nothing queued any more: no further push");

    // Two enqueues, the device fetches both after the first push: no second push.
    let a = s.command(&dev, json!({})).await;
    let b = s.command(&dev, json!({})).await;
    let three = eventually(WAIT, || async { (s.apns.control().seen_for(&token).len() == 3).then_some(()) }).await;
    assert!(three.is_some());
    assert_eq!(dev.session(|_| "Acknowledged").await.expect("session").len(), 2);
    tokio::time::sleep(window + Duration::from_millis(500)).await;
    assert_eq!(s.apns.control().seen_for(&token).len(), 3, "the device had fetched everything: no trailing push");
    s.wait_status(&a, "acknowledged").await;
    s.wait_status(&b, "acknowledged").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nanomdm_push_and_enqueue_report_apns_ids() {
    let s = setup(|_| {}).await;
    let one = s.enrolled(&udid(700)).await;
    let two = s.enrolled(&udid(701)).await;
    let plist = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors/nanomdm/enqueue_device_information.plist"),
    )
    .expect("vector");

    let (code, r) = s.h.put_bytes(&format!("/v1/enqueue/{},{}", one.udid, two.udid), plist.clone()).await;
    assert_eq!(code, 200, "{r}");
    let ids: HashMap<String, String> = s
        .apns
        .control()
        .recent()
        .into_iter()
        .map(|r| (r.path.rsplit('/').next().unwrap_or("").to_owned(), r.apns_id))
        .collect();
    for d in [&one, &two] {
        assert_eq!(r["status"][&d.udid]["push_result"], ids[&token_hex(d)].as_str(), "{r}");
        assert!(r["status"][&d.udid].get("push_error").is_none(), "{r}");
    }
    assert_eq!(r["command_uuid"], "76eda240-5488-4989-8339-f2ae160113c4");

    // One id refused by APNs, one unknown, one fine: 207 with per-id answers.
    s.apns.control().mark_token(&token_hex(&two), TokenMark::NotForTopic);
    let (code, r) = s.h.get(&format!("/v1/push/{},{},NOPE-UDID", one.udid, two.udid)).await;
    assert_eq!(code, 207, "{r}");
    assert!(r["status"][&one.udid]["push_result"].is_string(), "{r}");
    assert!(r["status"][&two.udid]["push_error"].as_str().expect("err").contains("DeviceTokenNotForTopic"), "{r}");
    assert_eq!(r["status"]["NOPE-UDID"]["push_error"], "no such enrollment", "{r}");

    // Every id failing: 500.
    let (code, r) = s.h.get(&format!("/v1/push/{}", two.udid)).await;
    assert_eq!(code, 500, "{r}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_apns_times_out_and_is_retried() {
    let s = setup(|c| c.apple.push_timeout_ms = 300).await;
    let dev = s.enrolled(&udid(800)).await;
    s.apns.control().set_delay(Duration::from_millis(1000));
    let slow = tokio::spawn({
        let api = s.h.api_url.clone();
        let key = s.h.api_key.clone();
        let udid = dev.udid.clone();
        async move {
            let resp = reqwest::Client::new()
                .get(format!("{api}/v1/push/{udid}"))
                .bearer_auth(key)
                .send()
                .await
                .expect("push");
            (resp.status().as_u16(), resp.json::<Value>().await.expect("json"))
        }
    });
    // After two timed-out attempts APNs speeds up again; a later attempt succeeds.
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.apns.control().set_delay(Duration::ZERO);
    let (code, r) = slow.await.expect("task");
    assert_eq!(code, 200, "{r}");
    assert!(r["status"][&dev.udid]["push_result"].is_string(), "{r}");
    assert!(s.h.events_of(&format!("apple:{}", dev.udid), "push.failed").await.is_empty());
    s.stop().await;
}
