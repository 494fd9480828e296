//! APNs push for Apple MDM: wakes a device so it checks in and fetches its commands.
//!
//! One [`Pusher`] per gateway. It keeps one pool of HTTP/2 connections per stored push
//! certificate (topic), built lazily from the store and rebuilt when a certificate changes,
//! bounds the pushes in flight, retries what APNs says is temporary (429, 5xx, no answer) with
//! exponential backoff, and turns token refusals (410, `BadDeviceToken`, `DeviceTokenNotForTopic`)
//! into a `push.failed` event plus enrollment state, so later pushes to that token are refused
//! without asking APNs until the device sends a TokenUpdate.
//!
//! A certificate saved on another instance (PostgreSQL) reaches this one's pools through
//! [`follow_certificate_changes`]; without that signal, pools re-read the certificates every
//! 30 s.
//!
//! Not done here: the payload bytes (`mdm_apple::push_payload`), certificate upload rules
//! (`api/nanomdm.rs`), and any other push service (AMAPI, WNS). Why this is not the `a2` crate:
//! see `docs/push.md`.

mod apns;
mod certs;
mod coalesce;
mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mdm_core::{CommandStatus, DeviceId, EventType};
use serde_json::json;
use tokio::sync::{Mutex, Semaphore, watch};

use self::apns::{Failure, PushRequest};
use self::coalesce::Coalescer;
use self::pool::{Endpoint, Pool};
use crate::clock::Clock;
use crate::config::AppleConfig;
use crate::events::EventFactory;
use crate::store::{Enrollment, EnrollmentState, PushInfo, Store};
use crate::telemetry;

pub use certs::{ExpiryWatch, WARN_DAYS, days_left};

/// Applies push-certificate saves signalled by the store (any instance, PostgreSQL `LISTEN`)
/// to `pusher`, until shutdown.
pub async fn follow_certificate_changes(
    pusher: Arc<Pusher>,
    mut changes: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tracing::debug!("push certificates changed on some instance; pools follow");
                pusher.certificates_changed();
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Enrollment attribute set when APNs refused the token; cleared by the next TokenUpdate.
pub const ATTR_TOKEN_INVALID: &str = "push_token_invalid";
/// The APNs reason that set [`ATTR_TOKEN_INVALID`].
pub const ATTR_TOKEN_INVALID_REASON: &str = "push_token_invalid_reason";
/// When it was set (RFC 3339).
pub const ATTR_TOKEN_INVALID_AT: &str = "push_token_invalid_at";

/// Attempts per push, the first included, for answers worth retrying.
const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled for each further attempt (100, 200, 400, 800 ms).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// How long a certificate lookup is trusted before the store is read again (uploads through
/// this gateway's API refresh at once; this catches other writers).
const CERT_RECHECK: Duration = Duration::from_secs(30);

/// Why a device could not be pushed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("no such enrollment")]
    NoEnrollment,
    #[error("enrollment is unenrolled")]
    Unenrolled,
    #[error("enrollment has no push token (no TokenUpdate yet)")]
    NoToken,
    #[error("push token was refused by APNs ({reason}); no push until the device sends a new token (TokenUpdate)")]
    TokenInvalid { reason: String },
    #[error("no push certificate for topic {topic}")]
    NoCertificate { topic: String },
    #[error("push certificate for topic {topic} is not usable: {detail}")]
    BadCertificate { topic: String, detail: String },
    #[error("APNs refused the push: {status} {reason}")]
    Refused { status: u16, reason: String, apns_id: Option<String> },
    #[error("APNs did not accept the push after {attempts} attempts: {reason}: {detail}")]
    GaveUp { attempts: u32, reason: String, detail: String },
    #[error("cannot push: {0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(String),
}

impl PushError {
    /// Low-cardinality label for metrics: an APNs reason or a local code.
    pub fn reason(&self) -> String {
        match self {
            PushError::NoEnrollment => "no_enrollment".into(),
            PushError::Unenrolled => "unenrolled".into(),
            PushError::NoToken => "no_token".into(),
            PushError::TokenInvalid { .. } => "token_invalid".into(),
            PushError::NoCertificate { .. } => "no_certificate".into(),
            PushError::BadCertificate { .. } => "bad_certificate".into(),
            PushError::Refused { reason, .. } | PushError::GaveUp { reason, .. } => reason.clone(),
            PushError::Invalid(_) => "invalid".into(),
            PushError::Store(_) => "store".into(),
        }
    }

