//! What APNs answers to one request, decided from the request alone plus the emulator's
//! control state. No IO: the server reads the request and writes the verdict.
//!
//! Order of checks (as APNs documents its errors; the first failing one answers): injected
//! failure, method (405 `MethodNotAllowed`), path (404 `BadPath`, 400 `MissingDeviceToken`,
//! `BadDeviceToken`), duplicate `apns-*` headers (`DuplicateHeaders`), topic (`MissingTopic`,
//! `TopicDisallowed` when it is not the client certificate's topic), push type
//! (`InvalidPushType`), priority (`BadPriority`), expiration (`BadExpirationDate`), `apns-id`
//! (`BadMessageId`), collapse id (`BadCollapseId`), payload (413 `PayloadTooLarge` over 4096
//! bytes, `PayloadEmpty`, `BadPayload`), then the token's state (410 `Unregistered`, 400
//! `BadDeviceToken`, `DeviceTokenNotForTopic`).
//!
//! Stricter than APNs, on purpose, because the emulator only stands in for MDM pushes:
//! `apns-push-type` must be present and `mdm`, and the body must be a JSON object with an `mdm`
//! string. `BadPayload` is the emulator's own reason (APNs would accept and the device ignore it).

use http::{HeaderMap, Method};

use super::control::{ApnsControl, TokenMark};

/// APNs' limit for a notification payload (VoIP's 5120 does not apply to MDM).
pub const MAX_PAYLOAD: usize = 4096;

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// 200: forward `push_magic` to the device owning `token_hex`.
    Accept { token_hex: String, push_magic: String },
    /// An error status and APNs reason; `timestamp` (ms) for 410.
    Refuse { status: u16, reason: &'static str, timestamp: Option<i64> },
}

fn refuse(status: u16, reason: &'static str) -> Verdict {
    Verdict::Refuse { status, reason, timestamp: None }
}

fn injected(status: u16) -> Verdict {
    refuse(
        status,
        match status {
            429 => "TooManyRequests",
            500 => "InternalServerError",
            503 => "ServiceUnavailable",
            410 => "Unregistered",
            403 => "Forbidden",
            _ => "Injected",
        },
    )
}

