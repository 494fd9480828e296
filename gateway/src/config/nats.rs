//! `[nats]`: NATS JetStream as an event sink (stream `MDM_EVENTS`) and a command intake
//! (subject `mdm.commands`, durable pull consumer). See docs/nats.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL (`nats://host:4222`, `tls://host:4222`), or several separated by commas.
    pub url: String,

    // --- credentials (at most one of password_file, token_file, credentials_file) ---
    /// User name; needs `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the password of `user`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// File holding an authentication token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// PEM CA bundle trusted for the server's certificate (implies TLS).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Refuse to talk to the server without TLS.
    #[serde(default)]
    pub tls_required: bool,

    // --- event sink ---
    /// Events stream, created or updated at start.
    #[serde(default = "NatsConfig::default_stream")]
    pub stream: String,
    /// Events are published to `<subject_prefix>.<platform>.<type>`; the stream takes
    /// `<subject_prefix>.>`.
    #[serde(default = "NatsConfig::default_subject_prefix")]
    pub subject_prefix: String,
    /// Seconds an event stays on the stream; 0 keeps events until `max_bytes` is reached.
    #[serde(default = "NatsConfig::default_max_age_s")]
    pub max_age_s: u64,
    /// Bytes the events stream may hold before the oldest events are discarded; 0: no limit.
    #[serde(default)]
    pub max_bytes: i64,
    /// Seconds JetStream remembers a `Nats-Msg-Id` to drop a republished event. At least as
    /// long as a NATS outage during which an unacknowledged publish may be repeated.
    #[serde(default = "NatsConfig::default_duplicate_window_s")]
    pub duplicate_window_s: u64,
    /// Stream replicas (1 for a single server; 3 for a cluster).
    #[serde(default = "NatsConfig::default_replicas")]
    pub replicas: usize,
    /// Event publishes awaiting their acknowledgement at once.
    #[serde(default = "NatsConfig::default_max_in_flight")]
    pub max_in_flight: usize,
    /// Milliseconds to wait for a publish acknowledgement before retrying.
    #[serde(default = "NatsConfig::default_publish_timeout_ms")]
    pub publish_timeout_ms: u64,
    /// Longest wait between retries of a failing delivery, in milliseconds.
    #[serde(default = "NatsConfig::default_max_backoff_ms")]
    pub max_backoff_ms: u64,

    // --- command intake ---
    /// Take commands from NATS at all.
    #[serde(default = "NatsConfig::default_true")]
    pub commands: bool,
    /// Subject commands are published on (the `POST /v1/commands` body).
    #[serde(default = "NatsConfig::default_commands_subject")]
    pub commands_subject: String,
    /// Work-queue stream holding `commands_subject`, created if missing.
    #[serde(default = "NatsConfig::default_commands_stream")]
    pub commands_stream: String,
    /// Durable pull consumer shared by every gateway instance.
    #[serde(default = "NatsConfig::default_commands_consumer")]
    pub commands_consumer: String,
    /// Seconds an unhandled command stays on the commands stream.
    #[serde(default = "NatsConfig::default_max_age_s")]
    pub commands_max_age_s: u64,
    /// Seconds JetStream drops a command published again with the same `Nats-Msg-Id`.
    #[serde(default = "NatsConfig::default_duplicate_window_s")]
    pub commands_duplicate_window_s: u64,
    /// Seconds a delivered command may stay unacknowledged before NATS redelivers it.
    #[serde(default = "NatsConfig::default_ack_wait_s")]
    pub ack_wait_s: u64,
    /// Deliveries of one command before NATS gives up on it (store failures only: invalid
    /// commands are terminated at once); -1: no limit.
    #[serde(default = "NatsConfig::default_max_deliver")]
    pub max_deliver: i64,
    /// First redelivery delay after a store failure, in milliseconds; grows with each delivery
    /// up to 60 s.
    #[serde(default = "NatsConfig::default_nak_delay_ms")]
    pub nak_delay_ms: u64,
}

impl NatsConfig {
    fn default_stream() -> String {
        "MDM_EVENTS".into()
    }
    fn default_subject_prefix() -> String {
        "mdm.events".into()
    }
    fn default_max_age_s() -> u64 {
        7 * 24 * 3600
    }
    fn default_duplicate_window_s() -> u64 {
        2 * 3600
    }
    fn default_replicas() -> usize {
        1
    }
    fn default_max_in_flight() -> usize {
        64
    }
    fn default_publish_timeout_ms() -> u64 {
        5_000
    }
    fn default_max_backoff_ms() -> u64 {
        30_000
    }
    fn default_true() -> bool {
        true
    }
    fn default_commands_subject() -> String {
        "mdm.commands".into()
    }
    fn default_commands_stream() -> String {
        "MDM_COMMANDS".into()
    }
    fn default_commands_consumer() -> String {
        "mdm-gateway".into()
    }
    fn default_ack_wait_s() -> u64 {
        30
    }
    fn default_max_deliver() -> i64 {
        100
    }
    fn default_nak_delay_ms() -> u64 {
        1_000
    }

