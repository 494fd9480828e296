//! The enrollment gate: one set of enrollment rules for every platform (`[enrollment]`), checked
//! before anything is stored for a new enrollment. Each platform source turns a refusal into its
//! own wire answer (Windows: a `DeviceCapReached` / `DeviceNotSupported` SOAP fault; Apple: a
//! refused Authenticate; Android: no enrollment token, or the device deleted) and reports it as a
//! `device.enrollment_denied` event.
//!
//! Order of the checks, cheapest first: platform allowed → OS version in range → ownership
//! (corporate identifiers) and personally owned allowed → device limit per user (device
//! enrollment managers have their own) → the backend hook.

use std::cmp::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use mdm_core::{DeviceId, Event, EventType, Platform};
use serde::Serialize;
use serde_json::json;

use crate::config::{DEM_DEVICE_LIMIT, EnrollmentGateConfig};
use crate::events::EventFactory;
use crate::http_util::{OutboundClient, outbound_client};
use crate::store::{IdentifierKind, Store, StoreError};

const MAX_HOOK_ANSWER_BYTES: usize = 64 * 1024;

/// What the gate knows about an enrollment. Every field but the platform may be unknown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EnrollmentFacts {
    pub platform: Option<Platform>,
    /// The device, when it is known before enrollment (Windows DeviceID, Apple UDID).
    pub device_id: Option<DeviceId>,
    /// The enrolling user (UPN, email, AMAPI user) as the platform names them.
    pub user: Option<String>,
    pub os_version: Option<String>,
    pub serial_number: Option<String>,
    pub imei: Option<String>,
    /// What the enrollment itself says the device is, which wins over the corporate identifiers:
    /// personal for an Android work profile on a personal device or an Apple User Enrollment;
    /// corporate for an Android fully managed device or a Windows device joined to the directory.
    pub declared: Option<Ownership>,
}

/// Corporate or personal, as the gate decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    Corporate,
    Personal,
}

impl Ownership {
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::Corporate => "corporate",
            Ownership::Personal => "personal",
        }
    }
}

/// The gate's yes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub ownership: Ownership,
    /// The listed identifier that made the device corporate (to mark it enrolled afterwards).
    pub corporate_identifier: Option<(IdentifierKind, String)>,
}

/// Why the gate said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    PlatformBlocked,
    OsTooOld,
    OsTooNew,
    PersonalNotAllowed,
    DeviceLimitReached,
    HookDenied,
    HookUnavailable,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::PlatformBlocked => "platform_blocked",
            DenyReason::OsTooOld => "os_too_old",
            DenyReason::OsTooNew => "os_too_new",
            DenyReason::PersonalNotAllowed => "personal_not_allowed",
            DenyReason::DeviceLimitReached => "device_limit_reached",
            DenyReason::HookDenied => "hook_denied",
            DenyReason::HookUnavailable => "hook_unavailable",
        }
    }

    /// A limit, not a property of the device (Windows answers `DeviceCapReached` for these).
    pub fn is_limit(self) -> bool {
        self == DenyReason::DeviceLimitReached
    }
}

/// The gate's no, with a message for the user or admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub message: String,
}

/// Why the gate could not decide.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses `17.4.1` into numbers; `None` when a part is not a number.
pub fn parse_version(v: &str) -> Option<Vec<u64>> {
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    v.split('.').map(|p| p.trim().parse::<u64>().ok()).collect()
}

/// Compares versions number by number, the shorter padded with zeros (`17` = `17.0.0`).
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse_version(a)?, parse_version(b)?);
    let n = a.len().max(b.len());
    let at = |v: &Vec<u64>, i: usize| v.get(i).copied().unwrap_or(0);
    Some((0..n).map(|i| at(&a, i).cmp(&at(&b, i))).find(|o| *o != Ordering::Equal).unwrap_or(Ordering::Equal))
}

/// `version` is at most `max`, where `max` names a whole release line: `17` admits `17.5.1`,
/// `17.4` admits `17.4.1`.
fn within_max(version: &str, max: &str) -> Option<bool> {
    let (v, m) = (parse_version(version)?, parse_version(max)?);
    let prefix: Vec<u64> = v.iter().copied().chain(std::iter::repeat(0)).take(m.len()).collect();
    Some(prefix <= m)
}

/// The gate, as configured.
#[derive(Debug)]
pub struct Gate {
    pub config: EnrollmentGateConfig,
    hook: Option<OutboundClient>,
}

impl Gate {
    pub fn new(config: &EnrollmentGateConfig) -> Result<Gate, String> {
        let hook = match &config.hook_url {
            Some(_) => Some(outbound_client()?),
            None => None,
        };
        Ok(Gate { config: config.clone(), hook })
    }

    /// Ownership from the corporate identifiers alone (no rule is checked).
    pub async fn ownership(
        &self,
        store: &dyn Store,
        facts: &EnrollmentFacts,
    ) -> Result<(Ownership, Option<(IdentifierKind, String)>), GateError> {
        for (kind, raw) in [(IdentifierKind::Serial, &facts.serial_number), (IdentifierKind::Imei, &facts.imei)] {
            if let Some(id) = raw.as_deref().and_then(|r| kind.normalise(r))
                && store.corporate_identifier(kind, &id).await?.is_some()
            {
                return Ok((Ownership::Corporate, Some((kind, id))));
            }
        }
        Ok((Ownership::Personal, None))
    }

