//! Configuration: plain data, read from TOML, the environment and flags, validated before any
//! port is bound. Bad configuration is reported with the key that is wrong (exit code 64).
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config`), environment variables
//! (`MDM_GATEWAY_<SECTION>__<KEY>`, e.g. `MDM_GATEWAY_DEVICE__LISTEN`), command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod android;
mod cluster;
mod enrollment_gate;
mod nats;
mod windows;

pub use android::{AndroidConfig, PubSubAuth, PubSubOidcConfig};
pub use cluster::ClusterConfig;
pub use enrollment_gate::{DEM_DEVICE_LIMIT, EnrollmentGateConfig, MAX_DEVICE_LIMIT_PER_USER, PlatformRules};
pub use nats::NatsConfig;
pub use windows::{FederatedConfig, WindowsAuthPolicy, WindowsConfig, WindowsPollConfig};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The environment variable prefix; nested keys are separated by `__`.
pub const ENV_PREFIX: &str = "MDM_GATEWAY_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for the SQLite database, the development CA and the generated secrets.
    pub data_dir: PathBuf,
    /// The URL devices use to reach the device listener; written into profiles and discovery.
    pub public_url: String,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    pub device: DeviceConfig,
    pub api: ApiConfig,
    pub apple: AppleConfig,
    /// Windows management (OMA-DM SyncML at `/ManagementServer/MDM.svc`).
    pub omadm: OmaDmConfig,
    /// Windows enrollment.
    pub windows: WindowsConfig,
    /// Android (AMAPI): Pub/Sub push intake and the AMAPI client.
    pub android: AndroidConfig,
    /// The enrollment gate: rules every platform's enrollment passes.
    pub enrollment: EnrollmentGateConfig,
    pub store: StoreConfig,
    pub events: EventsConfig,
    /// Optional webhook sink.
    pub webhook: Option<WebhookConfig>,
    /// Optional NATS JetStream event sink and command intake.
    pub nats: Option<NatsConfig>,
    pub shutdown: ShutdownConfig,
    /// Instances sharing one store: leases for the background duties.
    pub cluster: ClusterConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    /// Address of the device listener (TLS).
    pub listen: SocketAddr,
    /// PEM server certificate chain; generated from the development CA when absent.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted from a device, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// A second device listener speaking plain HTTP, for a load balancer that ends TLS and
    /// passes the client certificate in `client_cert_header` and the client address in
    /// `X-Forwarded-For` / `Forwarded`. Only peers in `trusted_proxies` are served on it (others
    /// get 403); needs `trusted_proxies`. Off when absent.
    pub plain_listen: Option<SocketAddr>,
    /// Networks of load balancers allowed to pass a client certificate in a header and the
    /// client address in `X-Forwarded-For` / `Forwarded`.
    pub trusted_proxies: Vec<IpNet>,
    /// The header a trusted proxy puts the client certificate in: `Client-Cert` (RFC 9440,
    /// `:base64 DER:`) or any other name, read as nginx's URL-escaped PEM.
    pub client_cert_header: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the backend API listener (plain HTTP; put it on a private network).
    pub listen: SocketAddr,
    /// File holding the API key; `<data_dir>/api-key` (generated) when absent.
    pub api_key_file: Option<PathBuf>,
    /// Longest `wait` accepted by the `/v1/events` long poll, in seconds.
    pub max_wait_s: u64,
    /// Largest API request body, in bytes.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppleConfig {
    /// Extra PEM CA files whose certificates are accepted as device identities.
    pub device_ca: Vec<PathBuf>,
    /// Allow an enrolled device to present a new identity certificate (same subject, chained
    /// to a trusted CA, not bound to another enrollment) and rebind to it. Off by default: a
    /// certificate change otherwise means re-enrollment through Authenticate.
    pub allow_cert_renewal: bool,
    /// At most one `device.checked_in` event per device per this many seconds (0: every report).
    pub checked_in_event_interval_s: u64,
    /// `last_seen` is written at most this often per device, in seconds.
    pub last_seen_resolution_s: u64,
    /// APNs endpoint: `https://api.push.apple.com` (production), `https://api.sandbox.push.apple.com`,
    /// or any `https://` URL with a host and no path (a local emulator, a relay).
    pub apns_url: String,
    /// PEM CA file that verifies the APNs server; the built-in Mozilla roots when absent.
    pub apns_ca: Option<PathBuf>,
    /// HTTP/2 connections per push certificate (topic); each carries many concurrent pushes.
    pub apns_connections: u32,
    /// Pushes in flight to APNs at once, over all topics; more wait for a slot.
    pub push_max_in_flight: u32,
    /// Time for one push attempt (connection included), in milliseconds.
    pub push_timeout_ms: u64,
    /// `apns-expiration`: APNs keeps an undeliverable push this many seconds (0: try once, keep nothing).
    pub apns_expiration_s: u64,
    /// Pushes after enqueue to the same device within this many milliseconds become one (0: off).
    pub push_coalesce_ms: u64,
    /// Seconds a one-time SCEP challenge (`POST /v1/scep/challenges`) stays usable.
    pub scep_challenge_ttl_s: u64,
    /// Accept the static challenge in `<data_dir>/scep-challenge` (usable any number of times) besides
    /// one-time challenges.
    pub scep_static_challenge: bool,
    /// Validity of certificates issued through SCEP, in days.
    pub scep_cert_validity_days: u32,
    /// Accept single-DES encrypted SCEP requests (old clients such as micromdm's scepclient 2.1);
    /// answered with triple DES. Loads OpenSSL's legacy provider.
    pub scep_allow_des: bool,
    /// Token services answering `GetToken` check-ins, by `TokenServiceType`
    /// (`[apple.tokens."com.apple.maid"]`). Other service types are answered 501.
    pub tokens: BTreeMap<String, TokenServiceConfig>,
    /// The enrollment profile (`GET /mdm/enroll`), tickets and the enrollment page.
    pub enrollment: EnrollmentConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentConfig {
    /// Push topic written into profiles when several push certificates are uploaded (a `?topic=`
    /// query still wins). Must be one of the uploaded topics.
    pub topic: Option<String>,
    /// `PayloadIdentifier` of the enrollment profile; when absent, derived from the public URL's
    /// host (`mdm.example.com` → `com.example.mdm.enrollment`). Keep it stable: devices replace an
    /// installed profile with the same identifier.
    pub profile_identifier: Option<String>,
    /// The organisation named in the profile (`PayloadOrganization`) and on the enrollment page.
    pub organization: String,
    /// How long an enrollment ticket (`POST /enroll/session`) can be used to download a profile.
    pub ticket_ttl_s: u64,
    /// Gateway-wide budget of enrollment requests that store something (`POST /enroll/session`,
    /// `GET /mdm/enroll`) per minute; a burst of this size is allowed, then requests get 429.
    pub requests_per_minute: u32,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        EnrollmentConfig {
            topic: None,
            profile_identifier: None,
            organization: "MDM Gateway".into(),
            ticket_ttl_s: 3600,
            requests_per_minute: 120,
        }
    }
}

