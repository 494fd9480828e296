//! `set_settings`, `install_app` and `app_config` for Android: changes to the device's own AMAPI
//! policy, as data.
//!
//! AMAPI has no per-device command for these: they are fields of a `Policy`, and a policy applies
//! to every device that uses it, while the gateway's commands address one device. So every device
//! these commands address gets a policy of its own, [`device_policy_name`]
//! (`enterprises/<e>/policies/device-<device id>`): the first such command seeds it from the
//! device's current policy and moves the device to it (`devices.patch` of `policyName`); later
//! ones patch it with an `updateMask` of the fields they touch. The gateway does those calls
//! (IO); this module says what to write ([`PolicyChange::apply`]) and how to read the device's
//! answer ([`PolicyExpectation::outcome`]).
//!
//! | normalised | Policy field |
//! |---|---|
//! | `password_required: true` | the unscoped `passwordPolicies[]` entry: `passwordQuality` kept if it asks for a password, else `SOMETHING` |
//! | `password_required: false` | that entry: `passwordQuality: PASSWORD_QUALITY_UNSPECIFIED`, no `passwordMinimumLength` |
//! | `password_min_length` (4–16) | that entry: `passwordMinimumLength`, with a quality that enforces a length (`NUMERIC` unless one is set) |
//! | `screen_lock_timeout_s` (≥ 1) | `maximumTimeToLock`: milliseconds, an int64 string |
//! | `camera_disabled` | `cameraAccess`: `CAMERA_ACCESS_DISABLED` / `CAMERA_ACCESS_USER_CHOICE` |
//! | `screen_capture_disabled` | `screenCaptureDisabled` |
//! | `storage_encryption_required` | `encryptionPolicy`: `ENABLED_WITHOUT_PASSWORD` / `ENCRYPTION_POLICY_UNSPECIFIED` |
//! | `extra` | refused, naming the keys |
//! | `install_app` | `applications[]` entry `{packageName, installType: FORCE_INSTALLED}` (+ `managedConfiguration`), and `statusReportingSettings.applicationReportsEnabled` so the device reports the app |
//! | `app_config` | `applications[]` entry's `managedConfiguration` (an app not in the policy yet is added with AMAPI's default install type, `AVAILABLE`) |
//!
//! The unscoped `passwordPolicies` entry (no `passwordScope`) is the one AMAPI applies to the
//! work profile of a work-profile device and to the whole of a fully managed one; scoped entries
//! an administrator wrote are kept as they are.

use mdm_core::{CommandError, DeviceId, Settings};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::amapi::{Device, NonComplianceDetail};
use crate::normalise::non_compliance_json;

/// The per-device policy id is this prefix and the AMAPI device id.
pub const DEVICE_POLICY_PREFIX: &str = "device-";
/// `Policy.applications` holds at most this many apps.
pub const MAX_APPLICATIONS: usize = 3000;
/// Read-only `Policy` fields, left out when a policy is copied into another.
const READ_ONLY: [&str; 2] = ["name", "version"];
/// Password qualities under which `passwordMinimumLength` is enforced (discovery,
/// `PasswordRequirements.passwordMinimumLength`).
const LENGTH_QUALITIES: [&str; 5] = ["NUMERIC", "NUMERIC_COMPLEX", "ALPHABETIC", "ALPHANUMERIC", "COMPLEX"];
const MIN_PASSWORD_LENGTH: u32 = 4;
const MAX_PASSWORD_LENGTH: u32 = 16;

fn invalid(field: &'static str, reason: impl Into<String>) -> CommandError {
    CommandError::Invalid { field, reason: reason.into() }
}

/// `enterprises/<e>/policies/device-<d>` for `android:<e>:<d>`.
pub fn device_policy_name(device: &DeviceId) -> Result<String, CommandError> {
    let name = crate::command::device_name(device)?;
    let (enterprise, id) = name.split_once("/devices/").unwrap_or_default();
    Ok(format!("{enterprise}/policies/{DEVICE_POLICY_PREFIX}{id}"))
}

