//! The MDM protocol gateway runtime: the only crate of the workspace that does IO.
//!
//! It binds the device listener (TLS) and the backend API listener, verifies device identities,
//! runs the protocol crates' logic against the store, and relays the event log to sinks.
//! Protocol rules live in `protocols/*`; certificate logic lives in `mdm-certs`.

pub mod android;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod enrollment_gate;
pub mod events;
pub mod expiry;
pub mod forwarded;
pub mod http_util;
pub mod identity;
pub mod pki;
pub mod push;
pub mod ratelimit;
pub mod retention;
pub mod scep;
pub mod sealing;
pub mod server;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::events::EventFactory;
use crate::identity::IdentityVerifier;
use crate::sinks::SinkHealth;
use crate::store::{PoolSettings, PostgresStore, SqliteStore, Store};

/// Shared, read-mostly state of a running gateway.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Woken after every commit that appended events.
    pub notify: Arc<Notify>,
    pub identity: IdentityVerifier,
    pub api_key: String,
    pub clock: Arc<dyn Clock>,
    pub events: EventFactory,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub shutdown: watch::Receiver<bool>,
    pub draining: AtomicBool,
    pub sinks: Vec<Arc<SinkHealth>>,
    /// APNs client.
    pub pusher: Arc<push::Pusher>,
    /// SCEP: challenges, issuance and the issued-certificate record.
    pub scep: Arc<scep::ScepService>,
    /// Seals secrets before they are stored (bootstrap tokens).
    pub sealer: sealing::Sealer,
    /// `GetToken` answers (`apple.tokens`).
    pub token_services: sources::apple::token_services::TokenServices,
    /// Enrollment profile signer, page and rate limit.
    pub enrollment: sources::apple::enroll::Enrollment,
    /// Windows management (OMA-DM): load limit and SyncML settings.
    pub omadm: sources::omadm::OmaDm,
    /// Windows enrollment (discovery, policy, enrollment services).
    pub windows_enroll: sources::windows_enroll::WindowsEnrollment,
    /// The enrollment gate (`[enrollment]`), shared by every platform's enrollment.
    pub gate: enrollment_gate::Gate,
    /// Android Pub/Sub push intake: authentication and per-device ordering.
    pub android_pubsub: sources::android::PubSubIntake,
    /// The AMAPI client and Android command dispatcher; `None` without
    /// `android.service_account_key`.
    pub android: Option<Arc<android::Android>>,
    /// This instance among those sharing the store: its id and the leases of its duties.
    pub cluster: Arc<cluster::Cluster>,
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("data directory: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

impl StartError {
    /// 64 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 64,
            _ => 1,
        }
    }
}

/// Seals bootstrap tokens that a version before migration 0003 stored in plaintext, before any
/// device can ask for one.
async fn seal_plaintext_bootstrap_tokens(
    store: &dyn Store,
    sealer: &sealing::Sealer,
    now: i64,
) -> Result<(), StartError> {
    let mut sealed = 0usize;
    loop {
        let batch = store.plaintext_bootstrap_tokens(500).await?;
        if batch.is_empty() {
            break;
        }
        for (device, plaintext) in batch {
            let value = if plaintext.is_empty() {
                None
            } else {
                Some(
                    sealer
                        .seal(sealing::Purpose::BootstrapToken, &device, &plaintext)
                        .map_err(|e| StartError::Other(format!("sealing the bootstrap token of {device}: {e}")))?,
                )
            };
            store.set_bootstrap_token(&device, value.as_deref(), now, &[]).await?;
            sealed += 1;
        }
    }
    if sealed > 0 {
        tracing::info!(count = sealed, "sealed bootstrap tokens stored in plaintext by an earlier version");
    }
    Ok(())
}

