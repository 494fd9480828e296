//! AMAPI notifications, selected by the push message's `notificationType` attribute.

use serde::de::DeserializeOwned;

use crate::amapi::{BatchUsageLogEvents, Device, EnterpriseUpgradeEvent, Operation};
use crate::{DecodeError, PushMessage};

/// `attributes.notificationType`. Open: unknown values are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NotificationType {
    Enrollment,
    StatusReport,
    Command,
    UsageLogs,
    EnterpriseUpgrade,
    /// The message Google sends when the Pub/Sub topic is set up; it has no data.
    Test,
    Other(String),
}

impl NotificationType {
    pub fn parse(s: &str) -> NotificationType {
        match s {
            "ENROLLMENT" => NotificationType::Enrollment,
            "STATUS_REPORT" => NotificationType::StatusReport,
            "COMMAND" => NotificationType::Command,
            "USAGE_LOGS" => NotificationType::UsageLogs,
            "ENTERPRISE_UPGRADE" => NotificationType::EnterpriseUpgrade,
            "test" => NotificationType::Test,
            other => NotificationType::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            NotificationType::Enrollment => "ENROLLMENT",
            NotificationType::StatusReport => "STATUS_REPORT",
            NotificationType::Command => "COMMAND",
            NotificationType::UsageLogs => "USAGE_LOGS",
            NotificationType::EnterpriseUpgrade => "ENTERPRISE_UPGRADE",
            NotificationType::Test => "test",
            NotificationType::Other(s) => s,
        }
    }
}

/// A decoded AMAPI notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A device finished enrolling; the full `Device`.
    Enrollment(Device),
    /// A device sent a status report; the full `Device`.
    StatusReport(Device),
    /// An `issueCommand` operation changed; the `Operation`.
    Command(Operation),
    UsageLogs(BatchUsageLogEvents),
    EnterpriseUpgrade(EnterpriseUpgradeEvent),
    Test,
    /// A type this build does not know, with its data parsed as JSON when it is JSON.
    Other {
        notification_type: String,
        data: Option<serde_json::Value>,
    },
}

impl Notification {
    /// Decodes the notification a push message carries.
    pub fn decode(msg: &PushMessage) -> Result<Notification, DecodeError> {
        let t = NotificationType::parse(msg.notification_type().ok_or(DecodeError::MissingNotificationType)?);
        Ok(match &t {
            NotificationType::Test => Notification::Test,
            NotificationType::Enrollment => Notification::Enrollment(payload(&t, msg)?),
            NotificationType::StatusReport => Notification::StatusReport(payload(&t, msg)?),
            NotificationType::Command => Notification::Command(payload(&t, msg)?),
            NotificationType::UsageLogs => Notification::UsageLogs(payload(&t, msg)?),
            NotificationType::EnterpriseUpgrade => Notification::EnterpriseUpgrade(payload(&t, msg)?),
            NotificationType::Other(name) => Notification::Other {
                notification_type: name.clone(),
                data: msg.data.as_deref().and_then(|d| serde_json::from_slice(d).ok()),
            },
        })
    }

    pub fn notification_type(&self) -> NotificationType {
        match self {
            Notification::Enrollment(_) => NotificationType::Enrollment,
            Notification::StatusReport(_) => NotificationType::StatusReport,
            Notification::Command(_) => NotificationType::Command,
            Notification::UsageLogs(_) => NotificationType::UsageLogs,
            Notification::EnterpriseUpgrade(_) => NotificationType::EnterpriseUpgrade,
            Notification::Test => NotificationType::Test,
            Notification::Other { notification_type, .. } => NotificationType::Other(notification_type.clone()),
        }
    }
}

fn payload<T: DeserializeOwned>(t: &NotificationType, msg: &PushMessage) -> Result<T, DecodeError> {
    let data =
        msg.data.as_deref().ok_or_else(|| DecodeError::MissingData { notification_type: t.as_str().to_owned() })?;
    serde_json::from_slice(data)
        .map_err(|e| DecodeError::BadPayload { notification_type: t.as_str().to_owned(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    pub(crate) fn push(t: Option<&str>, data: Option<&str>) -> PushMessage {
        let mut m = serde_json::json!({"messageId": "1", "publishTime": "2025-08-11T13:00:03Z"});
        if let Some(t) = t {
            m["attributes"] = serde_json::json!({ "notificationType": t });
        }
        if let Some(d) = data {
            m["data"] = base64::engine::general_purpose::STANDARD.encode(d).into();
        }
        PushMessage::decode(serde_json::json!({ "message": m }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn decodes_each_type() {
        let dev = r#"{"name":"enterprises/E1/devices/D1","state":"ACTIVE"}"#;
        let Notification::Enrollment(d) = Notification::decode(&push(Some("ENROLLMENT"), Some(dev))).unwrap() else {
            panic!("not enrollment")
        };
        assert_eq!(d.state.as_deref(), Some("ACTIVE"));
        assert!(matches!(
            Notification::decode(&push(Some("STATUS_REPORT"), Some(dev))).unwrap(),
            Notification::StatusReport(_)
        ));
        let op = r#"{"name":"enterprises/E1/devices/D1/operations/42","done":true,"metadata":{"type":"LOCK"}}"#;
        let Notification::Command(o) = Notification::decode(&push(Some("COMMAND"), Some(op))).unwrap() else {
            panic!("not command")
        };
        assert!(o.done);
        assert_eq!(o.metadata.unwrap().command_type.as_deref(), Some("LOCK"));
        let logs = r#"{"device":"enterprises/E1/devices/D1","usageLogEvents":[{"eventType":"KEYGUARD_DISMISSED"}]}"#;
        let Notification::UsageLogs(l) = Notification::decode(&push(Some("USAGE_LOGS"), Some(logs))).unwrap() else {
            panic!("not usage logs")
        };
        assert_eq!(l.usage_log_events.len(), 1);
        let up = r#"{"enterprise":"enterprises/E1","upgradeState":"UPGRADE_STATE_SUCCEEDED"}"#;
        let n = Notification::decode(&push(Some("ENTERPRISE_UPGRADE"), Some(up))).unwrap();
        assert_eq!(n.notification_type(), NotificationType::EnterpriseUpgrade);
        assert_eq!(Notification::decode(&push(Some("test"), None)).unwrap(), Notification::Test);
        assert_eq!(
            Notification::decode(&push(Some("FUTURE_THING"), Some("{\"a\":1}"))).unwrap(),
            Notification::Other { notification_type: "FUTURE_THING".into(), data: Some(serde_json::json!({"a": 1})) }
        );
    }

    #[test]
    fn rejects_bad_notifications() {
        let e = Notification::decode(&push(None, Some("{}"))).unwrap_err();
        assert_eq!(e.reason(), "missing_notification_type");
        let e = Notification::decode(&push(Some("COMMAND"), None)).unwrap_err();
        assert_eq!(e, DecodeError::MissingData { notification_type: "COMMAND".into() });
        let e = Notification::decode(&push(Some("STATUS_REPORT"), Some("not json"))).unwrap_err();
        assert_eq!(e.reason(), "bad_payload");
        let e = Notification::decode(&push(Some("ENROLLMENT"), Some(r#"{"enrollmentTime":"soon"}"#))).unwrap_err();
        assert_eq!(e.reason(), "bad_payload");
        let e = Notification::decode(&push(Some("COMMAND"), Some(r#"{"done":"yes"}"#))).unwrap_err();
        assert_eq!(e.reason(), "bad_payload");
    }
}
