//! Scale-out, end to end: three `mdm-gateway` processes on one PostgreSQL schema, one
//! `nats-server` and one shared data directory, behind a TCP balancer (TLS passes through).
//! Emulated Apple, Windows and Android devices talk to the balancer, so their connections are
//! spread over the instances; commands come through the API of one instance and through NATS
//! (`mdm.commands`). Checked on the devices' side (every command delivered once) and on the
//! stream (`MDM_EVENTS` holds every event of the store exactly once by id), also across a
//! `kill -9` of an instance, a NATS outage and a PostgreSQL outage.
//!
//! PostgreSQL is reached through a TCP proxy of the test's own, so that an outage (every
//! connection dropped, new ones refused, then back) can be made without restarting a server other
//! tests share: from the instances' side it is a database restart.
//!
//! Needs `MDM_TEST_POSTGRES_URL` (else fails, unless `MDM_SKIP_POSTGRES=1`) and `nats-server`
//! (else fails, unless `MDM_SKIP_NATS=1`).
//!
//! Until store leases elect one relay per sink, every instance relays every event: NATS drops the
//! copies by `Nats-Msg-Id`, so "exactly once on the stream" holds either way. Until queued
//! Android commands are claimed by one instance, every instance's dispatcher scans the queue;
//! the instance that took the command sends it at once, so a second send needs another
//! instance's periodic scan to fall in that moment. The assertions state the guarantee.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use mdm_conformance::android::{AmapiEmulator, DeviceSpec, DirectPublisher, EmulatorConfig, Publisher, PushMessage};
use mdm_conformance::apple::{AppleDevice, DeviceError, IdentityMode};
use mdm_conformance::windows::{DmIdentity, WindowsDevice, WindowsEnroller, WindowsEnrollerConfig};
use mdm_gateway::config::{Config, NatsConfig};
use mdm_gateway::store::suite::PostgresSchema;
use mdm_tests::balancer::Balancer;
use mdm_tests::eventually;
use mdm_tests::nats::{NatsServer, read_all};
use mdm_tests::process::{Api, DataDirCa, GatewayProcess, process_config, secret};
use serde_json::{Value, json};

const INSTANCES: usize = 3;
const PER_PLATFORM: usize = 3;
const TOPIC: &str = "projects/emulated-project/topics/amapi";
const LOCK_URI: &str = "./Device/Vendor/MSFT/RemoteLock/Lock";
const REBOOT_URI: &str = "./Device/Vendor/MSFT/Reboot/RebootNow";

struct Cluster {
    dir: tempfile::TempDir,
    data: PathBuf,
    _schema: PostgresSchema,
    nats: NatsServer,
    pg_proxy: Balancer,
    gws: Vec<GatewayProcess>,
    api: Vec<Api>,
    lb: Balancer,
    lb_url: String,
    ca: DataDirCa,
    amapi: AmapiEmulator,
    enterprise: String,
    js: jetstream::Context,
}

/// `url` with its `host:port` replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let scheme_end = url.find("://").expect("scheme") + 3;
    let rest = &url[scheme_end..];
    let host_start = rest.find('@').map(|i| i + 1).unwrap_or(0);
    let host_end = rest[host_start..].find(['/', '?']).map(|i| host_start + i).unwrap_or(rest.len());
    format!("{}{}{addr}{}", &url[..scheme_end], &rest[..host_start], &rest[host_end..])
}

fn instance_config(
    data: &Path,
    lb_url: &str,
    pg_url: &str,
    nats_url: &str,
    amapi: &AmapiEmulator,
    files: &Path,
    enterprise: &str,
) -> Config {
    let mut c = process_config(data, lb_url);
    c.store.url = Some(pg_url.to_owned());
    c.store.max_connections = 6;
    c.store.acquire_timeout_s = 2;
    let mut n = NatsConfig::new(nats_url);
    n.max_backoff_ms = 300;
    n.publish_timeout_ms = 1_000;
    n.ack_wait_s = 1;
    n.nak_delay_ms = 200;
    c.nats = Some(n);
    // As docs/load-balancer.md recommends: a NATS outage does not take every instance out.
    c.events.readiness_ignores_sinks = true;
    let a = &mut c.android;
    a.api_base_url = amapi.url();
    a.api_ca = Some(files.join("amapi-ca.pem"));
    a.service_account_key = Some(files.join("sa.json"));
    a.enterprise = Some(enterprise.to_owned());
    a.pubsub_topic = Some(TOPIC.into());
    a.request_timeout_ms = 2_000;
    a.rate_limited_wait_ms = 300;
    a.retry_base_ms = 50;
    a.retry_max_ms = 200;
    a.max_attempts = 4;
    a.reconcile_after_s = 1;
    c.shutdown.grace_period_s = 5;
    c
}

