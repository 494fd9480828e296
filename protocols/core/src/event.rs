use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{DeviceId, Platform};

/// An event type such as `device.enrolled`. Open: values this build does not name still
/// round-trip, so newer producers never break older consumers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventType(Cow<'static, str>);

impl EventType {
    pub const DEVICE_AUTHENTICATED: EventType = EventType::named("device.authenticated");
    pub const DEVICE_ENROLLED: EventType = EventType::named("device.enrolled");
    pub const DEVICE_ENROLLMENT_DENIED: EventType = EventType::named("device.enrollment_denied");
    pub const DEVICE_TOKEN_UPDATED: EventType = EventType::named("device.token_updated");
    pub const DEVICE_CHECKED_IN: EventType = EventType::named("device.checked_in");
    pub const DEVICE_UNENROLLED: EventType = EventType::named("device.unenrolled");
    pub const DEVICE_INVENTORY: EventType = EventType::named("device.inventory");
    pub const DEVICE_STATUS_REPORT: EventType = EventType::named("device.status_report");
    pub const DEVICE_IDENTITY_RENEWED: EventType = EventType::named("device.identity_renewed");
    pub const DEVICE_BOOTSTRAP_TOKEN_SET: EventType = EventType::named("device.bootstrap_token_set");
    pub const DEVICE_BOOTSTRAP_TOKEN_REQUESTED: EventType = EventType::named("device.bootstrap_token_requested");
    pub const DEVICE_USER_AUTHENTICATE: EventType = EventType::named("device.user_authenticate");
    pub const DEVICE_DECLARATIVE_MANAGEMENT: EventType = EventType::named("device.declarative_management");
    pub const DEVICE_TOKEN_REQUESTED: EventType = EventType::named("device.token_requested");
    /// The backend changed a channel's declarations (declarative management).
    pub const DEVICE_DECLARATIONS_CHANGED: EventType = EventType::named("device.declarations_changed");
    pub const COMMAND_QUEUED: EventType = EventType::named("command.queued");
    pub const COMMAND_SENT: EventType = EventType::named("command.sent");
    pub const COMMAND_ACKNOWLEDGED: EventType = EventType::named("command.acknowledged");
    pub const COMMAND_ERROR: EventType = EventType::named("command.error");
    pub const COMMAND_NOT_NOW: EventType = EventType::named("command.not_now");
    pub const COMMAND_EXPIRED: EventType = EventType::named("command.expired");
    pub const PUSH_FAILED: EventType = EventType::named("push.failed");

    pub const fn named(s: &'static str) -> Self {
        EventType(Cow::Borrowed(s))
    }

    pub fn other(s: impl Into<String>) -> Self {
        EventType(Cow::Owned(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The exact message an event came from, for backends that want to read it themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMessage {
    pub content_type: String,
    pub body_b64: String,
}

/// A normalised event (CONTRACT §5). The `id` is chosen once, when the event is stored, and is
/// stable across redelivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub platform: Platform,
    pub device_id: DeviceId,
    pub command_id: Option<String>,
    pub data: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw: Option<RawMessage>,
}