    /// Whether the push reached APNs at all (for the `result` label).
    fn result(&self) -> &'static str {
        match self {
            PushError::Refused { .. } => "refused",
            PushError::GaveUp { .. } => "failed",
            _ => "not_sent",
        }
    }
}

/// Settings taken from `[apple]`.
#[derive(Debug, Clone)]
struct Settings {
    endpoint: Endpoint,
    connections: usize,
    timeout: Duration,
    expiration_s: i64,
    coalesce: Duration,
}

#[derive(Debug, Default)]
struct Pools {
    by_topic: HashMap<String, Result<Arc<Pool>, String>>,
    /// Generation of the certificate set this map was built from.
    generation: u64,
    built: Option<Instant>,
}

/// The APNs client of a gateway.
#[derive(Debug)]
pub struct Pusher {
    settings: Settings,
    store: Arc<dyn Store>,
    events: EventFactory,
    clock: Arc<dyn Clock>,
    pools: RwLock<Pools>,
    /// Bumped by [`Pusher::certificates_changed`].
    generation: AtomicU64,
    /// One rebuild at a time.
    rebuild: Mutex<()>,
    in_flight: Semaphore,
    coalescer: Coalescer,
}

impl Pusher {
    /// `apns_ca_pem`: the contents of `apple.apns_ca`, when set.
    pub fn new(
        config: &AppleConfig,
        apns_ca_pem: Option<&[u8]>,
        store: Arc<dyn Store>,
        events: EventFactory,
        clock: Arc<dyn Clock>,
    ) -> Result<Pusher, String> {
        let roots = pool::roots(apns_ca_pem)?;
        let endpoint = Endpoint::new(&config.apns_url, Arc::new(roots))?;
        Ok(Pusher {
            settings: Settings {
                endpoint,
                connections: config.apns_connections as usize,
                timeout: Duration::from_millis(config.push_timeout_ms),
                expiration_s: i64::try_from(config.apns_expiration_s).unwrap_or(i64::MAX),
                coalesce: Duration::from_millis(config.push_coalesce_ms),
            },
            store,
            events,
            clock,
            pools: RwLock::new(Pools::default()),
            generation: AtomicU64::new(1),
            rebuild: Mutex::new(()),
            in_flight: Semaphore::new(config.push_max_in_flight as usize),
            coalescer: Coalescer::default(),
        })
    }