/// Three instances started together on an empty shared data directory (they agree on one CA
/// through its lock), behind a balancer whose port is the public URL. `None` when skipping.
async fn cluster() -> Option<Cluster> {
    let schema = PostgresSchema::create().await?;
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let amapi = AmapiEmulator::start(EmulatorConfig::default()).await.expect("AMAPI emulator");
    amapi.write_key(&dir.path().join("sa.json")).expect("key");
    std::fs::write(dir.path().join("amapi-ca.pem"), amapi.ca_pem()).expect("ca");
    let enterprise =
        amapi.create_enterprise(Some(TOPIC), &["ENROLLMENT", "STATUS_REPORT", "COMMAND"]).expect("enterprise");

    let pg_addr = {
        let rest = schema.url.split('@').nth(1).expect("user@host");
        let hostport = rest.split(['/', '?']).next().expect("host:port");
        tokio::net::lookup_host(hostport).await.expect("resolve").next().expect("address")
    };
    let pg_proxy = Balancer::start(vec![pg_addr]).await;
    let pg_url = via(&schema.url, pg_proxy.addr);

    // The balancer's port is fixed before the instances start: it is their public URL.
    let device_addrs: Vec<_> = (0..INSTANCES).map(|_| mdm_tests::process::free_addr()).collect();
    let lb = Balancer::start(device_addrs.clone()).await;
    let lb_url = format!("https://localhost:{}", lb.addr.port());
    let mut gws = Vec::new();
    for (i, addr) in device_addrs.iter().enumerate() {
        let mut c = instance_config(&data, &lb_url, &pg_url, &nats.url(), &amapi, dir.path(), &enterprise);
        c.device.listen = *addr;
        gws.push(GatewayProcess::spawn(&format!("gw{i}"), dir.path(), c, "info"));
    }
    for g in &mut gws {
        g.wait_up().await;
    }
    let key = secret(&data, "api-key");
    let api = gws.iter().map(|g| Api::new(&g.api_url(), &key)).collect();
    let ca = DataDirCa::read(&data);
    let js = jetstream::new(nats.client().await);
    let publisher = DirectPublisher::new(
        &format!("{lb_url}/android/pubsub?token={}", secret(&data, "pubsub-token")),
        Some(std::str::from_utf8(&ca.pem).expect("pem")),
    )
    .expect("publisher");
    amapi.set_publisher(Some(Publisher::Direct(publisher)));
    let c = Cluster { dir, data, _schema: schema, nats, pg_proxy, gws, api, lb, lb_url, ca, amapi, enterprise, js };
    // Every instance trusts the one CA on disk: each answers a device it never saw enroll.
    for g in &c.gws {
        let pem = std::fs::read(c.data.join("ca.pem")).expect("ca");
        assert_eq!(pem, c.ca.pem, "{}", g.name);
    }
    Some(c)
}

struct Fleet {
    apple: Vec<AppleDevice>,
    windows: Vec<(String, Arc<WindowsDevice>)>,
    /// (gateway device id, AMAPI name)
    android: Vec<(String, String)>,
}

impl Cluster {
    fn publisher(&self) -> DirectPublisher {
        DirectPublisher::new(
            &format!("{}/android/pubsub?token={}", self.lb_url, secret(&self.data, "pubsub-token")),
            Some(std::str::from_utf8(&self.ca.pem).expect("pem")),
        )
        .expect("publisher")
    }

