//! SyncML status codes (OMA SyncML RepPro section 10) and DM alert codes (MS-MDM 2.2.7.2) as
//! open newtypes: any number round-trips; the named constants are the ones this crate acts on.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The `Data` of a `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatusCode(pub u16);

impl StatusCode {
    pub const OK: StatusCode = StatusCode(200);
    pub const ACCEPTED_FOR_PROCESSING: StatusCode = StatusCode(202);
    pub const AUTHENTICATION_ACCEPTED: StatusCode = StatusCode(212);
    pub const CHUNKED_ITEM_ACCEPTED: StatusCode = StatusCode(213);
    pub const OPERATION_CANCELLED: StatusCode = StatusCode(214);
    pub const NOT_EXECUTED: StatusCode = StatusCode(215);
    pub const ATOMIC_ROLLBACK_OK: StatusCode = StatusCode(216);
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    pub const INVALID_CREDENTIALS: StatusCode = StatusCode(401);
    pub const FORBIDDEN: StatusCode = StatusCode(403);
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    pub const COMMAND_NOT_ALLOWED: StatusCode = StatusCode(405);
    pub const OPTIONAL_FEATURE_NOT_SUPPORTED: StatusCode = StatusCode(406);
    pub const REQUEST_ENTITY_TOO_LARGE: StatusCode = StatusCode(413);
    pub const UNSUPPORTED_MEDIA_TYPE: StatusCode = StatusCode(415);
    pub const ALREADY_EXISTS: StatusCode = StatusCode(418);
    pub const SIZE_MISMATCH: StatusCode = StatusCode(424);
    pub const COMMAND_FAILED: StatusCode = StatusCode(500);
    pub const ATOMIC_FAILED: StatusCode = StatusCode(507);
    pub const ATOMIC_ROLLBACK_FAILED: StatusCode = StatusCode(516);

    /// A final success: the command was carried out (or accepted for processing). 213 (chunk
    /// buffered) is not final; 215 and 216 say the command did not take effect.
    pub fn is_success(self) -> bool {
        matches!(self.0, 200..=212 | 214)
    }

    /// The name of a code this crate knows.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            200 => "OK",
            202 => "Accepted for processing",
            212 => "Authentication accepted",
            213 => "Chunked item accepted and buffered",
            214 => "Operation cancelled",
            215 => "Not executed",
            216 => "Atomic roll back OK",
            400 => "Bad request",
            401 => "Invalid credentials",
            403 => "Forbidden",
            404 => "Not found",
            405 => "Command not allowed",
            406 => "Optional feature not supported",
            413 => "Request entity too large",
            415 => "Unsupported media type",
            418 => "Already exists",
            424 => "Size mismatch",
            500 => "Command failed",
            507 => "Atomic failed",
            516 => "Atomic roll back failed",
            _ => return None,
        })
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The `Data` of an `Alert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertCode(pub u16);

impl AlertCode {
    pub const SERVER_INITIATED_MGMT: AlertCode = AlertCode(1200);
    pub const CLIENT_INITIATED_MGMT: AlertCode = AlertCode(1201);
    pub const NEXT_MESSAGE: AlertCode = AlertCode(1222);
    pub const SESSION_ABORT: AlertCode = AlertCode(1223);
    pub const CLIENT_EVENT: AlertCode = AlertCode(1224);
    pub const NO_END_OF_DATA: AlertCode = AlertCode(1225);
    pub const GENERIC: AlertCode = AlertCode(1226);

    /// 1200 or 1201: the alert that opens a management session.
    pub fn starts_session(self) -> bool {
        self == Self::SERVER_INITIATED_MGMT || self == Self::CLIENT_INITIATED_MGMT
    }
}

impl fmt::Display for AlertCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_names() {
        assert!(StatusCode::OK.is_success());
        assert!(StatusCode::ACCEPTED_FOR_PROCESSING.is_success());
        assert!(!StatusCode::CHUNKED_ITEM_ACCEPTED.is_success());
        assert!(!StatusCode::NOT_EXECUTED.is_success());
        assert!(!StatusCode::ALREADY_EXISTS.is_success());
        assert_eq!(StatusCode(299).name(), None);
        assert_eq!(StatusCode(299).to_string(), "299");
        assert!(AlertCode::CLIENT_INITIATED_MGMT.starts_session());
        assert!(!AlertCode::GENERIC.starts_session());
    }
}
