//! A token bucket: the simplest fair limit for unauthenticated endpoints that store something.
//!
//! One bucket per gateway instance (not per client: behind a load balancer or NAT the client
//! address says little, and a per-address table is itself something to flood). It bounds how fast
//! anonymous callers can make the store grow; it does not tell one caller from another.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// Full bucket of `per_minute` tokens, refilled at `per_minute` tokens a minute.
    pub fn per_minute(per_minute: u32, now: Instant) -> Self {
        let capacity = f64::from(per_minute.max(1));
        TokenBucket { capacity, per_second: capacity / 60.0, state: Mutex::new((capacity, now)) }
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.per_second).min(self.capacity);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now.max(last));
            Ok(())
        } else {
            *state = (tokens, now.max(last));
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let b = TokenBucket::per_minute(3, t0);
        for _ in 0..3 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).expect_err("empty");
        assert!(wait > Duration::from_secs(19) && wait <= Duration::from_secs(20), "{wait:?}");
        // 3 a minute: one token every 20 s.
        assert!(b.try_take(t0 + Duration::from_secs(19)).is_err());
        assert!(b.try_take(t0 + Duration::from_secs(20)).is_ok());
        assert!(b.try_take(t0 + Duration::from_secs(21)).is_err());
        // Idle for long: never more than the capacity.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(later).is_ok());
        }
        assert!(b.try_take(later).is_err());
    }

    #[test]
    fn time_going_backwards_does_not_mint_tokens() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let b = TokenBucket::per_minute(1, t0);
        assert!(b.try_take(t0).is_ok());
        assert!(b.try_take(t0 - Duration::from_secs(50)).is_err());
        assert!(b.try_take(t0).is_err());
    }
}
