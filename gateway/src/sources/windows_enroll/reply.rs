//! Replies of the enrollment services: SOAP 1.2 with `Content-Length` (never chunked: the
//! Windows enrollment client wants the length), and refusals as faults.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use mdm_windows::enroll::{EnrollError, ErrorType, Fault, Subcode};

use crate::http_util::{Reply, with_type};

pub const SOAP_CONTENT_TYPE: &str = "application/soap+xml; charset=utf-8";

/// A SOAP reply with an explicit `Content-Length`.
pub(crate) fn soap(status: StatusCode, body: Vec<u8>) -> Reply {
    let len = body.len();
    let mut r = with_type(status, SOAP_CONTENT_TYPE, Bytes::from(body));
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// An empty 200 (the discovery `GET`), with `Content-Length: 0`.
pub(crate) fn empty_ok() -> Reply {
    let mut r = crate::http_util::empty(StatusCode::OK);
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(0));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r
}

/// An enrollment request refused: the fault the device gets, and what is logged.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) subcode: Subcode,
    pub(crate) error_type: ErrorType,
    /// Sent to the device (`s:Reason` and `Message`).
    pub(crate) message: String,
    /// A stable label for logs and metrics.
    pub(crate) reason: &'static str,
    /// Logged only (may name things the device should not learn).
    pub(crate) detail: String,
    /// HTTP status: 500, as WCF services (Intune) answer faults; 413 for bodies too large.
    pub(crate) status: StatusCode,
}

impl Refusal {
    pub(crate) fn new(
        subcode: Subcode,
        error_type: ErrorType,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        let message = message.into();
        Refusal {
            subcode,
            error_type,
            reason,
            detail: message.clone(),
            message,
            status: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A refusal whose error type is the subcode's own name (what Intune writes when no
    /// specific type applies).
    pub(crate) fn generic(subcode: Subcode, reason: &'static str, message: impl Into<String>) -> Self {
        let t = ErrorType::of_subcode(&subcode);
        Refusal::new(subcode, t, reason, message)
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub(crate) fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The server failed (store, openssl): `InternalServiceFault`, the device retries.
    pub(crate) fn internal(detail: impl std::fmt::Display) -> Self {
        Refusal::generic(Subcode::INTERNAL_SERVICE_FAULT, "internal", "the enrollment service failed; try again later")
            .detail(detail.to_string())
    }

    pub(crate) fn fault(&self, trace_id: &str) -> Fault {
        Fault::new(self.subcode.clone(), self.error_type.clone(), self.message.clone(), trace_id)
    }
}

impl From<EnrollError> for Refusal {
    fn from(e: EnrollError) -> Self {
        let (subcode, error_type) = e.fault_kind();
        Refusal::new(subcode, error_type, e.reason(), e.to_string())
    }
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal::internal(e)
    }
}
