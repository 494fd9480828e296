//! The running emulator: listeners, the token endpoint, bearer checks, faults, the notification
//! publisher and the simulated devices' command loop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use openssl::pkey::{PKey, Public};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::AndroidEmuError;
use super::commands::CommandSettings;
use super::device::DeviceSpec;
use super::errors::ApiError;
use super::faults::{Fault, FaultRule, RecordedRequest, take_fault};
use super::key::ServiceAccountKey;
use super::policy::PolicySettings;
use super::pubsub::Publisher;
use super::rest::route;
use super::state::{Effect, State};
use super::tls::{FullRequest, ServerIdentity, json_response, serve};
use super::token::{GrantCheck, check_grant};
use super::util::{B64URL, now_millis, random_string};

/// How to start an [`AmapiEmulator`].
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The TLS listener (`127.0.0.1:0` for any port).
    pub listen: SocketAddr,
    /// Also serve plain HTTP here.
    pub plain_listen: Option<SocketAddr>,
    /// The Google Cloud project of the service account (`projectId` must match).
    pub project_id: String,
    /// `expires_in` of issued access tokens.
    pub token_lifetime: Duration,
    pub commands: CommandSettings,
    /// How devices apply policies.
    pub policy: PolicySettings,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            plain_listen: None,
            project_id: "emulated-project".into(),
            token_lifetime: Duration::from_secs(3600),
            commands: CommandSettings::default(),
            policy: PolicySettings::default(),
        }
    }
}

/// A notification the emulator sent (or failed to send).
#[derive(Debug, Clone)]
pub struct Published {
    pub topic: String,
    /// `ENROLLMENT`, `STATUS_REPORT`, `COMMAND`, … or `test`.
    pub notification_type: String,
    pub data: Option<Value>,
    /// The Pub/Sub message id, or why it could not be sent (no publisher, publish error).
    pub result: Result<String, String>,
}

struct Outgoing {
    topic: String,
    notification_type: String,
    data: Option<Value>,
}

struct Inner {
    state: Mutex<State>,
    key: ServiceAccountKey,
    public_key: PKey<Public>,
    /// Every URL of `/token` (JWT `aud` must be one).
    token_uris: Vec<String>,
    token_lifetime: Mutex<Duration>,
    publisher: RwLock<Option<Publisher>>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    published: Mutex<Vec<Published>>,
    published_changed: Notify,
    queued: std::sync::atomic::AtomicU64,
}

/// A running AMAPI emulator. Dropping it stops its listeners.
pub struct AmapiEmulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    plain_addr: Option<SocketAddr>,
    ca_pem: String,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for AmapiEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmapiEmulator").field("addr", &self.addr).field("plain_addr", &self.plain_addr).finish()
    }
}

