//! Building events: ids (UUIDv7, time-ordered) and times are assigned here, once.

use std::sync::Arc;

use base64::Engine;
use mdm_core::{DeviceId, Event, EventType, RawMessage};

use crate::clock::Clock;

#[derive(Debug, Clone)]
pub struct EventFactory {
    clock: Arc<dyn Clock>,
}

impl EventFactory {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        EventFactory { clock }
    }

    pub fn event(
        &self,
        event_type: EventType,
        device: &DeviceId,
        command_id: Option<&str>,
        data: serde_json::Value,
    ) -> Event {
        let time = self.clock.now();
        Event {
            id: id_at(time),
            time,
            event_type,
            platform: device.platform(),
            device_id: device.clone(),
            command_id: command_id.map(str::to_owned),
            data,
            raw: None,
        }
    }

    /// Like [`EventFactory::event`], carrying the device's message.
    pub fn with_raw(
        &self,
        event_type: EventType,
        device: &DeviceId,
        command_id: Option<&str>,
        data: serde_json::Value,
        content_type: &str,
        body: &[u8],
    ) -> Event {
        let mut e = self.event(event_type, device, command_id, data);
        e.raw = Some(RawMessage {
            content_type: content_type.to_owned(),
            body_b64: base64::engine::general_purpose::STANDARD.encode(body),
        });
        e
    }

    /// Like [`EventFactory::with_raw`], with the message already in base64 (as Pub/Sub delivers
    /// it), so it is not decoded and encoded again.
    pub fn with_raw_b64(
        &self,
        event_type: EventType,
        device: &DeviceId,
        command_id: Option<&str>,
        data: serde_json::Value,
        content_type: &str,
        body_b64: String,
    ) -> Event {
        let mut e = self.event(event_type, device, command_id, data);
        e.raw = Some(RawMessage { content_type: content_type.to_owned(), body_b64 });
        e
    }
}

/// A new unique id, ordered by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A new unique UUIDv7 whose time is `time`: an event's id carries the event's own time (the
/// gateway's clock), so ordering ids is ordering events by age (the retention sweep relies on it).
pub fn id_at(time: time::OffsetDateTime) -> String {
    let nanos = time.unix_timestamp_nanos().max(0);
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(0);
    let subsec = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, subsec)).to_string()
}
