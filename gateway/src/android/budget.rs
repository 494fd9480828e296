//! One request budget per Google project: at most `requests` AMAPI calls in any `window`
//! (AMAPI's default quota is 1 000 per 100 s), shared by every caller of the client, with
//! priorities: a waiting command goes before a waiting interactive call, which goes before
//! background work (reconcile, listing).
//!
//! In process for now (a sliding log of the last `requests` grants); a later step shares it
//! across instances through the store.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

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
    /// When each of the last grants (at most `requests`) was made, oldest first.
    granted: VecDeque<Instant>,
    /// Callers waiting, per priority.
    waiting: [usize; 3],
}

#[derive(Debug)]
pub struct Budget {
    requests: usize,
    window: Duration,
    state: Mutex<State>,
    changed: Notify,
}

impl Budget {
    pub fn new(requests: u32, window: Duration) -> Budget {
        Budget {
            requests: requests.max(1) as usize,
            window,
            state: Mutex::new(State { granted: VecDeque::new(), waiting: [0; 3] }),
            changed: Notify::new(),
        }
    }

    /// Waits until a request may be sent, then counts it.
    pub async fn acquire(&self, priority: Priority) {
        let p = priority as usize;
        let mut registered = false;
        loop {
            let wait_until = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                while s.granted.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                    s.granted.pop_front();
                }
                let ahead = s.waiting[..p].iter().sum::<usize>();
                if s.granted.len() < self.requests && ahead == 0 {
                    s.granted.push_back(now);
                    if registered {
                        s.waiting[p] -= 1;
                    }
                    drop(s);
                    // Lower priorities may be waiting on us.
                    self.changed.notify_waiters();
                    return;
                }
                if !registered {
                    s.waiting[p] += 1;
                    registered = true;
                }
                // The oldest grant leaves the window then; higher priorities are woken by
                // `changed`.
                s.granted.front().map(|t| *t + self.window).unwrap_or(now + Duration::from_millis(5))
            };
            let notified = self.changed.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(wait_until) => {}
                _ = notified => {}
            }
        }
    }

    /// Grants within the current window, and the limit.
    pub fn usage(&self) -> (usize, usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while s.granted.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            s.granted.pop_front();
        }
        (s.granted.len(), self.requests)
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