/// Where the token for one `TokenServiceType` comes from: a file, or a backend hook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenServiceConfig {
    /// A file whose bytes are the token, read at each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A backend URL the gateway POSTs `{device_id, token_service_type, token_parameters}` to;
    /// it answers `{"token": "<base64>"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Time for the hook to answer, in milliseconds.
    #[serde(default = "TokenServiceConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// File holding a secret; when set, each hook POST carries `X-Hmac-Signature`, the base64
    /// HMAC-SHA256 of the body (as the webhook sink does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<PathBuf>,
}

impl TokenServiceConfig {
    fn default_timeout_ms() -> u64 {
        10_000
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OmaDmConfig {
    /// Largest SyncML message the gateway takes, advertised to devices as `MaxMsgSize`; larger
    /// results come in chunks (`MoreData`). Bodies are also bounded by `device.max_body_bytes`.
    pub max_msg_size: usize,
    /// Largest object assembled from chunks, advertised as `MaxObjSize`.
    pub max_obj_size: usize,
    /// `MaxMsgSize` assumed for a device that does not state one: replies never exceed it.
    pub default_device_max_msg_size: usize,
    /// OMA-DM requests handled at once by this instance; more are answered 429 with `Retry-After`.
    pub max_in_flight: usize,
    /// The `Retry-After` of those 429 answers, in seconds.
    pub retry_after_s: u64,
    /// A session whose last message is older than this many seconds cannot be continued; the
    /// device starts a new one.
    pub session_ttl_s: u64,
}

impl Default for OmaDmConfig {
    fn default() -> Self {
        OmaDmConfig {
            max_msg_size: 512 * 1024,
            max_obj_size: 4 * 1024 * 1024,
            default_device_max_msg_size: 512 * 1024,
            max_in_flight: 256,
            retry_after_s: 30,
            session_ttl_s: 1800,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://…`; `<data_dir>/gateway.db` when absent.
    pub url: Option<String>,
    /// SQLite: connections for concurrent reads.
    pub read_connections: u32,
    /// PostgreSQL: most connections the pool opens.
    pub max_connections: u32,
    /// PostgreSQL: how long an operation waits for a connection before failing.
    pub acquire_timeout_s: u64,
    /// `full` (fsync at every commit; default) or `normal` (may lose the last commits on power
    /// loss, never consistency).
    pub durability: crate::store::Durability,
    /// File holding the 32-byte key that seals secrets at rest (64 hex digits or base64);
    /// `<data_dir>/storage-key` (generated) when absent.
    pub encryption_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Largest page of `/v1/events`.
    pub max_page: u32,
    /// When true, a failing sink does not make `/readyz` answer 503.
    pub readiness_ignores_sinks: bool,
    /// Events older than this many days are deleted from the log once every configured sink has
    /// relayed them; 0 keeps them forever.
    pub retention_days: u32,
    /// How often the retention sweep runs, in seconds.
    pub prune_interval_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// `event` (this gateway's JSON) or `micromdm` (the MicroMDM-compatible shape).
    #[serde(default = "WebhookConfig::default_format")]
    pub format: WebhookFormat,
    /// File holding a secret; when set, each POST carries `X-Hmac-Signature`, the base64
    /// HMAC-SHA256 of the body.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Per-request timeout in milliseconds.
    #[serde(default = "WebhookConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait between retries of a failing delivery, in milliseconds.
    #[serde(default = "WebhookConfig::default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Event,
    Micromdm,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds given to in-flight requests and sinks once the listeners stop accepting.
    pub grace_period_s: u64,
    /// Seconds between SIGTERM and the listeners stopping: `/readyz` answers 503 at once while
    /// requests are still served, so a load balancer takes the instance out first. A second
    /// signal ends the wait early.
    pub drain_delay_s: u64,
}

impl WebhookConfig {
    fn default_format() -> WebhookFormat {
        WebhookFormat::Event
    }
    fn default_timeout_ms() -> u64 {
        10_000
    }
    fn default_max_backoff_ms() -> u64 {
        60_000
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./mdm-data"),
            public_url: "https://localhost:8443".into(),
            log_format: LogFormat::Text,
            device: DeviceConfig::default(),
            api: ApiConfig::default(),
            apple: AppleConfig::default(),
            omadm: OmaDmConfig::default(),
            windows: WindowsConfig::default(),
            android: AndroidConfig::default(),
            enrollment: EnrollmentGateConfig::default(),
            store: StoreConfig::default(),
            events: EventsConfig::default(),
            webhook: None,
            nats: None,
            shutdown: ShutdownConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            listen: "127.0.0.1:8443".parse().expect("literal address"),
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 4 * 1024 * 1024,
            plain_listen: None,
            trusted_proxies: Vec::new(),
            client_cert_header: "Client-Cert".into(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            api_key_file: None,
            max_wait_s: 60,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Default for AppleConfig {
    fn default() -> Self {
        AppleConfig {
            device_ca: Vec::new(),
            allow_cert_renewal: false,
            checked_in_event_interval_s: 300,
            last_seen_resolution_s: 60,
            apns_url: "https://api.push.apple.com".into(),
            apns_ca: None,
            apns_connections: 2,
            push_max_in_flight: 1000,
            push_timeout_ms: 10_000,
            apns_expiration_s: 86_400,
            push_coalesce_ms: 1000,
            scep_challenge_ttl_s: 3600,
            scep_static_challenge: true,
            scep_cert_validity_days: 365,
            scep_allow_des: false,
            tokens: BTreeMap::new(),
            enrollment: EnrollmentConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            read_connections: 4,
            max_connections: 16,
            acquire_timeout_s: 5,
            durability: crate::store::Durability::Full,
            encryption_key_file: None,
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { max_page: 1000, readiness_ignores_sinks: false, retention_days: 30, prune_interval_s: 300 }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period_s: 30, drain_delay_s: 5 }
    }
}

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigError { key: key.to_owned(), message: message.into() }
    }
}

/// Values given as command-line flags; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_ca: Vec<PathBuf>,
}

/// Names the wrong key (for an unknown key, the key itself: `device.lsten`) and where it came
/// from: the environment variable or the file.
fn extract_error(fig: &Figment, e: &figment::Error) -> ConfigError {
    let mut path = e.path.clone();
    if let figment::error::Kind::UnknownField(field, _) = &e.kind
        && path.last() != Some(field)
    {
        path.push(field.clone());
    }
    let key = path.join(".");
    if key.is_empty() {
        return ConfigError::new("(top level)", e.kind.to_string());
    }
    let mut message = e.kind.to_string();
    if let Some(md) = fig.find_metadata(&key).or(e.metadata.as_ref()) {
        if md.name.contains("environment") {
            let var: Vec<String> = path.iter().map(|p| p.to_ascii_uppercase()).collect();
            message.push_str(&format!(" (environment variable {ENV_PREFIX}{})", var.join("__")));
        } else if let Some(source) = &md.source {
            message.push_str(&format!(" (in {source})"));
        }
    }
    ConfigError::new(&key, message)
}

impl Config {
    /// Reads defaults, then `file`, then the environment, then `flags`, and validates the result.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::new("--config", format!("{} is not a readable file", path.display())));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed(ENV_PREFIX).split("__").lowercase(true));
        let mut layered = serde_json::Map::new();
        if let Some(d) = &flags.data_dir {
            layered.insert("data_dir".into(), d.display().to_string().into());
        }
        if let Some(u) = &flags.public_url {
            layered.insert("public_url".into(), u.clone().into());
        }
        let mut device = serde_json::Map::new();
        if let Some(l) = &flags.device_listen {
            device.insert("listen".into(), l.clone().into());
        }
        if !device.is_empty() {
            layered.insert("device".into(), device.into());
        }
        if let Some(l) = &flags.api_listen {
            layered.insert("api".into(), serde_json::json!({ "listen": l }));
        }
        fig = fig.merge(Serialized::defaults(serde_json::Value::Object(layered)));
        let mut config: Config = fig.extract().map_err(|e| extract_error(&fig, &e))?;
        // Repeatable --device-ca adds to, rather than replaces, the configured list.
        config.apple.device_ca.extend(flags.device_ca.iter().cloned());
        config.validate()?;
        Ok(config)
    }

    /// The enrollment gate's rules with the deprecated `windows.max_devices_per_user` folded in:
    /// when above 0 it lowers `device_limit_per_user` to it (the smaller of the two wins). The
    /// gate is the only per-user limit; the old key counted Windows devices only, the gate counts
    /// every platform and exempts device enrollment managers.
    pub fn enrollment_rules(&self) -> EnrollmentGateConfig {
        let mut rules = self.enrollment.clone();
        let old = self.windows.max_devices_per_user;
        if old > 0 {
            rules.device_limit_per_user = rules.device_limit_per_user.min(old);
        }
        rules
    }

    /// Checks values serde cannot: URLs, files that must exist, ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let uri: http::Uri =
            self.public_url.parse().map_err(|e| ConfigError::new("public_url", format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(ConfigError::new("public_url", "must be an https:// URL with a host"));
        }
        if self.device.tls_cert.is_some() != self.device.tls_key.is_some() {
            return Err(ConfigError::new("device.tls_cert", "tls_cert and tls_key must be set together"));
        }
        for (key, path) in [("device.tls_cert", &self.device.tls_cert), ("device.tls_key", &self.device.tls_key)] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(ConfigError::new(key, format!("{} does not exist", p.display())));
            }
        }
        if self.device.max_body_bytes < 1024 {
            return Err(ConfigError::new("device.max_body_bytes", "must be at least 1024"));
        }
        if self.device.plain_listen.is_some() && self.device.trusted_proxies.is_empty() {
            return Err(ConfigError::new(
                "device.plain_listen",
                "needs device.trusted_proxies: device identities on the plain listener come only from the load \
                 balancer's certificate header",
            ));
        }
        if self.shutdown.drain_delay_s > 600 {
            return Err(ConfigError::new("shutdown.drain_delay_s", "must be at most 600"));
        }
        if http::HeaderName::from_bytes(self.device.client_cert_header.as_bytes()).is_err() {
            return Err(ConfigError::new("device.client_cert_header", "not a valid header name"));
        }
        for p in &self.apple.device_ca {
            if !p.is_file() {
                return Err(ConfigError::new("apple.device_ca", format!("{} does not exist", p.display())));
            }
        }
        self.validate_push()?;
        self.validate_enrollment()?;
        self.validate_omadm()?;
        self.windows.validate()?;
        self.android.validate()?;
        self.cluster.validate()?;
        self.enrollment.validate()?;
        if let Some(url) = &self.store.url {
            if crate::store::PostgresStore::is_url(url) {
                crate::store::PostgresStore::check_url(url)
                    .map_err(|e| ConfigError::new("store.url", e.to_string()))?;
            } else if !url.starts_with("sqlite:") {
                return Err(ConfigError::new(
                    "store.url",
                    "must start with sqlite: (SQLite) or postgres:// / postgresql:// (PostgreSQL)",
                ));
            }
        }
        if self.store.read_connections == 0 {
            return Err(ConfigError::new("store.read_connections", "must be at least 1"));
        }
        if self.store.max_connections == 0 {
            return Err(ConfigError::new("store.max_connections", "must be at least 1"));
        }
        if !(1..=300).contains(&self.store.acquire_timeout_s) {
            return Err(ConfigError::new("store.acquire_timeout_s", "must be between 1 and 300"));
        }
        if let Some(p) = &self.store.encryption_key_file
            && !p.is_file()
        {
            return Err(ConfigError::new("store.encryption_key_file", format!("{} does not exist", p.display())));
        }
        self.validate_tokens()?;
        if self.events.prune_interval_s == 0 {
            return Err(ConfigError::new("events.prune_interval_s", "must be at least 1"));
        }
        if self.events.max_page == 0 {
            return Err(ConfigError::new("events.max_page", "must be at least 1"));
        }
        if let Some(w) = &self.webhook {
            let u: http::Uri = w.url.parse().map_err(|e| ConfigError::new("webhook.url", format!("not a URL: {e}")))?;
            if !matches!(u.scheme_str(), Some("http" | "https")) || u.host().is_none() {
                return Err(ConfigError::new("webhook.url", "must be an http:// or https:// URL"));
            }
            if let Some(p) = &w.hmac_secret_file
                && !p.is_file()
            {
                return Err(ConfigError::new("webhook.hmac_secret_file", format!("{} does not exist", p.display())));
            }
        }
        if let Some(n) = &self.nats {
            n.validate()?;
        }
        Ok(())
    }

    fn validate_omadm(&self) -> Result<(), ConfigError> {
        let o = &self.omadm;
        for (key, value) in [
            ("omadm.max_msg_size", o.max_msg_size),
            ("omadm.default_device_max_msg_size", o.default_device_max_msg_size),
        ] {
            if value < 1024 {
                return Err(ConfigError::new(key, "must be at least 1024"));
            }
        }
        if o.max_obj_size < o.max_msg_size {
            return Err(ConfigError::new("omadm.max_obj_size", "must be at least omadm.max_msg_size"));
        }
        if o.max_in_flight == 0 {
            return Err(ConfigError::new("omadm.max_in_flight", "must be at least 1"));
        }
        if o.session_ttl_s == 0 {
            return Err(ConfigError::new("omadm.session_ttl_s", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_tokens(&self) -> Result<(), ConfigError> {
        for (service, t) in &self.apple.tokens {
            let key = |k: &str| format!("apple.tokens.{service}.{k}");
            if service.is_empty() || service.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::new(&format!("apple.tokens.{service}"), "not a TokenServiceType"));
            }
            match (&t.file, &t.url) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(ConfigError::new(
                        &format!("apple.tokens.{service}"),
                        "set exactly one of `file` and `url`",
                    ));
                }
                (Some(p), None) => {
                    if !p.is_file() {
                        return Err(ConfigError::new(&key("file"), format!("{} does not exist", p.display())));
                    }
                    if t.hmac_secret_file.is_some() {
                        return Err(ConfigError::new(&key("hmac_secret_file"), "only meaningful with `url`"));
                    }
                }
                (None, Some(url)) => {
                    let u: http::Uri =
                        url.parse().map_err(|e| ConfigError::new(&key("url"), format!("not a URL: {e}")))?;
                    if !matches!(u.scheme_str(), Some("http" | "https")) || u.host().is_none() {
                        return Err(ConfigError::new(&key("url"), "must be an http:// or https:// URL"));
                    }
                }
            }
            if !(1..=60_000).contains(&t.timeout_ms) {
                return Err(ConfigError::new(&key("timeout_ms"), "must be 1 to 60000"));
            }
            if let Some(p) = &t.hmac_secret_file
                && !p.is_file()
            {
                return Err(ConfigError::new(&key("hmac_secret_file"), format!("{} does not exist", p.display())));
            }
        }
        Ok(())
    }

    fn validate_push(&self) -> Result<(), ConfigError> {
        let a = &self.apple;
        let uri: http::Uri =
            a.apns_url.parse().map_err(|e| ConfigError::new("apple.apns_url", format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(ConfigError::new("apple.apns_url", "must be an https:// URL with a host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(ConfigError::new(
                "apple.apns_url",
                "must not have a path or query (the client adds /3/device/<token>)",
            ));
        }
        if let Some(p) = &a.apns_ca
            && !p.is_file()
        {
            return Err(ConfigError::new("apple.apns_ca", format!("{} does not exist", p.display())));
        }
        if !(1..=64).contains(&a.apns_connections) {
            return Err(ConfigError::new("apple.apns_connections", "must be 1 to 64"));
        }
        if a.push_max_in_flight == 0 {
            return Err(ConfigError::new("apple.push_max_in_flight", "must be at least 1"));
        }
        if a.push_timeout_ms == 0 {
            return Err(ConfigError::new("apple.push_timeout_ms", "must be at least 1"));
        }
        // APNs stores a notification for at most about 30 days; a longer expiration is refused
        // by no one but means nothing.
        if a.apns_expiration_s > 30 * 86_400 {
            return Err(ConfigError::new("apple.apns_expiration_s", "must be at most 2592000 (30 days)"));
        }
        if a.push_coalesce_ms > 60_000 {
            return Err(ConfigError::new("apple.push_coalesce_ms", "must be at most 60000"));
        }
        if !(60..=30 * 86_400).contains(&a.scep_challenge_ttl_s) {
            return Err(ConfigError::new("apple.scep_challenge_ttl_s", "must be 60 to 2592000 (30 days)"));
        }
        if !(1..=3650).contains(&a.scep_cert_validity_days) {
            return Err(ConfigError::new("apple.scep_cert_validity_days", "must be 1 to 3650"));
        }
        Ok(())
    }

    fn validate_enrollment(&self) -> Result<(), ConfigError> {
        let e = &self.apple.enrollment;
        let plain = |s: &str| !s.trim().is_empty() && !s.chars().any(char::is_control);
        if let Some(t) = &e.topic
            && (!t.starts_with("com.apple.mgmt.") || !plain(t))
        {
            return Err(ConfigError::new("apple.enrollment.topic", "must be an MDM push topic (com.apple.mgmt.…)"));
        }
        if let Some(id) = &e.profile_identifier
            && (id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError::new("apple.enrollment.profile_identifier", "must be non-empty without spaces"));
        }
        if !plain(&e.organization) || e.organization.chars().count() > 100 {
            return Err(ConfigError::new(
                "apple.enrollment.organization",
                "must be 1 to 100 characters without control characters",
            ));
        }
        if !(60..=7 * 86_400).contains(&e.ticket_ttl_s) {
            return Err(ConfigError::new("apple.enrollment.ticket_ttl_s", "must be 60 to 604800 (7 days)"));
        }
        if e.requests_per_minute == 0 {
            return Err(ConfigError::new("apple.enrollment.requests_per_minute", "must be at least 1"));
        }
        Ok(())
    }

    /// The enrollment profile's `PayloadIdentifier`: configured, or the public host's labels
    /// reversed plus `.enrollment` (`mdm.example.com` → `com.example.mdm.enrollment`; an IP
    /// address `10.0.0.5` → `ip-10-0-0-5.enrollment`).
    pub fn profile_identifier(&self) -> String {
        if let Some(id) = &self.apple.enrollment.profile_identifier {
            return id.clone();
        }
        let host = self.public_host();
        let base = if host.parse::<std::net::IpAddr>().is_ok() {
            format!("ip-{}", host.replace(['.', ':'], "-"))
        } else {
            host.split('.').rev().collect::<Vec<_>>().join(".")
        };
        format!("{base}.enrollment")
    }

    /// Host name of the public URL, for the generated server certificate.
    pub fn public_host(&self) -> String {
        let uri: http::Uri = self.public_url.parse().expect("validated");
        uri.host().unwrap_or("localhost").trim_matches(|c| c == '[' || c == ']').to_owned()
    }

    pub fn store_url(&self) -> String {
        self.store.url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("gateway.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_windows_limit_maps_to_the_gate() {
        let mut c = Config::default();
        assert_eq!(c.enrollment_rules().device_limit_per_user, 5);
        c.windows.max_devices_per_user = 2;
        assert_eq!(c.enrollment_rules().device_limit_per_user, 2, "lower: it wins");
        c.windows.max_devices_per_user = 40;
        assert_eq!(c.enrollment_rules().device_limit_per_user, 5, "higher: the gate's stays");
        c.enrollment.device_limit_per_user = 3;
        c.windows.max_devices_per_user = 0;
        assert_eq!(c.enrollment_rules().device_limit_per_user, 3, "0: not set");
    }

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = toml.replace("$DIR", dir.path().to_str().expect("utf-8"));
        std::fs::write(dir.path().join("token"), b"t").expect("write");
        std::fs::write(dir.path().join("secret"), b"s").expect("write");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).expect("write");
        Config::load(Some(&path), &Overrides::default())
    }

