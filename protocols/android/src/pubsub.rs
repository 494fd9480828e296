//! The Cloud Pub/Sub push envelope:
//! `{"message": {"data", "attributes", "messageId", "publishTime"}, "subscription"}`.
//!
//! Google sends both `messageId`/`message_id` and `publishTime`/`publish_time`; either spelling is
//! accepted (camelCase wins when both are present). `data` is absent when the message is empty
//! (AMAPI's `test` notification). Unknown fields are ignored.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::DecodeError;

/// One decoded push delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct PushMessage {
    /// Pub/Sub's message id: the same on every redelivery, the key for deduplication.
    pub message_id: String,
    pub publish_time: OffsetDateTime,
    pub attributes: BTreeMap<String, String>,
    /// The base64-decoded `data`; `None` when absent or empty.
    pub data: Option<Vec<u8>>,
    /// `data` as received. Standard base64 is decoded strictly (canonical padding, no trailing
    /// bits), so this is exactly the encoding of [`PushMessage::data`]: it can be passed on (as
    /// an event's `raw.body_b64`) without encoding the bytes again.
    pub data_b64: Option<String>,
    pub subscription: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    message: Option<RawMessage>,
    subscription: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    data: Option<String>,
    #[serde(default)]
    attributes: Option<BTreeMap<String, String>>,
    #[serde(rename = "messageId")]
    message_id_camel: Option<String>,
    #[serde(rename = "message_id")]
    message_id_snake: Option<String>,
    #[serde(rename = "publishTime")]
    publish_time_camel: Option<String>,
    #[serde(rename = "publish_time")]
    publish_time_snake: Option<String>,
}

impl PushMessage {
    /// Decodes a push request body.
    pub fn decode(body: &[u8]) -> Result<PushMessage, DecodeError> {
        let env: Envelope = serde_json::from_slice(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => DecodeError::BadEnvelope(e.to_string()),
            _ => DecodeError::NotJson(e.to_string()),
        })?;
        let m = env.message.ok_or(DecodeError::MissingMessage)?;
        let message_id =
            m.message_id_camel.or(m.message_id_snake).filter(|s| !s.is_empty()).ok_or(DecodeError::MissingMessageId)?;
        let pt = m.publish_time_camel.or(m.publish_time_snake).ok_or(DecodeError::MissingPublishTime)?;
        let publish_time = OffsetDateTime::parse(&pt, &Rfc3339).map_err(|_| DecodeError::BadPublishTime(pt))?;
        let (data, data_b64) = match m.data {
            None => (None, None),
            Some(d) if d.is_empty() => (None, None),
            Some(d) => (Some(STANDARD.decode(&d).map_err(|_| DecodeError::BadBase64)?), Some(d)),
        };
        Ok(PushMessage {
            message_id,
            publish_time,
            attributes: m.attributes.unwrap_or_default(),
            data,
            data_b64,
            subscription: env.subscription,
        })
    }

    /// `attributes.notificationType`, the AMAPI notification type.
    pub fn notification_type(&self) -> Option<&str> {
        self.attributes.get("notificationType").map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn decodes_both_spellings() {
        let camel = br#"{"message":{"data":"e30=","attributes":{"notificationType":"COMMAND"},
            "messageId":"1","publishTime":"2025-08-11T13:00:03.123456Z","extra":1},
            "subscription":"projects/p/subscriptions/s","deliveryAttempt":2}"#;
        let m = PushMessage::decode(camel).unwrap();
        assert_eq!(m.message_id, "1");
        assert_eq!(m.publish_time, datetime!(2025-08-11 13:00:03.123456 UTC));
        assert_eq!(m.data.as_deref(), Some(&b"{}"[..]));
        assert_eq!(m.data_b64.as_deref(), Some("e30="));
        assert_eq!(m.notification_type(), Some("COMMAND"));
        assert_eq!(m.subscription.as_deref(), Some("projects/p/subscriptions/s"));

        let snake = br#"{"message":{"message_id":"2","publish_time":"2025-08-11T13:00:03+02:00"}}"#;
        let m = PushMessage::decode(snake).unwrap();
        assert_eq!(m.message_id, "2");
        assert_eq!(m.publish_time, datetime!(2025-08-11 11:00:03 UTC));
        assert_eq!(m.data, None);
        assert!(m.attributes.is_empty());
        assert_eq!(m.subscription, None);
    }

    #[test]
    fn camel_case_wins_over_snake_case() {
        let b = br#"{"message":{"messageId":"a","message_id":"b","publishTime":"2025-01-01T00:00:00Z",
            "publish_time":"2024-01-01T00:00:00Z"}}"#;
        let m = PushMessage::decode(b).unwrap();
        assert_eq!(m.message_id, "a");
        assert_eq!(m.publish_time, datetime!(2025-01-01 0:00 UTC));
    }

    #[test]
    fn rejects_malformed_envelopes() {
        let cases: [(&[u8], &str); 9] = [
            (b"not json", "not_json"),
            (b"{\"message\":", "not_json"),
            (b"[]", "bad_envelope"),
            (br#"{"message":"x"}"#, "bad_envelope"),
            (
                br#"{"message":{"messageId":"1","publishTime":"2025-01-01T00:00:00Z","attributes":{"a":1}}}"#,
                "bad_envelope",
            ),
            (br#"{"subscription":"s"}"#, "missing_message"),
            (br#"{"message":{"messageId":"","publishTime":"2025-01-01T00:00:00Z"}}"#, "missing_message_id"),
            (br#"{"message":{"messageId":"1"}}"#, "missing_publish_time"),
            (br#"{"message":{"messageId":"1","publishTime":"yesterday"}}"#, "bad_publish_time"),
        ];
        for (body, reason) in cases {
            let e = PushMessage::decode(body).unwrap_err();
            assert_eq!(e.reason(), reason, "{}: {e}", String::from_utf8_lossy(body));
        }
        let e =
            PushMessage::decode(br#"{"message":{"messageId":"1","publishTime":"2025-01-01T00:00:00Z","data":"!!"}}"#)
                .unwrap_err();
        assert_eq!(e, DecodeError::BadBase64);
        // Not canonical (trailing bits set, padding missing): refused, so `data_b64` is always
        // the encoding of `data`.
        for data in ["e31=", "e30"] {
            let body =
                format!(r#"{{"message":{{"messageId":"1","publishTime":"2025-01-01T00:00:00Z","data":"{data}"}}}}"#);
            assert_eq!(PushMessage::decode(body.as_bytes()).unwrap_err(), DecodeError::BadBase64, "{data}");
        }
    }
}
