//! Getting notifications to a push endpoint: through Google's Pub/Sub emulator (a Java process,
//! REST API on `PUBSUB_EMULATOR_HOST`), or directly as a push request.
//!
//! Trust: the Pub/Sub emulator's push client is Java's `HttpsURLConnection`, which trusts the
//! JVM's trust store only. [`PubSubEmulator::start_trusting`] turns the given CA PEMs into a
//! PKCS#12 trust store with `keytool` and starts the emulator with
//! `JAVA_TOOL_OPTIONS=-Djavax.net.ssl.trustStore=…`, so it can push to an HTTPS endpoint with a
//! self-signed CA. An emulator started without it fails every HTTPS push with "PKIX path
//! building failed". The emulator ignores `pushConfig.oidcToken`: it sends no
//! `Authorization` header (use [`DirectPublisher::with_bearer`] to test OIDC).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::AndroidEmuError;
use super::util::{now_millis, rfc3339_millis};

/// Where the Debian/Google Cloud SDK package installs the emulator's launcher.
pub const DEFAULT_PUBSUB_EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// How long the emulator may take to answer after start (it takes ~3 s on two cores).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of the Pub/Sub REST API (v1) of an emulator at `host:port` (no authentication).
#[derive(Debug, Clone)]
pub struct PubSubClient {
    host: String,
    http: reqwest::Client,
}

impl PubSubClient {
    /// A client for the emulator at `host` (`127.0.0.1:8085`).
    pub fn new(host: &str) -> PubSubClient {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        PubSubClient { host: host.trim_start_matches("http://").trim_end_matches('/').to_owned(), http }
    }

