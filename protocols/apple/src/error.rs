//! Why a device message or a command plist could not be decoded.
//!
//! Every variant names what was wrong with the *input*; none of them is a catch-all. An unknown
//! `MessageType`, `Status` or `RequestType` is never an error: those vocabularies are open.
//! The gateway answers any of these with HTTP 400 (never 401, which makes devices drop out).

use mdm_core::DeviceIdError;

/// A message the device (or an API caller) sent that this crate cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is neither an XML nor a binary property list.
    #[error("body is not an XML or binary property list: {0}")]
    NotPlist(#[source] plist::Error),
    /// The property list's top level is not a dictionary.
    #[error("top level of the property list is {found}, expected a dictionary")]
    NotDictionary { found: &'static str },
    /// A check-in message without `MessageType`.
    #[error("check-in message has no MessageType")]
    MissingMessageType,
    /// A command report without `Status`.
    #[error("command report has no Status")]
    MissingStatus,
    /// A field the protocol requires is absent.
    #[error("required field `{field}` is missing")]
    MissingField { field: &'static str },
    /// A field the protocol requires is present but empty, where empty means nothing.
    #[error("field `{field}` is empty")]
    EmptyField { field: &'static str },
    /// A known field holds a value of another plist type.
    #[error("field `{field}` is {found}, expected {expected}")]
    WrongType { field: &'static str, expected: &'static str, found: &'static str },
    /// Neither `UDID` nor `EnrollmentID`: nothing identifies the enrollment.
    #[error("message has neither UDID nor EnrollmentID")]
    NoDeviceIdentifier,
    /// A Shared iPad user channel (`UserID` FFFFFFFF-…) without the `UserShortName` that names it.
    #[error("Shared iPad user channel has no UserShortName")]
    NoSharedIpadUser,
    /// The identifiers are present but cannot form a gateway device id (e.g. whitespace in a UDID).
    #[error("identifiers do not form a valid device id: {0}")]
    BadDeviceId(#[from] DeviceIdError),
}

impl DecodeError {
    /// A short, stable, low-cardinality label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotPlist(_) => "not_plist",
            DecodeError::NotDictionary { .. } => "not_dictionary",
            DecodeError::MissingMessageType => "missing_message_type",
            DecodeError::MissingStatus => "missing_status",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::EmptyField { .. } => "empty_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::NoDeviceIdentifier => "no_device_identifier",
            DecodeError::NoSharedIpadUser => "no_shared_ipad_user",
            DecodeError::BadDeviceId(_) => "bad_device_id",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeError;

    #[test]
    fn crosses_tasks() {
        // The gateway returns these from async handlers.
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<DecodeError>();
    }
}