    /// Checks `facts` against every rule; `Ok(Err(_))` is a refusal.
    pub async fn check(
        &self,
        store: &dyn Store,
        facts: &EnrollmentFacts,
    ) -> Result<Result<Admission, Denial>, GateError> {
        let deny = |reason: DenyReason, message: String| Ok(Err(Denial { reason, message }));
        let platform = facts.platform;
        if let Some(p) = platform {
            let rules = self.config.rules(p);
            if !rules.allow {
                return deny(DenyReason::PlatformBlocked, format!("{} devices may not enroll", platform_name(p)));
            }
            if let Some(v) = &facts.os_version {
                if let Some(min) = &rules.min_os
                    && compare_versions(v, min) == Some(Ordering::Less)
                {
                    return deny(
                        DenyReason::OsTooOld,
                        format!("{} {v} is older than the oldest version allowed, {min}", platform_name(p)),
                    );
                }
                if let Some(max) = &rules.max_os
                    && within_max(v, max) == Some(false)
                {
                    return deny(
                        DenyReason::OsTooNew,
                        format!("{} {v} is newer than the newest version allowed, {max}", platform_name(p)),
                    );
                }
            } else if rules.min_os.is_some() || rules.max_os.is_some() {
                tracing::debug!(platform = %p, "OS version unknown at enrollment: the OS range is not checked");
            }
        }
        let (ownership, corporate_identifier) = self.ownership(store, facts).await?;
        let ownership = facts.declared.unwrap_or(ownership);
        if let Some(p) = platform
            && ownership == Ownership::Personal
            && !self.config.rules(p).personal_allowed
        {
            return deny(
                DenyReason::PersonalNotAllowed,
                format!(
                    "personally owned {} devices may not enroll (the device is not in the corporate identifiers)",
                    platform_name(p)
                ),
            );
        }
        if let Some(user) = facts.user.as_deref().filter(|u| !u.is_empty()) {
            let (limit, what) = if self.config.is_dem(user) {
                (DEM_DEVICE_LIMIT, "device enrollment manager")
            } else {
                (self.config.device_limit_per_user, "user")
            };
            let enrolled = store.count_user_devices(user, facts.device_id.as_ref()).await?;
            if enrolled >= u64::from(limit) {
                return deny(
                    DenyReason::DeviceLimitReached,
                    format!("{user} already has {enrolled} enrolled devices, the most a {what} may have ({limit})"),
                );
            }
        }
        if let Some(denial) = self.ask_hook(facts, ownership).await {
            return Ok(Err(denial));
        }
        Ok(Ok(Admission { ownership, corporate_identifier }))
    }

    /// The hook's refusal, if it refuses (or is unreachable and the gate fails closed).
    async fn ask_hook(&self, facts: &EnrollmentFacts, ownership: Ownership) -> Option<Denial> {
        let (client, url) = (self.hook.as_ref()?, self.config.hook_url.as_deref()?);
        let timeout = Duration::from_millis(self.config.hook_timeout_ms);
        let mut body = serde_json::to_value(facts).unwrap_or_default();
        body["ownership"] = json!(ownership.as_str());
        let call = async {
            let req = http::Request::post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| e.to_string())?;
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_HOOK_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("answered HTTP {status}"));
            }
            #[derive(serde::Deserialize)]
            struct Answer {
                allow: bool,
                #[serde(default)]
                reason: Option<String>,
            }
            serde_json::from_slice::<Answer>(&bytes).map(|a| (a.allow, a.reason)).map_err(|e| format!("answer: {e}"))
        };
        let answer = match tokio::time::timeout(timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match answer {
            Ok((true, _)) => None,
            Ok((false, reason)) => Some(Denial {
                reason: DenyReason::HookDenied,
                message: reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "refused by policy".into()),
            }),
            Err(why) => {
                metrics::counter!(crate::telemetry::ENROLLMENT_HOOK_FAILURES).increment(1);
                if self.config.hook_fail_open {
                    tracing::warn!(hook = url, error = %why, "enrollment hook failed; allowing (hook_fail_open)");
                    None
                } else {
                    tracing::warn!(hook = url, error = %why, "enrollment hook failed; refusing (hook_fail_open = false)");
                    Some(Denial {
                        reason: DenyReason::HookUnavailable,
                        message: "enrollment is not possible right now; try again later".into(),
                    })
                }
            }
        }
    }
}

fn platform_name(p: Platform) -> &'static str {
    match p {
        Platform::Apple => "Apple",
        Platform::Windows => "Windows",
        Platform::Android => "Android",
    }
}

/// The `device.enrollment_denied` event for a refusal (stored on its own: nothing else is).
pub fn denied_event(events: &EventFactory, device: &DeviceId, facts: &EnrollmentFacts, denial: &Denial) -> Event {
    metrics::counter!(crate::telemetry::ENROLLMENTS_DENIED, "platform" => device.platform().as_str(), "reason" => denial.reason.as_str())
        .increment(1);
    events.event(
        EventType::DEVICE_ENROLLMENT_DENIED,
        device,
        None,
        json!({
            "reason": denial.reason.as_str(),
            "message": denial.message,
            "user": facts.user,
            "os_version": facts.os_version,
            "serial_number": facts.serial_number,
            "imei": facts.imei,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(compare_versions("17.4.1", "17.4"), Some(Ordering::Greater));
        assert_eq!(compare_versions("17", "17.0.0"), Some(Ordering::Equal));
        assert_eq!(compare_versions("10.0.19045", "10.0.22000"), Some(Ordering::Less));
        assert_eq!(compare_versions("14", "9"), Some(Ordering::Greater));
        assert_eq!(compare_versions("x", "1"), None);
        assert_eq!(within_max("17.5.1", "17"), Some(true));
        assert_eq!(within_max("18.0", "17"), Some(false));
        assert_eq!(within_max("17.4.1", "17.4"), Some(true));
        assert_eq!(within_max("17.5", "17.4"), Some(false));
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("1..2"), None);
    }
}
