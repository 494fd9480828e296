//! Command intake from NATS JetStream: a durable pull consumer on `nats.commands_subject`, shared
//! by every gateway instance. Each message is a `POST /v1/commands` body and goes through the
//! same code as the HTTP endpoint ([`super::commands::create`]), so there is one validation
//! path. The message is acknowledged only after the command is stored; a command the API would
//! refuse (4xx) is answered by a `command.rejected` event on the events stream and terminated;
//! a store failure (5xx) is NAKed with a delay so NATS delivers it again.
//!
//! Redelivery never queues a command twice: a body without `idempotency_key` gets one derived
//! from the message (`nats-msg:<Nats-Msg-Id>`, else `nats:<stream>:<sequence>`). See docs/nats.md.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::AppState;
use crate::config::NatsConfig;
use crate::sinks::SinkHealth;
use crate::sinks::nats::subject;

/// Messages asked for per pull; all of them are handled before shutdown completes.
const PULL_BATCH: usize = 16;
/// How long one pull waits on an empty stream (bounds how long shutdown waits for the pull).
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const MAX_NAK_DELAY: Duration = Duration::from_secs(60);
const MAX_IDEMPOTENCY_KEY: usize = 256;
pub const REJECTED: &str = "command.rejected";

/// The commands stream: work-queue retention, each command removed once acknowledged.
pub fn commands_stream_config(config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: config.commands_stream.clone(),
        subjects: vec![config.commands_subject.clone()],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(config.commands_max_age_s),
        duplicate_window: Duration::from_secs(config.commands_duplicate_window_s),
        num_replicas: config.replicas,
        description: Some("Commands for the MDM gateway (docs/nats.md)".into()),
        ..Default::default()
    }
}

pub fn consumer_config(config: &NatsConfig) -> pull::Config {
    pull::Config {
        durable_name: Some(config.commands_consumer.clone()),
        description: Some("MDM gateway command intake, shared by all instances".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_wait: Duration::from_secs(config.ack_wait_s),
        max_deliver: config.max_deliver,
        ..Default::default()
    }
}

/// What to tell JetStream about one handled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or already stored under the same idempotency key).
    Stored,
    /// Refused by validation: answer with `command.rejected`, never deliver again.
    Rejected,
    /// The store could not take it now: deliver again later.
    Retry,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Stored => "stored",
            Outcome::Rejected => "rejected",
            Outcome::Retry => "retry",
        }
    }
}

/// The outcome of a `POST /v1/commands` status.
pub fn outcome(status: http::StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Stored
    } else if status.is_client_error() {
        Outcome::Rejected
    } else {
        Outcome::Retry
    }
}

/// The idempotency key a message without one in its body gets: stable across redeliveries of
/// the message and across publishes that share a `Nats-Msg-Id`.
pub fn derived_key(stream: &str, sequence: u64, msg_id: Option<&str>) -> String {
    let key = match msg_id {
        Some(id) if !id.is_empty() => format!("nats-msg:{id}"),
        _ => format!("nats:{stream}:{sequence}"),
    };
    if key.len() <= MAX_IDEMPOTENCY_KEY { key } else { format!("nats-msg-sha256:{}", hex::encode(Sha256::digest(key))) }
}

/// The body with `idempotency_key` set to `key` when it has none; anything else (not JSON, not an
/// object) is passed through unchanged for the API code to refuse.
pub fn with_key(body: &[u8], key: &str) -> (Vec<u8>, Option<String>) {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        return (body.to_vec(), None);
    };
    match map.get("idempotency_key") {
        Some(Value::String(k)) => {
            let k = k.clone();
            (body.to_vec(), Some(k))
        }
        None | Some(Value::Null) => {
            map.insert("idempotency_key".into(), Value::String(key.to_owned()));
            (serde_json::to_vec(&Value::Object(map)).unwrap_or_else(|_| body.to_vec()), Some(key.to_owned()))
        }
        Some(_) => (body.to_vec(), None),
    }
}

