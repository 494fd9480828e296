//! Shared helpers for end-to-end tests: a gateway started in process on ephemeral ports with a
//! fresh data directory, emulated devices with certificates from its CA, an API client, and a
//! webhook receiver. Everything goes over real sockets; the device side over real TLS.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mdm_certs::devpki;
use mdm_certs::{PKey, Private, X509};
use mdm_conformance::apple::{AppleDevice, IdentityMode};
use mdm_gateway::Gateway;
use mdm_gateway::clock::OffsetClock;
use mdm_gateway::config::Config;
use serde_json::Value;
use tempfile::TempDir;

pub mod android;
pub mod balancer;
pub mod nats;
pub mod process;
pub mod webhook;
pub mod windows;

pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

pub fn random_serial() -> [u8; 16] {
    devpki::serial_from_random(rand::random())
}

/// A running gateway plus what tests need to talk to it.
#[derive(Debug)]
pub struct Harness {
    pub gateway: Option<Gateway>,
    pub dir: TempDir,
    pub api_url: String,
    pub device_url: String,
    pub api_key: String,
    pub ca: X509,
    pub ca_key: PKey<Private>,
    pub ca_pem: Vec<u8>,
    pub clock: Arc<OffsetClock>,
    api: reqwest::Client,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// Starts a gateway on a fresh data directory; `adjust` may change the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config_on(dir.path().join("data"));
        config.apple.checked_in_event_interval_s = 0;
        config.shutdown.grace_period_s = 5;
        adjust(&mut config);
        let clock = OffsetClock::new();
        let gateway = Gateway::start_with_clock(config.clone(), clock.clone()).await.expect("gateway starts");
        let data = &config.data_dir;
        let ca_pem = std::fs::read(data.join("ca.pem")).expect("ca.pem");
        let ca = X509::from_pem(&ca_pem).expect("ca parses");
        let ca_key = PKey::private_key_from_pem(&std::fs::read(data.join("ca-key.pem")).expect("ca key"))
            .expect("ca key parses");
        let api_key = std::fs::read_to_string(data.join("api-key")).expect("api-key").trim().to_owned();
        Harness {
            api_url: format!("http://{}", gateway.api_addr),
            device_url: format!("https://localhost:{}", gateway.device_addr.port()),
            gateway: Some(gateway),
            dir,
            api_key,
            ca,
            ca_key,
            ca_pem,
            clock,
            api: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
        }
    }

    /// A gateway whose public URL is its own device listener (`https://localhost:<port>`), so the
    /// URLs written into its enrollment profiles reach it: for devices that follow the profile.
    /// The port is picked free beforehand (another process could take it meanwhile; unlikely).
    pub async fn start_public(adjust: impl FnOnce(&mut Config)) -> Harness {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let h = Harness::start_with(|c| {
            c.device.listen = format!("127.0.0.1:{port}").parse().expect("addr");
            c.public_url = format!("https://localhost:{port}");
            adjust(c);
        })
        .await;
        assert_eq!(h.device_url, format!("https://localhost:{port}"));
        h
    }

    /// Uploads a push certificate for `topic`, valid a year, from a throwaway push CA
    /// (`PUT /v1/pushcert{query}`): enrollment profiles need one.
    pub async fn upload_push_certificate(&self, topic: &str, query: &str) {
        let ca = mdm_conformance::apns::PushCa::generate("Test Apple Push CA").expect("push CA");
        let (cert, key) = ca.issue_push_certificate(topic, unix_now() + 365 * 86_400).expect("push cert");
        let (code, r) = self.put_bytes(&format!("/v1/pushcert{query}"), format!("{cert}{key}").into_bytes()).await;
        assert_eq!(code, 200, "{r}");
    }

    /// Like [`Harness::start_public`]: a gateway whose `public_url` is its own device listener, so the
    /// URLs it hands out (Windows discovery answers, provisioning documents) lead back to it.
    pub async fn start_reachable(adjust: impl FnOnce(&mut Config)) -> Harness {
        Harness::start_public(adjust).await
    }

    /// The OnPremise Windows enrollment secret (`<data_dir>/enroll-secret`).
    pub fn enroll_secret(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/enroll-secret")).expect("enroll-secret").trim().to_owned()
    }

    /// An emulated Windows device that enrolls with the OnPremise secret as `upn`. Use with
    /// [`Harness::start_reachable`]: it follows the URLs of the discovery answer.
    pub fn windows_enroller(&self, device_id: &str, upn: &str) -> mdm_conformance::windows::WindowsEnroller {
        let config = mdm_conformance::windows::WindowsEnrollerConfig::on_premise(device_id, upn, &self.enroll_secret());
        mdm_conformance::windows::WindowsEnroller::new(config, &self.device_url, &self.ca_pem).expect("windows device")
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    /// A key and a client-auth certificate from the gateway's CA, valid in `[not_before, not_after]`.
    pub fn issue(&self, common_name: &str, not_before: i64, not_after: i64) -> (PKey<Private>, X509) {
        let key = devpki::generate_key().expect("key");
        let cert = devpki::issue_device_certificate(
            &self.ca,
            &self.ca_key,
            &key,
            common_name,
            not_before,
            not_after,
            &random_serial(),
        )
        .expect("device cert");
        (key, cert)
    }

    /// An emulated device with a valid identity that signs its messages.
    pub fn device(&self, udid: &str) -> AppleDevice {
        self.device_with(udid, IdentityMode::SignMessages)
    }

    pub fn device_with(&self, udid: &str, mode: IdentityMode) -> AppleDevice {
        let now = unix_now();
        let (key, cert) = self.issue(udid, now - 3600, now + 86_400 * 365);
        AppleDevice::new(udid, key, cert, mode, &self.device_url, &self.ca_pem).expect("device")
    }

    /// A device that presents `cert`/`key` (which need not come from our CA).
    pub fn device_from(&self, udid: &str, key: PKey<Private>, cert: X509, mode: IdentityMode) -> AppleDevice {
        AppleDevice::new(udid, key, cert, mode, &self.device_url, &self.ca_pem).expect("device")
    }

    pub fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(&self.api_key)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.auth(self.api.get(format!("{}{path}", self.api_url))).send().await.expect("api get");
        decode(resp).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp =
            self.auth(self.api.post(format!("{}{path}", self.api_url))).json(body).send().await.expect("api post");
        decode(resp).await
    }

    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self.auth(self.api.put(format!("{}{path}", self.api_url))).body(body).send().await.expect("api put");
        decode(resp).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self.auth(self.api.put(format!("{}{path}", self.api_url))).json(body).send().await.expect("api put");
        decode(resp).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self.auth(self.api.delete(format!("{}{path}", self.api_url))).send().await.expect("api delete");
        decode(resp).await
    }

    pub fn raw_api(&self) -> &reqwest::Client {
        &self.api
    }

    /// Every event in the log, oldest first.
    pub async fn events(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = "0".to_owned();
        loop {
            let (code, page) = self.get(&format!("/v1/events?after={after}&limit=1000")).await;
            assert_eq!(code, 200, "events: {page}");
            let events = page["events"].as_array().expect("events array").clone();
            if events.is_empty() {
                return all;
            }
            after = page["next"].as_str().expect("next").to_owned();
            all.extend(events);
        }
    }

    /// Events of one type for one device.
    pub async fn events_of(&self, device_id: &str, event_type: &str) -> Vec<Value> {
        self.events().await.into_iter().filter(|e| e["device_id"] == device_id && e["type"] == event_type).collect()
    }

    /// Everything stored that a device request could change: enrollments, commands of the
    /// given devices, the event log position, SCEP certificates and challenges, OMA-DM sessions,
    /// Windows certificates, Android dead letters, handled Pub/Sub ids, per-device watermarks and
    /// AMAPI operations. Compare before and after a refused request.
    pub async fn snapshot(&self, command_ids: &[&str]) -> String {
        let store = &self.gateway().state.store;
        let seq = store.last_event_seq().await.expect("seq");
        let enrollments = store.list_enrollments(None, None, 10_000).await.expect("list");
        let mut commands = Vec::new();
        for id in command_ids {
            commands.push(store.command(id).await.expect("command"));
        }
        let scep_certs = store.scep_certificates(10_000).await.expect("scep certificates");
        let scep_challenges = store.scep_challenges(10_000).await.expect("scep challenges");
        let omadm = store.omadm_sessions(10_000).await.expect("omadm sessions");
        let windows_certs = store.windows_certificates(10_000).await.expect("windows certificates");
        let dead_letters = store.dead_letters(10_000).await.expect("dead letters");
        let android = self.android_tables();
        format!(
            "{seq}\n{enrollments:?}\n{commands:?}\n{scep_certs:?}\n{scep_challenges:?}\n{omadm:?}\n{windows_certs:?}\n{dead_letters:?}\n{android}"
        )
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await.expect("clean shutdown");
        }
    }
}

