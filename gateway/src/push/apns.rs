//! One APNs MDM request and the meaning of its answer. No connections here (see `pool.rs`), no
//! retry loop (see `mod.rs`): building a request and classifying a reply are plain functions.

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;

/// Everything one push needs, independent of the attempt.
#[derive(Debug, Clone)]
pub(super) struct PushRequest {
    /// `https://host:port`, no trailing slash.
    pub(super) base: String,
    pub(super) token_hex: String,
    pub(super) topic: String,
    /// `{"mdm":"<PushMagic>"}`.
    pub(super) payload: Bytes,
    /// Unix seconds; 0 means "deliver now or never".
    pub(super) expiration: i64,
}

impl PushRequest {
    /// `POST /3/device/<token>` with the MDM headers. Priority is always 10: MDM pushes are
    /// delivered immediately and Apple documents no other priority for them.
    pub(super) fn to_http(&self) -> Result<Request<Full<Bytes>>, String> {
        Request::post(format!("{}/3/device/{}", self.base, self.token_hex))
            .header("apns-push-type", "mdm")
            .header(
                "apns-topic",
                HeaderValue::from_str(&self.topic)
                    .map_err(|_| format!("topic {:?} is not a valid header value", self.topic))?,
            )
            .header("apns-expiration", self.expiration.to_string())
            .header("apns-priority", "10")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.payload.clone()))
            .map_err(|e| format!("cannot build the APNs request: {e}"))
    }
}

/// What one attempt produced: the `apns-id` of an accepted push, or why not.
pub(super) type Attempt = Result<String, Failure>;

/// An attempt that did not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// APNs answered with an error status and (usually) a JSON `reason`.
    Refused { status: u16, reason: String, apns_id: Option<String> },
    /// No answer: the connection could not be made, was lost or closed (GOAWAY), or the attempt
    /// timed out. `reason` is `connection` or `timeout`.
    NoAnswer { reason: &'static str, detail: String },
}

impl Failure {
    /// Worth another attempt: APNs is busy (429) or failing (5xx), or we got no answer at all
    /// (a push is harmless to repeat: the device just checks in).
    pub(super) fn retryable(&self) -> bool {
        match self {
            Failure::Refused { status, .. } => *status == 429 || *status >= 500,
            Failure::NoAnswer { .. } => true,
        }
    }

    /// The token itself is bad: no later push to it can succeed until the device sends a new one.
    pub(super) fn token_invalid(&self) -> bool {
        match self {
            Failure::Refused { status: 410, .. } => true,
            Failure::Refused { status: 400, reason, .. } => {
                matches!(reason.as_str(), "BadDeviceToken" | "DeviceTokenNotForTopic")
            }
            _ => false,
        }
    }

    pub(super) fn reason(&self) -> &str {
        match self {
            Failure::Refused { reason, .. } => reason,
            Failure::NoAnswer { reason, .. } => reason,
        }
    }
}

/// Classifies an answer from its status, `apns-id` header and body.
pub(super) fn classify(head: &Response<()>, body: &[u8]) -> Attempt {
    let apns_id = head.headers().get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let status = head.status().as_u16();
    if status == 200 {
        return Ok(apns_id.unwrap_or_default());
    }
    // APNs error bodies are `{"reason": "..."}` (410 adds `timestamp`). Anything else (a proxy's
    // HTML page) keeps the status and says the body was not APNs'.
    let reason = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("http_{status}"));
    Err(Failure::Refused { status, reason, apns_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, id: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(status);
        if let Some(id) = id {
            b = b.header("apns-id", id);
        }
        b.body(()).expect("response")
    }

    #[test]
    fn answers_are_classified_by_status_and_reason() {
        assert_eq!(classify(&head(200, Some("A-1")), b""), Ok("A-1".into()));
        let refused = |status, body: &[u8]| classify(&head(status, Some("A-2")), body).expect_err("refused");
        let gone = refused(410, br#"{"reason":"Unregistered","timestamp":1}"#);
        assert!(gone.token_invalid() && !gone.retryable());
        assert_eq!(gone.reason(), "Unregistered");
        let bad = refused(400, br#"{"reason":"BadDeviceToken"}"#);
        assert!(bad.token_invalid() && !bad.retryable());
        let topic = refused(400, br#"{"reason":"TopicDisallowed"}"#);
        assert!(!topic.token_invalid() && !topic.retryable());
        for s in [429, 500, 503] {
            assert!(refused(s, b"{}").retryable(), "{s}");
        }
        assert_eq!(refused(502, b"<html>").reason(), "http_502");
        assert!(Failure::NoAnswer { reason: "timeout", detail: String::new() }.retryable());
    }

    #[test]
    fn request_has_the_mdm_headers() {
        let r = PushRequest {
            base: "https://127.0.0.1:2197".into(),
            token_hex: "ab".repeat(32),
            topic: "com.apple.mgmt.X".into(),
            payload: Bytes::from_static(br#"{"mdm":"m"}"#),
            expiration: 0,
        }
        .to_http()
        .expect("request");
        assert_eq!(r.uri().path(), format!("/3/device/{}", "ab".repeat(32)));
        assert_eq!(r.headers()["apns-push-type"], "mdm");
        assert_eq!(r.headers()["apns-topic"], "com.apple.mgmt.X");
        assert_eq!(r.headers()["apns-expiration"], "0");
        assert_eq!(r.headers()["apns-priority"], "10");
    }
}
