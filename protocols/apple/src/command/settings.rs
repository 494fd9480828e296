//! `set_settings`, `install_app` and `app_config` for Apple.
//!
//! - `set_settings` becomes `InstallProfile` with one configuration profile, identifier
//!   [`SETTINGS_PROFILE_IDENTIFIER`]: a passcode payload (`com.apple.mobiledevice.passwordpolicy`)
//!   and a restrictions payload (`com.apple.applicationaccess`) as needed; storage encryption is
//!   FileVault (`com.apple.MCX.FileVault2`) on macOS and a required passcode elsewhere (iOS and
//!   iPadOS encrypt storage once a passcode is set). Profiles with the same identifier replace
//!   each other, so the newest `set_settings` is the device's whole settings profile.
//! - `install_app` becomes `InstallApplication`: an App Store id (digits) as `iTunesStoreID`, an
//!   `https://` manifest URL as `ManifestURL`, anything else as the bundle `Identifier` (apps
//!   from Apps and Books). A `managed_config` rides along as `Configuration`.
//! - `app_config` becomes `Settings` with an `ApplicationConfiguration` item for the bundle id.
//!
//! Placeholders (`{{UDID}}`…) are filled in before translation ([`mdm_core::placeholder`]).

use mdm_core::{CommandError, Settings};
use plist::{Dictionary, Value};
use serde_json::{Map, Value as Json};

use crate::json::object_to_dict;

/// `PayloadIdentifier` of the profile `set_settings` installs.
pub const SETTINGS_PROFILE_IDENTIFIER: &str = "mdm-gateway.settings";
/// `ManagementFlags` of `InstallApplication`: remove the app when the MDM profile goes.
const REMOVE_WITH_MDM: i64 = 1;
const MAX_BUNDLE_ID: usize = 255;

fn invalid(field: &'static str, reason: impl Into<String>) -> CommandError {
    CommandError::Invalid { field, reason: reason.into() }
}