/// A configuration on `data_dir` with both listeners on ephemeral loopback ports.
pub fn config_on(data_dir: std::path::PathBuf) -> Config {
    let mut config = Config { data_dir, ..Config::default() };
    // No load balancer to wait for in tests.
    config.shutdown.drain_delay_s = 0;
    config.device.listen = "127.0.0.1:0".parse().expect("addr");
    config.api.listen = "127.0.0.1:0".parse().expect("addr");
    config
}

async fn decode(resp: reqwest::Response) -> (u16, Value) {
    let code = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (code, value)
}

/// Polls `f` until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path to the shared vectors (`MDM_VECTORS`, default `../../shared/vectors` from this crate).
pub fn vectors_dir() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("MDM_VECTORS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"));
    p.is_dir().then_some(p)
}

// ---- Hand-made device requests and metrics (used by apple_identity, apple_bad_input) ----

/// A reply from the device listener, body as text.
#[derive(Debug, Clone)]
pub struct DeviceReply {
    pub status: u16,
    pub body: String,
}

impl Harness {
    /// An HTTPS client for the device listener that trusts only the harness CA, optionally
    /// presenting `identity` (key, certificate) as TLS client certificate.
    pub fn device_client(&self, identity: Option<(&PKey<Private>, &X509)>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem).expect("ca pem"))
            .timeout(Duration::from_secs(30));
        if let Some((key, cert)) = identity {
            let mut pem = cert.to_pem().expect("cert pem");
            pem.extend(key.private_key_to_pem_pkcs8().expect("key pem"));
            b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
        }
        b.build().expect("device client")
    }

    /// `PUT {device_url}{path}` with the given content type (none when `None`), extra headers and body.
    pub async fn device_put(
        &self,
        client: &reqwest::Client,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> DeviceReply {
        let mut req = client.put(format!("{}{path}", self.device_url));
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let resp = req.body(body).send().await.expect("device request");
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("device reply body");
        DeviceReply { status, body }
    }

    /// The Prometheus text of `/metrics` (no credentials needed).
    pub async fn metrics_text(&self) -> String {
        let resp = self.api.get(format!("{}/metrics", self.api_url)).send().await.expect("metrics");
        assert_eq!(resp.status().as_u16(), 200, "metrics status");
        resp.text().await.expect("metrics body")
    }

    /// The value of `name` summed over every series carrying `label` (e.g. `reason="expired"`);
    /// 0 when there is none. Metrics are process-wide, so compare before and after.
    pub async fn metric(&self, name: &str, label: &str) -> f64 {
        metric_value(&self.metrics_text().await, name, label)
    }
}

