//! Push certificate expiry: the `mdm_push_certificate_expiry_seconds` gauge and a warning when
//! fewer than [`WARN_DAYS`] days remain, at start and then once a day per topic.
//!
//! An expired certificate cannot push at all (APNs refuses the TLS handshake), and renewing it
//! at Apple's portal must keep the same topic or every enrolled device is lost; so the warning
//! comes early and names the topic.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::store::Store;
use crate::telemetry;

/// Warn when a push certificate has fewer days than this left.
pub const WARN_DAYS: i64 = 30;

/// Whole days from `now` until `not_after` (negative once expired).
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

pub(super) fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix).ok()?.format(&time::format_description::well_known::Rfc3339).ok()
}

/// The daily expiry check.
#[derive(Debug)]
pub struct ExpiryWatch {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl ExpiryWatch {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        ExpiryWatch { store, clock }
    }

    /// Checks now, then every 24 hours, until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.check().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Sets the gauge for every stored certificate and logs those close to expiry.
    pub async fn check(&self) {
        let certs = match self.store.push_certs().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read push certificates for the expiry check");
                return;
            }
        };
        let now = self.clock.unix();
        for c in certs {
            metrics::gauge!(telemetry::PUSH_CERT_EXPIRY, "topic" => c.topic.clone()).set((c.not_after - now) as f64);
            let days = days_left(c.not_after, now);
            let not_after = rfc3339(c.not_after).unwrap_or_default();
            if c.not_after <= now {
                tracing::error!(topic = %c.topic, %not_after, "push certificate has expired: devices on this topic cannot be pushed; renew it (same topic) and upload it with PUT /v1/pushcert");
            } else if days < WARN_DAYS {
                tracing::warn!(topic = %c.topic, %not_after, days_left = days, "push certificate expires soon; renew it (same topic) and upload it with PUT /v1/pushcert");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::days_left;

    #[test]
    fn days_left_rounds_down_and_goes_negative() {
        assert_eq!(days_left(86_400 * 30, 0), 30);
        assert_eq!(days_left(86_400 * 30 - 1, 0), 29);
        assert_eq!(days_left(0, 1), -1);
    }
}