    /// A configuration with every default, for `url`.
    pub fn new(url: impl Into<String>) -> NatsConfig {
        let mut c: NatsConfig =
            serde_json::from_value(serde_json::json!({ "url": "nats://127.0.0.1:4222" })).expect("defaults");
        c.url = url.into();
        c
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.url.trim().is_empty() {
            return Err(ConfigError::new("nats.url", "must not be empty"));
        }
        for part in self.url.split(',') {
            let part = part.trim();
            if let Some((scheme, _)) = part.split_once("://")
                && !matches!(scheme, "nats" | "tls")
            {
                return Err(ConfigError::new("nats.url", format!("scheme {scheme}:// is not nats:// or tls://")));
            }
            if let Err(e) = part.parse::<async_nats::ServerAddr>() {
                return Err(ConfigError::new("nats.url", format!("{part:?}: {e}")));
            }
        }
        let secrets = [&self.password_file, &self.token_file, &self.credentials_file];
        if secrets.iter().filter(|s| s.is_some()).count() > 1 {
            return Err(ConfigError::new(
                "nats.password_file",
                "set at most one of password_file, token_file and credentials_file",
            ));
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err(ConfigError::new("nats.user", "user and password_file go together"));
        }
        for (key, path) in [
            ("nats.password_file", &self.password_file),
            ("nats.token_file", &self.token_file),
            ("nats.credentials_file", &self.credentials_file),
            ("nats.tls_ca", &self.tls_ca),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(ConfigError::new(key, format!("{} does not exist", p.display())));
            }
        }
        for (key, name) in [
            ("nats.stream", &self.stream),
            ("nats.commands_stream", &self.commands_stream),
            ("nats.commands_consumer", &self.commands_consumer),
        ] {
            if name.is_empty()
                || name.len() > 255
                || name.chars().any(|c| !c.is_ascii_graphic() || ".*>/\\".contains(c))
            {
                return Err(ConfigError::new(key, "must be 1 to 255 printable characters without . * > / \\"));
            }
        }
        if self.stream == self.commands_stream {
            return Err(ConfigError::new("nats.commands_stream", "must differ from nats.stream"));
        }
        check_subject("nats.subject_prefix", &self.subject_prefix, false)?;
        check_subject("nats.commands_subject", &self.commands_subject, true)?;
        let first_token_overlaps = self.commands_subject == self.subject_prefix
            || self.commands_subject.starts_with(&format!("{}.", self.subject_prefix));
        if first_token_overlaps {
            return Err(ConfigError::new("nats.commands_subject", "must not be under nats.subject_prefix"));
        }
        for (key, window, age) in [
            ("nats.duplicate_window_s", self.duplicate_window_s, self.max_age_s),
            ("nats.commands_duplicate_window_s", self.commands_duplicate_window_s, self.commands_max_age_s),
        ] {
            if window == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
            if age > 0 && window > age {
                return Err(ConfigError::new(key, "must not exceed the stream's max_age_s"));
            }
        }
        if self.max_bytes < 0 {
            return Err(ConfigError::new("nats.max_bytes", "must be 0 (no limit) or more"));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(ConfigError::new("nats.replicas", "must be 1 to 5"));
        }
        for (key, value) in [
            ("nats.max_in_flight", self.max_in_flight as u64),
            ("nats.publish_timeout_ms", self.publish_timeout_ms),
            ("nats.max_backoff_ms", self.max_backoff_ms),
            ("nats.ack_wait_s", self.ack_wait_s),
            ("nats.nak_delay_ms", self.nak_delay_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            return Err(ConfigError::new("nats.max_deliver", "must be -1 (no limit) or at least 1"));
        }
        Ok(())
    }
}

/// A subject of dot-separated tokens; wildcards (`*`, a final `>`) only where allowed.
fn check_subject(key: &str, subject: &str, wildcards: bool) -> Result<(), ConfigError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::new(key, "must be dot-separated tokens without spaces"));
        }
        let wild = *t == "*" || (*t == ">" && i == tokens.len() - 1);
        if (t.contains('*') || t.contains('>')) && !(wildcards && wild) {
            return Err(ConfigError::new(key, "wildcards are not allowed here"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = NatsConfig::new("nats://127.0.0.1:4222");
        c.validate().expect("valid");
        assert_eq!(c.stream, "MDM_EVENTS");
        assert_eq!(c.subject_prefix, "mdm.events");
        assert_eq!(c.commands_subject, "mdm.commands");
        assert_eq!(c.commands_consumer, "mdm-gateway");
        assert!(c.duplicate_window_s <= c.max_age_s);
    }

    type Change = Box<dyn Fn(&mut NatsConfig)>;

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(&str, Change)> = vec![
            ("nats.url", Box::new(|c| c.url = "http://x:1".into())),
            ("nats.url", Box::new(|c| c.url = String::new())),
            ("nats.stream", Box::new(|c| c.stream = "MDM.EVENTS".into())),
            ("nats.commands_stream", Box::new(|c| c.commands_stream = c.stream.clone())),
            ("nats.subject_prefix", Box::new(|c| c.subject_prefix = "mdm.*".into())),
            ("nats.subject_prefix", Box::new(|c| c.subject_prefix = "mdm..events".into())),
            ("nats.commands_subject", Box::new(|c| c.commands_subject = "mdm.events.cmd".into())),
            ("nats.duplicate_window_s", Box::new(|c| c.duplicate_window_s = c.max_age_s + 1)),
            ("nats.duplicate_window_s", Box::new(|c| c.duplicate_window_s = 0)),
            ("nats.max_deliver", Box::new(|c| c.max_deliver = 0)),
            ("nats.user", Box::new(|c| c.user = Some("u".into()))),
            ("nats.token_file", Box::new(|c| c.token_file = Some("/nonexistent/token".into()))),
            ("nats.max_in_flight", Box::new(|c| c.max_in_flight = 0)),
        ];
        for (key, change) in cases {
            let mut c = NatsConfig::new("nats://127.0.0.1:4222");
            change(&mut c);
            let err = c.validate().expect_err(key);
            assert_eq!(err.key, key, "{err:?}");
        }
    }

    #[test]
    fn wildcard_commands_subject_is_allowed() {
        let mut c = NatsConfig::new("nats://a:1, tls://b:2");
        c.commands_subject = "mdm.commands.>".into();
        c.validate().expect("valid");
    }
}
