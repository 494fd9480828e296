//! Pushes through the gateway's APNs pool: an in-process APNs emulator the gateway child is
//! pointed at ([`EmulatedApns`]), and a driver that sends `GET /v1/push/<id,id,…>` (which waits
//! for APNs' answers) in batches from `concurrency` concurrent API requests for a set time
//! ([`run`]). Pushes/s are counted twice: from the API replies (`push_result` per id) and from
//! the emulator's accepted count, which must agree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::apns::{ApnsEmulator, ApnsError, ApnsStats, PushDelivery};
use crate::apple::fleet::{ApiClient, Latency};

/// An APNs emulator on a loopback port, with its server CA written to a file, for a gateway
/// started separately (a child process).
#[derive(Debug)]
pub struct EmulatedApns {
    pub emulator: ApnsEmulator,
    /// The emulator's server CA, PEM: the gateway's `apple.apns_ca`.
    pub ca_file: PathBuf,
}

impl EmulatedApns {
    /// Starts on `127.0.0.1:0`, writes the server CA to `<dir>/apns-ca.pem`.
    pub async fn start(dir: &Path) -> Result<(EmulatedApns, UnboundedReceiver<PushDelivery>), String> {
        let (emulator, rx) = ApnsEmulator::start("127.0.0.1:0".parse().expect("loopback address"))
            .await
            .map_err(|e: ApnsError| format!("APNs emulator: {e}"))?;
        let ca_file = dir.join("apns-ca.pem");
        std::fs::write(&ca_file, emulator.server_ca_pem()).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        Ok((EmulatedApns { emulator, ca_file }, rx))
    }

    /// The environment for the gateway child: `apple.apns_url` and `apple.apns_ca` (plus
    /// `apple.push_coalesce_ms` when given).
    pub fn gateway_env(&self, coalesce_ms: Option<u64>) -> Vec<(String, String)> {
        let mut env = vec![
            ("MDM_GATEWAY_APPLE__APNS_URL".to_owned(), self.emulator.url()),
            ("MDM_GATEWAY_APPLE__APNS_CA".to_owned(), self.ca_file.display().to_string()),
        ];
        if let Some(ms) = coalesce_ms {
            env.push(("MDM_GATEWAY_APPLE__PUSH_COALESCE_MS".to_owned(), ms.to_string()));
        }
        env
    }

    /// Issues a push certificate for `topic` (valid a year) and uploads it (`PUT /v1/pushcert`).
    pub async fn upload_certificate(&self, api: &ApiClient, topic: &str) -> Result<serde_json::Value, String> {
        let not_after =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
                + 365 * 86_400;
        let (cert, key) =
            self.emulator.issue_push_certificate(topic, not_after).map_err(|e| format!("push certificate: {e}"))?;
        api.put_pushcert(format!("{cert}{key}"), "").await
    }

    pub fn stats(&self) -> ApnsStats {
        self.emulator.control().stats()
    }
}

#[derive(Debug, Clone)]
pub struct PushSpec {
    /// Ids per `GET /v1/push` request.
    pub batch: usize,
    /// API requests in flight.
    pub concurrency: usize,
    pub duration: Duration,
    /// Stop after this many batches in total (or at `duration`).
    pub max_batches: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushResult {
    pub batch: usize,
    pub concurrency: usize,
    pub batches: u64,
    /// Ids pushed (batches × batch size).
    pub pushes: u64,
    /// Ids with a `push_result` (an `apns-id`) in the reply.
    pub succeeded: u64,
    /// Ids with a `push_error`, plus every id of a request that failed as a whole.
    pub failed: u64,
    /// Requests that did not get a JSON reply (transport errors) or got a status other than
    /// 200/207/500.
    pub request_errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// `succeeded` per second.
    pub pushes_per_second: f64,
    /// Pushes the APNs emulator answered 200 during the run.
    pub apns_accepted: u64,
    /// `apns_accepted` per second.
    pub apns_accepted_per_second: f64,
    /// Requests the emulator saw (accepted + refused) during the run.
    pub apns_requests: u64,
    /// One `GET /v1/push` request, send to reply.
    pub batch_latency: Latency,
}

#[derive(Default)]
struct Tally {
    batches: u64,
    pushes: u64,
    succeeded: u64,
    failed: u64,
    request_errors: u64,
    first_error: Option<String>,
    latencies: Vec<u32>,
}

/// Drives `GET /v1/push` over `ids` (round-robin, `batch` at a time) until `duration` or
/// `max_batches`. `apns` gives the emulator's counters before and after.
pub async fn run(api: ApiClient, ids: Arc<Vec<String>>, spec: PushSpec, apns: impl Fn() -> ApnsStats) -> PushResult {
    let batch = spec.batch.max(1).min(ids.len().max(1));
    let before = apns();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let end = started + spec.duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (api, ids, tally, next) = (api.clone(), ids.clone(), tally.clone(), next.clone());
        let max_batches = spec.max_batches;
        workers.spawn(async move {
            loop {
                if Instant::now() >= end {
                    return;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if max_batches.is_some_and(|m| n as u64 >= m) {
                    return;
                }
                let first = (n * batch) % ids.len();
                let chosen: Vec<&str> = (0..batch).map(|k| ids[(first + k) % ids.len()].as_str()).collect();
                let t0 = Instant::now();
                let reply = api.push(&chosen).await;
                let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                t.batches += 1;
                t.pushes += chosen.len() as u64;
                t.latencies.push(us);
                match reply {
                    Ok((200 | 207 | 500, body)) => {
                        let status = body["status"].as_object();
                        let ok = status
                            .map(|s| s.values().filter(|r| r.get("push_result").is_some()).count())
                            .unwrap_or(0) as u64;
                        t.succeeded += ok;
                        t.failed += chosen.len() as u64 - ok.min(chosen.len() as u64);
                        if ok < chosen.len() as u64 && t.first_error.is_none() {
                            let e = status
                                .and_then(|s| {
                                    s.values()
                                        .find_map(|r| r.get("push_error").and_then(|e| e.as_str()).map(str::to_owned))
                                })
                                .or_else(|| body["push_error"].as_str().map(str::to_owned))
                                .unwrap_or_else(|| body.to_string());
                            t.first_error = Some(e);
                        }
                    }
                    Ok((code, body)) => {
                        t.request_errors += 1;
                        t.failed += chosen.len() as u64;
                        t.first_error.get_or_insert(format!("GET /v1/push answered {code}: {body}"));
                    }
                    Err(e) => {
                        t.request_errors += 1;
                        t.failed += chosen.len() as u64;
                        t.first_error.get_or_insert(e);
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let after = apns();
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let apns_accepted = after.accepted - before.accepted;
    PushResult {
        batch,
        concurrency: spec.concurrency.max(1),
        batches: t.batches,
        pushes: t.pushes,
        succeeded: t.succeeded,
        failed: t.failed,
        request_errors: t.request_errors,
        first_error: t.first_error.clone(),
        seconds,
        pushes_per_second: t.succeeded as f64 / seconds.max(1e-9),
        apns_accepted,
        apns_accepted_per_second: apns_accepted as f64 / seconds.max(1e-9),
        apns_requests: after.requests - before.requests,
        batch_latency: Latency::from_micros(&mut t.latencies),
    }
}