impl AmapiEmulator {
    /// Starts the listeners, with a new CA, TLS certificate and service-account key.
    pub async fn start(config: EmulatorConfig) -> Result<AmapiEmulator, AndroidEmuError> {
        let identity = ServerIdentity::generate("Emulated Google APIs CA")?;
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let plain = match config.plain_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let plain_addr = plain.as_ref().map(|l| l.local_addr()).transpose()?;
        let mut token_uris = vec![format!("https://{addr}/token")];
        if addr.ip().is_loopback() {
            token_uris.push(format!("https://localhost:{}/token", addr.port()));
        }
        if let Some(p) = plain_addr {
            token_uris.push(format!("http://{p}/token"));
        }
        let key = ServiceAccountKey::generate(&config.project_id, &token_uris[0])?;
        let (outbox, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::new(&config.project_id, config.commands.clone(), config.policy.clone())),
            public_key: key.public_key()?,
            key,
            token_uris,
            token_lifetime: Mutex::new(config.token_lifetime),
            publisher: RwLock::new(None),
            outbox,
            published: Mutex::new(Vec::new()),
            published_changed: Notify::new(),
            queued: Default::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(publish_loop(inner.clone(), rx))];
        let handler = {
            let inner = inner.clone();
            move |req: FullRequest| {
                let inner = inner.clone();
                async move { handle(inner, req).await }
            }
        };
        tasks.push(tokio::spawn(serve(
            listener,
            Some(TlsAcceptor::from(identity.tls)),
            handler.clone(),
            stop_rx.clone(),
        )));
        if let Some(l) = plain {
            tasks.push(tokio::spawn(serve(l, None, handler, stop_rx)));
        }
        Ok(AmapiEmulator { inner, addr, plain_addr, ca_pem: identity.ca_pem, stop, tasks: Mutex::new(tasks) })
    }

    /// `https://127.0.0.1:<port>`: the API base URL (paths start with `/v1/`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `http://…` when plain HTTP is served.
    pub fn plain_url(&self) -> Option<String> {
        self.plain_addr.map(|a| format!("http://{a}"))
    }

    /// The key's `token_uri`: `https://127.0.0.1:<port>/token`.
    pub fn token_uri(&self) -> String {
        self.inner.token_uris[0].clone()
    }

    /// PEM of the CA of the emulator's TLS certificate (valid for 127.0.0.1, ::1, localhost).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The service account the token endpoint accepts (`token_uri` = [`Self::token_uri`]).
    pub fn service_account_key(&self) -> &ServiceAccountKey {
        &self.inner.key
    }

    /// Writes the key file (use `with_token_uri` on [`Self::service_account_key`] for the
    /// plain-HTTP token URI).
    pub fn write_key(&self, path: &Path) -> Result<(), AndroidEmuError> {
        self.inner.key.write_to(path)
    }

    /// Where notifications go from now on (`None`: recorded as not sent).
    pub fn set_publisher(&self, publisher: Option<Publisher>) {
        *self.inner.publisher.write().expect("lock") = publisher;
    }

    pub fn set_command_settings(&self, settings: CommandSettings) {
        self.state().commands = settings;
    }

    /// How devices apply policies from now on.
    pub fn set_policy_settings(&self, settings: PolicySettings) {
        self.state().policy = settings;
    }

    /// The policy `device` applied last, as it was when applied (`None`: none applied since
    /// the emulator started).
    pub fn applied_policy(&self, device: &str) -> Option<Value> {
        self.state().applied.get(device).cloned()
    }

    /// `expires_in` of the next access tokens.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self.inner.token_lifetime.lock().expect("lock") = lifetime;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("state lock")
    }

    /// Access tokens granted so far.
    pub fn grants(&self) -> u64 {
        self.state().grants
    }

    /// Makes every issued access token invalid (the next API call gets 401).
    pub fn revoke_access_tokens(&self) {
        self.state().access_tokens.clear();
    }

    /// `policies.patch` calls that succeeded.
    pub fn policy_patches(&self) -> u64 {
        self.state().policy_patches
    }

    pub fn policy(&self, name: &str) -> Option<Value> {
        self.state().policies.get(name).cloned()
    }

    /// Every version of the policy, oldest first.
    pub fn policy_history(&self, name: &str) -> Vec<Value> {
        self.state().policy_history.get(name).cloned().unwrap_or_default()
    }

    /// Every request received (token endpoint included), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// Requests with `method` whose path contains `path_contains`.
    pub fn requests_matching(&self, method: &str, path_contains: &str) -> Vec<RecordedRequest> {
        self.state().requests.iter().filter(|r| r.method == method && r.path.contains(path_contains)).cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Queues a fault (see [`FaultRule`]).
    pub fn inject(&self, rule: FaultRule) {
        self.state().faults.push(rule);
    }

    /// `times` faults for requests with `method` on paths containing `path_contains`.
    pub fn inject_fault(&self, method: &str, path_contains: &str, fault: Fault, times: usize) {
        self.inject(FaultRule::new(path_contains, fault).method(method).times(times));
    }

    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> Vec<FaultRule> {
        self.state().faults.clone()
    }

    /// The admin finished Google's signup page for `signup_url_name` (from
    /// `signupUrls.create`): the URL Google redirects to, the callback URL with
    /// `enterpriseToken=…` added.
    pub fn complete_signup(&self, signup_url_name: &str) -> Result<String, AndroidEmuError> {
        self.state().complete_signup(signup_url_name).ok_or_else(|| AndroidEmuError::NotFound(signup_url_name.into()))
    }

    /// An enterprise made without the signup flow (for tools and tests that start from a
    /// configured enterprise): its name.
    pub fn create_enterprise(
        &self,
        pubsub_topic: Option<&str>,
        notification_types: &[&str],
    ) -> Result<String, AndroidEmuError> {
        let mut body = serde_json::Map::new();
        if let Some(t) = pubsub_topic {
            body.insert("pubsubTopic".into(), Value::String(t.into()));
        }
        body.insert("enabledNotificationTypes".into(), json!(notification_types));
        body.insert("enterpriseDisplayName".into(), Value::String("Emulated Enterprise".into()));
        let mut effects = Vec::new();
        let e = self.state().insert_enterprise(body, &mut effects).map_err(|e| AndroidEmuError::Enroll(e.message))?;
        self.apply(effects);
        Ok(e["name"].as_str().unwrap_or_default().to_owned())
    }

    /// The enterprise as stored (with `pubsubTopic` and `enabledNotificationTypes`).
    pub fn enterprise(&self, name: &str) -> Option<Value> {
        self.state().enterprises.get(name).cloned()
    }

    /// An enrollment token made without the API (same checks as `enrollmentTokens.create`).
    pub fn create_enrollment_token(&self, enterprise: &str, body: &Value) -> Result<Value, AndroidEmuError> {
        self.state()
            .create_enrollment_token(enterprise, body, now_millis())
            .map_err(|e| AndroidEmuError::Enroll(e.message))
    }

    /// The enrollment token with this `value`.
    pub fn enrollment_token(&self, value: &str) -> Option<Value> {
        self.state().tokens.get(value).map(|t| t.json.clone())
    }

    /// A simulated device enrolls with enrollment token `value`: the new device's name. An
    /// ENROLLMENT notification follows.
    pub fn enroll_device(&self, token_value: &str, spec: &DeviceSpec) -> Result<String, AndroidEmuError> {
        let mut effects = Vec::new();
        let name =
            self.state().enroll(token_value, spec, now_millis(), &mut effects).map_err(AndroidEmuError::Enroll)?;
        self.apply(effects);
        Ok(name)
    }

    /// `device` sends a status report now (STATUS_REPORT notification).
    pub fn status_report(&self, device: &str) -> Result<(), AndroidEmuError> {
        let mut effects = Vec::new();
        self.state().status_report(device, now_millis(), &mut effects).map_err(AndroidEmuError::NotFound)?;
        self.apply(effects);
        Ok(())
    }

    /// Changes a device's resource (e.g. add `nonComplianceDetails`); seen by the API and by
    /// the next status report.
    pub fn update_device(&self, device: &str, f: impl FnOnce(&mut Value)) -> Result<(), AndroidEmuError> {
        let mut st = self.state();
        let d = st.devices.get_mut(device).ok_or_else(|| AndroidEmuError::NotFound(device.into()))?;
        f(d);
        Ok(())
    }

    /// The device's resource (deleted ones too, with state `DELETED`).
    pub fn device(&self, name: &str) -> Option<Value> {
        self.state().devices.get(name).cloned()
    }

    /// Names of devices not deleted.
    pub fn devices(&self) -> Vec<String> {
        self.state().devices.iter().filter(|(_, d)| d["state"] != "DELETED").map(|(n, _)| n.clone()).collect()
    }

    pub fn operation(&self, name: &str) -> Option<Value> {
        self.state().operations.get(name).cloned()
    }

    /// Every operation, by name.
    pub fn operations(&self) -> Vec<Value> {
        self.state().operations.values().cloned().collect()
    }

    /// Finishes a pending operation now (e.g. one left by `never_finish`).
    pub fn finish_operation(&self, name: &str) {
        let mut effects = Vec::new();
        self.state().finish_operation(name, &mut effects);
        self.apply(effects);
    }

    /// Every live device sends a status report each `interval` until the emulator stops.
    pub fn start_status_reports(&self, interval: Duration) {
        let inner = self.inner.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let names: Vec<String> = {
                    let st = inner.state.lock().expect("lock");
                    st.devices.iter().filter(|(_, d)| d["state"] != "DELETED").map(|(n, _)| n.clone()).collect()
                };
                for n in names {
                    let mut effects = Vec::new();
                    let _ = inner.state.lock().expect("lock").status_report(&n, now_millis(), &mut effects);
                    apply(&inner, effects);
                }
            }
        });
        self.tasks.lock().expect("lock").push(task);
    }

    /// Publishes any notification for `enterprise` (USAGE_LOGS, ENTERPRISE_UPGRADE, odd
    /// payloads), to its topic, whatever types it enabled.
    pub fn publish_raw(
        &self,
        enterprise: &str,
        notification_type: &str,
        data: Option<Value>,
    ) -> Result<(), AndroidEmuError> {
        let topic = self
            .enterprise(enterprise)
            .and_then(|e| e["pubsubTopic"].as_str().map(str::to_owned))
            .ok_or_else(|| AndroidEmuError::NotFound(format!("{enterprise} (or its pubsubTopic)")))?;
        self.apply(vec![Effect::Notify { topic, notification_type: notification_type.into(), data }]);
        Ok(())
    }

    /// Notifications sent so far, in order.
    pub fn published(&self) -> Vec<Published> {
        self.inner.published.lock().expect("lock").clone()
    }

    /// Waits until every notification queued so far was handed to the publisher (or
    /// `timeout`); `true` if so.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let target = self.inner.queued.load(std::sync::atomic::Ordering::SeqCst) as usize;
        self.wait_published(target, timeout).await.len() >= target
    }

    /// Waits until at least `n` notifications were sent (or `timeout`).
    pub async fn wait_published(&self, n: usize, timeout: Duration) -> Vec<Published> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.published_changed.notified();
            let got = self.published();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn apply(&self, effects: Vec<Effect>) {
        apply(&self.inner, effects);
    }

    /// Stops the listeners and background tasks.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("lock"));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for AmapiEmulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