/// Pulls and handles commands until shutdown; the messages of the pull under way are handled
/// before it returns.
pub async fn run(
    state: Arc<AppState>,
    client: async_nats::Client,
    config: NatsConfig,
    health: Arc<SinkHealth>,
    mut shutdown: watch::Receiver<bool>,
) {
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(config.publish_timeout_ms))
        .ack_timeout(Duration::from_millis(config.publish_timeout_ms))
        .build(client);
    let mut backoff = Duration::from_millis(200);
    'setup: loop {
        if *shutdown.borrow() {
            return;
        }
        let consumer = match setup(&js, &config).await {
            Ok(c) => {
                backoff = Duration::from_millis(200);
                c
            }
            Err(e) => {
                health.set_failing(true);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "NATS command intake not ready");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue 'setup;
            }
        };
        tracing::info!(stream = %config.commands_stream, consumer = %config.commands_consumer, "NATS command intake running");
        loop {
            if *shutdown.borrow() {
                tracing::info!("NATS command intake stopped");
                return;
            }
            let batch = consumer.batch().max_messages(PULL_BATCH).expires(PULL_EXPIRES).messages().await;
            let mut messages = match batch {
                Ok(m) => m,
                Err(e) => {
                    health.set_failing(true);
                    tracing::warn!(error = %e, "NATS pull failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue 'setup;
                }
            };
            let mut failed = false;
            while let Some(m) = messages.next().await {
                match m {
                    Ok(message) => handle(&state, &js, &config, &health, &message).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "NATS pull interrupted");
                        failed = true;
                        break;
                    }
                }
            }
            health.set_failing(failed);
            if failed {
                // Not a tight loop while the connection is gone.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

async fn setup(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
    let stream = js
        .create_or_update_stream(commands_stream_config(config))
        .await
        .map_err(|e| format!("stream {}: {e}", config.commands_stream))?;
    let stream = js.get_stream_no_info(&stream.config.name).await.map_err(|e| format!("stream: {e}"))?;
    // Every instance declares the same durable consumer; the first creates it.
    match stream.create_consumer(consumer_config(config)).await {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(error = %e, consumer = %config.commands_consumer, "cannot create or update the consumer; using it as it is");
            stream
                .get_consumer(&config.commands_consumer)
                .await
                .map_err(|e| format!("consumer {}: {e}", config.commands_consumer))
        }
    }
}

async fn handle(
    state: &AppState,
    js: &jetstream::Context,
    config: &NatsConfig,
    health: &SinkHealth,
    message: &jetstream::Message,
) {
    let (stream, sequence, delivered, published) = match message.info() {
        Ok(i) => (i.stream.to_owned(), i.stream_sequence, i.delivered, i.published),
        Err(e) => {
            tracing::warn!(error = %e, "NATS message without JetStream metadata; terminated");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let msg_id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned());
    let key = derived_key(&stream, sequence, msg_id.as_deref());
    let (body, idempotency_key) = with_key(&message.payload, &key);
    let reply = super::commands::create(state, &body).await;
    let status = reply.status();
    let answer: Value = match reply.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or(Value::Null),
        Err(never) => match never {},
    };
    health.set_cursor(i64::try_from(sequence).unwrap_or(i64::MAX));
    let result = outcome(status);
    metrics::counter!(crate::telemetry::NATS_COMMANDS, "outcome" => result.as_str()).increment(1);
    let ack = match result {
        Outcome::Stored => {
            tracing::info!(
                stream, sequence, command_id = %answer["command_id"], "command from NATS stored"
            );
            AckKind::Ack
        }
        Outcome::Retry => {
            let delay = Duration::from_millis(config.nak_delay_ms)
                .saturating_mul(u32::try_from(delivered.max(1)).unwrap_or(u32::MAX))
                .min(MAX_NAK_DELAY);
            tracing::warn!(stream, sequence, %status, delivered, retry_in_ms = delay.as_millis() as u64, "command from NATS not stored; redelivery requested");
            AckKind::Nak(Some(delay))
        }
        Outcome::Rejected => {
            let event = rejected_event(
                state,
                &message.payload,
                idempotency_key,
                &stream,
                sequence,
                published,
                msg_id,
                status,
                &answer,
            );
            tracing::warn!(stream, sequence, %status, error = %answer["error"], "command from NATS rejected");
            match publish_rejection(js, config, &event).await {
                Ok(()) => AckKind::Term,
                Err(e) => {
                    // Try again later rather than lose the answer.
                    tracing::warn!(error = %e, "cannot publish command.rejected; redelivery requested");
                    AckKind::Nak(Some(Duration::from_millis(config.nak_delay_ms)))
                }
            }
        }
    };
    // A lost ack only means a redelivery, which the idempotency key makes harmless.
    if let Err(e) = message.double_ack_with(ack).await {
        tracing::warn!(stream, sequence, error = %e, "cannot acknowledge NATS message");
    }
}