/// See [`Harness::metric`].
pub fn metric_value(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| label.is_empty() || l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `<target>/<profile>/<bin>` of a workspace package, built (or brought up to date) by cargo
/// first: a binary left over from an older build would test old code. A no-op when fresh.
pub fn workspace_binary(package: &str, bin: &str) -> std::path::PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>").to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let mut cmd = std::process::Command::new(env!("CARGO"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let per_package = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ];
        if per_package.iter().any(|p| k.starts_with(p)) || k == "OUT_DIR" {
            cmd.env_remove(&k);
        }
    }
    cmd.current_dir(workspace).args(["build", "--quiet", "-p", package, "--bin", bin, "--target-dir"]).arg(&target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(cmd.status().expect("cargo build").success(), "cargo build -p {package} --bin {bin} failed");
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// A local APNs emulator and a gateway pointed at it (`apple.apns_url`, `apple.apns_ca`), with
/// `adjust` applied last. The returned directory holds the emulator's CA file; keep it alive.
pub async fn start_with_apns(
    adjust: impl FnOnce(&mut Config),
) -> (
    Harness,
    mdm_conformance::apns::ApnsEmulator,
    tokio::sync::mpsc::UnboundedReceiver<mdm_conformance::apns::PushDelivery>,
    TempDir,
) {
    let (apns, deliveries) = mdm_conformance::apns::ApnsEmulator::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("emulator starts");
    let dir = tempfile::tempdir().expect("tmp");
    let ca_path = dir.path().join("apns-ca.pem");
    std::fs::write(&ca_path, apns.server_ca_pem()).expect("write CA");
    let url = apns.url();
    let h = Harness::start_with(|c| {
        c.apple.apns_url = url;
        c.apple.apns_ca = Some(ca_path);
        c.apple.push_timeout_ms = 5_000;
        adjust(c);
    })
    .await;
    (h, apns, deliveries, dir)
}