/// A UUID-shaped string that is a pure function of `seed` and `n` (two FNV-1a hashes), so a
/// command's payloads keep their UUIDs if it is translated again.
fn derived_uuid(seed: &str, n: u8) -> String {
    let hash = |basis: u64| {
        let mut h = basis;
        for b in seed.bytes().chain([0xff, n]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let (a, b) = (hash(0xcbf2_9ce4_8422_2325), hash(0x6c62_272e_07bb_0142));
    let hex = format!("{a:016X}{b:016X}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn payload(kind: &str, name: &str, seed: &str, n: u8) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PayloadType".into(), Value::String(kind.into()));
    d.insert("PayloadIdentifier".into(), Value::String(format!("{SETTINGS_PROFILE_IDENTIFIER}.{name}")));
    d.insert("PayloadUUID".into(), Value::String(derived_uuid(seed, n)));
    d.insert("PayloadVersion".into(), Value::Integer(1.into()));
    d
}

/// True for macOS (by the device's reported OS name or product name).
fn is_macos(os_name: Option<&str>) -> bool {
    os_name.is_some_and(|o| {
        let o = o.to_ascii_lowercase();
        o.contains("macos") || o.contains("mac os") || o.starts_with("mac")
    })
}

/// The configuration profile (XML plist bytes) for `settings`, on a device reporting `os_name`.
pub(super) fn settings_profile(
    settings: &Settings,
    command_uuid: &str,
    os_name: Option<&str>,
) -> Result<Vec<u8>, CommandError> {
    if !settings.extra.is_empty() {
        let keys: Vec<&str> = settings.extra.keys().map(String::as_str).collect();
        return Err(invalid("settings", format!("not translated for Apple: {}", keys.join(", "))));
    }
    let macos = is_macos(os_name);
    let mut content = Vec::new();

    // Passcode.
    let encryption_needs_passcode = settings.storage_encryption_required == Some(true) && !macos;
    let mut force_pin = settings.password_required;
    if settings.password_min_length.is_some() || encryption_needs_passcode {
        if force_pin == Some(false) {
            let why = if encryption_needs_passcode { "storage_encryption_required" } else { "password_min_length" };
            return Err(invalid("password_required", format!("cannot be false with {why}")));
        }
        force_pin = Some(true);
    }
    if force_pin.is_some() || settings.screen_lock_timeout_s.is_some() {
        let mut p = payload("com.apple.mobiledevice.passwordpolicy", "passcode", command_uuid, 1);
        if let Some(f) = force_pin {
            p.insert("forcePIN".into(), Value::Boolean(f));
        }
        if let Some(n) = settings.password_min_length {
            if !(1..=16).contains(&n) {
                return Err(invalid("password_min_length", "must be 1 to 16 (Apple's range)"));
            }
            p.insert("minLength".into(), Value::Integer(i64::from(n).into()));
        }
        if let Some(s) = settings.screen_lock_timeout_s {
            // Apple counts whole minutes (at least one); round up so the lock is never later.
            let minutes = i64::from(s.div_ceil(60)).max(1);
            if minutes > 60 {
                return Err(invalid("screen_lock_timeout_s", "at most 3600 (Apple's maxInactivity is 60 minutes)"));
            }
            p.insert("maxInactivity".into(), Value::Integer(minutes.into()));
        }
        content.push(Value::Dictionary(p));
    }

    // Restrictions.
    if settings.camera_disabled.is_some() || settings.screen_capture_disabled.is_some() {
        let mut r = payload("com.apple.applicationaccess", "restrictions", command_uuid, 2);
        if let Some(off) = settings.camera_disabled {
            r.insert("allowCamera".into(), Value::Boolean(!off));
        }
        if let Some(off) = settings.screen_capture_disabled {
            r.insert("allowScreenShot".into(), Value::Boolean(!off));
        }
        content.push(Value::Dictionary(r));
    }

    // FileVault on macOS (turned on at the next login; off cannot be forced by a profile).
    if macos && settings.storage_encryption_required == Some(true) {
        let mut f = payload("com.apple.MCX.FileVault2", "filevault", command_uuid, 3);
        f.insert("Enable".into(), Value::String("On".into()));
        f.insert("Defer".into(), Value::Boolean(true));
        f.insert("ShowRecoveryKey".into(), Value::Boolean(false));
        content.push(Value::Dictionary(f));
    }

    if content.is_empty() {
        return Err(invalid("settings", "no setting to apply"));
    }
    let mut profile = Dictionary::new();
    profile.insert("PayloadContent".into(), Value::Array(content));
    profile.insert("PayloadDisplayName".into(), Value::String("Device settings".into()));
    profile.insert("PayloadIdentifier".into(), Value::String(SETTINGS_PROFILE_IDENTIFIER.into()));
    profile.insert("PayloadType".into(), Value::String("Configuration".into()));
    profile.insert("PayloadUUID".into(), Value::String(derived_uuid(command_uuid, 0)));
    profile.insert("PayloadVersion".into(), Value::Integer(1.into()));
    profile.insert("PayloadRemovalDisallowed".into(), Value::Boolean(true));
    let mut out = Vec::new();
    plist::to_writer_xml(&mut out, &Value::Dictionary(profile))
        .map_err(|e| invalid("settings", format!("profile: {e}")))?;
    Ok(out)
}

fn bundle_id_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_BUNDLE_ID
        && s.contains('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn config_dict(field: &'static str, config: &Map<String, Json>) -> Result<Dictionary, CommandError> {
    object_to_dict(config, "").map_err(|e| invalid(field, e.to_string()))
}

/// The `InstallApplication` command dictionary (without `RequestType`) for `app`.
pub(super) fn install_application(
    app: &str,
    managed_config: Option<&Map<String, Json>>,
) -> Result<Dictionary, CommandError> {
    let mut c = Dictionary::new();
    if !app.is_empty() && app.len() <= 12 && app.bytes().all(|b| b.is_ascii_digit()) {
        let id: i64 = app.parse().map_err(|_| invalid("app", "App Store id out of range"))?;
        c.insert("iTunesStoreID".into(), Value::Integer(id.into()));
    } else if let Some(rest) = app.strip_prefix("https://") {
        if rest.is_empty() || app.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("app", "not a manifest URL"));
        }
        c.insert("ManifestURL".into(), Value::String(app.into()));
    } else if bundle_id_ok(app) {
        c.insert("Identifier".into(), Value::String(app.into()));
    } else {
        return Err(invalid(
            "app",
            "an App Store id (digits), an https:// manifest URL or a bundle id (com.example.app)",
        ));
    }
    c.insert("ManagementFlags".into(), Value::Integer(REMOVE_WITH_MDM.into()));
    if let Some(m) = managed_config {
        c.insert("Configuration".into(), Value::Dictionary(config_dict("managed_config", m)?));
    }
    Ok(c)
}

