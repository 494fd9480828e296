//! NATS JetStream sink: publishes each event to `<prefix>.<platform>.<type>` on the events stream
//! with `Nats-Msg-Id` = event id, and reports an event delivered only once JetStream acknowledged
//! it. Publishes are pipelined (up to `nats.max_in_flight` awaiting their acks, acks read in
//! order); the relay moves its cursor over the acknowledged prefix only. A publish repeated after
//! a lost ack is dropped by JetStream's duplicate window, so each event is on the stream once.
//!
//! Also the connection shared with the command intake (`api::nats_intake`). See docs/nats.md.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::Sink;
use crate::config::NatsConfig;
use crate::store::LoggedEvent;

/// Why the NATS connection could not be set up (configuration files).
#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    #[error("{key}: {message}")]
    File { key: &'static str, message: String },
}

impl NatsSetupError {
    pub fn key(&self) -> &'static str {
        match self {
            NatsSetupError::File { key, .. } => key,
        }
    }
}

/// Connects to NATS. The first connection is retried in the background, so a gateway starts
/// (and keeps events in its log) while NATS is down.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client, NatsSetupError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("mdm-gateway")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                other => tracing::info!(event = %other, "NATS"),
            }
        });
    let read = |key: &'static str, path: &std::path::Path| {
        crate::pki::read_secret(path).map_err(|e| NatsSetupError::File { key, message: e.to_string() })
    };
    if let (Some(user), Some(p)) = (&config.user, &config.password_file) {
        options = options.user_and_password(user.clone(), read("nats.password_file", p)?);
    }
    if let Some(p) = &config.token_file {
        options = options.token(read("nats.token_file", p)?);
    }
    if let Some(p) = &config.credentials_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| NatsSetupError::File { key: "nats.credentials_file", message: e.to_string() })?;
        options = options
            .credentials(&text)
            .map_err(|e| NatsSetupError::File { key: "nats.credentials_file", message: e.to_string() })?;
    }
    if let Some(p) = &config.tls_ca {
        options = options.add_root_certificates(p.clone()).require_tls(true);
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| NatsSetupError::File { key: "nats.url", message: e.to_string() })?;
    options.connect(servers).await.map_err(|e| NatsSetupError::File { key: "nats.url", message: e.to_string() })
}

/// The subject of an event: `<prefix>.<platform>.<type>`, the type's dots becoming subject
/// tokens (`mdm.events.apple.device.checked_in`). Characters a subject token cannot hold
/// (space, `*`, `>`, controls) become `_`, so an open event type can never form a wildcard.
pub fn subject(prefix: &str, platform: &str, event_type: &str) -> String {
    fn token(t: &str) -> String {
        let cleaned: String = t
            .chars()
            .map(|c| if c.is_whitespace() || c.is_control() || c == '*' || c == '>' { '_' } else { c })
            .collect();
        if cleaned.is_empty() { "_".into() } else { cleaned }
    }
    let mut s = format!("{prefix}.{}", token(platform));
    for t in event_type.split('.') {
        s.push('.');
        s.push_str(&token(t));
    }
    s
}

#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    platform: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
}

/// The events stream's configuration (docs/nats.md: retention).
pub fn events_stream_config(config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(config.max_age_s),
        max_bytes: if config.max_bytes == 0 { -1 } else { config.max_bytes },
        duplicate_window: Duration::from_secs(config.duplicate_window_s),
        num_replicas: config.replicas,
        description: Some("MDM gateway events (docs/nats.md)".into()),
        ..Default::default()
    }
}

#[derive(Debug)]
pub struct NatsSink {
    config: NatsConfig,
    js: jetstream::Context,
    /// Whether the stream was created or updated by this process (done before the first publish,
    /// again after a failure, in case the stream was deleted).
    stream_ready: Mutex<bool>,
}

