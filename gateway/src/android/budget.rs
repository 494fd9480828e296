//! One request budget per Google project: at most `requests` AMAPI calls in any `window`
//! (AMAPI's default quota is 1 000 per 100 s), shared by every caller of the client, with
//! priorities: a waiting command goes before a waiting interactive call, which goes before
//! background work (reconcile, listing).
//!
//! [`Budget::shared`] (what the gateway uses) keeps the window in the store
//! ([`Store::take_budget`], one sliding log per project), so every instance on the database
//! draws from the same budget. Within an instance the priorities hold: one caller at a time
//! asks the store, the highest priority first; when the store refuses, every caller waits until
//! the oldest grant leaves the window. Across instances there is no priority (each asks in
//! turn). When the store cannot answer, the instance falls back to its own log of the grants it
//! made (the full budget, for this instance alone) rather than stop calling Google: AMAPI's 429
//! is handled by the client.
//!
//! [`Budget::new`] keeps the window in process only (a sliding log of the last `requests`
//! grants).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::store::Store;

/// Who is asking; lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Commands to devices.
    Command = 0,
    /// Backend API calls waiting for an answer (enrollment tokens, policies, devices).
    Interactive = 1,
    /// Reconcile (`operations.get`) and other background calls.
    Background = 2,
}

#[derive(Debug)]
struct State {
    /// When each of the last grants of this instance (at most `requests`) was made, oldest first.
    granted: VecDeque<Instant>,
    /// Callers waiting, per priority.
    waiting: [usize; 3],
    /// A caller is asking the store.
    asking: bool,
    /// The store refused: nobody asks again before this.
    blocked_until: Option<Instant>,
    /// Grants in the shared window as of this instance's last answer from the store.
    shared_used: usize,
}

/// The store's side of a shared budget.
#[derive(Debug)]
struct SharedWindow {
    store: Arc<dyn Store>,
    bucket: String,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
pub struct Budget {
    requests: usize,
    window: Duration,
    state: Mutex<State>,
    changed: Notify,
    shared: Option<SharedWindow>,
}

/// A caller's place in the queue; leaving it (returning, or the caller's future dropped)
/// gives the turn to the next.
struct Place<'a> {
    budget: &'a Budget,
    priority: usize,
    registered: bool,
    asking: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.registered && !self.asking {
            return;
        }
        let mut s = self.budget.lock();
        if self.registered {
            s.waiting[self.priority] -= 1;
        }
        if self.asking {
            s.asking = false;
        }
        drop(s);
        self.budget.changed.notify_waiters();
    }
}

/// What a caller does next.
enum Next {
    Granted,
    Ask,
    WaitUntil(Instant),
}

impl Budget {
    /// A budget kept in this process only.
    pub fn new(requests: u32, window: Duration) -> Budget {
        Budget {
            requests: requests.max(1) as usize,
            window,
            state: Mutex::new(State {
                granted: VecDeque::new(),
                waiting: [0; 3],
                asking: false,
                blocked_until: None,
                shared_used: 0,
            }),
            changed: Notify::new(),
            shared: None,
        }
    }

