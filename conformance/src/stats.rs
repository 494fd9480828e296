//! Counters the emulated fleets share: latency samples and errors, recorded from many tasks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::apple::fleet::Latency;

/// How many error messages are kept for the summary.
const FIRST_ERRORS: usize = 5;

/// Latency samples in microseconds.
#[derive(Debug, Default)]
pub struct Samples(Mutex<Vec<u32>>);

impl Samples {
    pub fn record(&self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(us);
    }

    /// Percentiles of the samples so far.
    pub fn latency(&self) -> Latency {
        Latency::from_micros(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// An error count that keeps the first few messages.
#[derive(Debug, Default)]
pub struct Errors {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Errors {
    pub fn note(&self, e: impl std::fmt::Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < FIRST_ERRORS {
            first.push(e.to_string());
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
