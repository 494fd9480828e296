//! Simulated devices applying their policy: after `policies.patch` of the policy a device uses,
//! or `devices.patch` giving it another one, the device (after [`PolicySettings::apply_delay`])
//! reports the policy's version as `appliedPolicyVersion`, installs its `FORCE_INSTALLED` (and
//! other required) apps, lists them in `applicationReports` when the policy enables
//! `statusReportingSettings.applicationReportsEnabled`, reports `nonComplianceDetails` for what it
//! cannot do ([`NonCompliance`] rules), and publishes a STATUS_REPORT.
//!
//! What an emulated device can do is everything, except what a rule says: rules are how a test
//! makes a device refuse a setting (`API_LEVEL`, `MANAGEMENT_MODE`, …) or fail to install an app.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// Install types whose apps the device installs by itself.
const INSTALLED_TYPES: [&str; 4] = ["FORCE_INSTALLED", "REQUIRED_FOR_SETUP", "KIOSK", "PREINSTALLED"];

/// How simulated devices apply policies.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Time from the patch to the device's STATUS_REPORT.
    pub apply_delay: Duration,
    /// Off: devices do not apply new policies (a device that is switched off); status reports
    /// keep the old `appliedPolicyVersion`.
    pub apply: bool,
    /// What devices cannot do; every matching rule adds a `nonComplianceDetails` entry.
    pub non_compliance: Vec<NonCompliance>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings { apply_delay: Duration::from_millis(50), apply: true, non_compliance: Vec::new() }
    }
}

/// "Devices cannot apply this setting (or install this app)": a `NonComplianceDetail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonCompliance {
    /// A top-level Policy field (`cameraAccess`); `applications` for an app.
    pub setting_name: String,
    /// For an app: its package. The rule applies when the policy lists the app.
    pub package_name: Option<String>,
    /// `nonComplianceReason` (`API_LEVEL`, `MANAGEMENT_MODE`, `APP_NOT_INSTALLED`, …).
    pub reason: String,
    /// `installationFailureReason` for an app (`NOT_FOUND`, `IN_PROGRESS`, …).
    pub installation_failure_reason: Option<String>,
    /// A device name, or `None` for all devices.
    pub device: Option<String>,
}

impl NonCompliance {
    /// Devices cannot apply `setting` (whenever the policy sets it), for `reason`.
    pub fn setting(setting: &str, reason: &str) -> NonCompliance {
        NonCompliance {
            setting_name: setting.to_owned(),
            package_name: None,
            reason: reason.to_owned(),
            installation_failure_reason: None,
            device: None,
        }
    }

    /// Devices cannot install `package`: `APP_NOT_INSTALLED` with `failure_reason`.
    pub fn app_not_installed(package: &str, failure_reason: &str) -> NonCompliance {
        NonCompliance {
            setting_name: "applications".into(),
            package_name: Some(package.to_owned()),
            reason: "APP_NOT_INSTALLED".into(),
            installation_failure_reason: Some(failure_reason.to_owned()),
            device: None,
        }
    }

    /// Only on `device` (its name).
    pub fn on_device(mut self, device: &str) -> NonCompliance {
        self.device = Some(device.to_owned());
        self
    }

    fn applies(&self, device: &str, policy: &Map<String, Value>) -> bool {
        if self.device.as_deref().is_some_and(|d| d != device) {
            return false;
        }
        match &self.package_name {
            Some(p) => apps(policy).any(|a| a["packageName"].as_str() == Some(p.as_str())),
            None => policy.contains_key(&self.setting_name),
        }
    }

    fn detail(&self) -> Value {
        let mut d = json!({"settingName": self.setting_name, "nonComplianceReason": self.reason});
        if let Some(p) = &self.package_name {
            d["packageName"] = p.clone().into();
        }
        if let Some(r) = &self.installation_failure_reason {
            d["installationFailureReason"] = r.clone().into();
        }
        d
    }
}

fn apps(policy: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    policy.get("applications").and_then(Value::as_array).into_iter().flatten()
}

