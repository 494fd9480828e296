//! Clock and identifier helpers shared by the emulator's parts.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use time::OffsetDateTime;
use time::macros::format_description;

/// Unix time in milliseconds.
pub(super) fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Unix time in seconds.
pub(super) fn now_secs() -> i64 {
    now_millis() / 1000
}

/// RFC 3339 in UTC with milliseconds, the way Google's JSON writes `google.protobuf.Timestamp`
/// (`2026-09-14T18:52:33.942Z`).
pub(super) fn rfc3339_millis(millis: i64) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(fmt).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

/// `n` random characters from `alphabet`.
pub(super) fn random_string(n: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

pub(super) const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
pub(super) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
pub(super) const HEX: &[u8] = b"0123456789abcdef";
pub(super) const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Parses a `google.protobuf.Duration` in JSON form (`"3600s"`, `"1.5s"`) into milliseconds.
pub(super) fn parse_duration_millis(s: &str) -> Option<i64> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).min(i64::MAX as f64 / 2.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_millis_and_z() {
        assert_eq!(rfc3339_millis(1_789_411_953_942), "2026-09-14T18:52:33.942Z");
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_millis("3600s"), Some(3_600_000));
        assert_eq!(parse_duration_millis("1.5s"), Some(1500));
        assert_eq!(parse_duration_millis("3600"), None);
        assert_eq!(parse_duration_millis("-1s"), None);
    }
}