    /// A push certificate was stored: the next push re-reads them and rebuilds changed pools.
    pub fn certificates_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes `device` after a command was queued, without waiting: coalesced per device (see
    /// `coalesce.rs`); failures end up in the log, metrics and `push.failed` events.
    pub fn wake(self: &Arc<Self>, device: DeviceId) {
        if self.no_certificates() {
            // What `push` would answer after reading the enrollment (to learn its topic): no
            // certificate is stored for any topic, so no topic can be pushed. Saves a store read
            // and a task per queued command on gateways without push (or before the upload).
            metrics::counter!(telemetry::PUSHES, "result" => "not_sent", "reason" => "no_certificate").increment(1);
            tracing::debug!(device = %device, "push after enqueue not delivered: no push certificate is stored");
            return;
        }
        if self.settings.coalesce.is_zero() {
            let me = self.clone();
            tokio::spawn(async move { me.push_quietly(&device).await });
            return;
        }
        if !self.coalescer.begin(&device) {
            metrics::counter!(telemetry::PUSHES_COALESCED).increment(1);
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let window_end = tokio::time::Instant::now() + me.settings.coalesce;
                me.push_quietly(&device).await;
                tokio::time::sleep_until(window_end).await;
                loop {
                    if !me.coalescer.take_pending(&device) {
                        return;
                    }
                    if me.has_queued(&device).await {
                        break;
                    }
                    metrics::counter!(telemetry::PUSHES_COALESCED).increment(1);
                }
            }
        });
    }

    async fn push_quietly(&self, device: &DeviceId) {
        if let Err(e) = self.push(device).await {
            tracing::debug!(device = %device, error = %e, "push after enqueue not delivered");
        }
    }

    /// Whether the device has a command it has not fetched yet.
    async fn has_queued(&self, device: &DeviceId) -> bool {
        match self.store.pending(device, 64).await {
            Ok(p) => p.iter().any(|c| c.status == CommandStatus::Queued),
            // Cannot tell: a spare push costs the device one empty check-in.
            Err(_) => true,
        }
    }

    /// Pushes `device` now and waits for APNs' answer (retries included): the `apns-id`, or why not.
    pub async fn push(&self, device: &DeviceId) -> Result<String, PushError> {
        let started = Instant::now();
        let result = self.push_inner(device).await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                metrics::counter!(telemetry::PUSHES, "result" => "delivered", "reason" => "").increment(1);
                metrics::histogram!(telemetry::PUSH_SECONDS, "result" => "delivered").record(seconds);
            }
            Err(e) => {
                metrics::counter!(telemetry::PUSHES, "result" => e.result(), "reason" => e.reason()).increment(1);
                if e.result() != "not_sent" {
                    metrics::histogram!(telemetry::PUSH_SECONDS, "result" => e.result()).record(seconds);
                }
            }
        }
        result
    }

    async fn push_inner(&self, device: &DeviceId) -> Result<String, PushError> {
        let enrollment = self
            .store
            .enrollment(device)
            .await
            .map_err(|e| PushError::Store(e.to_string()))?
            .ok_or(PushError::NoEnrollment)?;
        if enrollment.state == EnrollmentState::Unenrolled {
            return Err(PushError::Unenrolled);
        }
        let info = enrollment.push.clone().ok_or(PushError::NoToken)?;
        if enrollment.attributes.get(ATTR_TOKEN_INVALID).and_then(|v| v.as_bool()) == Some(true) {
            let reason = enrollment
                .attributes
                .get(ATTR_TOKEN_INVALID_REASON)
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned();
            return Err(PushError::TokenInvalid { reason });
        }
        let pool = self.pool_for(&info.topic).await?;
        let expiration = match self.settings.expiration_s {
            0 => 0,
            s => self.clock.unix().saturating_add(s),
        };
        let req = PushRequest {
            base: self.settings.endpoint.base.clone(),
            token_hex: hex::encode(&info.token),
            topic: info.topic.clone(),
            payload: Bytes::from(mdm_apple::push_payload(&info.magic)),
            expiration,
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let http = req.to_http().map_err(PushError::Invalid)?;
            let attempt = {
                let _permit = self.in_flight.acquire().await.map_err(|_| PushError::Invalid("pusher closed".into()))?;
                pool.send(pool.pick(), http, self.settings.timeout).await
            };
            match attempt {
                Ok(apns_id) => return Ok(apns_id),
                Err(a) if a.retryable() && attempts < MAX_ATTEMPTS => {
                    metrics::counter!(telemetry::PUSH_RETRIES, "reason" => a.reason().to_owned()).increment(1);
                    tracing::debug!(device = %device, attempt = attempts, answer = ?a, "APNs push will be retried");
                    tokio::time::sleep(BACKOFF_BASE * 2u32.pow(attempts - 1)).await;
                }
                Err(a) => return Err(self.failed(&enrollment, &info, a, attempts).await),
            }
        }
    }

    /// Records a push APNs did not take: a `push.failed` event, and for token refusals the
    /// enrollment state, in one transaction.
    async fn failed(&self, enrollment: &Enrollment, info: &PushInfo, failure: Failure, attempts: u32) -> PushError {
        let device = &enrollment.device_id;
        let token_invalid = failure.token_invalid();
        let (error, data) = match failure {
            Failure::Refused { status, reason, apns_id } => (
                PushError::Refused { status, reason: reason.clone(), apns_id: apns_id.clone() },
                json!({ "reason": reason, "status": status, "apns_id": apns_id, "topic": info.topic, "attempts": attempts, "token_invalid": token_invalid }),
            ),
            Failure::NoAnswer { reason, detail } => (
                PushError::GaveUp { attempts, reason: reason.to_owned(), detail: detail.clone() },
                json!({ "reason": reason, "status": null, "detail": detail, "topic": info.topic, "attempts": attempts, "token_invalid": false }),
            ),
        };
        // A last 429/5xx after the retries is a GaveUp too, with APNs' status kept in the event.
        let error = match error {
            PushError::Refused { status, reason, .. } if status == 429 || status >= 500 => {
                PushError::GaveUp { attempts, reason, detail: format!("last answer HTTP {status}") }
            }
            e => e,
        };
        let event = self.events.event(EventType::PUSH_FAILED, device, None, data);
        tracing::warn!(device = %device, topic = %info.topic, error = %error, "APNs push failed");
        let stored = if token_invalid {
            self.mark_token_invalid(device, info, &error, event).await
        } else {
            self.store.append_events(&[event]).await
        };
        if let Err(e) = stored {
            tracing::error!(device = %device, error = %e, "cannot record the failed push");
        }
        error
    }

    /// Sets the invalid-token attributes, unless the device sent another token meanwhile.
    async fn mark_token_invalid(
        &self,
        device: &DeviceId,
        info: &PushInfo,
        error: &PushError,
        event: mdm_core::Event,
    ) -> crate::store::Result<()> {
        let Some(mut current) = self.store.enrollment(device).await? else {
            return self.store.append_events(&[event]).await;
        };
        if current.push.as_ref().map(|p| &p.token) != Some(&info.token) {
            return self.store.append_events(&[event]).await;
        }
        let now = self.clock.now();
        current.attributes.insert(ATTR_TOKEN_INVALID.into(), true.into());
        current.attributes.insert(ATTR_TOKEN_INVALID_REASON.into(), error.reason().into());
        current.attributes.insert(
            ATTR_TOKEN_INVALID_AT.into(),
            now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default().into(),
        );
        current.updated_at = now.unix_timestamp();
        self.store.save_enrollment(&current, &[event]).await
    }

    /// The pool for `topic`, rebuilding the set from the store when it is old or was invalidated.
    async fn pool_for(&self, topic: &str) -> Result<Arc<Pool>, PushError> {
        if let Some(r) = self.cached(topic) {
            return r;
        }
        let _one = self.rebuild.lock().await;
        if let Some(r) = self.cached(topic) {
            return r;
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let certs = self.store.push_certs().await.map_err(|e| PushError::Store(e.to_string()))?;
        let now = self.clock.unix();
        let mut by_topic = HashMap::new();
        {
            let old = self.pools.read().unwrap_or_else(|e| e.into_inner());
            for c in certs {
                let entry = if c.not_after <= now {
                    Err(format!("it expired at {}", certs::rfc3339(c.not_after).unwrap_or_default()))
                } else {
                    match old.by_topic.get(&c.topic) {
                        Some(Ok(p)) if p.cert_updated_at == c.updated_at => Ok(p.clone()),
                        _ => Pool::new(
                            &self.settings.endpoint,
                            &c.topic,
                            &c.cert_pem,
                            &c.key_pem,
                            c.updated_at,
                            self.settings.connections,
                        )
                        .map(Arc::new)
                        .inspect(|_| tracing::info!(topic = %c.topic, "APNs pool ready for push certificate")),
                    }
                };
                if let Err(e) = &entry {
                    tracing::warn!(topic = %c.topic, error = %e, "push certificate not usable");
                }
                by_topic.insert(c.topic, entry);
            }
        }
        *self.pools.write().unwrap_or_else(|e| e.into_inner()) =
            Pools { by_topic, generation, built: Some(Instant::now()) };
        self.cached(topic).unwrap_or(Err(PushError::NoCertificate { topic: topic.to_owned() }))
    }

    /// The certificate set read from the store is current and empty.
    fn no_certificates(&self) -> bool {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        pools.by_topic.is_empty()
            && pools.generation == self.generation.load(Ordering::SeqCst)
            && pools.built.is_some_and(|t| t.elapsed() < CERT_RECHECK)
    }

    fn cached(&self, topic: &str) -> Option<Result<Arc<Pool>, PushError>> {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        let fresh = pools.generation == self.generation.load(Ordering::SeqCst)
            && pools.built.is_some_and(|t| t.elapsed() < CERT_RECHECK);
        if !fresh {
            return None;
        }
        Some(match pools.by_topic.get(topic) {
            Some(Ok(p)) => Ok(p.clone()),
            Some(Err(detail)) => Err(PushError::BadCertificate { topic: topic.to_owned(), detail: detail.clone() }),
            None => Err(PushError::NoCertificate { topic: topic.to_owned() }),
        })
    }
}
