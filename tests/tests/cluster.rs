//! Two gateway instances in one process on one PostgreSQL schema (docs/scale-out.md): one relay
//! per sink and failover when its holder stops, Android commands sent to AMAPI once, an
//! abandoned claim reported interrupted, a push certificate uploaded on one instance used by the
//! other, and a long poll on one instance woken by an event appended on the other.
//!
//! Needs `MDM_TEST_POSTGRES_URL` (`bash .ci/pg-setup.sh` prints one); fails without it unless
//! `MDM_SKIP_POSTGRES=1`. (Killed processes and outages are tested elsewhere.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mdm_conformance::android::{DeviceSpec, EmulatorConfig};
use mdm_core::DeviceId;
use mdm_gateway::config::{Config, WebhookConfig, WebhookFormat};
use mdm_gateway::store::suite::PostgresSchema;
use mdm_gateway::store::{Enrollment, EnrollmentState, PoolSettings, PostgresStore, Store};
use mdm_tests::android::{AMAPI_TOPIC, AmapiFixture};
use mdm_tests::webhook::WebhookReceiver;
use mdm_tests::{Harness, eventually, unix_now};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
/// Short leases so that takeovers happen within a test (renewed every ~670 ms).
const LEASE_TTL_S: u64 = 2;

/// An instance on `schema` named `id`.
async fn instance(schema: &PostgresSchema, id: &str, adjust: impl FnOnce(&mut Config)) -> Harness {
    let url = schema.url.clone();
    Harness::start_with(|c| {
        c.store.url = Some(url);
        c.store.max_connections = 6;
        c.cluster.instance_id = Some(id.to_owned());
        c.cluster.lease_ttl_s = LEASE_TTL_S;
        adjust(c);
    })
    .await
}

/// The holder of lease `name`, as the store has it.
async fn holder(h: &Harness, name: &str) -> Option<String> {
    let now = unix_now() * 1000;
    h.gateway()
        .state
        .store
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.name == name && l.expires_at_ms > now)
        .map(|l| l.holder)
}

async fn until_holder(h: &Harness, name: &str, want: &str) {
    let got = eventually(WAIT, || async { (holder(h, name).await.as_deref() == Some(want)).then_some(()) }).await;
    assert!(got.is_some(), "lease {name} never held by {want} (now {:?})", holder(h, name).await);
}

/// An enrolled Apple device stored directly (the store is shared: both instances know it).
async fn apple_device(h: &Harness, udid: &str) -> String {
    let id: DeviceId = format!("apple:{udid}").parse().expect("id");
    let mut e = Enrollment::new(id.clone(), unix_now());
    e.state = EnrollmentState::Enrolled;
    h.gateway().state.store.save_enrollment(&e, &[]).await.expect("save");
    id.as_str().to_owned()
}

async fn queue(h: &Harness, device: &str, command: Value) -> String {
    let (code, r) = h.post("/v1/commands", &json!({"device_id": device, "command": command, "nopush": true})).await;
    assert_eq!(code, 202, "{r}");
    r["command_id"].as_str().expect("command_id").to_owned()
}

/// Waits until the receiver got as many events as the log holds; returns them by id with their
/// delivery count.
async fn delivered_once(h: &Harness, hook: &WebhookReceiver) -> HashMap<String, usize> {
    let logged: Vec<String> = h.events().await.iter().map(|e| e["id"].as_str().expect("id").to_owned()).collect();
    let all = eventually(WAIT, || async {
        let bodies = hook.bodies();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for b in &bodies {
            *counts.entry(b["id"].as_str().expect("id").to_owned()).or_default() += 1;
        }
        logged.iter().all(|id| counts.contains_key(id)).then_some(counts)
    })
    .await
    .unwrap_or_else(|| panic!("not every logged event reached the webhook: {} logged", logged.len()));
    // A little longer, so that a second relay (if any) would have sent its copies too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for b in hook.bodies() {
        *counts.entry(b["id"].as_str().expect("id").to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events delivered more than once: {twice:?}");
    assert_eq!(counts.len(), all.len());
    counts
}

fn webhook(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.to_owned(),
        format: WebhookFormat::Event,
        hmac_secret_file: None,
        timeout_ms: 2_000,
        max_backoff_ms: 200,
    }
}

