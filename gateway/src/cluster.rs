//! Cross-instance duties: several gateway instances on one store divide the background work
//! with leases (docs/scale-out.md).
//!
//! Each instance has an id ([`Cluster::instance_id`]; `cluster.instance_id`, or generated at
//! start). A duty that must run on one instance only (a sink's relay, the expiry sweep, the
//! retention sweep, the Android reconcile) runs under a lease in the store
//! ([`Store::acquire_lease`]): [`Cluster::run_leased`] tries to take it every third of
//! `cluster.lease_ttl_s`, runs the duty while it holds it, renews it on the same beat, and
//! stops the duty at once (drops it) when a renewal fails or cannot be made before the lease
//! would expire. The others stand by and take over when the lease expires, or at once when the
//! holder released it on a clean shutdown. Every instance also keeps a heartbeat lease
//! (`instance:<id>`, [`Cluster::heartbeat`]); claims of queued Android commands by an instance
//! whose heartbeat lapsed are abandoned (`android::dispatch`).
//!
//! This module does not decide what a duty does, nor fence its writes: duties that write what
//! a successor reads (the relay's sink cursor) fence them with [`Leased`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::ClusterConfig;
use crate::store::{Store, instance_lease};

/// The lease of a sink's relay.
pub fn relay_lease(sink: &str) -> String {
    format!("relay:{sink}")
}

/// The lease of the command expiry sweep.
pub const EXPIRY_LEASE: &str = "expiry";
/// The lease of the retention sweep (events, Pub/Sub message ids).
pub const RETENTION_LEASE: &str = "retention";
/// The lease of the Android reconcile loop (`operations.get`, abandoned claims).
pub const ANDROID_RECONCILE_LEASE: &str = "android-reconcile";

/// This instance's view of the cluster.
#[derive(Debug)]
pub struct Cluster {
    instance: String,
    ttl: Duration,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

/// What a duty running under a lease gets: the lease, for fenced writes.
#[derive(Debug, Clone)]
pub struct Leased {
    pub name: String,
    pub holder: String,
    clock: Arc<dyn Clock>,
}

impl Leased {
    /// Unix milliseconds, on the clock leases are taken with.
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.clock.as_ref())
    }
}

fn unix_ms(clock: &dyn Clock) -> i64 {
    i64::try_from(clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// A new instance id: time-ordered and unique (UUIDv7), with the process id for operators.
fn generate_instance_id() -> String {
    format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple())
}

impl Cluster {
    pub fn new(config: &ClusterConfig, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Cluster {
        Cluster {
            instance: config.instance_id.clone().unwrap_or_else(generate_instance_id),
            ttl: Duration::from_secs(config.lease_ttl_s),
            store,
            clock,
        }
    }

    /// This instance's id (leases' holder, command claims).
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// `cluster.lease_ttl_s`.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    /// Unix milliseconds, on the clock leases are taken with.
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.clock.as_ref())
    }

    fn beat(&self) -> Duration {
        self.ttl / 3
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// Keeps this instance's heartbeat lease until `stop` turns true, then releases it.
    pub async fn heartbeat(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let name = instance_lease(&self.instance);
        let until = stop.clone();
        self.run_leased(name, stop, move |_| {
            let mut until = until.clone();
            async move {
                let _ = until.wait_for(|s| *s).await;
            }
        })
        .await;
    }

    /// Runs `duty` while this instance holds lease `name`, until `stop` turns true: standing
    /// by (trying every third of the TTL) while another instance holds it, starting a new run
    /// of `duty` each time the lease is taken, and dropping a running `duty` at once when the
    /// lease is lost. `duty` must itself return when `stop` turns true (it may finish its work
    /// first: the lease is renewed until it returns, then released).
    pub async fn run_leased<F, Fut>(self: Arc<Self>, name: String, mut stop: watch::Receiver<bool>, mut duty: F)
    where
        F: FnMut(Leased) -> Fut,
        Fut: Future<Output = ()>,
    {
        let holder = self.instance.clone();
        loop {
            if *stop.borrow() {
                return;
            }
            let asked = Instant::now();
            match self.store.acquire_lease(&name, &holder, self.now_ms(), self.ttl_ms()).await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.beat()) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot take lease; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(self.beat()) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
            tracing::info!(lease = %name, instance = %holder, "lease taken: this instance runs the duty");
            // Held until then unless renewed: the store counts from a time read before the
            // request was sent, so this instance never believes it holds longer than others.
            let mut held_until = asked + self.ttl;
            let run = duty(Leased { name: name.clone(), holder: holder.clone(), clock: self.clock.clone() });
            tokio::pin!(run);
            let mut next = Instant::now() + self.beat();
            let lost = loop {
                tokio::select! {
                    () = &mut run => break false,
                    _ = tokio::time::sleep_until(next) => {}
                }
                let asked = Instant::now();
                let left = held_until.saturating_duration_since(asked);
                let renewed = tokio::select! {
                    r = tokio::time::timeout(left, self.store.acquire_lease(&name, &holder, self.now_ms(), self.ttl_ms())) => r,
                    // The duty may finish while the renewal is under way.
                    () = &mut run => break false,
                };
                next = Instant::now() + self.beat();
                match renewed {
                    Ok(Ok(true)) => held_until = asked + self.ttl,
                    Ok(Ok(false)) => {
                        tracing::warn!(lease = %name, "lease taken by another instance; duty stopped");
                        break true;
                    }
                    Ok(Err(e)) if Instant::now() < held_until => {
                        tracing::warn!(lease = %name, error = %e, "cannot renew lease; trying again before it expires");
                        next = Instant::now() + self.beat().min(Duration::from_millis(500));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(lease = %name, error = %e, "lease expired without renewal; duty stopped");
                        break true;
                    }
                    Err(_) => {
                        tracing::warn!(lease = %name, "lease renewal too slow; lease expired; duty stopped");
                        break true;
                    }
                }
            };
            // Dropping the duty's future stops it where it is waiting.
            drop(run);
            if lost {
                continue;
            }
            // The duty returned: on shutdown, or because it found the lease gone (a fenced
            // write refused); either way give it up so a standby need not wait for expiry.
            match self.store.release_lease(&name, &holder).await {
                Ok(true) => tracing::info!(lease = %name, "lease released"),
                Ok(false) => {}
                Err(e) => tracing::warn!(lease = %name, error = %e, "cannot release lease; it expires on its own"),
            }
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.beat()) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
