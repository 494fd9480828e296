//! The AMAPI (androidmanagement v1) resources a notification carries, reduced to the fields the
//! gateway uses. Everything is optional and unknown fields are ignored, so a newer API revision
//! never breaks decoding. Enum-valued fields stay strings (AMAPI adds values over time).
//!
//! AMAPI encodes `int64` as a JSON string (`"appliedPolicyVersion": "3"`); the `int64` fields here
//! accept a string or a number.

use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;

/// `enterprises.devices` resource (ENROLLMENT and STATUS_REPORT notifications).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Device {
    /// `enterprises/{enterpriseId}/devices/{deviceId}`.
    pub name: Option<String>,
    pub management_mode: Option<String>,
    /// `ACTIVE`, `DISABLED`, `DELETED`, `PROVISIONING`, `LOST`, `PREPARING_FOR_MIGRATION`, …
    pub state: Option<String>,
    pub applied_state: Option<String>,
    pub policy_compliant: Option<bool>,
    pub policy_name: Option<String>,
    pub applied_policy_name: Option<String>,
    #[serde(deserialize_with = "int64")]
    pub applied_policy_version: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub enrollment_time: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_status_report_time: Option<OffsetDateTime>,
    pub hardware_info: Option<HardwareInfo>,
    pub software_info: Option<SoftwareInfo>,
    pub network_info: Option<NetworkInfo>,
    pub security_posture: Option<SecurityPosture>,
    pub non_compliance_details: Vec<NonComplianceDetail>,
    pub ownership: Option<String>,
    pub enrollment_token_name: Option<String>,
    /// The enrollment token's `additionalData`, as the device reports it.
    pub enrollment_token_data: Option<String>,
    pub user_name: Option<String>,
    pub memory_info: Option<MemoryInfo>,
    pub device_settings: Option<DeviceSettings>,
    /// Installed apps (only when the policy enables `statusReportingSettings.applicationReportsEnabled`).
    pub application_reports: Vec<ApplicationReport>,
}

/// `ApplicationReport`: one app on the device.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApplicationReport {
    pub package_name: Option<String>,
    /// `INSTALLED`, `REMOVED`.
    pub state: Option<String>,
    pub version_name: Option<String>,
    pub version_code: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MemoryInfo {
    #[serde(deserialize_with = "int64")]
    pub total_internal_storage: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeviceSettings {
    pub is_encrypted: Option<bool>,
    /// `ENCRYPTED`, `ACTIVE_PER_USER`, `INACTIVE`, …
    pub encryption_status: Option<String>,
}

impl Device {
    /// True when AMAPI reports the device as deleted (unenrolled, wiped or retired).
    pub fn is_deleted(&self) -> bool {
        self.state.as_deref() == Some("DELETED")
    }

    /// The user the gateway named in the enrollment token (`additionalData` written by
    /// [`crate::command::enrollment_token_body`]), when the device enrolled with one of its tokens.
    pub fn gateway_token_user(&self) -> Option<String> {
        let data: serde_json::Value = serde_json::from_str(self.enrollment_token_data.as_deref()?).ok()?;
        data.get(crate::command::TOKEN_USER_KEY)?.as_str().filter(|u| !u.is_empty()).map(str::to_owned)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HardwareInfo {
    pub brand: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub hardware: Option<String>,
    pub manufacturer: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SoftwareInfo {
    pub android_version: Option<String>,
    pub security_patch_level: Option<String>,
    pub android_build_number: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkInfo {
    pub imei: Option<String>,
    pub meid: Option<String>,
    pub wifi_mac_address: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SecurityPosture {
    /// `SECURE`, `AT_RISK`, `POTENTIALLY_COMPROMISED`, …
    pub device_posture: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NonComplianceDetail {
    pub setting_name: Option<String>,
    pub non_compliance_reason: Option<String>,
    pub specific_non_compliance_reason: Option<String>,
    pub package_name: Option<String>,
    pub field_path: Option<String>,
    pub installation_failure_reason: Option<String>,
    /// Any JSON value (AMAPI type `any`).
    pub current_value: Option<serde_json::Value>,
}

/// A long-running operation (COMMAND notifications): the result of `devices.issueCommand`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Operation {
    /// `enterprises/{enterpriseId}/devices/{deviceId}/operations/{operationId}`.
    pub name: Option<String>,
    pub done: bool,
    pub error: Option<Status>,
    pub metadata: Option<CommandMetadata>,
    pub response: Option<serde_json::Value>,
}

/// `google.rpc.Status`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Status {
    pub code: Option<i32>,
    pub message: Option<String>,
}

/// The `Command` an operation's `metadata` holds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CommandMetadata {
    /// `LOCK`, `RESET_PASSWORD`, `REBOOT`, `WIPE`, `START_LOST_MODE`, …
    #[serde(rename = "type")]
    pub command_type: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub create_time: Option<OffsetDateTime>,
    /// AMAPI's `Command.errorCode` (`UNKNOWN`, `API_LEVEL`, `MANAGEMENT_MODE`, …).
    pub error_code: Option<String>,
    pub user_name: Option<String>,
}

/// `BatchUsageLogEvents` (USAGE_LOGS notifications).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BatchUsageLogEvents {
    pub device: Option<String>,
    pub user: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retrieval_time: Option<OffsetDateTime>,
    pub usage_log_events: Vec<serde_json::Value>,
}

/// `EnterpriseUpgradeEvent` (ENTERPRISE_UPGRADE notifications).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EnterpriseUpgradeEvent {
    pub enterprise: Option<String>,
    pub upgrade_state: Option<String>,
}

/// An AMAPI `int64`: a JSON string of digits or, leniently, a JSON integer.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(i64),
        Str(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Num(n)) => Ok(Some(n)),
        Some(Raw::Str(s)) => {
            s.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("int64 `{s}` is not an integer")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_accepts_string_or_number() {
        let d: Device = serde_json::from_str(r#"{"appliedPolicyVersion":"9007199254740993"}"#).unwrap();
        assert_eq!(d.applied_policy_version, Some(9_007_199_254_740_993));
        let d: Device = serde_json::from_str(r#"{"appliedPolicyVersion":7}"#).unwrap();
        assert_eq!(d.applied_policy_version, Some(7));
        let d: Device = serde_json::from_str(r#"{"appliedPolicyVersion":null}"#).unwrap();
        assert_eq!(d.applied_policy_version, None);
        assert!(serde_json::from_str::<Device>(r#"{"appliedPolicyVersion":"x"}"#).is_err());
        assert!(serde_json::from_str::<Device>(r#"{"appliedPolicyVersion":1.5}"#).is_err());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let d: Device =
            serde_json::from_str(r#"{"name":"enterprises/e/devices/d","futureField":{"x":[1]},"apiLevel":34}"#)
                .unwrap();
        assert_eq!(d.name.as_deref(), Some("enterprises/e/devices/d"));
    }
}
