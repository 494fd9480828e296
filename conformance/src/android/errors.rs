//! Google's JSON error shape (`google.rpc.Status` over HTTP):
//! `{"error":{"code":404,"message":"…","status":"NOT_FOUND"}}`.

use serde_json::{Value, json};

/// One error answer of the REST surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub(super) code: u16,
    pub(super) status: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(code: u16, status: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, status, message: message.into() }
    }

    pub(super) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "INVALID_ARGUMENT", message)
    }

    pub(super) fn not_found() -> ApiError {
        ApiError::new(404, "NOT_FOUND", "Requested entity was not found.")
    }

    pub(super) fn denied(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "PERMISSION_DENIED", message)
    }

    pub(super) fn unauthenticated() -> ApiError {
        ApiError::new(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
    }

    pub(super) fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message, "status": self.status}})
    }
}