    #[test]
    fn token_services_from_toml() {
        let c = load(
            r#"
            [apple.tokens."com.apple.maid"]
            file = "$DIR/token"
            [apple.tokens."com.apple.watch.pairing"]
            url = "https://backend.example.com/mdm/token"
            hmac_secret_file = "$DIR/secret"
            timeout_ms = 2500
            "#,
        )
        .expect("valid");
        let maid = &c.apple.tokens["com.apple.maid"];
        assert!(maid.file.is_some() && maid.url.is_none());
        assert_eq!(maid.timeout_ms, 10_000);
        let watch = &c.apple.tokens["com.apple.watch.pairing"];
        assert_eq!(watch.url.as_deref(), Some("https://backend.example.com/mdm/token"));
        assert_eq!(watch.timeout_ms, 2500);
    }

    #[test]
    fn bad_token_services_name_the_key() {
        for (toml, key) in [
            (r#"[apple.tokens."com.apple.maid"]"#, "apple.tokens.com.apple.maid"),
            (
                "[apple.tokens.\"com.apple.maid\"]\nfile = \"$DIR/token\"\nurl = \"https://x.example\"",
                "apple.tokens.com.apple.maid",
            ),
            ("[apple.tokens.\"com.apple.maid\"]\nfile = \"$DIR/nope\"", "apple.tokens.com.apple.maid.file"),
            ("[apple.tokens.\"com.apple.maid\"]\nurl = \"ftp://x.example\"", "apple.tokens.com.apple.maid.url"),
            (
                "[apple.tokens.\"com.apple.maid\"]\nurl = \"https://x.example\"\ntimeout_ms = 0",
                "apple.tokens.com.apple.maid.timeout_ms",
            ),
            (
                "[apple.tokens.\"com.apple.maid\"]\nfile = \"$DIR/token\"\nhmac_secret_file = \"$DIR/secret\"",
                "apple.tokens.com.apple.maid.hmac_secret_file",
            ),
            ("[store]\nencryption_key_file = \"$DIR/nope\"", "store.encryption_key_file"),
            ("[store]\nurl = \"mysql://u:p@h/db\"", "store.url"),
            ("[store]\nurl = \"postgres://u:secret@h/db?sslmode=sometimes\"", "store.url"),
            ("[store]\nmax_connections = 0", "store.max_connections"),
            ("[store]\nacquire_timeout_s = 0", "store.acquire_timeout_s"),
        ] {
            let e = load(toml).expect_err(toml);
            assert_eq!(e.key, key, "{toml}: {e}");
        }
        // Unknown keys inside a service are refused like everywhere else.
        let e = load("[apple.tokens.\"com.apple.maid\"]\nfile = \"$DIR/token\"\nfiel = 1").expect_err("unknown key");
        assert!(e.to_string().contains("fiel"), "{e}");
    }

    #[test]
    fn store_urls_select_the_database() {
        let c =
            load("[store]\nurl = \"postgres://mdm:secret@db.example:5432/mdm?sslmode=require\"\nmax_connections = 32")
                .expect("a PostgreSQL URL is accepted");
        assert_eq!(c.store_url(), "postgres://mdm:secret@db.example:5432/mdm?sslmode=require");
        assert_eq!(c.store.max_connections, 32);
        load("[store]\nurl = \"postgresql://db.example/mdm\"").expect("postgresql:// too");
        load("[store]\nurl = \"sqlite::memory:\"").expect("SQLite");
        let e = load("[store]\nurl = \"postgres://u:secret@h/db?sslmode=sometimes\"").expect_err("bad option");
        assert!(!e.to_string().contains("secret"), "the password is not repeated: {e}");
    }

    fn with_public_url(url: &str) -> Config {
        Config { public_url: url.into(), ..Config::default() }
    }

    #[test]
    fn cluster_keys() {
        let c = load("[cluster]\ninstance_id = \"gw-eu-1\"\nlease_ttl_s = 30").expect("valid");
        assert_eq!(c.cluster.instance_id.as_deref(), Some("gw-eu-1"));
        assert_eq!(c.cluster.lease_ttl_s, 30);
        let d = Config::default();
        assert_eq!((d.cluster.instance_id, d.cluster.lease_ttl_s), (None, 15));
        for (toml, key) in [
            ("[cluster]\nlease_ttl_s = 0", "cluster.lease_ttl_s"),
            ("[cluster]\nlease_ttl_s = 3601", "cluster.lease_ttl_s"),
            ("[cluster]\ninstance_id = \"\"", "cluster.instance_id"),
            ("[cluster]\ninstance_id = \"a b\"", "cluster.instance_id"),
            ("[cluster]\ninstance_id = \"a:b\"", "cluster.instance_id"),
        ] {
            assert_eq!(load(toml).expect_err(toml).key, key, "{toml}");
        }
        assert!(load("[cluster]\nttl = 3").is_err(), "unknown keys are refused");
    }

    #[test]
    fn profile_identifier_is_derived_from_the_public_host() {
        assert_eq!(with_public_url("https://mdm.example.com").profile_identifier(), "com.example.mdm.enrollment");
        assert_eq!(with_public_url("https://localhost:8443").profile_identifier(), "localhost.enrollment");
        assert_eq!(with_public_url("https://10.0.0.5:8443/x").profile_identifier(), "ip-10-0-0-5.enrollment");
        assert_eq!(with_public_url("https://[::1]:8443").profile_identifier(), "ip---1.enrollment");
        let mut c = with_public_url("https://mdm.example.com");
        c.apple.enrollment.profile_identifier = Some("org.example.enroll".into());
        assert_eq!(c.profile_identifier(), "org.example.enroll");
    }

    #[test]
    fn enrollment_settings_are_checked() {
        let refused = |f: &dyn Fn(&mut EnrollmentConfig)| {
            let mut c = Config::default();
            f(&mut c.apple.enrollment);
            c.validate().expect_err("refused").key
        };
        assert_eq!(refused(&|e| e.topic = Some("com.example.push".into())), "apple.enrollment.topic");
        assert_eq!(
            refused(&|e| e.profile_identifier = Some("has space".into())),
            "apple.enrollment.profile_identifier"
        );
        assert_eq!(refused(&|e| e.organization = " ".into()), "apple.enrollment.organization");
        assert_eq!(refused(&|e| e.organization = "x".repeat(101)), "apple.enrollment.organization");
        assert_eq!(refused(&|e| e.ticket_ttl_s = 59), "apple.enrollment.ticket_ttl_s");
        assert_eq!(refused(&|e| e.ticket_ttl_s = 7 * 86_400 + 1), "apple.enrollment.ticket_ttl_s");
        assert_eq!(refused(&|e| e.requests_per_minute = 0), "apple.enrollment.requests_per_minute");
        Config::default().validate().expect("defaults are valid");
    }

    #[test]
    fn omadm_settings_are_checked() {
        let refused = |f: &dyn Fn(&mut OmaDmConfig)| {
            let mut c = Config::default();
            f(&mut c.omadm);
            c.validate().expect_err("refused").key
        };
        assert_eq!(refused(&|o| o.max_msg_size = 1023), "omadm.max_msg_size");
        assert_eq!(refused(&|o| o.default_device_max_msg_size = 10), "omadm.default_device_max_msg_size");
        assert_eq!(refused(&|o| o.max_obj_size = o.max_msg_size - 1), "omadm.max_obj_size");
        assert_eq!(refused(&|o| o.max_in_flight = 0), "omadm.max_in_flight");
        assert_eq!(refused(&|o| o.session_ttl_s = 0), "omadm.session_ttl_s");
    }

    #[test]
    fn plain_listener_needs_trusted_proxies() {
        let e = load("[device]\nplain_listen = \"127.0.0.1:8081\"").expect_err("no trusted proxies");
        assert_eq!(e.key, "device.plain_listen", "{e}");
        let c = load("[device]\nplain_listen = \"127.0.0.1:8081\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n[shutdown]\ndrain_delay_s = 0")
            .expect("valid");
        assert_eq!(c.device.plain_listen, Some("127.0.0.1:8081".parse().expect("addr")));
        assert_eq!(c.shutdown.drain_delay_s, 0);
        assert_eq!(Config::default().shutdown.drain_delay_s, 5);
        assert_eq!(load("[shutdown]\ndrain_delay_s = 601").expect_err("too long").key, "shutdown.drain_delay_s");
    }
}
