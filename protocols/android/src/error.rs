use mdm_core::DeviceIdError;

/// Why a Pub/Sub push body or the AMAPI notification inside it could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body is not JSON at all (syntax error or truncated).
    #[error("push body is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a Pub/Sub push envelope (e.g. `message` is a string, an attribute is a number).
    #[error("push body is not a Pub/Sub push envelope: {0}")]
    BadEnvelope(String),
    /// No `message` object.
    #[error("push body has no `message`")]
    MissingMessage,
    /// Neither `messageId` nor `message_id`, or it is empty.
    #[error("push message has no messageId")]
    MissingMessageId,
    /// Neither `publishTime` nor `publish_time`.
    #[error("push message has no publishTime")]
    MissingPublishTime,
    /// `publishTime` is not an RFC 3339 timestamp.
    #[error("push message publishTime `{0}` is not RFC 3339")]
    BadPublishTime(String),
    /// `data` is not standard base64.
    #[error("push message data is not base64")]
    BadBase64,
    /// No `notificationType` attribute.
    #[error("push message has no notificationType attribute")]
    MissingNotificationType,
    /// A notification type that carries a payload arrived without `data`.
    #[error("{notification_type} notification has no data")]
    MissingData { notification_type: String },
    /// The `data` payload is not the JSON resource the notification type promises.
    #[error("{notification_type} notification data is not a valid payload: {detail}")]
    BadPayload { notification_type: String, detail: String },
    /// A resource name that does not have the expected `enterprises/*/devices/*` shape.
    #[error("resource name `{0}` is not enterprises/<id>/devices/<id>[/operations/<id>]")]
    BadResourceName(String),
    /// The resource name parts do not form a gateway device id.
    #[error("resource name does not form a valid device id: {0}")]
    BadDeviceId(#[from] DeviceIdError),
}

impl DecodeError {
    /// A short, stable, low-cardinality label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotJson(_) => "not_json",
            DecodeError::BadEnvelope(_) => "bad_envelope",
            DecodeError::MissingMessage => "missing_message",
            DecodeError::MissingMessageId => "missing_message_id",
            DecodeError::MissingPublishTime => "missing_publish_time",
            DecodeError::BadPublishTime(_) => "bad_publish_time",
            DecodeError::BadBase64 => "bad_base64",
            DecodeError::MissingNotificationType => "missing_notification_type",
            DecodeError::MissingData { .. } => "missing_data",
            DecodeError::BadPayload { .. } => "bad_payload",
            DecodeError::BadResourceName(_) => "bad_resource_name",
            DecodeError::BadDeviceId(_) => "bad_device_id",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeError;

    #[test]
    fn crosses_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<DecodeError>();
    }
}
