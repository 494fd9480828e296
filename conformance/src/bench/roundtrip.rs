//! The command round trip: `POST /v1/commands` → the device is woken → Idle, fetch, Acknowledged
//! → the `command.acknowledged` event is read from a `/v1/events` long poll. Latency is from just
//! before the POST to the moment the event is read. Commands are sent open-loop at a target rate,
//! round-robin over the fleet's devices.
//!
//! How the device is woken is the caller's choice ([`Waker`]): by the APNs emulator forwarding
//! the gateway's push (the full path), or directly by the driver once the POST has answered
//! (an ideal zero-latency push: the gateway's share of the round trip alone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::apple::fleet::{ApiClient, Fleet, Latency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Waker {
    /// The driver wakes the device right after `POST /v1/commands` answers 202.
    Direct,
    /// The gateway pushes; the APNs emulator's deliveries wake the device (the fleet must be
    /// running [`Fleet::run_push`]).
    Push,
}

#[derive(Debug, Clone)]
pub struct RoundtripSpec {
    /// Commands per second to send.
    pub rate: f64,
    pub duration: Duration,
    /// Round trips in flight at most (POST sent, event not yet seen); the driver waits beyond.
    pub max_in_flight: usize,
    pub waker: Waker,
    /// How long to wait for the last events after the sending stops.
    pub drain: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundtripResult {
    pub waker: Waker,
    pub target_rate: f64,
    pub posted: u64,
    pub post_errors: u64,
    pub first_error: Option<String>,
    /// Round trips whose final event was seen.
    pub completed: u64,
    /// Posted but no final event seen before the drain ended.
    pub lost: u64,
    pub seconds: f64,
    /// Completed round trips per second of sending time.
    pub achieved_rate: f64,
    /// POST → final event visible on `/v1/events`.
    pub latency: Latency,
    /// The `POST /v1/commands` request alone.
    pub post_latency: Latency,
}

#[derive(Default)]
struct Book {
    /// command id → when its POST was sent.
    started: HashMap<String, Instant>,
    /// Final events seen before their POST answered: command id → when seen.
    early: HashMap<String, Instant>,
    latencies: Vec<u32>,
    post_latencies: Vec<u32>,
    post_errors: u64,
    first_error: Option<String>,
    posted: u64,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

const FINAL_EVENTS: [&str; 3] = ["command.acknowledged", "command.error", "command.not_now"];

pub async fn run(fleet: Arc<Fleet>, api: ApiClient, spec: RoundtripSpec) -> RoundtripResult {
    let book = Arc::new(Mutex::new(Book::default()));
    let in_flight = Arc::new(Semaphore::new(spec.max_in_flight.max(1)));
    let permits: Arc<Mutex<HashMap<String, tokio::sync::OwnedSemaphorePermit>>> = Arc::default();
    let cursor = api.events_end().await.unwrap_or_else(|_| "0".into());

    // The event watcher: long polls from the cursor, matches final events to POSTs.
    let watcher = {
        let (api, book, permits) = (api.clone(), book.clone(), permits.clone());
        tokio::spawn(async move {
            let mut after = cursor;
            loop {
                match api.events(&after, 1000, 1).await {
                    Ok((events, next)) => {
                        let seen = Instant::now();
                        after = next;
                        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
                        for e in events {
                            let t = e["type"].as_str().unwrap_or_default();
                            if !FINAL_EVENTS.contains(&t) {
                                continue;
                            }
                            let Some(id) = e["command_id"].as_str() else { continue };
                            match b.started.remove(id) {
                                Some(t0) => {
                                    b.latencies.push(micros(seen - t0));
                                    permits.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
                                }
                                None => {
                                    b.early.insert(id.to_owned(), seen);
                                }
                            }
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };

    let devices = fleet.device_ids();
    let n = devices.len().max(1);
    let start = Instant::now();
    let end = start + spec.duration;
    let period = Duration::from_secs_f64(1.0 / spec.rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut senders = tokio::task::JoinSet::new();
    let mut i = 0usize;
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore open");
        let (api, book, permits, fleet) = (api.clone(), book.clone(), permits.clone(), fleet.clone());
        let index = i % n;
        let device_id = devices[index].clone();
        let command = crate::apple::fleet::sample_command(i);
        i += 1;
        senders.spawn(async move {
            let t0 = Instant::now();
            match api.enqueue(&device_id, command).await {
                Ok(id) => {
                    {
                        let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
                        b.posted += 1;
                        b.post_latencies.push(micros(t0.elapsed()));
                        match b.early.remove(&id) {
                            Some(seen) => b.latencies.push(micros(seen - t0)),
                            None => {
                                b.started.insert(id.clone(), t0);
                                permits.lock().unwrap_or_else(|p| p.into_inner()).insert(id, permit);
                            }
                        }
                    }
                    if spec.waker == Waker::Direct {
                        fleet.wake(index).await;
                    }
                }
                Err(e) => {
                    let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
                    b.post_errors += 1;
                    b.first_error.get_or_insert(e);
                }
            }
        });
        while senders.try_join_next().is_some() {}
    }
    let sending = start.elapsed();
    while senders.join_next().await.is_some() {}
    // Wait for the last events.
    let drain_end = Instant::now() + spec.drain;
    while Instant::now() < drain_end {
        if book.lock().unwrap_or_else(|p| p.into_inner()).started.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
    let completed = b.latencies.len() as u64;
    let seconds = sending.as_secs_f64();
    RoundtripResult {
        waker: spec.waker,
        target_rate: spec.rate,
        posted: b.posted,
        post_errors: b.post_errors,
        first_error: b.first_error.clone(),
        completed,
        lost: b.started.len() as u64,
        seconds,
        achieved_rate: completed as f64 / seconds.max(1e-9),
        latency: Latency::from_micros(&mut b.latencies),
        post_latency: Latency::from_micros(&mut b.post_latencies),
    }
}