/// Both instances have the webhook sink; one relays, the other stands by; when the relaying
/// one stops, the other takes over from the saved cursor, and every event arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_per_sink_and_failover() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let hook = WebhookReceiver::start(0).await;
    let a = instance(&schema, "inst-a", |c| c.webhook = Some(webhook(&hook.url))).await;
    until_holder(&a, "relay:webhook", "inst-a").await;
    let b = instance(&schema, "inst-b", |c| c.webhook = Some(webhook(&hook.url))).await;
    until_holder(&b, "instance:inst-b", "inst-b").await;

    let dev = apple_device(&a, "CLUSTER-RELAY-1").await;
    for i in 0..10 {
        let h = if i % 2 == 0 { &a } else { &b };
        queue(h, &dev, json!({"type": "device_info"})).await;
    }
    let first = delivered_once(&a, &hook).await;
    assert_eq!(first.len(), 10, "ten command.queued events");
    assert_eq!(holder(&b, "relay:webhook").await.as_deref(), Some("inst-a"), "b stood by");
    // Only the holder moved the cursor: b's relay never ran.
    let cursor = b.gateway().state.store.sink_cursor("webhook").await.expect("cursor");
    assert_eq!(cursor, b.gateway().state.store.last_event_seq().await.expect("seq"));

    // The holder stops (releasing its leases): b takes over within a beat.
    let stopped = Instant::now();
    a.stop().await;
    until_holder(&b, "relay:webhook", "inst-b").await;
    assert!(stopped.elapsed() < Duration::from_secs(LEASE_TTL_S + 3), "{:?}", stopped.elapsed());
    for _ in 0..5 {
        queue(&b, &dev, json!({"type": "device_info"})).await;
    }
    let all = delivered_once(&b, &hook).await;
    assert_eq!(all.len(), 15, "the old ones once, the new ones once");
    b.stop().await;
}

struct Amapi {
    fixture: AmapiFixture,
    enterprise: String,
}

impl std::ops::Deref for Amapi {
    type Target = AmapiFixture;
    fn deref(&self) -> &AmapiFixture {
        &self.fixture
    }
}

async fn amapi() -> Amapi {
    let fixture = AmapiFixture::start(EmulatorConfig::default()).await;
    let enterprise = fixture
        .emu
        .create_enterprise(Some(AMAPI_TOPIC), &["ENROLLMENT", "STATUS_REPORT", "COMMAND"])
        .expect("enterprise");
    Amapi { fixture, enterprise }
}

fn with_amapi(c: &mut Config, a: &Amapi) {
    a.configure(c, Some(&a.enterprise));
}

/// A device enrolled in the emulator and stored: (gateway id, AMAPI name).
async fn android_device(store: &dyn Store, a: &Amapi, n: u64) -> (DeviceId, String) {
    let token = a.emu.create_enrollment_token(&a.enterprise, &json!({"policyName": "default"})).expect("token");
    let name = a.emu.enroll_device(token["value"].as_str().expect("value"), &DeviceSpec::numbered(n)).expect("enroll");
    let parts: Vec<&str> = name.split('/').collect();
    let id: DeviceId = format!("android:{}:{}", parts[1], parts[3]).parse().expect("device id");
    let mut e = Enrollment::new(id.clone(), unix_now());
    e.state = EnrollmentState::Enrolled;
    store.save_enrollment(&e, &[]).await.expect("save enrollment");
    (id, name)
}

async fn until_status(h: &Harness, command_id: &str, status: &str) -> Value {
    until_any_status(h, command_id, &[status]).await
}

async fn until_any_status(h: &Harness, command_id: &str, statuses: &[&str]) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let got = eventually(WAIT, || async {
        let (_, c) = h.get(&format!("/v1/commands/{command_id}")).await;
        *last.lock().unwrap() = c.clone();
        statuses.iter().any(|s| c["status"] == *s).then_some(c)
    })
    .await;
    got.unwrap_or_else(|| panic!("command {command_id} not {statuses:?}: {}", last.lock().unwrap()))
}