/// The `Settings` command dictionary (without `RequestType`) that sets `app`'s managed
/// configuration.
pub(super) fn application_configuration(app: &str, config: &Map<String, Json>) -> Result<Dictionary, CommandError> {
    if !bundle_id_ok(app) {
        return Err(invalid("app", "a bundle id (com.example.app)"));
    }
    let mut item = Dictionary::new();
    item.insert("Item".into(), Value::String("ApplicationConfiguration".into()));
    item.insert("Identifier".into(), Value::String(app.into()));
    item.insert("Configuration".into(), Value::Dictionary(config_dict("config", config)?));
    let mut c = Dictionary::new();
    c.insert("Settings".into(), Value::Array(vec![Value::Dictionary(item)]));
    Ok(c)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn profile(settings: serde_json::Value, os: Option<&str>) -> Result<Dictionary, CommandError> {
        let s: Settings = serde_json::from_value(settings).unwrap();
        let bytes = settings_profile(&s, "CMD-1", os)?;
        Ok(plist::from_bytes::<Value>(&bytes).unwrap().into_dictionary().unwrap())
    }

    fn payloads(p: &Dictionary) -> Vec<Dictionary> {
        p["PayloadContent"].as_array().unwrap().iter().map(|v| v.as_dictionary().unwrap().clone()).collect()
    }

    fn find<'a>(ps: &'a [Dictionary], kind: &str) -> Option<&'a Dictionary> {
        ps.iter().find(|p| p["PayloadType"].as_string() == Some(kind))
    }

    #[test]
    fn settings_table() {
        // (settings, os, payload type, key, expected value)
        let cases: Vec<(serde_json::Value, Option<&str>, &str, &str, Value)> = vec![
            (
                json!({"password_required": true}),
                None,
                "com.apple.mobiledevice.passwordpolicy",
                "forcePIN",
                Value::Boolean(true),
            ),
            (
                json!({"password_min_length": 8}),
                None,
                "com.apple.mobiledevice.passwordpolicy",
                "minLength",
                Value::Integer(8.into()),
            ),
            (
                json!({"password_min_length": 8}),
                None,
                "com.apple.mobiledevice.passwordpolicy",
                "forcePIN",
                Value::Boolean(true),
            ),
            (
                json!({"screen_lock_timeout_s": 90}),
                None,
                "com.apple.mobiledevice.passwordpolicy",
                "maxInactivity",
                Value::Integer(2.into()),
            ),
            (
                json!({"screen_lock_timeout_s": 10}),
                None,
                "com.apple.mobiledevice.passwordpolicy",
                "maxInactivity",
                Value::Integer(1.into()),
            ),
            (
                json!({"camera_disabled": true}),
                None,
                "com.apple.applicationaccess",
                "allowCamera",
                Value::Boolean(false),
            ),
            (
                json!({"camera_disabled": false}),
                None,
                "com.apple.applicationaccess",
                "allowCamera",
                Value::Boolean(true),
            ),
            (
                json!({"screen_capture_disabled": true}),
                None,
                "com.apple.applicationaccess",
                "allowScreenShot",
                Value::Boolean(false),
            ),
            (
                json!({"storage_encryption_required": true}),
                Some("iOS"),
                "com.apple.mobiledevice.passwordpolicy",
                "forcePIN",
                Value::Boolean(true),
            ),
            (
                json!({"storage_encryption_required": true}),
                Some("macOS"),
                "com.apple.MCX.FileVault2",
                "Enable",
                Value::String("On".into()),
            ),
        ];
        for (settings, os, kind, key, want) in cases {
            let p = profile(settings.clone(), os).unwrap();
            assert_eq!(p["PayloadIdentifier"].as_string(), Some(SETTINGS_PROFILE_IDENTIFIER));
            assert_eq!(p["PayloadType"].as_string(), Some("Configuration"));
            let ps = payloads(&p);
            let got = find(&ps, kind).unwrap_or_else(|| panic!("{settings}: no {kind} payload in {ps:?}"));
            assert_eq!(got.get(key), Some(&want), "{settings} on {os:?}: {key}");
            for p in &ps {
                for k in ["PayloadType", "PayloadIdentifier", "PayloadUUID", "PayloadVersion"] {
                    assert!(p.contains_key(k), "{settings}: payload without {k}");
                }
            }
        }
        // macOS encryption needs no passcode payload; iOS needs no FileVault.
        let mac = payloads(&profile(json!({"storage_encryption_required": true}), Some("macOS")).unwrap());
        assert!(find(&mac, "com.apple.mobiledevice.passwordpolicy").is_none());
        let ios = payloads(&profile(json!({"storage_encryption_required": true}), Some("iPadOS")).unwrap());
        assert!(find(&ios, "com.apple.MCX.FileVault2").is_none());
        // Everything at once: two payloads, distinct UUIDs, stable across translations.
        let all = json!({"password_required": true, "password_min_length": 6, "camera_disabled": true,
            "screen_capture_disabled": false, "screen_lock_timeout_s": 300});
        let a = profile(all.clone(), None).unwrap();
        assert_eq!(a, profile(all, None).unwrap());
        let uuids: std::collections::BTreeSet<_> =
            payloads(&a).iter().map(|p| p["PayloadUUID"].as_string().unwrap().to_owned()).collect();
        assert_eq!(uuids.len(), 2);
    }

    #[test]
    fn settings_refusals() {
        for (bad, field) in [
            (json!({}), "settings"),
            (json!({"password_required": false, "password_min_length": 4}), "password_required"),
            (json!({"password_required": false, "storage_encryption_required": true}), "password_required"),
            (json!({"password_min_length": 0}), "password_min_length"),
            (json!({"password_min_length": 17}), "password_min_length"),
            (json!({"screen_lock_timeout_s": 3601}), "screen_lock_timeout_s"),
            (json!({"extra": {"vendor_x": 1}}), "settings"),
        ] {
            match profile(bad.clone(), Some("iOS")) {
                Err(CommandError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn install_application_by_kind_of_app() {
        let c = install_application("361309726", None).unwrap();
        assert_eq!(c["iTunesStoreID"], Value::Integer(361309726.into()));
        let c = install_application("https://apps.example.com/app.plist", None).unwrap();
        assert_eq!(c["ManifestURL"].as_string(), Some("https://apps.example.com/app.plist"));
        let cfg = json!({"server": "mail.example.com", "port": 993, "user": "ann@example.com"});
        let c = install_application("com.example.mail", cfg.as_object()).unwrap();
        assert_eq!(c["Identifier"].as_string(), Some("com.example.mail"));
        assert_eq!(c["ManagementFlags"], Value::Integer(1.into()));
        let conf = c["Configuration"].as_dictionary().unwrap();
        assert_eq!(conf["port"], Value::Integer(993.into()));
        for bad in ["", "not an app", "https://", "http://x/y.plist", "1234567890123"] {
            assert!(install_application(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn application_configuration_item() {
        let cfg = json!({"a": [1, "x"], "b": {"c": true}});
        let c = application_configuration("com.example.app", cfg.as_object().unwrap()).unwrap();
        let item = c["Settings"].as_array().unwrap()[0].as_dictionary().unwrap();
        assert_eq!(item["Item"].as_string(), Some("ApplicationConfiguration"));
        assert_eq!(item["Identifier"].as_string(), Some("com.example.app"));
        assert_eq!(
            item["Configuration"].as_dictionary().unwrap()["b"].as_dictionary().unwrap()["c"],
            Value::Boolean(true)
        );
        assert!(application_configuration("361309726", cfg.as_object().unwrap()).is_err());
    }
}
