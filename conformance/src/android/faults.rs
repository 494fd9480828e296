//! Fault injection and the request log.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::errors::ApiError;

/// What an injected fault answers instead of the real reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 `RESOURCE_EXHAUSTED` (quota exceeded).
    TooManyRequests,
    /// 500 `INTERNAL` with the message "Requested entity was not found.": AMAPI's way of saying
    /// 404 on some methods.
    InternalNotFound,
    /// 400 `INVALID_ARGUMENT` with this message.
    InvalidArgument(String),
    /// 403 `PERMISSION_DENIED` with this message.
    PermissionDenied(String),
    /// 503 `UNAVAILABLE`.
    Unavailable,
    /// Wait this long, then answer normally (a client timeout shorter than this sees a timeout).
    Delay(Duration),
    /// Any status in Google's error shape.
    Status { code: u16, status: &'static str, message: String },
}

impl Fault {
    /// The error reply, or `None` for [`Fault::Delay`].
    pub(super) fn error(&self) -> Option<ApiError> {
        Some(match self {
            Fault::TooManyRequests => ApiError::new(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Requests' and limit 'Requests per 100 seconds' of service 'androidmanagement.googleapis.com'.",
            ),
            Fault::InternalNotFound => ApiError::new(500, "INTERNAL", "Requested entity was not found."),
            Fault::InvalidArgument(m) => ApiError::invalid(m.clone()),
            Fault::PermissionDenied(m) => ApiError::denied(m.clone()),
            Fault::Unavailable => ApiError::new(503, "UNAVAILABLE", "The service is currently unavailable."),
            Fault::Delay(_) => return None,
            Fault::Status { code, status, message } => ApiError::new(*code, status, message.clone()),
        })
    }
}

/// "The next `times` requests whose path contains `path_contains` (and with `method`, when
/// set) get `fault`". Rules are tried in the order they were injected; the first that matches
/// and has uses left applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub method: Option<String>,
    pub path_contains: String,
    pub fault: Fault,
    pub times: usize,
}

impl FaultRule {
    /// Once, for any method on paths containing `path_contains` (`""` matches every path,
    /// `/token` the token endpoint, `:issueCommand` every command).
    pub fn new(path_contains: &str, fault: Fault) -> FaultRule {
        FaultRule { method: None, path_contains: path_contains.to_owned(), fault, times: 1 }
    }

    /// Only for this HTTP method (`"PATCH"`).
    pub fn method(mut self, method: &str) -> FaultRule {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// For the next `n` matching requests.
    pub fn times(mut self, n: usize) -> FaultRule {
        self.times = n;
        self
    }

    pub(super) fn matches(&self, method: &str, path: &str) -> bool {
        self.times > 0 && self.method.as_deref().is_none_or(|m| m == method) && path.contains(&self.path_contains)
    }
}

/// Takes the fault for this request from `rules`, using one of its uses.
pub(super) fn take_fault(rules: &mut Vec<FaultRule>, method: &str, path: &str) -> Option<Fault> {
    let rule = rules.iter_mut().find(|r| r.matches(method, path))?;
    rule.times -= 1;
    let fault = rule.fault.clone();
    rules.retain(|r| r.times > 0);
    Some(fault)
}

/// One request the emulator received, with the status it answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Percent-decoded path.
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    pub body: Vec<u8>,
    pub status: u16,
    /// A fault was injected into the answer.
    pub faulted: bool,
    pub at: Instant,
}

impl RecordedRequest {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_used_up_in_order() {
        let mut rules = vec![
            FaultRule::new(":issueCommand", Fault::TooManyRequests).times(2),
            FaultRule::new("", Fault::Unavailable).method("get"),
        ];
        assert_eq!(take_fault(&mut rules, "POST", "/v1/enterprises/x/devices/d"), None);
        assert_eq!(take_fault(&mut rules, "POST", "/v1/e/devices/d:issueCommand"), Some(Fault::TooManyRequests));
        assert_eq!(take_fault(&mut rules, "POST", "/v1/e/devices/d:issueCommand"), Some(Fault::TooManyRequests));
        assert_eq!(take_fault(&mut rules, "POST", "/v1/e/devices/d:issueCommand"), None);
        assert_eq!(take_fault(&mut rules, "GET", "/v1/e"), Some(Fault::Unavailable));
        assert!(rules.is_empty());
    }
}