/// Commands queued through both instances at once: both dispatchers run, each command is
/// claimed by one and sent to AMAPI exactly once; the AMAPI budget is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_commands_are_issued_once() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let a_api = amapi().await;
    let a = instance(&schema, "inst-a", |c| with_amapi(c, &a_api)).await;
    let b = instance(&schema, "inst-b", |c| with_amapi(c, &a_api)).await;
    let mut devices = Vec::new();
    for n in 0..4 {
        devices.push(android_device(a.gateway().state.store.as_ref(), &a_api, n + 1).await);
    }
    let posts = (0..24).map(|i| {
        let h = if i % 2 == 0 { &a } else { &b };
        let device = devices[i % devices.len()].0.as_str().to_owned();
        let kind = if i % 3 == 0 { "lock" } else { "restart" };
        async move { queue(h, &device, json!({"type": kind})).await }
    });
    let ids = futures_util::future::join_all(posts).await;
    // Sent, then possibly resolved by the reconcile (`operations.get`) already.
    let after_send = ["sent", "acknowledged"];
    for id in &ids {
        until_any_status(&a, id, &after_send).await;
    }
    let issued = a_api.emu.requests_matching("POST", ":issueCommand");
    assert_eq!(issued.len(), ids.len(), "each command issued once: {} calls for {} commands", issued.len(), ids.len());
    // Each sent once, bound to an operation of its own.
    let store = a.gateway().state.store.clone();
    let mut operations = std::collections::HashSet::new();
    for id in &ids {
        let (_, c) = a.get(&format!("/v1/commands/{id}")).await;
        assert!(after_send.iter().any(|s| c["status"] == *s), "{c}");
        let records = store.command(id).await.expect("command");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].sent_count, 1, "{:?}", records[0]);
    }
    for (_, name) in &devices {
        for r in a_api.emu.requests_matching("POST", name) {
            operations.insert(r.path.clone());
        }
    }
    let sent_events: Vec<Value> = a.events().await.into_iter().filter(|e| e["type"] == "command.sent").collect();
    assert_eq!(sent_events.len(), ids.len(), "one command.sent each");
    let ops: std::collections::HashSet<&str> =
        sent_events.iter().map(|e| e["data"]["operation"].as_str().expect("operation")).collect();
    assert_eq!(ops.len(), ids.len(), "distinct operations");
    assert!(!operations.is_empty());
    let (_, status) = b.get("/v1/android/status").await;
    assert_eq!(status["budget"]["limit"], 1000, "{status}");
    a.stop().await;
    b.stop().await;
}

/// A command claimed by an instance that died before storing AMAPI's answer: the issueCommand
/// is reported interrupted (not sent again); a read (devices.get) is queued again and sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_claims_are_interrupted_or_requeued() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let a_api = amapi().await;
    // What the dead instance left behind, written before any live instance starts.
    let store = PostgresStore::open(&schema.url, PoolSettings::default()).await.expect("store");
    let (device, name) = android_device(&store, &a_api, 7).await;
    let now = unix_now();
    let mut queued = Vec::new();
    for (command_id, command) in [("lock-1", json!({"type": "lock"})), ("info-1", json!({"type": "device_info"}))] {
        let parsed: mdm_core::Command = serde_json::from_value(command.clone()).expect("command");
        let call = mdm_android::command::translate(&parsed, &device).expect("translate");
        queued.push(mdm_gateway::store::NewCommand {
            command_id: command_id.into(),
            device_id: device.clone(),
            request_type: call.request_type(),
            normalised: Some(command),
            payload: serde_json::to_vec(&call).expect("json"),
            priority: 0,
            expires_at: None,
            idempotency_key: None,
            created_at: now,
        });
    }
    store.enqueue(&queued, &[]).await.expect("enqueue");
    // Its heartbeat lapsed long ago.
    assert!(store.acquire_lease("instance:dead", "dead", 1_000, 1_000).await.expect("heartbeat"));
    assert_eq!(store.claim_android_commands("dead", now, 10).await.expect("claim").len(), 2);

    let h = instance(&schema, "inst-live", |c| with_amapi(c, &a_api)).await;
    let lock = until_status(&h, "lock-1", "error").await;
    assert_eq!(lock["error"]["code"], "dispatch_interrupted", "{lock}");
    assert!(lock["error"]["message"].as_str().expect("message").contains("outcome unknown"), "{lock}");
    let info = until_status(&h, "info-1", "acknowledged").await;
    assert_eq!(info["result"]["name"], name.as_str(), "{info}");
    assert!(a_api.emu.requests_matching("POST", ":issueCommand").is_empty(), "the lock was not sent blindly again");
    assert_eq!(a_api.emu.requests_matching("GET", &name).len(), 1);
    let errors = h.events_of(device.as_str(), "command.error").await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["command_id"], "lock-1");
    assert_eq!(errors[0]["data"]["error"]["code"], "dispatch_interrupted");
    store.close().await;
    h.stop().await;
}

