//! `[enrollment]`: the enrollment gate, the rules every platform's enrollment passes (Intune's
//! enrollment restrictions): a device limit per user, device enrollment managers, per-platform
//! allow/block, OS range and personally owned devices, and an optional backend hook.

use std::collections::BTreeMap;

use mdm_core::Platform;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Highest `device_limit_per_user` accepted (Intune's maximum).
pub const MAX_DEVICE_LIMIT_PER_USER: u32 = 15;
/// Devices one device enrollment manager account may enroll.
pub const DEM_DEVICE_LIMIT: u32 = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentGateConfig {
    /// Enrolled devices one user may have, over all platforms (unenrolled devices do not count).
    /// 1 to 15.
    pub device_limit_per_user: u32,
    /// Device enrollment manager accounts (user names as enrollment reports them: UPN, email):
    /// exempt from the per-user limit, each up to 1 000 devices.
    pub dem_accounts: Vec<String>,
    /// Per-platform rules, `[enrollment.platforms.apple]`, `.windows`, `.android`.
    pub platforms: BTreeMap<Platform, PlatformRules>,
    /// A backend URL asked before every enrollment that passes the rules: the gateway POSTs the
    /// enrollment facts as JSON and the hook answers `{"allow": true}` or
    /// `{"allow": false, "reason": "…"}`.
    pub hook_url: Option<String>,
    /// Time for the hook to answer, in milliseconds.
    pub hook_timeout_ms: u64,
    /// When the hook does not answer in time or answers badly: allow (`true`) or refuse (`false`).
    pub hook_fail_open: bool,
}

/// Rules for one platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformRules {
    /// Devices of this platform may enroll.
    pub allow: bool,
    /// Personally owned devices (not in the corporate identifiers) may enroll.
    pub personal_allowed: bool,
    /// Lowest OS version accepted (`16.4`, `10.0.19045`, `13`); compared number by number.
    pub min_os: Option<String>,
    /// Highest OS version accepted; `17` admits every 17.x.
    pub max_os: Option<String>,
}

impl Default for PlatformRules {
    fn default() -> Self {
        PlatformRules { allow: true, personal_allowed: true, min_os: None, max_os: None }
    }
}

impl Default for EnrollmentGateConfig {
    fn default() -> Self {
        EnrollmentGateConfig {
            device_limit_per_user: 5,
            dem_accounts: Vec::new(),
            platforms: BTreeMap::new(),
            hook_url: None,
            hook_timeout_ms: 5_000,
            hook_fail_open: false,
        }
    }
}

impl EnrollmentGateConfig {
    /// The rules for `platform` (the defaults when the section is absent).
    pub fn rules(&self, platform: Platform) -> PlatformRules {
        self.platforms.get(&platform).cloned().unwrap_or_default()
    }

    /// True for a device enrollment manager account (case-insensitive).
    pub fn is_dem(&self, user: &str) -> bool {
        self.dem_accounts.iter().any(|d| d.eq_ignore_ascii_case(user))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_DEVICE_LIMIT_PER_USER).contains(&self.device_limit_per_user) {
            return Err(ConfigError::new(
                "enrollment.device_limit_per_user",
                format!("must be 1 to {MAX_DEVICE_LIMIT_PER_USER}"),
            ));
        }
        for (i, d) in self.dem_accounts.iter().enumerate() {
            if d.trim().is_empty() {
                return Err(ConfigError::new(&format!("enrollment.dem_accounts[{i}]"), "empty account"));
            }
        }
        for (platform, rules) in &self.platforms {
            for (name, v) in [("min_os", &rules.min_os), ("max_os", &rules.max_os)] {
                if let Some(v) = v
                    && crate::enrollment_gate::parse_version(v).is_none()
                {
                    return Err(ConfigError::new(
                        &format!("enrollment.platforms.{platform}.{name}"),
                        "not a version (numbers separated by dots)",
                    ));
                }
            }
            if let (Some(lo), Some(hi)) = (&rules.min_os, &rules.max_os)
                && crate::enrollment_gate::compare_versions(lo, hi) == Some(std::cmp::Ordering::Greater)
            {
                return Err(ConfigError::new(&format!("enrollment.platforms.{platform}.min_os"), "is above max_os"));
            }
        }
        if let Some(url) = &self.hook_url {
            let uri: http::Uri =
                url.parse().map_err(|e| ConfigError::new("enrollment.hook_url", format!("not a URL: {e}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(ConfigError::new("enrollment.hook_url", "must be an http(s):// URL with a host"));
            }
        }
        if self.hook_timeout_ms == 0 {
            return Err(ConfigError::new("enrollment.hook_timeout_ms", "must be at least 1"));
        }
        Ok(())
    }
}