/// `command.rejected`: the event shape of CONTRACT §5 with `platform` and `device_id` null when
/// the body named no valid device. Its id is a UUIDv7 derived from the message (publish time and
/// stream sequence), so a repeated rejection of the same message is dropped as a duplicate.
#[allow(clippy::too_many_arguments)]
fn rejected_event(
    state: &AppState,
    payload: &[u8],
    idempotency_key: Option<String>,
    stream: &str,
    sequence: u64,
    published: time::OffsetDateTime,
    msg_id: Option<String>,
    status: http::StatusCode,
    answer: &Value,
) -> Value {
    let device_id: Option<mdm_core::DeviceId> = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("device_id").and_then(Value::as_str).and_then(|d| d.parse().ok()));
    let digest = Sha256::digest(format!("{stream}:{sequence}"));
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid().to_string();
    let time = state.clock.now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    json!({
        "id": id,
        "time": time,
        "type": REJECTED,
        "platform": device_id.as_ref().map(|d| d.platform().as_str()),
        "device_id": device_id,
        "command_id": null,
        "data": {
            "status": status.as_u16(),
            "error": answer.get("error").cloned().unwrap_or(Value::Null),
            "idempotency_key": idempotency_key,
            "nats": { "stream": stream, "sequence": sequence, "msg_id": msg_id },
        },
    })
}

async fn publish_rejection(js: &jetstream::Context, config: &NatsConfig, event: &Value) -> Result<(), String> {
    let platform = event["platform"].as_str().unwrap_or("unknown");
    let subject = subject(&config.subject_prefix, platform, REJECTED);
    let id = event["id"].as_str().unwrap_or_default();
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let msg = jetstream::message::PublishMessage::build().payload(body.into()).message_id(id);
    js.send_publish(subject, msg).await.map_err(|e| e.to_string())?.await.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decides_ack_term_or_nak() {
        assert_eq!(outcome(http::StatusCode::ACCEPTED), Outcome::Stored);
        for s in [400, 404, 409, 422] {
            assert_eq!(outcome(http::StatusCode::from_u16(s).expect("status")), Outcome::Rejected, "{s}");
        }
        assert_eq!(outcome(http::StatusCode::SERVICE_UNAVAILABLE), Outcome::Retry);
        assert_eq!(outcome(http::StatusCode::INTERNAL_SERVER_ERROR), Outcome::Retry);
    }

    #[test]
    fn derived_keys_prefer_the_message_id() {
        assert_eq!(derived_key("MDM_COMMANDS", 7, Some("abc")), "nats-msg:abc");
        assert_eq!(derived_key("MDM_COMMANDS", 7, None), "nats:MDM_COMMANDS:7");
        assert_eq!(derived_key("MDM_COMMANDS", 7, Some("")), "nats:MDM_COMMANDS:7");
        let long = "x".repeat(300);
        let k = derived_key("S", 1, Some(&long));
        assert!(k.starts_with("nats-msg-sha256:") && k.len() <= 256, "{k}");
        assert_eq!(k, derived_key("S", 2, Some(&long)), "stable");
    }

    #[test]
    fn key_is_added_only_when_missing() {
        let (b, k) = with_key(br#"{"device_id":"apple:X","command":{"type":"restart"}}"#, "nats:S:1");
        assert_eq!(k.as_deref(), Some("nats:S:1"));
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["idempotency_key"], "nats:S:1");
        assert_eq!(v["device_id"], "apple:X");

        let body = br#"{"device_id":"apple:X","command":{"type":"restart"},"idempotency_key":"mine"}"#;
        let (b, k) = with_key(body, "nats:S:1");
        assert_eq!(b, body.to_vec());
        assert_eq!(k.as_deref(), Some("mine"));

        let (b, k) = with_key(b"not json", "nats:S:1");
        assert_eq!(b, b"not json".to_vec());
        assert_eq!(k, None);
    }
}