    /// The emulator named by `PUBSUB_EMULATOR_HOST`, if set.
    pub fn from_env() -> Option<PubSubClient> {
        std::env::var("PUBSUB_EMULATOR_HOST").ok().filter(|h| !h.is_empty()).map(|h| PubSubClient::new(&h))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn url(&self, resource: &str) -> String {
        format!("http://{}/v1/{resource}", self.host)
    }

    /// `true` when the emulator answers `GET /`.
    pub async fn ready(&self) -> bool {
        matches!(self.http.get(format!("http://{}/", self.host)).send().await, Ok(r) if r.status().is_success())
    }

    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, AndroidEmuError> {
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(AndroidEmuError::PubSub(format!("{what}: {status} {text}")));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `PUT projects/{p}/topics/{t}`; an existing topic is fine.
    pub async fn create_topic(&self, topic: &str) -> Result<(), AndroidEmuError> {
        match self.call(self.http.put(self.url(topic)).json(&json!({})), "create topic").await {
            Err(AndroidEmuError::PubSub(e)) if e.contains("409") => Ok(()),
            r => r.map(drop),
        }
    }

    /// `PUT projects/{p}/subscriptions/{s}` pushing `topic`'s messages to `endpoint` (replaced
    /// when it exists). `oidc` = `(serviceAccountEmail, audience)` is stored in the push
    /// config (the emulator does not send the token).
    pub async fn create_push_subscription(
        &self,
        subscription: &str,
        topic: &str,
        endpoint: &str,
        oidc: Option<(&str, &str)>,
    ) -> Result<(), AndroidEmuError> {
        let mut push = json!({"pushEndpoint": endpoint});
        if let Some((email, audience)) = oidc {
            push["oidcToken"] = json!({"serviceAccountEmail": email, "audience": audience});
        }
        let body = json!({"topic": topic, "pushConfig": push, "ackDeadlineSeconds": 10});
        let put = || self.call(self.http.put(self.url(subscription)).json(&body), "create subscription");
        match put().await {
            Err(AndroidEmuError::PubSub(e)) if e.contains("409") => {
                self.delete_subscription(subscription).await?;
                put().await.map(drop)
            }
            r => r.map(drop),
        }
    }

    /// `DELETE projects/{p}/subscriptions/{s}`.
    pub async fn delete_subscription(&self, subscription: &str) -> Result<(), AndroidEmuError> {
        self.call(self.http.delete(self.url(subscription)), "delete subscription").await.map(drop)
    }

    /// `POST projects/{p}/topics/{t}:publish` with one message; returns its message id.
    pub async fn publish(
        &self,
        topic: &str,
        data: Option<&[u8]>,
        attributes: &[(String, String)],
    ) -> Result<String, AndroidEmuError> {
        let mut msg = Map::new();
        if let Some(d) = data {
            msg.insert("data".into(), Value::String(STANDARD.encode(d)));
        }
        let attrs: Map<String, Value> = attributes.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        msg.insert("attributes".into(), Value::Object(attrs));
        let body = json!({"messages": [msg]});
        let reply = self.call(self.http.post(format!("{}:publish", self.url(topic))).json(&body), "publish").await?;
        reply["messageIds"][0]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| AndroidEmuError::PubSub(format!("publish: no message id in {reply}")))
    }
}

/// Google's Pub/Sub emulator, started by this process (killed on drop) or found running.
#[derive(Debug)]
pub struct PubSubEmulator {
    client: PubSubClient,
    child: Option<Child>,
    started_in: Duration,
    log: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl PubSubEmulator {
    /// Starts the emulator on `127.0.0.1:port` (0: a free port) and waits until it answers.
    /// The launcher is `PUBSUB_EMULATOR_BIN` or [`DEFAULT_PUBSUB_EMULATOR`].
    pub async fn start(port: u16) -> Result<PubSubEmulator, AndroidEmuError> {
        PubSubEmulator::start_trusting(port, &[]).await
    }

    /// Like [`PubSubEmulator::start`], with the push client trusting `ca_pems` (instead of the
    /// JVM's default CAs) so it can push to HTTPS endpoints with those CAs. Needs `keytool`
    /// (`$JAVA_HOME/bin` or `PATH`).
    pub async fn start_trusting(port: u16, ca_pems: &[&str]) -> Result<PubSubEmulator, AndroidEmuError> {
        let bin = std::env::var("PUBSUB_EMULATOR_BIN").unwrap_or_else(|_| DEFAULT_PUBSUB_EMULATOR.to_owned());
        if !Path::new(&bin).is_file() {
            return Err(AndroidEmuError::PubSub(format!(
                "Google's Pub/Sub emulator is not installed at {bin} (set PUBSUB_EMULATOR_BIN, or install \
                 google-cloud-cli-pubsub-emulator; Java 17 is needed)"
            )));
        }
        let dir = tempfile::tempdir()?;
        let port = if port == 0 { free_port()? } else { port };
        let log = dir.path().join("emulator.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--host=127.0.0.1").arg(format!("--port={port}"));
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        if !ca_pems.is_empty() {
            let store = trust_store(dir.path(), ca_pems)?;
            cmd.env(
                "JAVA_TOOL_OPTIONS",
                format!(
                    "-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=PKCS12",
                    store.display()
                ),
            );
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| AndroidEmuError::PubSub(format!("cannot start {bin}: {e}")))?;
        let client = PubSubClient::new(&format!("127.0.0.1:{port}"));
        loop {
            if client.ready().await {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(AndroidEmuError::PubSub(format!(
                    "the emulator exited ({status}) before answering:\n{text}"
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(AndroidEmuError::PubSub(format!("the emulator did not answer within {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(PubSubEmulator {
            client,
            child: Some(child),
            started_in: started.elapsed(),
            log: Some(log),
            _dir: Some(dir),
        })
    }

    /// The emulator named by `PUBSUB_EMULATOR_HOST`, if set and answering. Its push client
    /// trusts whatever it was started with.
    pub async fn from_env() -> Option<PubSubEmulator> {
        let client = PubSubClient::from_env()?;
        client.ready().await.then_some(PubSubEmulator {
            client,
            child: None,
            started_in: Duration::ZERO,
            log: None,
            _dir: None,
        })
    }

    pub fn client(&self) -> &PubSubClient {
        &self.client
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        self.client.host()
    }

    /// From spawn to the first answer (zero when found running).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// What the emulator printed so far (push failures are logged there).
    pub fn log(&self) -> String {
        self.log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        // The launcher `exec`s java, so the child is the JVM itself.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A PKCS#12 trust store holding `ca_pems`, made by `keytool` (Java only trusts PKCS#12 entries
/// carrying its own trusted-certificate attribute, which `keytool -importcert` writes).
fn trust_store(dir: &Path, ca_pems: &[&str]) -> Result<PathBuf, AndroidEmuError> {
    let store = dir.join("truststore.p12");
    let keytool = std::env::var("JAVA_HOME")
        .ok()
        .map(|h| Path::new(&h).join("bin/keytool"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("keytool"));
    for (i, pem) in ca_pems.iter().enumerate() {
        let file = dir.join(format!("ca-{i}.pem"));
        std::fs::write(&file, pem)?;
        let out = Command::new(&keytool)
            .args(["-importcert", "-noprompt", "-alias", &format!("ca{i}"), "-storetype", "PKCS12"])
            .args(["-storepass", "changeit", "-keystore"])
            .arg(&store)
            .arg("-file")
            .arg(&file)
            .output()
            .map_err(|e| AndroidEmuError::PubSub(format!("cannot run {}: {e}", keytool.display())))?;
        if !out.status.success() {
            return Err(AndroidEmuError::PubSub(format!(
                "keytool failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(store)
}

/// One push message: data, attributes, and optionally a chosen id and publish time.
#[derive(Debug, Clone, Default)]
pub struct PushMessage {
    pub data: Option<Vec<u8>>,
    pub attributes: Vec<(String, String)>,
    pub message_id: Option<String>,
    /// RFC 3339 (`2026-09-14T18:55:01.000Z`).
    pub publish_time: Option<String>,
}

impl PushMessage {
    /// An AMAPI notification: `data` is the resource JSON, attribute `notificationType`.
    pub fn notification(notification_type: &str, data: &Value) -> PushMessage {
        PushMessage {
            data: Some(data.to_string().into_bytes()),
            attributes: vec![("notificationType".into(), notification_type.into())],
            ..PushMessage::default()
        }
    }

    pub fn with_id(mut self, id: &str) -> PushMessage {
        self.message_id = Some(id.to_owned());
        self
    }

    pub fn with_publish_time(mut self, rfc3339: &str) -> PushMessage {
        self.publish_time = Some(rfc3339.to_owned());
        self
    }

    /// Publish time `millis` (unix ms).
    pub fn published_at(self, millis: i64) -> PushMessage {
        self.with_publish_time(&rfc3339_millis(millis))
    }
}

/// The push request body, as the Pub/Sub emulator writes it (both the camelCase and the
/// snake_case spellings of the id and the time).
pub fn push_envelope(msg: &PushMessage, message_id: &str, publish_time: &str, subscription: &str) -> Value {
    let mut m = Map::new();
    if let Some(d) = &msg.data {
        m.insert("data".into(), Value::String(STANDARD.encode(d)));
    }
    let attrs: Map<String, Value> = msg.attributes.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    m.insert("attributes".into(), Value::Object(attrs));
    m.insert("messageId".into(), Value::String(message_id.to_owned()));
    m.insert("message_id".into(), Value::String(message_id.to_owned()));
    m.insert("publishTime".into(), Value::String(publish_time.to_owned()));
    m.insert("publish_time".into(), Value::String(publish_time.to_owned()));
    json!({"message": m, "subscription": subscription})
}

/// Posts push envelopes straight to a push endpoint, as the Pub/Sub service would, without a
/// Pub/Sub emulator in between. Message ids count up from a random start unless given.
#[derive(Debug, Clone)]
pub struct DirectPublisher {
    url: String,
    http: reqwest::Client,
    subscription: String,
    bearer: Option<String>,
    next_id: Arc<AtomicU64>,
}

impl DirectPublisher {
    /// Pushes to `url` (e.g. `https://127.0.0.1:8443/android/pubsub?token=…`), trusting
    /// `ca_pem` (and no public CA) for HTTPS.
    pub fn new(url: &str, ca_pem: Option<&str>) -> Result<DirectPublisher, AndroidEmuError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64);
        if let Some(pem) = ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes())?);
        }
        Ok(DirectPublisher {
            url: url.to_owned(),
            http: b.build()?,
            subscription: "projects/emulated-project/subscriptions/amapi-push".into(),
            bearer: None,
            next_id: Arc::new(AtomicU64::new(10_000_000_000 + (now_millis() as u64 % 1_000_000) * 1000)),
        })
    }

    /// The `subscription` field of the envelopes.
    pub fn with_subscription(mut self, subscription: &str) -> DirectPublisher {
        self.subscription = subscription.to_owned();
        self
    }

    /// Sends `Authorization: Bearer <token>` (an OIDC token, as Pub/Sub does with
    /// `pushConfig.oidcToken`).
    pub fn with_bearer(mut self, token: &str) -> DirectPublisher {
        self.bearer = Some(token.to_owned());
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A fresh message id.
    pub fn next_message_id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Pushes one message; returns the endpoint's status and body and the message id used.
    pub async fn push(&self, msg: &PushMessage) -> Result<(u16, String, String), AndroidEmuError> {
        let id = msg.message_id.clone().unwrap_or_else(|| self.next_message_id());
        let time = msg.publish_time.clone().unwrap_or_else(|| rfc3339_millis(now_millis()));
        let body = push_envelope(msg, &id, &time, &self.subscription).to_string();
        let (status, text) = self.post_raw(body.into_bytes()).await?;
        Ok((status, text, id))
    }

    /// Posts any bytes as the push body (for malformed-envelope tests).
    pub async fn post_raw(&self, body: Vec<u8>) -> Result<(u16, String), AndroidEmuError> {
        let mut req = self.http.post(&self.url).header("content-type", "application/json").body(body);
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }
}

/// Where the AMAPI emulator sends notifications.
#[derive(Debug, Clone)]
pub enum Publisher {
    /// Publish to the enterprise's `pubsubTopic` on a Pub/Sub emulator (which pushes to its
    /// subscriptions).
    PubSub(PubSubClient),
    /// Push straight to an endpoint, whatever the topic.
    Direct(DirectPublisher),
}

impl Publisher {
    /// Sends one notification; returns the message id.
    pub(super) async fn publish(
        &self,
        topic: &str,
        data: Option<&[u8]>,
        attributes: &[(String, String)],
    ) -> Result<String, AndroidEmuError> {
        match self {
            Publisher::PubSub(c) => c.publish(topic, data, attributes).await,
            Publisher::Direct(d) => {
                let msg = PushMessage {
                    data: data.map(<[u8]>::to_vec),
                    attributes: attributes.to_vec(),
                    ..Default::default()
                };
                let (status, text, id) = d.push(&msg).await?;
                if (200..300).contains(&status) {
                    Ok(id)
                } else {
                    Err(AndroidEmuError::PubSub(format!("push endpoint answered {status}: {text}")))
                }
            }
        }
    }
}
