//! Simulated devices: the `Device` resource (discovery schema `Device`) a phone would have
//! after enrolling with a token.

use serde_json::{Map, Value, json};

use super::util::{HEX, random_string, rfc3339_millis};

/// What a simulated device reports about itself. Unset fields get values derived from the
/// device's number, so a fleet is reproducible.
#[derive(Debug, Clone, Default)]
pub struct DeviceSpec {
    /// 15 digits; `networkInfo.imei`.
    pub imei: Option<String>,
    pub serial_number: Option<String>,
    pub brand: Option<String>,
    pub model: Option<String>,
    /// `softwareInfo.androidVersion` (`"14"`).
    pub android_version: Option<String>,
    pub api_level: Option<i64>,
    /// `DEVICE_OWNER` or `PROFILE_OWNER`; by default from the token's `allowPersonalUsage`
    /// (`PERSONAL_USAGE_ALLOWED` means a work profile on a personal device).
    pub management_mode: Option<String>,
    /// The device's id (the last part of its name): 16 hex digits, random when unset.
    pub id: Option<String>,
}

impl DeviceSpec {
    /// Values for device number `n` of a fleet.
    pub fn numbered(n: u64) -> DeviceSpec {
        // A Luhn-valid IMEI with the TAC of a common test handset.
        let body = format!("35203210{:06}", n % 1_000_000);
        DeviceSpec {
            imei: Some(format!("{body}{}", luhn_digit(&body))),
            serial_number: Some(format!("EMU{n:09}")),
            id: Some(format!("{:016x}", 0xe0_0000_0000_0000u64 | n)),
            ..DeviceSpec::default()
        }
    }
}

fn luhn_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// What enrollment takes from the enrollment token.
#[derive(Debug, Clone)]
pub(super) struct FromToken<'a> {
    pub(super) enterprise: &'a str,
    pub(super) token_name: &'a str,
    pub(super) policy_name: &'a str,
    pub(super) allow_personal_usage: &'a str,
    pub(super) additional_data: Option<&'a str>,
    /// `user.accountIdentifier` of the token.
    pub(super) account: Option<&'a str>,
}