fn apply(inner: &Arc<Inner>, effects: Vec<Effect>) {
    for e in effects {
        match e {
            Effect::Notify { topic, notification_type, data } => {
                inner.queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = inner.outbox.send(Outgoing { topic, notification_type, data });
            }
            Effect::ApplyPolicy { device } => {
                let delay = inner.state.lock().expect("lock").policy.apply_delay;
                let inner = inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut effects = Vec::new();
                    inner.state.lock().expect("lock").apply_policy(&device, now_millis(), &mut effects);
                    apply(&inner, effects);
                });
            }
            Effect::Execute { operation } => {
                let (delay, never) = {
                    let st = inner.state.lock().expect("lock");
                    (st.commands.delay, st.commands.never_finish)
                };
                if never {
                    continue;
                }
                let inner = inner.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut effects = Vec::new();
                    inner.state.lock().expect("lock").finish_operation(&operation, &mut effects);
                    apply(&inner, effects);
                });
            }
        }
    }
}

/// Sends notifications one at a time, in the order they were made.
async fn publish_loop(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(o) = rx.recv().await {
        let publisher = inner.publisher.read().expect("lock").clone();
        let data = o.data.as_ref().map(|d| d.to_string().into_bytes());
        let attributes = vec![("notificationType".to_owned(), o.notification_type.clone())];
        let result = match publisher {
            None => Err("no publisher configured".to_owned()),
            Some(p) => p.publish(&o.topic, data.as_deref(), &attributes).await.map_err(|e| e.to_string()),
        };
        inner.published.lock().expect("lock").push(Published {
            topic: o.topic,
            notification_type: o.notification_type,
            data: o.data,
            result,
        });
        inner.published_changed.notify_waiters();
    }
}