/// Applies `policy` (a stored Policy with `name` and `version`) to the device resource `device`
/// at `now` (RFC 3339).
pub(super) fn apply(device: &mut Value, policy: &Value, settings: &PolicySettings, now: &str) {
    let Some(p) = policy.as_object() else { return };
    let name = device["name"].as_str().unwrap_or_default().to_owned();
    let details: Vec<&NonCompliance> = settings.non_compliance.iter().filter(|r| r.applies(&name, p)).collect();
    let failing_apps: Vec<&str> = details.iter().filter_map(|r| r.package_name.as_deref()).collect();
    let reports_on = p.get("statusReportingSettings").is_some_and(|r| r["applicationReportsEnabled"] == true);
    let Some(d) = device.as_object_mut() else { return };
    d.insert("appliedPolicyName".into(), p.get("name").cloned().unwrap_or(Value::Null));
    d.insert("appliedPolicyVersion".into(), p.get("version").cloned().unwrap_or_else(|| "0".into()));
    d.insert("lastPolicySyncTime".into(), now.into());
    d.insert("lastStatusReportTime".into(), now.into());
    if details.is_empty() {
        d.remove("nonComplianceDetails");
    } else {
        d.insert("nonComplianceDetails".into(), details.iter().map(|r| r.detail()).collect());
    }
    d.insert("policyCompliant".into(), details.is_empty().into());
    if reports_on {
        let reports: Vec<Value> = apps(p)
            .filter(|a| a["installType"].as_str().is_some_and(|t| INSTALLED_TYPES.contains(&t)))
            .filter_map(|a| a["packageName"].as_str())
            .filter(|pkg| !failing_apps.contains(pkg))
            .map(|pkg| {
                json!({"packageName": pkg, "displayName": pkg, "state": "INSTALLED", "versionCode": 1,
                       "versionName": "1.0", "applicationSource": "INSTALLED_FROM_PLAY_STORE",
                       "installerPackageName": "com.android.vending", "userFacingType": "USER_FACING"})
            })
            .collect();
        d.insert("applicationReports".into(), reports.into());
    } else {
        d.remove("applicationReports");
    }
    let encrypted = p.get("encryptionPolicy").and_then(Value::as_str).is_some_and(|e| e.starts_with("ENABLED_"));
    if encrypted {
        d.insert("deviceSettings".into(), json!({"isEncrypted": true, "encryptionStatus": "ACTIVE_PER_USER"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applying_reports_version_apps_and_non_compliance() {
        let mut d = json!({"name": "enterprises/E/devices/d1", "appliedPolicyVersion": "1"});
        let policy = json!({"name": "enterprises/E/policies/device-d1", "version": "4", "cameraAccess": "CAMERA_ACCESS_DISABLED",
            "encryptionPolicy": "ENABLED_WITHOUT_PASSWORD",
            "statusReportingSettings": {"applicationReportsEnabled": true},
            "applications": [{"packageName": "com.a", "installType": "FORCE_INSTALLED"},
                             {"packageName": "com.b", "installType": "FORCE_INSTALLED"},
                             {"packageName": "com.c", "installType": "AVAILABLE"}]});
        let settings = PolicySettings {
            non_compliance: vec![
                NonCompliance::setting("cameraAccess", "MANAGEMENT_MODE"),
                NonCompliance::setting("screenCaptureDisabled", "API_LEVEL"),
                NonCompliance::app_not_installed("com.b", "NOT_FOUND"),
                NonCompliance::setting("encryptionPolicy", "API_LEVEL").on_device("enterprises/E/devices/other"),
            ],
            ..PolicySettings::default()
        };
        apply(&mut d, &policy, &settings, "2026-01-01T00:00:00Z");
        assert_eq!(d["appliedPolicyVersion"], "4");
        assert_eq!(d["appliedPolicyName"], "enterprises/E/policies/device-d1");
        assert_eq!(d["policyCompliant"], false);
        let nc = d["nonComplianceDetails"].as_array().unwrap();
        assert_eq!(nc.len(), 2, "{nc:?}");
        assert_eq!(nc[0]["settingName"], "cameraAccess");
        assert_eq!(nc[1]["packageName"], "com.b");
        let reports: Vec<&str> =
            d["applicationReports"].as_array().unwrap().iter().map(|r| r["packageName"].as_str().unwrap()).collect();
        assert_eq!(reports, ["com.a"]);
        assert_eq!(d["deviceSettings"]["isEncrypted"], true);
        // Compliant once nothing fails.
        apply(&mut d, &policy, &PolicySettings::default(), "2026-01-01T00:00:01Z");
        assert_eq!(d["policyCompliant"], true);
        assert!(d.get("nonComplianceDetails").is_none());
    }
}