/// A new device's resource, state `ACTIVE`, as the ENROLLMENT notification carries it.
pub(super) fn new_device(spec: &DeviceSpec, token: &FromToken<'_>, policy_version: &str, now_ms: i64) -> Value {
    let id = spec.id.clone().unwrap_or_else(|| random_string(16, HEX));
    let personal = token.allow_personal_usage == "PERSONAL_USAGE_ALLOWED";
    let mode =
        spec.management_mode.clone().unwrap_or_else(|| if personal { "PROFILE_OWNER" } else { "DEVICE_OWNER" }.into());
    let ownership = if mode == "PROFILE_OWNER" { "PERSONALLY_OWNED" } else { "COMPANY_OWNED" };
    let serial = spec.serial_number.clone().unwrap_or_else(|| random_string(11, b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"));
    let now = rfc3339_millis(now_ms);
    let mut hardware = json!({
        "brand": spec.brand.as_deref().unwrap_or("google"),
        "hardware": "emulated",
        "manufacturer": if spec.brand.is_some() { spec.brand.as_deref().unwrap_or_default() } else { "Google" },
        "model": spec.model.as_deref().unwrap_or("Pixel 8"),
        "deviceBasebandVersion": "g5300q-230626-230818-B-10749637",
    });
    // Google withholds the serial number of personally owned devices and gives an
    // enterprise-specific id instead.
    if personal {
        hardware["enterpriseSpecificId"] = Value::String(format!("{}-{}", &serial, &id[..4]));
    } else {
        hardware["serialNumber"] = Value::String(serial.clone());
        hardware["enterpriseSpecificId"] = Value::String(serial);
    }
    let mut network = json!({"wifiMacAddress": format!("02:00:00:{}:{}:{}", &id[10..12], &id[12..14], &id[14..16])});
    if let Some(imei) = &spec.imei {
        network["imei"] = Value::String(imei.clone());
        network["telephonyInfos"] = json!([{"carrierName": "Emulated Carrier", "phoneNumber": ""}]);
        network["networkOperatorName"] = Value::String("Emulated Carrier".into());
    }
    let mut device = json!({
        "name": format!("{}/devices/{id}", token.enterprise),
        "managementMode": mode,
        "state": "ACTIVE",
        "appliedState": "ACTIVE",
        "policyCompliant": true,
        "enrollmentTime": now,
        "lastStatusReportTime": now,
        "lastPolicySyncTime": now,
        "appliedPolicyVersion": policy_version,
        "apiLevel": spec.api_level.unwrap_or(34),
        "hardwareInfo": hardware,
        "softwareInfo": {
            "androidVersion": spec.android_version.as_deref().unwrap_or("14"),
            "androidBuildNumber": "UQ1A.240205.004",
            "securityPatchLevel": "2025-07-01",
            "androidDevicePolicyVersionCode": 1745,
            "androidDevicePolicyVersionName": "125.23.1",
            "primaryLanguageCode": "en-US",
            "bootloaderVersion": "ripcurrent-1.0",
            "deviceKernelVersion": "5.15.110",
            "systemUpdateInfo": {"updateStatus": "UP_TO_DATE"},
        },
        "networkInfo": network,
        "memoryInfo": {"totalRam": "8229691392", "totalInternalStorage": "118053097472"},
        "securityPosture": {"devicePosture": "SECURE"},
        "policyName": token.policy_name,
        "appliedPolicyName": token.policy_name,
        "enrollmentTokenName": token.token_name,
        "ownership": ownership,
    });
    let obj: &mut Map<String, Value> = device.as_object_mut().expect("object");
    if let Some(data) = token.additional_data {
        obj.insert("enrollmentTokenData".into(), Value::String(data.to_owned()));
    }
    if let Some(account) = token.account {
        // A stable numeric user id per account identifier.
        let n = account.bytes().fold(1_000_000_007u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        obj.insert("userName".into(), Value::String(format!("{}/users/1{n:020}", token.enterprise)));
    }
    device
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_devices_have_valid_imeis() {
        let spec = DeviceSpec::numbered(42);
        let imei = spec.imei.unwrap();
        assert_eq!(imei.len(), 15);
        // Luhn over all 15 digits sums to a multiple of 10.
        let sum: u32 = imei
            .chars()
            .rev()
            .filter_map(|c| c.to_digit(10))
            .enumerate()
            .map(|(i, d)| {
                if i % 2 == 1 {
                    let x = d * 2;
                    if x > 9 { x - 9 } else { x }
                } else {
                    d
                }
            })
            .sum();
        assert_eq!(sum % 10, 0, "{imei}");
    }

    #[test]
    fn personal_usage_means_work_profile() {
        let t = FromToken {
            enterprise: "enterprises/LC1",
            token_name: "enterprises/LC1/enrollmentTokens/x",
            policy_name: "enterprises/LC1/policies/p",
            allow_personal_usage: "PERSONAL_USAGE_ALLOWED",
            additional_data: Some("{\"a\":1}"),
            account: Some("user-1"),
        };
        let d = new_device(&DeviceSpec::numbered(1), &t, "3", 0);
        assert_eq!(d["managementMode"], "PROFILE_OWNER");
        assert_eq!(d["ownership"], "PERSONALLY_OWNED");
        assert!(d["hardwareInfo"].get("serialNumber").is_none());
        assert_eq!(d["enrollmentTokenData"], "{\"a\":1}");
        assert_eq!(d["appliedPolicyVersion"], "3");
        let t = FromToken { allow_personal_usage: "PERSONAL_USAGE_DISALLOWED", ..t };
        let d = new_device(&DeviceSpec::numbered(1), &t, "3", 0);
        assert_eq!(d["managementMode"], "DEVICE_OWNER");
        assert_eq!(d["hardwareInfo"]["serialNumber"], "EMU000000001");
    }
}