    fn apple_device(&self, udid: &str, url: &str) -> AppleDevice {
        let (key, cert) = self.ca.issue(udid);
        AppleDevice::new(udid, key, cert, IdentityMode::SignMessages, url, &self.ca.pem).expect("apple device")
    }

    /// Enrolls every device through the balancer: Apple check-ins, the real Windows enrollment,
    /// Android devices enrolled in the AMAPI emulator and announced by a Pub/Sub push.
    async fn enroll_fleet(&self, tag: char) -> Fleet {
        let mut apple = Vec::new();
        for i in 0..PER_PLATFORM {
            let dev = self.apple_device(&format!("5CA1E000-0000-4000-8000-0000000{tag}A00{i}"), &self.lb_url);
            dev.enroll().await.expect("apple enrolls");
            apple.push(dev);
        }
        let mut windows = Vec::new();
        let enroll_secret = secret(&self.data, "enroll-secret");
        for i in 0..PER_PLATFORM {
            let id = format!("5CA1E0000000000000000000000{tag}B00{i}");
            let config = WindowsEnrollerConfig::on_premise(&id, &format!("user{i}@example.com"), &enroll_secret);
            let enroller = WindowsEnroller::new(config, &self.lb_url, &self.ca.pem).expect("enroller");
            let enrolled = enroller.enroll().await.expect("windows enrolls");
            assert!(enrolled.management_url.starts_with(&self.lb_url), "{}", enrolled.management_url);
            let dev = WindowsDevice::new(DmIdentity::from(&enrolled), &enrolled.management_url, &self.ca.pem)
                .expect("windows device");
            dev.session().await.expect("first OMA-DM session");
            windows.push((enrolled.gateway_device_id(), Arc::new(dev)));
        }
        let mut android = Vec::new();
        let publisher = self.publisher();
        let base = if tag == 'a' { 100 } else { 200 };
        for i in 0..PER_PLATFORM {
            let token =
                self.amapi.create_enrollment_token(&self.enterprise, &json!({"policyName": "default"})).expect("token");
            let name = self
                .amapi
                .enroll_device(token["value"].as_str().expect("value"), &DeviceSpec::numbered(base + i as u64))
                .expect("android enrolls");
            let device = self.amapi.device(&name).expect("device");
            let (status, _, _) = publisher.push(&PushMessage::notification("ENROLLMENT", &device)).await.expect("push");
            assert_eq!(status, 204);
            let parts: Vec<&str> = name.split('/').collect();
            android.push((format!("android:{}:{}", parts[1], parts[3]), name));
        }
        for (id, _) in &android {
            let (code, d) = self.api[2].get(&format!("/v1/devices/{id}")).await;
            assert_eq!((code, d["enrollment"]["state"].as_str()), (200, Some("enrolled")), "{d}");
        }
        Fleet { apple, windows, android }
    }

    /// The `MDM_COMMANDS` stream exists once an instance's intake declared it.
    async fn commands_stream_ready(&self) {
        let js = &self.js;
        let ok = eventually(Duration::from_secs(20), || async { js.get_stream("MDM_COMMANDS").await.ok().map(|_| ()) })
            .await;
        assert!(ok.is_some(), "no instance created MDM_COMMANDS");
    }

    async fn nats_command(&self, device: &str, command: Value, key: &str) {
        let body = json!({"device_id": device, "command": command, "idempotency_key": key, "nopush": true});
        let ack = self.js.publish("mdm.commands", body.to_string().into()).await.expect("publish");
        ack.await.expect("JetStream acknowledged the command");
    }

    /// Waits until `n` commands are queued (their `command.queued` events in the store).
    async fn queued(&self, n: usize) -> Vec<Value> {
        let api = &self.api[0];
        let got = eventually(Duration::from_secs(30), || async {
            let q: Vec<Value> = api.events().await.into_iter().filter(|e| e["type"] == "command.queued").collect();
            (q.len() >= n).then_some(q)
        })
        .await;
        got.unwrap_or_else(|| panic!("{n} commands never queued"))
    }