impl NatsSink {
    pub fn new(config: NatsConfig, client: async_nats::Client) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_millis(config.publish_timeout_ms))
            .ack_timeout(Duration::from_millis(config.publish_timeout_ms))
            .max_ack_inflight(config.max_in_flight.max(1))
            .build(client);
        NatsSink { config, js, stream_ready: Mutex::new(false) }
    }

    async fn ensure_stream(&self) -> Result<(), String> {
        let mut ready = self.stream_ready.lock().await;
        if !*ready {
            self.js
                .create_or_update_stream(events_stream_config(&self.config))
                .await
                .map_err(|e| format!("stream {}: {e}", self.config.stream))?;
            *ready = true;
        }
        Ok(())
    }

    async fn publish(&self, event: &LoggedEvent) -> Result<PublishAckFuture, String> {
        let head: EventHead<'_> =
            serde_json::from_str(&event.json).map_err(|e| format!("stored event {} is not valid: {e}", event.seq))?;
        let subject = subject(&self.config.subject_prefix, &head.platform, &head.event_type);
        let mut payload = Bytes::from(event.json.clone().into_bytes());
        let max = self.js.client().server_info().max_payload;
        if max > 0 && payload.len() + 256 > max {
            // Too large for the server (a big raw device message): publish it without `raw`; the
            // full event stays available from `/v1/events`.
            payload = Bytes::from(without_raw(&event.json)?);
        }
        let msg = jetstream::message::PublishMessage::build().payload(payload).message_id(head.id.as_ref());
        self.js.send_publish(subject, msg).await.map_err(|e| format!("publish: {e}"))
    }

    async fn on_failure(&self) {
        // The stream may have been deleted or the server replaced: declare it again next time.
        *self.stream_ready.lock().await = false;
    }
}

/// The event without its `raw` member, marked `"raw_omitted": true`.
fn without_raw(json: &str) -> Result<Vec<u8>, String> {
    let mut v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    if let Some(o) = v.as_object_mut() {
        o.remove("raw");
        o.insert("raw_omitted".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&v).map_err(|e| e.to_string())
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.config.max_backoff_ms)
    }

    async fn deliver(&self, event: &LoggedEvent) -> Result<(), String> {
        let (_, result) = self.deliver_batch(std::slice::from_ref(event)).await;
        result
    }

    async fn deliver_batch(&self, events: &[LoggedEvent]) -> (usize, Result<(), String>) {
        if let Err(e) = self.ensure_stream().await {
            return (0, Err(e));
        }
        let mut acked = 0usize;
        let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::new();
        let mut stopped = None;
        // Publishes travel in order on one connection, so the stream keeps the log's order;
        // acks are read in the same order and only a contiguous acknowledged prefix counts.
        for event in events {
            if in_flight.len() >= self.config.max_in_flight
                && let Some(ack) = in_flight.pop_front()
            {
                if let Err(e) = ack.await {
                    self.on_failure().await;
                    return (acked, Err(format!("publish not acknowledged: {e}")));
                }
                acked += 1;
            }
            match self.publish(event).await {
                Ok(ack) => in_flight.push_back(ack),
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        while let Some(ack) = in_flight.pop_front() {
            if let Err(e) = ack.await {
                self.on_failure().await;
                return (acked, Err(format!("publish not acknowledged: {e}")));
            }
            acked += 1;
        }
        match stopped {
            Some(e) => {
                self.on_failure().await;
                (acked, Err(e))
            }
            None => (acked, Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_platform_and_type() {
        assert_eq!(subject("mdm.events", "apple", "device.checked_in"), "mdm.events.apple.device.checked_in");
        assert_eq!(subject("mdm.events", "windows", "command.acknowledged"), "mdm.events.windows.command.acknowledged");
        assert_eq!(subject("x", "android", "push.failed"), "x.android.push.failed");
    }

    #[test]
    fn open_types_never_form_wildcards_or_empty_tokens() {
        assert_eq!(subject("mdm.events", "apple", "odd type.*.>"), "mdm.events.apple.odd_type._._");
        assert_eq!(subject("mdm.events", "apple", "a..b"), "mdm.events.apple.a._.b");
    }

    #[test]
    fn oversized_events_lose_raw_only() {
        let json = r#"{"id":"1","type":"device.inventory","raw":{"content_type":"x","body_b64":"AAAA"},"data":{}}"#;
        let v: serde_json::Value = serde_json::from_slice(&without_raw(json).expect("json")).expect("json");
        assert_eq!(v["id"], "1");
        assert!(v.get("raw").is_none());
        assert_eq!(v["raw_omitted"], true);
    }

    #[test]
    fn stream_config_uses_retention_settings() {
        let mut c = NatsConfig::new("nats://127.0.0.1:4222");
        c.max_bytes = 0;
        let s = events_stream_config(&c);
        assert_eq!(s.subjects, ["mdm.events.>"]);
        assert_eq!(s.max_bytes, -1);
        assert_eq!(s.duplicate_window, Duration::from_secs(c.duplicate_window_s));
        assert_eq!(s.max_age, Duration::from_secs(7 * 24 * 3600));
    }
}
