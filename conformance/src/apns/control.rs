//! The emulator's control handle: failure injection, per-token state, counters and the recent
//! requests, shared by every connection. Changes apply to the next request.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many answered requests [`ApnsControl::recent`] keeps.
const RECENT: usize = 10_000;

/// What APNs says about a device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMark {
    /// 410 `Unregistered` (the app, here the MDM profile, is gone), with a timestamp.
    Unregistered,
    /// 400 `BadDeviceToken`.
    BadDeviceToken,
    /// 400 `DeviceTokenNotForTopic`.
    NotForTopic,
}

/// One request the emulator answered.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Connection number (1, 2, ... in accept order).
    pub connection: u64,
    pub method: String,
    pub path: String,
    /// Header names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The topic (UID) of the client certificate that sent it.
    pub client_topic: String,
    pub status: u16,
    /// APNs reason for refusals.
    pub reason: Option<String>,
    pub apns_id: String,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Counters for tests and the bench.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApnsStats {
    /// TLS connections accepted (handshake done).
    pub connections: u64,
    /// Connections closed with a GOAWAY because of [`ApnsControl::goaway_after`].
    pub goaways: u64,
    pub requests: u64,
    /// Answered 200.
    pub accepted: u64,
    /// Refused, by APNs reason.
    pub refused: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    fail_next: VecDeque<u16>,
    delay: Duration,
    goaway_after: Option<u64>,
    tokens: HashMap<String, TokenMark>,
    refused: BTreeMap<String, u64>,
    recent: VecDeque<SeenRequest>,
}

/// Shared by the emulator and its user (`ApnsEmulator::control`).
#[derive(Debug, Default)]
pub struct ApnsControl {
    state: Mutex<State>,
    pub(super) connections: AtomicU64,
    pub(super) goaways: AtomicU64,
    requests: AtomicU64,
    accepted: AtomicU64,
}

impl ApnsControl {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `n` requests are answered `status` (429 `TooManyRequests`, 500
    /// `InternalServerError`, 503 `ServiceUnavailable`; others get `reason` `Injected`), whatever
    /// they contain. Calls add up.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state().fail_next.extend(std::iter::repeat_n(status, n));
    }

    /// Every answer waits this long first (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.state().delay = delay;
    }

    /// Each connection is closed gracefully (GOAWAY, in-flight streams finish) once it has
    /// received `n` requests. `None`: connections stay open.
    pub fn goaway_after(&self, n: Option<u64>) {
        self.state().goaway_after = n;
    }

    /// How APNs should answer pushes to `token_hex` (lower-case hex) from now on.
    pub fn mark_token(&self, token_hex: &str, mark: TokenMark) {
        self.state().tokens.insert(token_hex.to_ascii_lowercase(), mark);
    }

    pub fn clear_token(&self, token_hex: &str) {
        self.state().tokens.remove(&token_hex.to_ascii_lowercase());
    }

    pub fn stats(&self) -> ApnsStats {
        ApnsStats {
            connections: self.connections.load(Ordering::SeqCst),
            goaways: self.goaways.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
            accepted: self.accepted.load(Ordering::SeqCst),
            refused: self.state().refused.clone(),
        }
    }

    /// The last answered requests (at most 10 000), oldest first.
    pub fn recent(&self) -> Vec<SeenRequest> {
        self.state().recent.iter().cloned().collect()
    }

    /// Answered requests for one token.
    pub fn seen_for(&self, token_hex: &str) -> Vec<SeenRequest> {
        let path = format!("/3/device/{}", token_hex.to_ascii_lowercase());
        self.state().recent.iter().filter(|r| r.path == path).cloned().collect()
    }

    pub(super) fn take_injected(&self) -> Option<u16> {
        self.state().fail_next.pop_front()
    }

    pub(super) fn delay(&self) -> Duration {
        self.state().delay
    }

    pub(super) fn goaway_limit(&self) -> Option<u64> {
        self.state().goaway_after
    }

    pub(super) fn token_mark(&self, token_hex: &str) -> Option<TokenMark> {
        self.state().tokens.get(token_hex).copied()
    }

    pub(super) fn record(&self, seen: SeenRequest) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state();
        match &seen.reason {
            None => {
                self.accepted.fetch_add(1, Ordering::SeqCst);
            }
            Some(r) => *state.refused.entry(r.clone()).or_default() += 1,
        }
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back(seen);
    }
}