    /// A budget shared through `store` by every instance that uses the same `bucket`.
    pub fn shared(
        requests: u32,
        window: Duration,
        store: Arc<dyn Store>,
        bucket: String,
        clock: Arc<dyn Clock>,
    ) -> Budget {
        Budget { shared: Some(SharedWindow { store, bucket, clock }), ..Budget::new(requests, window) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evict(&self, s: &mut State, now: Instant) {
        while s.granted.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            s.granted.pop_front();
        }
    }

    /// The local rule: grant when this instance made fewer than `requests` grants in the
    /// window, else wait for its oldest to leave it.
    fn local(&self, s: &mut State, now: Instant) -> Next {
        if s.granted.len() < self.requests {
            s.granted.push_back(now);
            return Next::Granted;
        }
        Next::WaitUntil(s.granted.front().map(|t| *t + self.window).unwrap_or(now + Duration::from_millis(5)))
    }

    /// Waits until a request may be sent, then counts it.
    pub async fn acquire(&self, priority: Priority) {
        let mut place = Place { budget: self, priority: priority as usize, registered: false, asking: false };
        loop {
            // Registered before the state is read, so a change in between is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = {
                let mut s = self.lock();
                let now = Instant::now();
                self.evict(&mut s, now);
                let ahead = s.waiting[..place.priority].iter().sum::<usize>();
                let next = if ahead > 0 || s.asking {
                    // Higher priorities first; one caller asks the store at a time.
                    Next::WaitUntil(now + Duration::from_secs(3600))
                } else if let Some(until) = s.blocked_until.filter(|t| *t > now) {
                    Next::WaitUntil(until)
                } else if self.shared.is_some() {
                    s.asking = true;
                    place.asking = true;
                    Next::Ask
                } else {
                    self.local(&mut s, now)
                };
                if !matches!(next, Next::Granted) && !place.registered {
                    s.waiting[place.priority] += 1;
                    place.registered = true;
                }
                next
            };
            let wait_until = match next {
                Next::Granted => return, // `place` lets the next caller go
                Next::WaitUntil(t) => t,
                Next::Ask => {
                    let answer = self.ask().await;
                    self.lock().asking = false;
                    place.asking = false;
                    self.changed.notify_waiters();
                    match answer {
                        Some(t) => t,
                        None => return,
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wait_until) => {}
                _ = &mut notified => {}
            }
        }
    }

    /// Asks the shared window (this caller has the turn). `None`: granted; else when to look
    /// again.
    async fn ask(&self) -> Option<Instant> {
        let shared = self.shared.as_ref()?;
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let now_ms = i64::try_from(shared.clock.now().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let answer = shared.store.take_budget(&shared.bucket, now_ms, window_ms, self.requests as u32).await;
        let mut s = self.lock();
        let now = Instant::now();
        match answer {
            Ok(take) => {
                s.shared_used = take.in_window as usize;
                if take.granted {
                    s.granted.push_back(now);
                    return None;
                }
                let wait = take.next_free_ms.map_or(1, |t| t.saturating_sub(now_ms).max(1));
                let until = now + Duration::from_millis(u64::try_from(wait).unwrap_or(1));
                s.blocked_until = Some(until);
                Some(until)
            }
            Err(e) => {
                tracing::warn!(bucket = %shared.bucket, error = %e,
                    "cannot reach the shared AMAPI budget; counting this instance's calls only");
                self.evict(&mut s, now);
                match self.local(&mut s, now) {
                    Next::Granted => None,
                    Next::WaitUntil(t) => Some(t),
                    Next::Ask => Some(now),
                }
            }
        }
    }

    /// Grants within the current window, and the limit. Shared: as the store counted at this
    /// instance's last request (other instances' later grants are not seen until then).
    pub fn usage(&self) -> (usize, usize) {
        let mut s = self.lock();
        let now = Instant::now();
        self.evict(&mut s, now);
        let used = if self.shared.is_some() { s.shared_used.max(s.granted.len()) } else { s.granted.len() };
        (used.min(self.requests), self.requests)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waits_for_the_window_when_spent() {
        let b = Budget::new(3, Duration::from_millis(300));
        let start = Instant::now();
        for _ in 0..3 {
            b.acquire(Priority::Command).await;
        }
        assert!(start.elapsed() < Duration::from_millis(100));
        assert_eq!(b.usage(), (3, 3));
        b.acquire(Priority::Command).await;
        assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    }

    async fn shared_pair(requests: u32, window: Duration) -> (Budget, Budget, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("budget.db");
        let path = path.to_str().expect("utf-8");
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let mk = |store: crate::store::SqliteStore| {
            Budget::shared(requests, window, Arc::new(store), "amapi:test".into(), clock.clone())
        };
        let a = mk(crate::store::SqliteStore::open(path, 1).await.expect("store"));
        let b = mk(crate::store::SqliteStore::open(path, 1).await.expect("store"));
        (a, b, dir)
    }

    /// Two instances (two stores on one database) draw from one window.
    #[tokio::test]
    async fn shared_budget_spans_instances() {
        let (a, b, _dir) = shared_pair(3, Duration::from_millis(1000)).await;
        let start = Instant::now();
        a.acquire(Priority::Command).await;
        b.acquire(Priority::Command).await;
        a.acquire(Priority::Interactive).await;
        assert!(start.elapsed() < Duration::from_millis(900), "{:?}", start.elapsed());
        assert_eq!(a.usage(), (3, 3));
        // The window is spent for b too, though b made one grant only.
        b.acquire(Priority::Command).await;
        assert!(start.elapsed() >= Duration::from_millis(990), "{:?}", start.elapsed());
    }

    /// Within an instance, a shared budget keeps the priority order.
    #[tokio::test]
    async fn shared_budget_keeps_priorities() {
        // A window long enough for all three to be waiting before it frees, even on a loaded
        // machine.
        let (a, other, _dir) = shared_pair(1, Duration::from_millis(1000)).await;
        let a = Arc::new(a);
        other.acquire(Priority::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |p: Priority, label: &'static str| {
            let (b, order) = (a.clone(), order.clone());
            tokio::spawn(async move {
                b.acquire(p).await;
                order.lock().unwrap().push(label);
            })
        };
        let bg = spawn(Priority::Background, "background");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let inter = spawn(Priority::Interactive, "interactive");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let cmd = spawn(Priority::Command, "command");
        for t in [bg, inter, cmd] {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["command", "interactive", "background"]);
    }

    /// A caller that gives up (its future dropped) does not hold the others back.
    #[tokio::test]
    async fn a_dropped_caller_leaves_its_place() {
        let b = Budget::new(1, Duration::from_millis(200));
        b.acquire(Priority::Command).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), b.acquire(Priority::Command)).await;
        assert!(gave_up.is_err());
        let start = Instant::now();
        b.acquire(Priority::Background).await;
        assert!(start.elapsed() < Duration::from_millis(250), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn commands_go_before_background_work() {
        let b = Arc::new(Budget::new(1, Duration::from_millis(150)));
        b.acquire(Priority::Command).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |p: Priority, label: &'static str| {
            let (b, order) = (b.clone(), order.clone());
            tokio::spawn(async move {
                b.acquire(p).await;
                order.lock().unwrap().push(label);
            })
        };
        let bg = spawn(Priority::Background, "background");
        tokio::task::yield_now().await;
        let inter = spawn(Priority::Interactive, "interactive");
        tokio::task::yield_now().await;
        let cmd = spawn(Priority::Command, "command");
        for t in [bg, inter, cmd] {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["command", "interactive", "background"]);
    }
}