    /// Waits until every queued command is acknowledged; returns the command ids.
    async fn all_acknowledged(&self, api: &Api, expected: usize) -> BTreeSet<String> {
        let last = std::sync::Mutex::new(String::new());
        let done = eventually(Duration::from_secs(40), || async {
            let events = api.events().await;
            let ids = |t: &str| -> Vec<String> {
                events
                    .iter()
                    .filter(|e| e["type"] == t)
                    // An Android COMMAND notification that overtakes the dispatcher's write of
                    // the operation is logged without a command id (the command itself is then
                    // resolved by reconcile): not a second acknowledgement of a command.
                    .filter_map(|e| e["command_id"].as_str().map(str::to_owned))
                    .collect()
            };
            let (queued, acked) = (ids("command.queued"), ids("command.acknowledged"));
            *last.lock().expect("lock") = format!("{} queued, {} acknowledged", queued.len(), acked.len());
            let queued: BTreeSet<String> = queued.into_iter().collect();
            let acked_set: BTreeSet<&String> = acked.iter().collect();
            (queued.len() == expected && queued.iter().all(|q| acked_set.contains(q))).then_some((queued, acked))
        })
        .await;
        let (queued, acked) = done.unwrap_or_else(|| panic!("not all acknowledged: {}", last.lock().expect("lock")));
        let twice: Vec<&str> =
            count(acked.iter().map(String::as_str)).into_iter().filter(|(_, n)| *n > 1).map(|(id, _)| id).collect();
        if acked.len() != queued.len() {
            let events = api.events().await;
            let odd: Vec<&Value> = events
                .iter()
                .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("command.")))
                .filter(|e| twice.contains(&e["command_id"].as_str().unwrap_or_default()) || e["command_id"].is_null())
                .collect();
            panic!("one command.acknowledged per command: {} for {} commands; {odd:#?}", acked.len(), queued.len());
        }
        queued
    }

    /// Every event of the store is on `MDM_EVENTS` exactly once: messages == distinct ids ==
    /// events in the store, same ids, bodies as stored.
    async fn events_exactly_once_on_nats(&self) -> usize {
        let (api, js) = (&self.api[1], &self.js);
        let last = std::sync::Mutex::new((0, 0, 0));
        let got = eventually(Duration::from_secs(40), || async {
            let stored = api.events().await;
            let on_stream = read_all(js, "MDM_EVENTS").await;
            let ids: BTreeSet<&str> = on_stream.iter().map(|(_, id, _)| id.as_str()).collect();
            *last.lock().expect("lock") = (stored.len(), on_stream.len(), ids.len());
            let complete = stored.iter().all(|e| ids.contains(e["id"].as_str().unwrap_or_default()));
            drop(ids);
            complete.then_some((stored, on_stream))
        })
        .await;
        let (stored, on_stream) = got.unwrap_or_else(|| {
            let (s, m, d) = *last.lock().expect("lock");
            panic!("not every stored event reached NATS: {s} stored, {m} messages, {d} distinct ids")
        });
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, id, _) in &on_stream {
            *count.entry(id).or_default() += 1;
        }
        let dupes: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dupes.is_empty(), "events on the stream more than once: {dupes:?}");
        assert_eq!(on_stream.len(), stored.len(), "messages on MDM_EVENTS == events in the store");
        let stored_ids: BTreeSet<&str> = stored.iter().map(|e| e["id"].as_str().expect("id")).collect();
        assert_eq!(stored_ids.len(), stored.len(), "event ids are unique in the store");
        let by_id: BTreeMap<&str, &Value> = on_stream.iter().map(|(_, id, body)| (id.as_str(), body)).collect();
        for e in &stored {
            assert_eq!(by_id[e["id"].as_str().expect("id")], e, "the message is the stored event");
        }
        stored.len()
    }

    async fn android_issued(&self, name: &str) -> Vec<String> {
        self.amapi
            .requests_matching("POST", &format!("{name}:issueCommand"))
            .iter()
            .filter(|r| r.status == 200)
            .filter_map(|r| r.json().and_then(|b| b["type"].as_str().map(str::to_owned)))
            .collect()
    }
}

async fn api_command(api: &Api, device: &str, command: Value) -> String {
    let (code, r) = api
        .try_post("/v1/commands", &json!({"device_id": device, "command": command, "nopush": true}))
        .await
        .expect("instance answers");
    assert_eq!(code, 202, "{r}");
    r["command_id"].as_str().expect("command_id").to_owned()
}