/// An open store with its signals.
#[derive(Debug)]
pub struct OpenStore {
    pub store: Arc<dyn Store>,
    /// "Events were appended" (by this instance; on PostgreSQL, by any instance).
    pub notify: Arc<Notify>,
    /// PostgreSQL: changes when any instance saved a push certificate. SQLite: `None` (one
    /// process; push pools re-read the certificates every 30 s anyway).
    pub push_cert_changes: Option<watch::Receiver<u64>>,
}

/// Opens the store `store.url` names (SQLite unless it is a `postgres://` URL), bringing its
/// schema up to date, with its signals.
pub async fn open_store(config: &Config) -> Result<OpenStore, StartError> {
    let url = config.store_url();
    if PostgresStore::is_url(&url) {
        let settings = PoolSettings {
            max_connections: config.store.max_connections,
            acquire_timeout: Duration::from_secs(config.store.acquire_timeout_s),
        };
        let pg = PostgresStore::open(&url, settings).await?;
        tracing::info!(max_connections = settings.max_connections, "store: PostgreSQL");
        return Ok(OpenStore {
            notify: pg.notifier(),
            push_cert_changes: Some(pg.push_cert_changes()),
            store: Arc::new(pg),
        });
    }
    let sqlite = SqliteStore::open_with(&url, config.store.read_connections, config.store.durability).await?;
    Ok(OpenStore { notify: sqlite.notifier(), push_cert_changes: None, store: Arc::new(sqlite) })
}

/// `mdm-gateway migrate`: applies the schema migrations of this build to the configured store
/// and closes it. Returns the kind of database migrated.
pub async fn migrate_store(config: &Config) -> Result<&'static str, StartError> {
    let url = config.store_url();
    if PostgresStore::is_url(&url) {
        PostgresStore::migrate(&url).await?;
        return Ok("PostgreSQL");
    }
    if let Some(parent) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .filter(|p| !p.starts_with(':') && !p.contains('?'))
        .and_then(|p| std::path::Path::new(p).parent())
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| StartError::Other(format!("cannot create {}: {e}", parent.display())))?;
    }
    let sqlite = SqliteStore::open_with(&url, 1, config.store.durability).await?;
    sqlite.close().await;
    Ok("SQLite")
}

/// `duty(state, stop)`, on whichever instance holds lease `name`.
fn spawn_leased<F, Fut>(state: &Arc<AppState>, name: &str, stop: &watch::Receiver<bool>, duty: F) -> JoinHandle<()>
where
    F: Fn(Arc<AppState>, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (st, duty_stop) = (state.clone(), stop.clone());
    tokio::spawn(
        state.cluster.clone().run_leased(name.to_owned(), stop.clone(), move |_| duty(st.clone(), duty_stop.clone())),
    )
}

