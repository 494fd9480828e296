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
                        r = stop.changed() => if r.is_err() { return },
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(lease = %name, error = %e, "cannot take lease; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(self.beat()) => {}
                        r = stop.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
            tracing::info!(lease = %name, instance = %holder, "lease taken: this instance runs the duty");
            // Held until then unless renewed: the store counts from a time read before the
            // request was sent, so this instance never believes it holds longer than others.
            let mut held_until = asked + self.ttl;
            // Boxed, so that dropping it below ends the duty there and then.
            let mut run = Box::pin(duty(Leased { name: name.clone(), holder: holder.clone() }));
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
                r = stop.changed() => if r.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::clock::SystemClock;
    use crate::store::SqliteStore;

    async fn pair() -> (Arc<Cluster>, Arc<Cluster>, Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.db");
        let path = path.to_str().expect("utf-8");
        let mk = |store: Arc<dyn Store>, id: &str| {
            let config = ClusterConfig { instance_id: Some(id.into()), lease_ttl_s: 1 };
            Arc::new(Cluster::new(&config, store, Arc::new(SystemClock)))
        };
        let s1: Arc<dyn Store> = Arc::new(SqliteStore::open(path, 1).await.expect("store"));
        let s2: Arc<dyn Store> = Arc::new(SqliteStore::open(path, 1).await.expect("store"));
        (mk(s1.clone(), "c1"), mk(s2, "c2"), s1, dir)
    }

    /// Counts running duties; a duty counts itself out when it returns or is dropped.
    struct Running(Arc<AtomicUsize>);

    impl Running {
        fn start(n: &Arc<AtomicUsize>) -> Running {
            n.fetch_add(1, Ordering::SeqCst);
            Running(n.clone())
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A duty that runs until stopped.
    fn duty(
        n: Arc<AtomicUsize>,
        who: Arc<AtomicUsize>,
        me: usize,
        stop: watch::Receiver<bool>,
    ) -> impl FnMut(Leased) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move |lease| {
            assert_eq!(lease.name, "job");
            let (n, who, mut stop) = (n.clone(), who.clone(), stop.clone());
            Box::pin(async move {
                let _running = Running::start(&n);
                who.store(me, Ordering::SeqCst);
                let _ = stop.wait_for(|s| *s).await;
            })
        }
    }

    /// One of two instances runs the duty; when it stops, it releases the lease and the other
    /// takes over within a beat.
    #[tokio::test]
    async fn one_runs_the_other_takes_over() {
        let (c1, c2, store, _dir) = pair().await;
        let (n, who) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (stop1, rx1) = watch::channel(false);
        let (stop2, rx2) = watch::channel(false);
        let t1 = tokio::spawn(c1.clone().run_leased("job".into(), rx1.clone(), duty(n.clone(), who.clone(), 1, rx1)));
        until("c1 runs", || who.load(Ordering::SeqCst) == 1).await;
        let t2 = tokio::spawn(c2.clone().run_leased("job".into(), rx2.clone(), duty(n.clone(), who.clone(), 2, rx2)));
        // Several renewals later, still one duty, still c1's.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(who.load(Ordering::SeqCst), 1);
        let held = store.leases().await.expect("leases");
        assert_eq!(held.iter().map(|l| (l.name.as_str(), l.holder.as_str())).collect::<Vec<_>>(), [("job", "c1")]);
        let stopped = Instant::now();
        stop1.send(true).expect("stop");
        t1.await.expect("c1 ends");
        until("c2 runs", || who.load(Ordering::SeqCst) == 2).await;
        assert!(stopped.elapsed() < Duration::from_millis(900), "within a beat: {:?}", stopped.elapsed());
        assert_eq!(n.load(Ordering::SeqCst), 1);
        stop2.send(true).expect("stop");
        t2.await.expect("c2 ends");
        assert!(store.leases().await.expect("leases").is_empty(), "released at the end");
    }

    /// A holder whose lease is taken (here by hand, as after a pause longer than the TTL) drops
    /// its duty at its next renewal, and stands by.
    #[tokio::test]
    async fn a_lost_lease_stops_the_duty_at_once() {
        let (c1, _c2, store, _dir) = pair().await;
        let (n, who) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (stop, rx) = watch::channel(false);
        let t = tokio::spawn(c1.clone().run_leased("job".into(), rx.clone(), duty(n.clone(), who.clone(), 1, rx)));
        until("c1 runs", || n.load(Ordering::SeqCst) == 1).await;
        assert!(store.release_lease("job", "c1").await.expect("release"));
        assert!(store.acquire_lease("job", "thief", c1.now_ms(), 60_000).await.expect("steal"));
        let stolen = Instant::now();
        until("c1's duty dropped", || n.load(Ordering::SeqCst) == 0).await;
        assert!(stolen.elapsed() < Duration::from_millis(800), "{:?}", stolen.elapsed());
        // It stands by: no new run while the thief holds it.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(n.load(Ordering::SeqCst), 0);
        // The thief lets go: c1 runs again.
        assert!(store.release_lease("job", "thief").await.expect("release"));
        until("c1 runs again", || n.load(Ordering::SeqCst) == 1).await;
        stop.send(true).expect("stop");
        t.await.expect("ends");
    }

    /// Instance ids are generated unique unless configured.
    #[tokio::test]
    async fn instance_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path().join("x.db").to_str().expect("utf-8"), 1).await.expect("store"));
        let mk = |id: Option<&str>| {
            Cluster::new(
                &ClusterConfig { instance_id: id.map(str::to_owned), lease_ttl_s: 15 },
                store.clone(),
                Arc::new(SystemClock),
            )
        };
        let (a, b) = (mk(None), mk(None));
        assert_ne!(a.instance_id(), b.instance_id());
        assert!(a.instance_id().starts_with(&format!("{}-", std::process::id())));
        assert_eq!(mk(Some("gw-1")).instance_id(), "gw-1");
        assert_eq!(a.lease_ttl(), Duration::from_secs(15));
        assert_eq!(relay_lease("nats"), "relay:nats");
    }
}
