//! Why an enrollment message could not be read, and which fault that is.

use super::fault::{ErrorType, Subcode};
use super::xml::XmlError;

/// A message that is not what the operation expects. Each variant names who misbehaved and
/// maps to one fault ([`EnrollError::fault_kind`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("SOAP 1.1 envelope; the enrollment services speak SOAP 1.2")]
    Soap11,
    #[error("not a SOAP envelope: the root element is {0}")]
    NotEnvelope(String),
    #[error("the envelope has no s:Body")]
    NoBody,
    #[error("s:Body is empty")]
    EmptyBody,
    #[error("wrong SOAP action {got:?} (expected {expected})")]
    WrongAction { expected: &'static str, got: String },
    #[error("expected <{expected}> in the body, found {found}")]
    UnexpectedBody { expected: &'static str, found: String },
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{element} has an invalid value {value:?}: {why}")]
    Invalid { element: &'static str, value: String, why: &'static str },
    #[error("{0} is not base64")]
    NotBase64(&'static str),
    #[error("RequestVersion {0} is older than 4.0, the oldest this service supports")]
    UnsupportedVersion(String),
    #[error("unsupported wst:RequestType {0:?}")]
    UnsupportedRequestType(String),
    #[error("unsupported wst:TokenType {0:?}")]
    UnsupportedTokenType(String),
    #[error("unsupported BinarySecurityToken ValueType {0:?} (expected PKCS10 or PKCS7)")]
    UnsupportedValueType(String),
    #[error("the request has no wsse:Security header")]
    NoSecurityHeader,
    #[error("wsse:UsernameToken has no {0}")]
    IncompleteUsernameToken(&'static str),
    #[error("the security header's user token is not base64")]
    BadUserToken,
    #[error("the provisioning document is invalid: {0}")]
    ProvisioningDoc(String),
}

impl EnrollError {
    /// The fault subcode and error type this error is answered with.
    pub fn fault_kind(&self) -> (Subcode, ErrorType) {
        match self {
            EnrollError::UnsupportedVersion(_) => (Subcode::AUTHORIZATION, ErrorType::DEVICE_NOT_SUPPORTED),
            EnrollError::NoSecurityHeader | EnrollError::IncompleteUsernameToken(_) | EnrollError::BadUserToken => {
                (Subcode::INVALID_SECURITY, ErrorType::of_subcode(&Subcode::INVALID_SECURITY))
            }
            _ => (Subcode::MESSAGE_FORMAT, ErrorType::of_subcode(&Subcode::MESSAGE_FORMAT)),
        }
    }

    /// A stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EnrollError::Xml(x) => x.reason(),
            EnrollError::Soap11 => "soap11",
            EnrollError::NotEnvelope(_) => "not_envelope",
            EnrollError::NoBody => "no_body",
            EnrollError::EmptyBody => "empty_body",
            EnrollError::WrongAction { .. } => "wrong_action",
            EnrollError::UnexpectedBody { .. } => "unexpected_body",
            EnrollError::Missing(_) => "missing_element",
            EnrollError::Invalid { .. } => "invalid_value",
            EnrollError::NotBase64(_) => "not_base64",
            EnrollError::UnsupportedVersion(_) => "unsupported_version",
            EnrollError::UnsupportedRequestType(_) => "unsupported_request_type",
            EnrollError::UnsupportedTokenType(_) => "unsupported_token_type",
            EnrollError::UnsupportedValueType(_) => "unsupported_value_type",
            EnrollError::NoSecurityHeader => "no_security_header",
            EnrollError::IncompleteUsernameToken(_) => "incomplete_username_token",
            EnrollError::BadUserToken => "bad_user_token",
            EnrollError::ProvisioningDoc(_) => "bad_provisioning_doc",
        }
    }
}

/// Why a client could not use a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the server answered with a SOAP fault: {0}")]
    Fault(super::Fault),
    #[error("the reply could not be read: {0}")]
    Decode(#[from] EnrollError),
}