/// The relay of `sink`, on whichever instance holds its lease.
fn spawn_relay(
    state: &Arc<AppState>,
    sink: Arc<dyn sinks::Sink>,
    health: Arc<SinkHealth>,
    stop: &watch::Receiver<bool>,
    grace: Duration,
) -> JoinHandle<()> {
    let name = cluster::relay_lease(sink.name());
    let (st, relay_stop) = (state.clone(), stop.clone());
    tokio::spawn(state.cluster.clone().run_leased(name, stop.clone(), move |lease| {
        sinks::relay(st.clone(), sink.clone(), health.clone(), relay_stop.clone(), grace, lease)
    }))
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    pub device_addr: SocketAddr,
    /// The plain-HTTP device listener (`device.plain_listen`), when configured.
    pub device_plain_addr: Option<SocketAddr>,
    pub api_addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    relay_stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    relays: Vec<JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Gateway, StartError> {
        config.validate()?;
        let now = clock.unix();
        let data = pki::open(&config.data_dir, &config.public_host(), now)?;

        let mut anchors = vec![data.ca.clone()];
        for path in &config.apple.device_ca {
            let pem = std::fs::read(path).map_err(|e| config::ConfigError {
                key: "apple.device_ca".into(),
                message: format!("{}: {e}", path.display()),
            })?;
            let certs = mdm_certs::TrustAnchors::from_pem_bundle(&pem).map_err(|e| config::ConfigError {
                key: "apple.device_ca".into(),
                message: format!("{}: {e}", path.display()),
            })?;
            anchors.extend(certs);
        }
        let header = http::HeaderName::from_bytes(config.device.client_cert_header.as_bytes())
            .map_err(|e| config::ConfigError { key: "device.client_cert_header".into(), message: e.to_string() })?;
        let identity =
            IdentityVerifier::new(mdm_certs::TrustAnchors::new(anchors), config.device.trusted_proxies.clone(), header);

        let api_key = match &config.api.api_key_file {
            Some(p) => pki::read_secret(p)
                .map_err(|e| config::ConfigError { key: "api.api_key_file".into(), message: e.to_string() })?,
            None => data.api_key.clone(),
        };

        let (tls_chain, tls_key) = match (&config.device.tls_cert, &config.device.tls_key) {
            (Some(c), Some(k)) => (
                std::fs::read(c).map_err(|e| config::ConfigError {
                    key: "device.tls_cert".into(),
                    message: format!("{}: {e}", c.display()),
                })?,
                std::fs::read(k).map_err(|e| config::ConfigError {
                    key: "device.tls_key".into(),
                    message: format!("{}: {e}", k.display()),
                })?,
            ),
            _ => (data.server_chain_pem.clone(), data.server_key_pem.clone()),
        };
        let tls = tls::device_server_config(&tls_chain, &tls_key)
            .map_err(|e| config::ConfigError { key: "device.tls_cert".into(), message: e.to_string() })?;
        // The device listener's certificate also signs enrollment profiles (docs/apple.md).
        let enrollment = sources::apple::enroll::Enrollment::new(&config, &data.ca, &tls_chain, &tls_key)
            .map_err(|message| config::ConfigError { key: "device.tls_cert".into(), message })?;

        let storage_key = match &config.store.encryption_key_file {
            Some(p) => pki::read_storage_key(p)
                .map_err(|e| config::ConfigError { key: "store.encryption_key_file".into(), message: e.to_string() })?,
            None => data.storage_key,
        };
        let sealer = sealing::Sealer::new(storage_key);
        let token_services = sources::apple::token_services::TokenServices::new(&config.apple.tokens)?;
        let windows_enroll = sources::windows_enroll::WindowsEnrollment::new(
            &config.windows,
            &config.public_url,
            data.ca.clone(),
            data.ca_key.clone(),
            data.enroll_secret.clone(),
        )?;

        if config.windows.max_devices_per_user > 0 {
            tracing::warn!(
                windows_max_devices_per_user = config.windows.max_devices_per_user,
                device_limit_per_user = config.enrollment_rules().device_limit_per_user,
                "windows.max_devices_per_user is deprecated: it now lowers enrollment.device_limit_per_user, which counts every platform; set that instead"
            );
        }
        let gate = enrollment_gate::Gate::new(&config.enrollment_rules())
            .map_err(|message| config::ConfigError { key: "enrollment.hook_url".into(), message })?;
        let android_pubsub = sources::android::PubSubIntake::new(&config.android, &data.pubsub_token)?;

        let OpenStore { store, notify, push_cert_changes } = open_store(&config).await?;
        let cluster = Arc::new(cluster::Cluster::new(&config.cluster, store.clone(), clock.clone()));
        seal_plaintext_bootstrap_tokens(store.as_ref(), &sealer, now).await?;
        // Before any port is bound: a bad `apple.apns_ca` is a configuration error (exit 64).
        let apns_ca = match &config.apple.apns_ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| config::ConfigError {
                key: "apple.apns_ca".into(),
                message: format!("{}: {e}", p.display()),
            })?),
            None => None,
        };
        let pusher = push::Pusher::new(
            &config.apple,
            apns_ca.as_deref(),
            store.clone(),
            EventFactory::new(clock.clone()),
            clock.clone(),
        )
        .map_err(|message| config::ConfigError {
            key: if apns_ca.is_some() { "apple.apns_ca" } else { "apple.apns_url" }.into(),
            message,
        })?;

        let scep = scep::ScepService::new(
            &config.apple,
            data.ca.clone(),
            data.ca_key.clone(),
            data.scep_ra.clone(),
            data.scep_ra_key.clone(),
            data.scep_challenge.clone(),
            store.clone(),
            clock.clone(),
        )
        .map_err(|message| config::ConfigError { key: "apple.scep_allow_des".into(), message })?;

        // Before any port is bound: a bad key file or CA is a configuration error (exit 64).
        let android = android::Android::new(&config.android, store.clone(), clock.clone())?;
        let device_listener = TcpListener::bind(config.device.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.device.listen, source })?;
        let plain_listener = match config.device.plain_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?),
            None => None,
        };
        let api_listener = TcpListener::bind(config.api.listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.api.listen, source })?;
        let device_addr =
            device_listener.local_addr().map_err(|source| StartError::Bind { addr: config.device.listen, source })?;
        let api_addr =
            api_listener.local_addr().map_err(|source| StartError::Bind { addr: config.api.listen, source })?;
        let device_plain_addr = match (&plain_listener, config.device.plain_listen) {
            (Some(l), Some(addr)) => Some(l.local_addr().map_err(|source| StartError::Bind { addr, source })?),
            _ => None,
        };

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Relays stop on their own signal, sent only once the listeners have drained, so that
        // events appended by requests still in flight are flushed too.
        let (relay_stop_tx, relay_stop_rx) = watch::channel(false);
        let mut sink_health = Vec::new();
        let webhook = match &config.webhook {
            Some(w) => {
                let secret = match &w.hmac_secret_file {
                    Some(p) => Some(pki::read_secret(p).map_err(|e| config::ConfigError {
                        key: "webhook.hmac_secret_file".into(),
                        message: e.to_string(),
                    })?),
                    None => None,
                };
                let health = Arc::new(SinkHealth::new("webhook"));
                sink_health.push(health.clone());
                Some((sinks::webhook::WebhookSink::new(w.clone(), secret).map_err(StartError::Other)?, health))
            }
            None => None,
        };
        let nats = match &config.nats {
            Some(n) => {
                let client = sinks::nats::connect(n)
                    .await
                    .map_err(|e| config::ConfigError { key: e.key().into(), message: e.to_string() })?;
                let health = Arc::new(SinkHealth::new("nats"));
                sink_health.push(health.clone());
                let intake = n.commands.then(|| Arc::new(SinkHealth::intake("nats-commands")));
                sink_health.extend(intake.clone());
                Some((sinks::nats::NatsSink::new(n.clone(), client.clone()), health, client, intake, n.clone()))
            }
            None => None,
        };

        let omadm = sources::omadm::OmaDm::new(&config);
        let state = Arc::new(AppState {
            omadm,
            events: EventFactory::new(clock.clone()),
            config,
            store,
            notify,
            identity,
            api_key,
            clock,
            metrics: telemetry::metrics_handle(),
            shutdown: shutdown_rx.clone(),
            draining: AtomicBool::new(false),
            sinks: sink_health,
            pusher: Arc::new(pusher),
            scep: Arc::new(scep),
            sealer,
            token_services,
            enrollment,
            windows_enroll,
            gate,
            android_pubsub,
            android,
            cluster,
        });

        let grace = Duration::from_secs(state.config.shutdown.grace_period_s);
        let mut tasks = Vec::new();
        let device_handler = sources::device_handler(state.clone());
        if let Some(plain) = plain_listener {
            tasks.push(tokio::spawn(server::serve(
                plain,
                None,
                device_handler.clone(),
                shutdown_rx.clone(),
                grace,
                "device-plain",
            )));
        }
        tasks.push(tokio::spawn(server::serve(
            device_listener,
            Some(tls),
            device_handler,
            shutdown_rx.clone(),
            grace,
            "device",
        )));
        let api_handler = api::handler(state.clone());
        tasks.push(tokio::spawn(server::serve(api_listener, None, api_handler, shutdown_rx.clone(), grace, "api")));
        // Duties that run on one instance of those sharing the store (docs/scale-out.md).
        tasks.push(spawn_leased(&state, cluster::EXPIRY_LEASE, &shutdown_rx, expiry::run));
        tasks.push(spawn_leased(&state, cluster::RETENTION_LEASE, &shutdown_rx, retention::run));
        // Every instance: it only sets this instance's gauge and logs.
        tasks.push(tokio::spawn(
            push::ExpiryWatch::new(state.store.clone(), state.clock.clone()).run(shutdown_rx.clone()),
        ));
        if let Some(changes) = push_cert_changes {
            tasks.push(tokio::spawn(push::follow_certificate_changes(
                state.pusher.clone(),
                changes,
                shutdown_rx.clone(),
            )));
        }

        if let Some(a) = &state.android {
            tasks.extend(a.spawn(state.cluster.clone(), shutdown_rx.clone()));
        }

        let mut relays = Vec::new();
        // The heartbeat outlives the other tasks (it stops with the relays), so this instance's
        // claims are not abandoned while it still finishes them.
        relays.push(tokio::spawn(state.cluster.clone().heartbeat(relay_stop_rx.clone())));
        if let Some((sink, health, client, intake, nats_config)) = nats {
            // The intake stops pulling with the listeners (SIGTERM); the commands it takes append
            // events that the relays, stopped afterwards, still flush.
            if let Some(intake) = intake {
                tasks.push(tokio::spawn(api::nats_intake::run(
                    state.clone(),
                    client,
                    nats_config,
                    intake,
                    shutdown_rx.clone(),
                )));
            }
            relays.push(spawn_relay(&state, Arc::new(sink), health, &relay_stop_rx, grace));
        }
        if let Some((sink, health)) = webhook {
            relays.push(spawn_relay(&state, Arc::new(sink), health, &relay_stop_rx, grace));
        }

        tracing::info!(
            device = %device_addr, device_plain = ?device_plain_addr, api = %api_addr, public_url = %state.config.public_url,
            data_dir = %state.config.data_dir.display(), instance = state.cluster.instance_id(), "gateway started"
        );
        Ok(Gateway {
            device_addr,
            device_plain_addr,
            api_addr,
            state,
            shutdown: shutdown_tx,
            relay_stop: relay_stop_tx,
            tasks,
            relays,
        })
    }

    /// Drains, then stops: [`Gateway::shutdown_or`] with nothing to end the drain early.
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.shutdown_or(std::future::pending()).await
    }

    /// Turns unready (`/readyz` 503) at once and keeps serving for `shutdown.drain_delay_s`, or
    /// until `cut_short` resolves (a second signal), so that a load balancer stops sending new
    /// requests here first; then stops accepting, lets in-flight requests finish and flushes
    /// the sinks, bounded by the grace period.
    pub async fn shutdown_or(self, cut_short: impl std::future::Future<Output = ()>) -> Result<(), StartError> {
        self.state.draining.store(true, Ordering::SeqCst);
        let delay = Duration::from_secs(self.state.config.shutdown.drain_delay_s);
        if !delay.is_zero() {
            tracing::info!(delay_s = delay.as_secs(), "draining: unready, still serving until the delay is over");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cut_short => tracing::info!("drain delay cut short"),
            }
        }
        tracing::info!("stopping: no new connections; finishing requests in flight");
        let _ = self.shutdown.send(true);
        // Listeners first: requests in flight may still append events the relays must send.
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.relay_stop.send(true);
        for r in self.relays {
            let _ = r.await;
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}