/// Per device: the same command types through the API of instance `via` and through NATS.
async fn command_wave(c: &Cluster, f: &Fleet, via: usize, wave: &str) -> usize {
    let mut n = 0;
    for d in &f.apple {
        let id = format!("apple:{}", d.udid);
        api_command(&c.api[via], &id, json!({"type": "device_info"})).await;
        c.nats_command(&id, json!({"type": "lock"}), &format!("{wave}-{id}")).await;
        n += 2;
    }
    for (id, _) in &f.windows {
        api_command(&c.api[via], id, json!({"type": "lock"})).await;
        c.nats_command(id, json!({"type": "restart"}), &format!("{wave}-{id}")).await;
        n += 2;
    }
    for (id, _) in &f.android {
        api_command(&c.api[via], id, json!({"type": "lock"})).await;
        c.nats_command(id, json!({"type": "restart"}), &format!("{wave}-{id}")).await;
        n += 2;
    }
    n
}

/// Apple: one session until nothing is left; retried (through the balancer) on failure.
async fn apple_drain(d: &AppleDevice) -> u32 {
    let mut failures = 0;
    loop {
        match d.session(|_| "Acknowledged").await {
            Ok(_) => return failures,
            Err(_) => {
                failures += 1;
                assert!(failures < 100, "{} never got a session through", d.udid);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn windows_drain(d: &WindowsDevice) -> u32 {
    let mut failures = 0;
    loop {
        match d.session().await {
            Ok(_) => return failures,
            Err(_) => {
                failures += 1;
                assert!(failures < 100, "a Windows device never got a session through");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The `RequestType` of every command the devices received, duplicates included.
fn apple_request_types(devices: &[&AppleDevice]) -> Vec<String> {
    devices
        .iter()
        .flat_map(|d| d.received_commands())
        .map(|cmd| cmd.get("RequestType").and_then(|v| v.as_string()).unwrap_or("").to_owned())
        .collect()
}

/// Each Apple device gets `device_info` (DeviceInformation) and `lock` (DeviceLock) once per
/// wave; the store already showed each acknowledged once.
fn check_apple(udid: &str, types: &[String], per_type: usize, retried: &BTreeSet<String>) {
    let counts = count(types.iter().map(String::as_str));
    assert_eq!(counts.len(), 2, "{udid}: {types:?}");
    for t in ["DeviceInformation", "DeviceLock"] {
        let n = counts.get(t).copied().unwrap_or(0);
        if retried.contains(udid) {
            assert!(n >= per_type, "{udid}: {types:?}");
        } else {
            assert_eq!(n, per_type, "{udid} received a command twice or not at all: {types:?}");
        }
    }
}

fn count<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// Device-side checks: each device received each of its commands `per_type` times per type,
/// exactly (devices named in `retried` at least that often: a command whose answer was lost
/// with an instance is sent again, by design).
async fn delivered(c: &Cluster, f: &Fleet, per_type: usize, retried: &BTreeSet<String>) {
    for d in &f.apple {
        check_apple(&d.udid, &apple_request_types(&[d]), per_type, retried);
    }
    for (id, d) in &f.windows {
        let executed = d.executed();
        let counts = count(executed.iter().map(String::as_str));
        for uri in [LOCK_URI, REBOOT_URI] {
            let n = counts.get(uri).copied().unwrap_or(0);
            if retried.contains(id) {
                assert!(n >= per_type, "{id}: {executed:?}");
            } else {
                assert_eq!(n, per_type, "{id}: {executed:?}");
            }
        }
    }
    for (_, name) in &f.android {
        let issued = c.android_issued(name).await;
        let counts = count(issued.iter().map(String::as_str));
        for t in ["LOCK", "REBOOT"] {
            let n = counts.get(t).copied().unwrap_or(0);
            // Claimed by one instance before it is sent: exactly once at AMAPI.
            assert_eq!(n, per_type, "{name}: {issued:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_deliver_every_command_once_and_every_event_once() {
    let Some(c) = cluster().await else { return };
    let f = c.enroll_fleet('a').await;
    c.commands_stream_ready().await;
    let n = command_wave(&c, &f, 0, "w1").await;
    c.queued(n).await;

    let apple = futures_util::future::join_all(f.apple.iter().map(apple_drain));
    let windows = futures_util::future::join_all(f.windows.iter().map(|(_, d)| windows_drain(d)));
    let (a, w) = tokio::join!(apple, windows);
    assert!(a.iter().chain(&w).all(|f| *f == 0), "no instance failed: {a:?} {w:?}");
    c.all_acknowledged(&c.api[2], n).await;
    delivered(&c, &f, 1, &BTreeSet::new()).await;
    let events = c.events_exactly_once_on_nats().await;
    assert!(events > 9 * 4, "{events} events");

    // The balancer spread the devices' connections over every instance.
    let spread = c.lb.forwarded();
    assert!(spread.iter().all(|n| *n > 0), "connections per instance: {spread:?}");
    // Each instance served requests.
    for g in &c.gws {
        assert!(g.log_text().contains("gateway started"), "{}", g.name);
    }
    let _ = &c.dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_loses_nothing_and_it_rejoins() {
    let Some(mut c) = cluster().await else { return };
    let f = c.enroll_fleet('k').await;
    c.commands_stream_ready().await;

    // Devices keep polling through the balancer for the whole test, retrying after failures.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u32>::new()));
    let mut loops = Vec::new();
    for d in &f.apple {
        let (d, stop, failures) = (d.clone(), stop.clone(), failures.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if d.session(|_| "Acknowledged").await.is_err() {
                    *failures.lock().expect("lock").entry(d.udid.clone()).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }
    for (id, d) in &f.windows {
        let (id, d, stop, failures) = (id.clone(), d.clone(), stop.clone(), failures.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if d.session().await.is_err() {
                    *failures.lock().expect("lock").entry(id.clone()).or_default() += 1;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }

    // Wave 1 while all run; the kill lands in the middle of it.
    let mut n = command_wave(&c, &f, 0, "w1").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.gws[1].kill();
    // Wave 2 with one instance gone: the others carry on.
    n += command_wave(&c, &f, 2, "w2").await;
    c.all_acknowledged(&c.api[0], n).await;

    // The killed instance comes back on the same addresses and serves again.
    c.gws[1].restart().await;
    let (code, ready) = c.gws[1].readyz().await.expect("answers");
    assert_eq!(code, 200, "{ready}");
    n += command_wave(&c, &f, 1, "w3").await;
    // A device talking to the restarted instance directly.
    let direct = format!("https://localhost:{}", c.gws[1].device_addr().port());
    let d0 = &f.apple[0];
    let rejoined =
        AppleDevice::new(&d0.udid, d0.key.clone(), d0.cert.clone(), IdentityMode::SignMessages, &direct, &c.ca.pem)
            .expect("device");
    rejoined.session(|_| "Acknowledged").await.expect("a session on the restarted instance");
    c.all_acknowledged(&c.api[1], n).await;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.expect("device loop");
    }

    // No acknowledged command lost: every one queued (API 202 or JetStream ack) was acknowledged
    // once; devices got each at least once, exactly once unless a session of theirs broke.
    let failures = failures.lock().expect("lock").clone();
    let mut retried: BTreeSet<String> = failures.keys().cloned().collect();
    retried.insert(d0.udid.clone());
    for d in &f.apple {
        // What the direct session on the restarted instance took counts for the same device.
        let devices: Vec<&AppleDevice> = if d.udid == d0.udid { vec![d, &rejoined] } else { vec![d] };
        check_apple(&d.udid, &apple_request_types(&devices), 3, &retried);
    }
    let others = Fleet { apple: Vec::new(), windows: f.windows.clone(), android: f.android.clone() };
    delivered(&c, &others, 3, &retried).await;
    c.events_exactly_once_on_nats().await;
    let restarts = c.gws[1].log_text().matches("gateway started").count();
    assert_eq!(restarts, 2, "started, killed, started again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_events_wait_in_the_outbox_and_all_arrive() {
    let Some(mut c) = cluster().await else { return };
    let f = c.enroll_fleet('n').await;
    c.commands_stream_ready().await;
    c.events_exactly_once_on_nats().await;

    c.nats.stop();
    // Under load without NATS: API commands, device sessions, Android dispatch and pushes.
    let mut n = 0;
    for d in &f.apple {
        api_command(&c.api[0], &format!("apple:{}", d.udid), json!({"type": "device_info"})).await;
        n += 1;
    }
    for (id, _) in &f.windows {
        api_command(&c.api[1], id, json!({"type": "lock"})).await;
        n += 1;
    }
    for (id, _) in &f.android {
        api_command(&c.api[2], id, json!({"type": "lock"})).await;
        n += 1;
    }
    for d in &f.apple {
        assert_eq!(apple_drain(d).await, 0);
    }
    for (_, d) in &f.windows {
        assert_eq!(windows_drain(d).await, 0);
    }
    c.all_acknowledged(&c.api[0], n).await;
    // Every instance still ready (readiness_ignores_sinks); the NATS sink reported failing on
    // the instance relaying it (one holds the `relay:nats` lease; the others stand by).
    let failing = eventually(Duration::from_secs(10), || async {
        let mut relaying_fails = false;
        for g in &c.gws {
            let (code, body) = g.readyz().await?;
            if code != 200 {
                return None;
            }
            let nats = body["sinks"].as_array()?.iter().find(|s| s["name"] == "nats")?.clone();
            relaying_fails |= nats["failing"] == true;
        }
        relaying_fails.then_some(())
    })
    .await;
    assert!(failing.is_some(), "the NATS sink shows as failing while NATS is down");
    tokio::time::sleep(Duration::from_secs(2)).await;

    c.nats.restart();
    let events = c.events_exactly_once_on_nats().await;
    assert!(events > 0);
    // The command intake is back too.
    let id = format!("apple:{}", f.apple[1].udid);
    c.nats_command(&id, json!({"type": "lock"}), "after-outage").await;
    c.queued(n + 1).await;
    let _ = apple_drain(&f.apple[1]).await;
    c.all_acknowledged(&c.api[2], n + 1).await;
    c.events_exactly_once_on_nats().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_cleanly_and_service_resumes_unattended() {
    let Some(c) = cluster().await else { return };
    let f = c.enroll_fleet('p').await;
    c.commands_stream_ready().await;

    c.pg_proxy.pause();
    // Requests fail cleanly: devices get 503, the API 503 store_unavailable, /readyz 503.
    let dev = &f.apple[0];
    match dev.session(|_| "Acknowledged").await {
        Err(DeviceError::Status { status, body }) => assert_eq!(status, 503, "{body}"),
        other => panic!("expected 503 while the database is away, got {other:?}"),
    }
    let (code, r) = c.api[0]
        .try_post("/v1/commands", &json!({"device_id": format!("apple:{}", dev.udid), "command": {"type": "lock"}}))
        .await
        .expect("answers");
    assert_eq!((code, r["error"]["code"].as_str()), (503, Some("store_unavailable")), "{r}");
    for g in &c.gws {
        let (code, body) = g.readyz().await.expect("answers");
        assert_eq!(code, 503, "{}: {body}", g.name);
    }
    let (_, wd) = &f.windows[0];
    assert!(wd.session().await.is_err(), "Windows management fails too");
    tokio::time::sleep(Duration::from_secs(2)).await;

    c.pg_proxy.resume();
    // No manual action: devices retry and get through, commands flow again.
    let ready = eventually(Duration::from_secs(20), || async {
        for g in &c.gws {
            if g.readyz().await?.0 != 200 {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(ready.is_some(), "instances ready again");
    let n = command_wave(&c, &f, 0, "after").await;
    c.queued(n).await;
    for d in &f.apple {
        apple_drain(d).await;
    }
    for (_, d) in &f.windows {
        windows_drain(d).await;
    }
    c.all_acknowledged(&c.api[1], n).await;
    delivered(&c, &f, 1, &BTreeSet::new()).await;
    c.events_exactly_once_on_nats().await;
}