/// `body` is `None` when it exceeded [`MAX_PAYLOAD`].
pub(super) fn check(
    control: &ApnsControl,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    cert_topic: &str,
    now_ms: i64,
) -> Verdict {
    if let Some(status) = control.take_injected() {
        return injected(status);
    }
    if method != Method::POST {
        return refuse(405, "MethodNotAllowed");
    }
    let Some(token) = path.strip_prefix("/3/device/") else {
        return refuse(404, "BadPath");
    };
    if token.is_empty() {
        return refuse(400, "MissingDeviceToken");
    }
    if token.len() < 64 || !token.len().is_multiple_of(2) || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return refuse(400, "BadDeviceToken");
    }
    let token = token.to_ascii_lowercase();
    for (name, _) in headers {
        if name.as_str().starts_with("apns-") && headers.get_all(name).iter().count() > 1 {
            return refuse(400, "DuplicateHeaders");
        }
    }
    let header = |n: &str| headers.get(n).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    match header("apns-topic") {
        None | Some("") => return refuse(400, "MissingTopic"),
        Some(t) if t != cert_topic => return refuse(400, "TopicDisallowed"),
        Some(_) => {}
    }
    if header("apns-push-type") != Some("mdm") {
        return refuse(400, "InvalidPushType");
    }
    if let Some(p) = header("apns-priority")
        && !matches!(p, "1" | "5" | "10")
    {
        return refuse(400, "BadPriority");
    }
    if let Some(e) = header("apns-expiration")
        && e.parse::<u64>().is_err()
    {
        return refuse(400, "BadExpirationDate");
    }
    if let Some(id) = header("apns-id")
        && uuid::Uuid::try_parse(id).is_err()
    {
        return refuse(400, "BadMessageId");
    }
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return refuse(400, "BadCollapseId");
    }
    let Some(body) = body else {
        return refuse(413, "PayloadTooLarge");
    };
    if body.is_empty() {
        return refuse(400, "PayloadEmpty");
    }
    let magic = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("mdm").and_then(|m| m.as_str()).map(str::to_owned));
    let Some(push_magic) = magic else {
        return refuse(400, "BadPayload");
    };
    match control.token_mark(&token) {
        Some(TokenMark::Unregistered) => {
            Verdict::Refuse { status: 410, reason: "Unregistered", timestamp: Some(now_ms) }
        }
        Some(TokenMark::BadDeviceToken) => refuse(400, "BadDeviceToken"),
        Some(TokenMark::NotForTopic) => refuse(400, "DeviceTokenNotForTopic"),
        None => Verdict::Accept { token_hex: token, push_magic },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "com.apple.mgmt.External.t";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    fn good() -> HeaderMap {
        headers(&[("apns-topic", TOPIC), ("apns-push-type", "mdm"), ("apns-priority", "10"), ("apns-expiration", "0")])
    }

    fn run(c: &ApnsControl, method: Method, path: &str, h: &HeaderMap, body: Option<&[u8]>) -> Verdict {
        check(c, &method, path, h, body, TOPIC, 5)
    }

    #[test]
    fn answers_like_apns() {
        let c = ApnsControl::default();
        let token = "0a".repeat(32);
        let path = format!("/3/device/{token}");
        let body: &[u8] = br#"{"mdm":"magic"}"#;
        let reason = |v: Verdict| match v {
            Verdict::Refuse { status, reason, .. } => (status, reason),
            Verdict::Accept { .. } => (200, ""),
        };
        assert_eq!(
            run(&c, Method::POST, &path, &good(), Some(body)),
            Verdict::Accept { token_hex: token.clone(), push_magic: "magic".into() }
        );
        assert_eq!(reason(run(&c, Method::GET, &path, &good(), Some(body))), (405, "MethodNotAllowed"));
        assert_eq!(reason(run(&c, Method::POST, "/3/other", &good(), Some(body))), (404, "BadPath"));
        assert_eq!(reason(run(&c, Method::POST, "/3/device/abc", &good(), Some(body))), (400, "BadDeviceToken"));
        let wrong_topic = headers(&[("apns-topic", "com.apple.mgmt.other"), ("apns-push-type", "mdm")]);
        assert_eq!(reason(run(&c, Method::POST, &path, &wrong_topic, Some(body))), (400, "TopicDisallowed"));
        assert_eq!(
            reason(run(&c, Method::POST, &path, &headers(&[("apns-push-type", "mdm")]), Some(body))),
            (400, "MissingTopic")
        );
        assert_eq!(
            reason(run(&c, Method::POST, &path, &headers(&[("apns-topic", TOPIC)]), Some(body))),
            (400, "InvalidPushType")
        );
        let mut h = good();
        h.insert("apns-priority", "7".parse().expect("v"));
        assert_eq!(reason(run(&c, Method::POST, &path, &h, Some(body))), (400, "BadPriority"));
        let mut h = good();
        h.insert("apns-expiration", "soon".parse().expect("v"));
        assert_eq!(reason(run(&c, Method::POST, &path, &h, Some(body))), (400, "BadExpirationDate"));
        let mut h = good();
        h.append("apns-topic", TOPIC.parse().expect("v"));
        assert_eq!(reason(run(&c, Method::POST, &path, &h, Some(body))), (400, "DuplicateHeaders"));
        assert_eq!(reason(run(&c, Method::POST, &path, &good(), None)), (413, "PayloadTooLarge"));
        assert_eq!(reason(run(&c, Method::POST, &path, &good(), Some(b""))), (400, "PayloadEmpty"));
        assert_eq!(reason(run(&c, Method::POST, &path, &good(), Some(b"{\"aps\":{}}"))), (400, "BadPayload"));

        c.mark_token(&token, TokenMark::Unregistered);
        assert_eq!(
            run(&c, Method::POST, &path, &good(), Some(body)),
            Verdict::Refuse { status: 410, reason: "Unregistered", timestamp: Some(5) }
        );
        c.mark_token(&token, TokenMark::BadDeviceToken);
        assert_eq!(reason(run(&c, Method::POST, &path, &good(), Some(body))), (400, "BadDeviceToken"));
        c.clear_token(&token);

        c.fail_next(2, 429);
        c.fail_next(1, 503);
        for expected in [(429, "TooManyRequests"), (429, "TooManyRequests"), (503, "ServiceUnavailable"), (200, "")] {
            assert_eq!(reason(run(&c, Method::POST, &path, &good(), Some(body))), expected);
        }
    }
}
