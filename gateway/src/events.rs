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
        Event {
            id: new_id(),
            time: self.clock.now(),
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
}

/// A new unique id, ordered by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