/// The full policy name for `name`, which may be a bare policy id (AMAPI accepts both).
pub fn full_policy_name(enterprise: &str, name: &str) -> String {
    if name.contains('/') { name.to_owned() } else { format!("{enterprise}/policies/{name}") }
}

/// What `set_settings` does to the unscoped `passwordPolicies` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u32>,
}

/// One command's change to the device's policy (stored with the command; applied to the policy
/// as it is when the command is sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum PolicyChange {
    /// `set_settings`.
    Settings {
        /// Top-level fields set to these values.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        fields: Map<String, Json>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<PasswordChange>,
    },
    /// `install_app` (`force_install`) and `app_config`.
    Application {
        package: String,
        #[serde(default)]
        force_install: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        managed_configuration: Option<Map<String, Json>>,
    },
}

/// The new values of the top-level fields a change touches, and the `updateMask` naming them.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyPatch {
    pub fields: Map<String, Json>,
    pub mask: Vec<String>,
}

impl PolicyPatch {
    /// A whole policy: `base` (another policy, read-only fields left out) with this patch on top.
    /// What a device's own policy is created with.
    pub fn seeded(&self, base: &Map<String, Json>) -> Map<String, Json> {
        let mut out: Map<String, Json> = base
            .iter()
            .filter(|(k, _)| !READ_ONLY.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &self.fields {
            out.insert(k.clone(), v.clone());
        }
        out
    }

    /// `updateMask` as AMAPI takes it.
    pub fn mask_param(&self) -> String {
        self.mask.join(",")
    }
}

/// `set_settings` → its policy change. Refuses what Android cannot express, naming the key.
pub fn settings_change(settings: &Settings) -> Result<PolicyChange, CommandError> {
    if !settings.extra.is_empty() {
        let keys: Vec<&str> = settings.extra.keys().map(String::as_str).collect();
        return Err(invalid("settings", format!("not translated for Android: {}", keys.join(", "))));
    }
    let mut fields = Map::new();
    let mut password = None;
    if settings.password_required.is_some() || settings.password_min_length.is_some() {
        if let Some(n) = settings.password_min_length {
            if settings.password_required == Some(false) {
                return Err(invalid("password_required", "cannot be false with password_min_length"));
            }
            if !(MIN_PASSWORD_LENGTH..=MAX_PASSWORD_LENGTH).contains(&n) {
                return Err(invalid("password_min_length", "must be 4 to 16 (Android's lock screen takes at least 4)"));
            }
        }
        password =
            Some(PasswordChange { required: settings.password_required, min_length: settings.password_min_length });
    }
    if let Some(s) = settings.screen_lock_timeout_s {
        if s == 0 {
            return Err(invalid("screen_lock_timeout_s", "must be at least 1 (0 means no limit to AMAPI)"));
        }
        fields.insert("maximumTimeToLock".into(), Json::String((u64::from(s) * 1000).to_string()));
    }
    if let Some(off) = settings.camera_disabled {
        let v = if off { "CAMERA_ACCESS_DISABLED" } else { "CAMERA_ACCESS_USER_CHOICE" };
        fields.insert("cameraAccess".into(), v.into());
    }
    if let Some(off) = settings.screen_capture_disabled {
        fields.insert("screenCaptureDisabled".into(), off.into());
    }
    if let Some(on) = settings.storage_encryption_required {
        let v = if on { "ENABLED_WITHOUT_PASSWORD" } else { "ENCRYPTION_POLICY_UNSPECIFIED" };
        fields.insert("encryptionPolicy".into(), v.into());
    }
    if fields.is_empty() && password.is_none() {
        return Err(invalid("settings", "no setting to apply"));
    }
    Ok(PolicyChange::Settings { fields, password })
}

/// A Java package name: two or more dot-separated segments, each a letter then letters, digits
/// or underscores.
pub fn is_package_name(s: &str) -> bool {
    s.len() <= 255
        && s.split('.').count() >= 2
        && s.split('.').all(|seg| {
            seg.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

fn package(app: &str) -> Result<String, CommandError> {
    if is_package_name(app) {
        Ok(app.to_owned())
    } else {
        Err(invalid("app", "an Android package name (com.example.app)"))
    }
}

/// `install_app` → its policy change.
pub fn install_change(app: &str, managed_config: Option<&Map<String, Json>>) -> Result<PolicyChange, CommandError> {
    Ok(PolicyChange::Application {
        package: package(app)?,
        force_install: true,
        managed_configuration: managed_config.cloned(),
    })
}

/// `app_config` → its policy change.
pub fn app_config_change(app: &str, config: &Map<String, Json>) -> Result<PolicyChange, CommandError> {
    Ok(PolicyChange::Application {
        package: package(app)?,
        force_install: false,
        managed_configuration: Some(config.clone()),
    })
}

impl PolicyChange {
    /// The top-level settings whose non-compliance fails the command (for apps, only the
    /// entries naming its package).
    pub fn settings(&self) -> Vec<String> {
        match self {
            PolicyChange::Settings { fields, password } => {
                let mut out: Vec<String> = fields.keys().cloned().collect();
                if password.is_some() {
                    out.push("passwordPolicies".into());
                }
                out.sort();
                out
            }
            PolicyChange::Application { .. } => vec!["applications".into()],
        }
    }

    pub fn package(&self) -> Option<&str> {
        match self {
            PolicyChange::Application { package, .. } => Some(package),
            PolicyChange::Settings { .. } => None,
        }
    }

    /// The fields to write on top of `policy` (the policy as it is now). Errors say why the
    /// policy cannot take the change.
    pub fn apply(&self, policy: &Map<String, Json>) -> Result<PolicyPatch, String> {
        let mut fields = Map::new();
        match self {
            PolicyChange::Settings { fields: set, password } => {
                for (k, v) in set {
                    fields.insert(k.clone(), v.clone());
                }
                if let Some(p) = password {
                    fields.insert("passwordPolicies".into(), Json::Array(password_policies(policy, p)));
                }
            }
            PolicyChange::Application { package, force_install, managed_configuration } => {
                let mut apps: Vec<Json> =
                    policy.get("applications").and_then(Json::as_array).cloned().unwrap_or_default();
                let at = apps.iter().position(|a| a["packageName"].as_str() == Some(package.as_str()));
                if at.is_none() && apps.len() >= MAX_APPLICATIONS {
                    return Err(format!("the policy already has {MAX_APPLICATIONS} applications, AMAPI's maximum"));
                }
                let mut entry = at
                    .and_then(|i| apps[i].as_object().cloned())
                    .unwrap_or_else(|| Map::from_iter([("packageName".to_owned(), Json::String(package.clone()))]));
                if *force_install {
                    entry.insert("installType".into(), "FORCE_INSTALLED".into());
                }
                if let Some(c) = managed_configuration {
                    entry.insert("managedConfiguration".into(), Json::Object(c.clone()));
                }
                match at {
                    Some(i) => apps[i] = Json::Object(entry),
                    None => apps.push(Json::Object(entry)),
                }
                fields.insert("applications".into(), Json::Array(apps));
                let reporting = policy.get("statusReportingSettings").and_then(Json::as_object);
                if *force_install
                    && reporting.and_then(|r| r.get("applicationReportsEnabled")) != Some(&Json::Bool(true))
                {
                    let mut r = reporting.cloned().unwrap_or_default();
                    r.insert("applicationReportsEnabled".into(), true.into());
                    fields.insert("statusReportingSettings".into(), Json::Object(r));
                }
            }
        }
        let mask = fields.keys().cloned().collect();
        Ok(PolicyPatch { fields, mask })
    }
}

/// `passwordPolicies` after `change`: the unscoped entry changed (or added), the others kept.
fn password_policies(policy: &Map<String, Json>, change: &PasswordChange) -> Vec<Json> {
    let mut list: Vec<Json> = policy.get("passwordPolicies").and_then(Json::as_array).cloned().unwrap_or_default();
    let unscoped = |p: &Json| matches!(p.get("passwordScope").and_then(Json::as_str), None | Some("SCOPE_UNSPECIFIED"));
    let at = list.iter().position(|p| p.is_object() && unscoped(p));
    let mut entry = at.and_then(|i| list[i].as_object().cloned()).unwrap_or_default();
    let quality = entry.get("passwordQuality").and_then(Json::as_str).map(str::to_owned);
    let asks = quality.as_deref().is_some_and(|q| q != "PASSWORD_QUALITY_UNSPECIFIED");
    if change.required == Some(false) {
        entry.insert("passwordQuality".into(), "PASSWORD_QUALITY_UNSPECIFIED".into());
        entry.remove("passwordMinimumLength");
    } else if let Some(n) = change.min_length {
        let q = match quality.as_deref() {
            Some(q) if LENGTH_QUALITIES.contains(&q) => q.to_owned(),
            // Keep a complexity requirement at least as strict.
            Some("COMPLEXITY_MEDIUM" | "COMPLEXITY_HIGH") => "NUMERIC_COMPLEX".into(),
            _ => "NUMERIC".into(),
        };
        entry.insert("passwordQuality".into(), q.into());
        entry.insert("passwordMinimumLength".into(), n.into());
    } else if change.required == Some(true) && !asks {
        entry.insert("passwordQuality".into(), "SOMETHING".into());
    }
    match at {
        Some(i) => list[i] = Json::Object(entry),
        None => list.push(Json::Object(entry)),
    }
    list
}

/// What the gateway waits for after patching a device's policy: the device reporting it applied
/// `version` of `policy` (recorded with the command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyExpectation {
    pub policy: String,
    pub version: i64,
    /// [`PolicyChange::settings`].
    pub settings: Vec<String>,
    /// [`PolicyChange::package`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// How a device's report answers a [`PolicyExpectation`].
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyOutcome {
    /// Not applied yet (older version, another policy, or an app still installing).
    Pending,
    /// Applied, and compliant with what the command touched: the command's result.
    Applied(Json),
    /// Applied, but not compliant with what the command touched: the command's error.
    NonCompliant(Json),
}

fn same_policy(reported: &str, full: &str) -> bool {
    reported == full || (!reported.contains('/') && full.rsplit('/').next() == Some(reported))
}

/// Non-compliance that says "not yet" rather than "cannot".
fn still_pending(n: &NonComplianceDetail) -> bool {
    match n.non_compliance_reason.as_deref() {
        Some("PENDING") => true,
        Some("APP_NOT_INSTALLED" | "APP_NOT_UPDATED") => {
            matches!(n.installation_failure_reason.as_deref(), None | Some("IN_PROGRESS"))
        }
        _ => n.installation_failure_reason.as_deref() == Some("IN_PROGRESS"),
    }
}

impl PolicyExpectation {
    /// Reads a device report (STATUS_REPORT or `devices.get`).
    pub fn outcome(&self, d: &Device) -> PolicyOutcome {
        let applied_name = d.applied_policy_name.as_deref().or(d.policy_name.as_deref());
        let on_policy = applied_name.is_some_and(|n| same_policy(n, &self.policy));
        let version = d.applied_policy_version.unwrap_or(0);
        if !on_policy || version < self.version || d.is_deleted() {
            return PolicyOutcome::Pending;
        }
        let relevant: Vec<&NonComplianceDetail> = d
            .non_compliance_details
            .iter()
            .filter(|n| match (&n.package_name, &self.package) {
                (Some(p), Some(mine)) => p == mine,
                (Some(_), None) => false,
                (None, _) => n.setting_name.as_ref().is_some_and(|s| self.settings.contains(s)),
            })
            .collect();
        if relevant.iter().any(|n| still_pending(n)) {
            return PolicyOutcome::Pending;
        }
        if !relevant.is_empty() {
            let what: Vec<String> = relevant
                .iter()
                .map(|n| {
                    let setting = n.package_name.clone().or_else(|| n.setting_name.clone()).unwrap_or_default();
                    let reason = n
                        .installation_failure_reason
                        .clone()
                        .or_else(|| n.specific_non_compliance_reason.clone())
                        .or_else(|| n.non_compliance_reason.clone())
                        .unwrap_or_else(|| "NON_COMPLIANCE_REASON_UNSPECIFIED".into());
                    format!("{setting}: {reason}")
                })
                .collect();
            return PolicyOutcome::NonCompliant(json!({
                "code": "non_compliant",
                "message": format!("the device applied policy version {version} but not {}", what.join(", ")),
                "policy": self.policy,
                "policy_version": self.version,
                "applied_policy_version": version,
                "non_compliance": relevant.iter().map(|n| non_compliance_json(n)).collect::<Vec<_>>(),
            }));
        }
        let mut result = json!({
            "policy": self.policy,
            "policy_version": self.version,
            "applied_policy_version": version,
        });
        if let Some(p) = &self.package
            && let Some(r) = d.application_reports.iter().find(|r| r.package_name.as_deref() == Some(p.as_str()))
        {
            result["application"] = json!({
                "package_name": p, "state": r.state, "version_name": r.version_name, "version_code": r.version_code,
            });
        }
        PolicyOutcome::Applied(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(v: Json) -> Settings {
        serde_json::from_value(v).unwrap()
    }

    fn obj(v: Json) -> Map<String, Json> {
        v.as_object().unwrap().clone()
    }

    /// (normalised settings, policy before, top-level field, expected value)
    #[test]
    fn settings_table() {
        let cases: Vec<(Json, Json, &str, Json)> = vec![
            (json!({"camera_disabled": true}), json!({}), "cameraAccess", json!("CAMERA_ACCESS_DISABLED")),
            (json!({"camera_disabled": false}), json!({}), "cameraAccess", json!("CAMERA_ACCESS_USER_CHOICE")),
            (json!({"screen_capture_disabled": true}), json!({}), "screenCaptureDisabled", json!(true)),
            (json!({"screen_capture_disabled": false}), json!({}), "screenCaptureDisabled", json!(false)),
            (
                json!({"storage_encryption_required": true}),
                json!({}),
                "encryptionPolicy",
                json!("ENABLED_WITHOUT_PASSWORD"),
            ),
            (
                json!({"storage_encryption_required": false}),
                json!({}),
                "encryptionPolicy",
                json!("ENCRYPTION_POLICY_UNSPECIFIED"),
            ),
            (json!({"screen_lock_timeout_s": 90}), json!({}), "maximumTimeToLock", json!("90000")),
            (json!({"screen_lock_timeout_s": 4294967295u32}), json!({}), "maximumTimeToLock", json!("4294967295000")),
            (
                json!({"password_required": true}),
                json!({}),
                "passwordPolicies",
                json!([{"passwordQuality": "SOMETHING"}]),
            ),
            // A quality that already asks for a password is kept.
            (
                json!({"password_required": true}),
                json!({"passwordPolicies": [{"passwordQuality": "ALPHABETIC"}]}),
                "passwordPolicies",
                json!([{"passwordQuality": "ALPHABETIC"}]),
            ),
            (
                json!({"password_min_length": 6}),
                json!({}),
                "passwordPolicies",
                json!([{"passwordQuality": "NUMERIC", "passwordMinimumLength": 6}]),
            ),
            (
                json!({"password_min_length": 8, "password_required": true}),
                json!({"passwordPolicies": [{"passwordQuality": "ALPHANUMERIC", "passwordHistoryLength": 3}]}),
                "passwordPolicies",
                json!([{"passwordQuality": "ALPHANUMERIC", "passwordHistoryLength": 3, "passwordMinimumLength": 8}]),
            ),
            (
                json!({"password_min_length": 8}),
                json!({"passwordPolicies": [{"passwordQuality": "COMPLEXITY_HIGH"}]}),
                "passwordPolicies",
                json!([{"passwordQuality": "NUMERIC_COMPLEX", "passwordMinimumLength": 8}]),
            ),
            // Only the unscoped entry is touched; a scoped one stays.
            (
                json!({"password_required": false}),
                json!({"passwordPolicies": [
                    {"passwordScope": "SCOPE_DEVICE", "passwordQuality": "NUMERIC"},
                    {"passwordScope": "SCOPE_UNSPECIFIED", "passwordQuality": "NUMERIC", "passwordMinimumLength": 6}]}),
                "passwordPolicies",
                json!([{"passwordScope": "SCOPE_DEVICE", "passwordQuality": "NUMERIC"},
                    {"passwordScope": "SCOPE_UNSPECIFIED", "passwordQuality": "PASSWORD_QUALITY_UNSPECIFIED"}]),
            ),
            (
                json!({"password_required": true}),
                json!({"passwordPolicies": [{"passwordScope": "SCOPE_PROFILE", "passwordQuality": "COMPLEX"}]}),
                "passwordPolicies",
                json!([{"passwordScope": "SCOPE_PROFILE", "passwordQuality": "COMPLEX"},
                    {"passwordQuality": "SOMETHING"}]),
            ),
        ];
        for (normalised, before, field, want) in cases {
            let change = settings_change(&settings(normalised.clone())).unwrap();
            let patch = change.apply(&obj(before.clone())).unwrap();
            assert_eq!(patch.fields.get(field), Some(&want), "{normalised} on {before}");
            assert_eq!(patch.mask, [field], "{normalised}: only the touched field is masked");
            assert_eq!(change.settings(), [field]);
            // The stored change round-trips.
            let back: PolicyChange = serde_json::from_value(serde_json::to_value(&change).unwrap()).unwrap();
            assert_eq!(back, change);
        }
        // Everything at once.
        let all = settings(json!({"password_min_length": 6, "camera_disabled": true, "screen_capture_disabled": true,
            "storage_encryption_required": true, "screen_lock_timeout_s": 300}));
        let patch = settings_change(&all).unwrap().apply(&Map::new()).unwrap();
        assert_eq!(
            patch.mask,
            ["cameraAccess", "encryptionPolicy", "maximumTimeToLock", "passwordPolicies", "screenCaptureDisabled"]
        );
        assert_eq!(patch.mask_param(), patch.mask.join(","));
    }

    #[test]
    fn settings_refusals_name_the_key() {
        for (bad, field, needle) in [
            (json!({}), "settings", "no setting"),
            (json!({"extra": {"vendor_x": 1, "knox_y": 2}}), "settings", "knox_y, vendor_x"),
            (json!({"password_required": false, "password_min_length": 6}), "password_required", "password_min_length"),
            (json!({"password_min_length": 3}), "password_min_length", "4 to 16"),
            (json!({"password_min_length": 17}), "password_min_length", "4 to 16"),
            (json!({"screen_lock_timeout_s": 0}), "screen_lock_timeout_s", "at least 1"),
        ] {
            match settings_change(&settings(bad.clone())) {
                Err(CommandError::Invalid { field: f, reason }) => {
                    assert_eq!(f, field, "{bad}");
                    assert!(reason.contains(needle), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn applications() {
        let cfg = obj(json!({"server": "mail.example.com", "user": "ann@example.com"}));
        // A new app, force-installed, reports switched on.
        let change = install_change("com.example.mail", Some(&cfg)).unwrap();
        let before = obj(json!({"applications": [{"packageName": "com.other", "installType": "BLOCKED"}],
            "statusReportingSettings": {"deviceSettingsEnabled": true}}));
        let p = change.apply(&before).unwrap();
        assert_eq!(
            p.fields["applications"],
            json!([{"packageName": "com.other", "installType": "BLOCKED"},
                {"packageName": "com.example.mail", "installType": "FORCE_INSTALLED",
                 "managedConfiguration": {"server": "mail.example.com", "user": "ann@example.com"}}])
        );
        assert_eq!(
            p.fields["statusReportingSettings"],
            json!({"deviceSettingsEnabled": true, "applicationReportsEnabled": true})
        );
        assert_eq!(p.mask, ["applications", "statusReportingSettings"]);
        assert_eq!(change.settings(), ["applications"]);
        assert_eq!(change.package(), Some("com.example.mail"));
        // app_config on an app already there: only its managedConfiguration changes.
        let after = p.seeded(&before);
        let change = app_config_change("com.example.mail", &obj(json!({"user": "bob@example.com"}))).unwrap();
        let p2 = change.apply(&after).unwrap();
        assert_eq!(p2.mask, ["applications"], "reports already on");
        assert_eq!(
            p2.fields["applications"][1],
            json!({"packageName": "com.example.mail", "installType": "FORCE_INSTALLED",
                "managedConfiguration": {"user": "bob@example.com"}})
        );
        // app_config on an app not in the policy adds it without an install type.
        let p3 = app_config_change("com.example.new", &Map::new()).unwrap().apply(&Map::new()).unwrap();
        assert_eq!(p3.fields["applications"], json!([{"packageName": "com.example.new", "managedConfiguration": {}}]));
        // The cap.
        let full = obj(
            json!({"applications": (0..MAX_APPLICATIONS).map(|i| json!({"packageName": format!("a.b{i}")})).collect::<Vec<_>>()}),
        );
        assert!(install_change("com.example.x", None).unwrap().apply(&full).is_err());
        assert!(install_change("a.b7", None).unwrap().apply(&full).is_ok(), "an app already listed");
        for bad in ["", "com", "361309726", "com.example.", "com..x", "1com.x", "com.ex-ample", "store:9WZ/x_y"] {
            assert!(install_change(bad, None).is_err(), "{bad:?}");
            assert!(app_config_change(bad, &Map::new()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn seeding_drops_read_only_fields() {
        let base = obj(json!({"name": "enterprises/E/policies/default", "version": "7", "cameraAccess": "X", "a": 1}));
        let patch = PolicyPatch { fields: obj(json!({"cameraAccess": "CAMERA_ACCESS_DISABLED"})), mask: vec![] };
        assert_eq!(Json::Object(patch.seeded(&base)), json!({"cameraAccess": "CAMERA_ACCESS_DISABLED", "a": 1}));
    }

    #[test]
    fn names() {
        let d: DeviceId = "android:LC01:3a4f".parse().unwrap();
        assert_eq!(device_policy_name(&d).unwrap(), "enterprises/LC01/policies/device-3a4f");
        assert_eq!(full_policy_name("enterprises/E", "p1"), "enterprises/E/policies/p1");
        assert_eq!(full_policy_name("enterprises/E", "enterprises/E/policies/p1"), "enterprises/E/policies/p1");
    }

    fn device(v: Json) -> Device {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn outcomes() {
        let exp = PolicyExpectation {
            policy: "enterprises/E/policies/device-d1".into(),
            version: 3,
            settings: vec!["cameraAccess".into(), "passwordPolicies".into()],
            package: None,
        };
        let on = |v: i64, extra: Json| {
            let mut d = json!({"name": "enterprises/E/devices/d1", "state": "ACTIVE",
                "policyName": "enterprises/E/policies/device-d1",
                "appliedPolicyName": "enterprises/E/policies/device-d1", "appliedPolicyVersion": v.to_string()});
            for (k, x) in extra.as_object().unwrap() {
                d[k] = x.clone();
            }
            device(d)
        };
        // Older version, or still on the old policy (whatever its version): pending.
        assert_eq!(exp.outcome(&on(2, json!({}))), PolicyOutcome::Pending);
        assert_eq!(
            exp.outcome(&on(9, json!({"appliedPolicyName": "enterprises/E/policies/default"}))),
            PolicyOutcome::Pending
        );
        // Applied, or newer.
        for v in [3, 4] {
            match exp.outcome(&on(v, json!({}))) {
                PolicyOutcome::Applied(r) => assert_eq!(r["applied_policy_version"], v),
                other => panic!("{other:?}"),
            }
        }
        // A short applied name, and only policyName when appliedPolicyName is missing.
        assert!(matches!(exp.outcome(&on(3, json!({"appliedPolicyName": "device-d1"}))), PolicyOutcome::Applied(_)));
        let mut d = on(3, json!({}));
        d.applied_policy_name = None;
        assert!(matches!(exp.outcome(&d), PolicyOutcome::Applied(_)));
        // Non-compliance with something else: still applied.
        let other = json!({"nonComplianceDetails": [{"settingName": "screenCaptureDisabled", "nonComplianceReason": "API_LEVEL"}]});
        assert!(matches!(exp.outcome(&on(3, other)), PolicyOutcome::Applied(_)));
        // With a touched setting: the error names it and the reason.
        let bad = json!({"nonComplianceDetails": [{"settingName": "cameraAccess", "nonComplianceReason": "MANAGEMENT_MODE"}]});
        match exp.outcome(&on(3, bad)) {
            PolicyOutcome::NonCompliant(e) => {
                assert_eq!(e["code"], "non_compliant");
                assert!(e["message"].as_str().unwrap().contains("cameraAccess: MANAGEMENT_MODE"), "{e}");
                assert_eq!(e["non_compliance"][0]["setting_name"], "cameraAccess");
            }
            other => panic!("{other:?}"),
        }
        // PENDING is not a failure.
        let pending =
            json!({"nonComplianceDetails": [{"settingName": "passwordPolicies", "nonComplianceReason": "PENDING"}]});
        assert_eq!(exp.outcome(&on(3, pending)), PolicyOutcome::Pending);
    }

    #[test]
    fn app_outcomes() {
        let exp = PolicyExpectation {
            policy: "enterprises/E/policies/device-d1".into(),
            version: 5,
            settings: vec!["applications".into()],
            package: Some("com.example.mail".into()),
        };
        let dev = |extra: Json| {
            let mut d = json!({"name": "enterprises/E/devices/d1", "appliedPolicyName": "enterprises/E/policies/device-d1",
                "appliedPolicyVersion": "5"});
            for (k, x) in extra.as_object().unwrap() {
                d[k] = x.clone();
            }
            device(d)
        };
        let installing = json!({"nonComplianceDetails": [{"settingName": "applications", "packageName": "com.example.mail",
            "nonComplianceReason": "APP_NOT_INSTALLED", "installationFailureReason": "IN_PROGRESS"}]});
        assert_eq!(exp.outcome(&dev(installing)), PolicyOutcome::Pending);
        let failed = json!({"nonComplianceDetails": [{"settingName": "applications", "packageName": "com.example.mail",
            "nonComplianceReason": "APP_NOT_INSTALLED", "installationFailureReason": "NOT_FOUND"}]});
        match exp.outcome(&dev(failed)) {
            PolicyOutcome::NonCompliant(e) => {
                assert!(e["message"].as_str().unwrap().contains("com.example.mail: NOT_FOUND"))
            }
            other => panic!("{other:?}"),
        }
        // Another app failing does not fail this one.
        let other = json!({"nonComplianceDetails": [{"settingName": "applications", "packageName": "com.other",
            "nonComplianceReason": "APP_NOT_INSTALLED", "installationFailureReason": "NOT_FOUND"}],
            "applicationReports": [{"packageName": "com.example.mail", "state": "INSTALLED", "versionName": "2.1", "versionCode": 21}]});
        match exp.outcome(&dev(other)) {
            PolicyOutcome::Applied(r) => {
                assert_eq!(
                    r["application"],
                    json!({"package_name": "com.example.mail", "state": "INSTALLED",
                    "version_name": "2.1", "version_code": 21})
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