/// A push certificate uploaded through one instance is used by the other's push pools at once
/// (not after their 30-second re-read), through PostgreSQL NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_certificate_uploaded_on_one_instance_is_used_by_the_other() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let (apns, _deliveries) =
        mdm_conformance::apns::ApnsEmulator::start("127.0.0.1:0".parse().expect("addr")).await.expect("emulator");
    let dir = tempfile::tempdir().expect("tmp");
    let ca_path = dir.path().join("apns-ca.pem");
    std::fs::write(&ca_path, apns.server_ca_pem()).expect("write CA");
    let with_apns = |c: &mut Config| {
        c.apple.apns_url = apns.url();
        c.apple.apns_ca = Some(ca_path.clone());
        c.apple.push_timeout_ms = 5_000;
    };
    let a = instance(&schema, "inst-a", with_apns).await;
    let b = instance(&schema, "inst-b", with_apns).await;
    let topic = "com.apple.mgmt.External.cluster";
    let mut dev = a.device("C1C1C1C1-0000-4000-8000-00000000C1C1");
    dev.topic = topic.into();
    dev.enroll().await.expect("enrolls through a");

    // b has looked: no certificate (and would keep that answer for 30 s).
    let (code, r) = b.get(&format!("/v1/push/{}", dev.udid)).await;
    assert_eq!(code, 500, "{r}");
    assert!(r.to_string().contains("no push certificate") || r.to_string().contains("certificate"), "{r}");

    let (cert, key) = apns.issue_push_certificate(topic, unix_now() + 365 * 86_400).expect("push cert");
    let (code, r) = a.put_bytes("/v1/pushcert", format!("{cert}{key}").into_bytes()).await;
    assert_eq!(code, 200, "{r}");
    let uploaded = Instant::now();
    let pushed = eventually(Duration::from_secs(10), || async {
        let (code, r) = b.get(&format!("/v1/push/{}", dev.udid)).await;
        (code == 200).then_some(r)
    })
    .await
    .expect("b pushes with the certificate a stored");
    assert!(uploaded.elapsed() < Duration::from_secs(10), "{:?}", uploaded.elapsed());
    assert!(pushed["status"][&dev.udid]["push_result"].is_string(), "{pushed}");
    let seen = apns.control().seen_for(&hex::encode(&dev.push_token));
    assert_eq!(seen.len(), 1, "one push reached APNs");
    assert_eq!(seen[0].client_topic, topic, "with the uploaded certificate");
    a.stop().await;
    b.stop().await;
    apns.stop().await;
}

/// A long poll of `/v1/events` on one instance returns as soon as the other appends an event
/// (there is no idle poll for long polls: without the wake-up it would wait its full time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_is_woken_by_an_event_on_the_other_instance() {
    let Some(schema) = PostgresSchema::create().await else { return };
    let a = instance(&schema, "inst-a", |_| {}).await;
    let b = instance(&schema, "inst-b", |_| {}).await;
    let dev = apple_device(&a, "CLUSTER-POLL-1").await;
    queue(&a, &dev, json!({"type": "device_info"})).await;
    let (_, page) = b.get("/v1/events?after=0&limit=1000").await;
    let mut after = page["next"].as_str().expect("next").to_owned();

    // Several rounds: each wake-up must come from the other instance's commit.
    for round in 0..3 {
        let poll = {
            let (api, key, after) = (b.api_url.clone(), b.api_key.clone(), after.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let r: Value = reqwest::Client::new()
                    .get(format!("{api}/v1/events?after={after}&wait=25"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .expect("poll")
                    .json()
                    .await
                    .expect("json");
                (started.elapsed(), r)
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let id = queue(&a, &dev, json!({"type": "device_info"})).await;
        let (took, r) = poll.await.expect("poll task");
        assert!(took < Duration::from_secs(5), "round {round}: the long poll waited {took:?}");
        let events = r["events"].as_array().expect("events");
        assert_eq!(events.len(), 1, "{r}");
        assert_eq!(events[0]["command_id"], id.as_str());
        let (_, page) = b.get(&format!("/v1/events?after={}", r["next"].as_str().expect("next"))).await;
        assert!(page["events"].as_array().expect("events").is_empty());
        after = r["next"].as_str().expect("next").to_owned();
    }
    a.stop().await;
    b.stop().await;
}