async fn handle(inner: Arc<Inner>, req: FullRequest) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let raw_path = parts.uri.path();
    let path = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy().into_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let fault = take_fault(&mut inner.state.lock().expect("lock").faults, &method, &path);
    let mut faulted = false;
    let (status, reply) = match fault {
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            answer(&inner, &method, &path, &query, &body, &parts.headers)
        }
        Some(f) => {
            faulted = true;
            let e = f.error().unwrap_or_else(|| ApiError::new(500, "INTERNAL", "fault"));
            (e.code, e.body())
        }
        None => answer(&inner, &method, &path, &query, &body, &parts.headers),
    };
    inner.state.lock().expect("lock").record(RecordedRequest {
        method,
        path,
        query,
        body: body.to_vec(),
        status,
        faulted,
        at,
    });
    let mut resp = json_response(status, &reply);
    if status == 401 {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\""),
        );
    }
    resp
}

fn answer(
    inner: &Arc<Inner>,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    headers: &http::HeaderMap,
) -> (u16, Value) {
    let now = now_millis();
    if path == "/token" {
        if method != "POST" {
            return (405, json!({"error": "invalid_request", "error_description": "Only POST is supported."}));
        }
        let check = GrantCheck {
            client_email: &inner.key.client_email,
            private_key_id: &inner.key.private_key_id,
            public_key: &inner.public_key,
            audiences: &inner.token_uris,
            now: now / 1000,
        };
        return match check_grant(body, &check) {
            Ok(()) => {
                let lifetime = *inner.token_lifetime.lock().expect("lock");
                let token = format!("ya29.emu-{}", random_string(64, B64URL));
                let mut st = inner.state.lock().expect("lock");
                st.grants += 1;
                st.access_tokens.insert(token.clone(), now + lifetime.as_millis() as i64);
                (200, json!({"access_token": token, "expires_in": lifetime.as_secs(), "token_type": "Bearer"}))
            }
            Err(e) => (400, json!({"error": e.error, "error_description": e.description})),
        };
    }
    if !path.starts_with("/v1/") {
        return (404, ApiError::not_found().body());
    }
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let mut effects = Vec::new();
    let result = {
        let mut st = inner.state.lock().expect("lock");
        let valid = bearer.and_then(|b| st.access_tokens.get(b)).is_some_and(|exp| *exp > now);
        if valid {
            route(&mut st, method, path, query, body, now, &mut effects)
        } else {
            Err(ApiError::unauthenticated())
        }
    };
    apply(inner, effects);
    match result {
        Ok(v) => (200, v),
        Err(e) => (e.code, e.body()),
    }
}
