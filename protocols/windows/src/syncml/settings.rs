//! `set_settings` and `install_app` for Windows (CONTRACT §6).
//!
//! - `set_settings` becomes one `Replace` per Policy CSP (or BitLocker CSP) node, in
//!   [`SETTING_NODES`] order, each with its `int` value.
//! - `install_app` takes one of two app references, since Windows needs more than a name:
//!   - `store:<ProductId>/<PackageFamilyName>` (a Microsoft Store app): `Add` of
//!     `EnterpriseModernAppManagement/AppInstallation/<PFN>` then `Exec` of its `StoreInstall`
//!     with `<Application id="<ProductId>" flags="4" skuid="0016"/>`;
//!   - `msi:<ProductCode>@<https URL>#sha256=<hex>` (a line-of-business MSI): `Add` of
//!     `EnterpriseDesktopAppManagement/MSI/<ProductCode>/DownloadInstall` then `Exec` of it with an
//!     `MsiInstallJob` (download URL, SHA-256 check, quiet install).
//!
//!   A `managed_config` cannot ride along (Windows has no managed app configuration channel for
//!   these apps): refused.

use mdm_core::{CommandError, Settings};

use super::message::{Command, Item, ItemCommand, Meta};

pub const DEVICE_PASSWORD_ENABLED: &str = "./Device/Vendor/MSFT/Policy/Config/DeviceLock/DevicePasswordEnabled";
pub const MIN_DEVICE_PASSWORD_LENGTH: &str = "./Device/Vendor/MSFT/Policy/Config/DeviceLock/MinDevicePasswordLength";
pub const MAX_INACTIVITY_TIME_DEVICE_LOCK: &str =
    "./Device/Vendor/MSFT/Policy/Config/DeviceLock/MaxInactivityTimeDeviceLock";
pub const ALLOW_CAMERA: &str = "./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera";
pub const ALLOW_SCREEN_CAPTURE: &str = "./Device/Vendor/MSFT/Policy/Config/Experience/AllowScreenCapture";
pub const REQUIRE_DEVICE_ENCRYPTION: &str = "./Device/Vendor/MSFT/BitLocker/RequireDeviceEncryption";

/// Every node `set_settings` may write, in the order it writes them.
pub const SETTING_NODES: [&str; 6] = [
    DEVICE_PASSWORD_ENABLED,
    MIN_DEVICE_PASSWORD_LENGTH,
    MAX_INACTIVITY_TIME_DEVICE_LOCK,
    ALLOW_CAMERA,
    ALLOW_SCREEN_CAPTURE,
    REQUIRE_DEVICE_ENCRYPTION,
];

const STORE_INSTALL_ROOT: &str = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation";
const MSI_ROOT: &str = "./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI";
const MAX_URL: usize = 2048;

fn invalid(field: &'static str, reason: impl Into<String>) -> CommandError {
    CommandError::Invalid { field, reason: reason.into() }
}

fn item(uri: &str, format: &str, data: Option<String>) -> Item {
    Item { meta: Some(Meta::default().with("Format", format)), data, ..Item::target(uri) }
}

fn item_command(item: Item) -> ItemCommand {
    ItemCommand { cmd_id: "1".into(), items: vec![item], ..ItemCommand::default() }
}

fn replace_int(uri: &str, value: i64) -> Command {
    Command::Replace(item_command(item(uri, "int", Some(value.to_string()))))
}

/// The `Replace` commands for `settings`.
pub fn settings_commands(settings: &Settings) -> Result<Vec<Command>, CommandError> {
    if !settings.extra.is_empty() {
        let keys: Vec<&str> = settings.extra.keys().map(String::as_str).collect();
        return Err(invalid("settings", format!("not translated for Windows: {}", keys.join(", "))));
    }
    let mut password = settings.password_required;
    if settings.password_min_length.is_some() || settings.screen_lock_timeout_s.is_some() {
        // Both apply only while a device password is required (DevicePasswordEnabled = 0).
        if password == Some(false) {
            return Err(invalid(
                "password_required",
                "cannot be false with password_min_length or screen_lock_timeout_s",
            ));
        }
        password = Some(true);
    }
    let mut out = Vec::new();
    if let Some(p) = password {
        // Policy CSP: 0 means enabled.
        out.push(replace_int(DEVICE_PASSWORD_ENABLED, if p { 0 } else { 1 }));
    }
    if let Some(n) = settings.password_min_length {
        if !(4..=16).contains(&n) {
            return Err(invalid("password_min_length", "must be 4 to 16 (MinDevicePasswordLength's range)"));
        }
        out.push(replace_int(MIN_DEVICE_PASSWORD_LENGTH, i64::from(n)));
    }
    if let Some(s) = settings.screen_lock_timeout_s {
        // Whole minutes, rounded up so the lock never comes later; 0 would mean "no timeout".
        let minutes = i64::from(s.div_ceil(60)).max(1);
        if minutes > 999 {
            return Err(invalid("screen_lock_timeout_s", "at most 999 minutes"));
        }
        out.push(replace_int(MAX_INACTIVITY_TIME_DEVICE_LOCK, minutes));
    }
    if let Some(off) = settings.camera_disabled {
        out.push(replace_int(ALLOW_CAMERA, i64::from(!off)));
    }
    if let Some(off) = settings.screen_capture_disabled {
        out.push(replace_int(ALLOW_SCREEN_CAPTURE, i64::from(!off)));
    }
    if let Some(on) = settings.storage_encryption_required {
        out.push(replace_int(REQUIRE_DEVICE_ENCRYPTION, i64::from(on)));
    }
    if out.is_empty() {
        return Err(invalid("settings", "no setting to apply"));
    }
    Ok(out)
}

fn is_guid_braced(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
        return false;
    };
    let groups: Vec<&str> = inner.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_package_family_name(s: &str) -> bool {
    // `<Name>_<PublisherId>`: the publisher id is 13 base32 characters.
    match s.rsplit_once('_') {
        Some((name, publisher)) => {
            !name.is_empty()
                && name.len() <= 200
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                && publisher.len() == 13
                && publisher.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        }
        None => false,
    }
}

/// Safe inside the job's XML once `&` is escaped.
fn url_ok(s: &str) -> bool {
    !s.chars().any(|c| matches!(c, '<' | '>' | '"' | '\'') || c.is_whitespace() || c.is_control())
}

/// The commands that install `app` (see the module documentation for the reference forms).
pub fn install_commands(app: &str, has_managed_config: bool) -> Result<Vec<Command>, CommandError> {
    if has_managed_config {
        return Err(invalid("managed_config", "Windows has no managed configuration for installed apps"));
    }
    if let Some(rest) = app.strip_prefix("store:") {
        let (product, pfn) =
            rest.split_once('/').ok_or_else(|| invalid("app", "store:<ProductId>/<PackageFamilyName>"))?;
        if product.len() != 12 || !product.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return Err(invalid("app", format!("{product:?} is not a Microsoft Store product id (12 characters)")));
        }
        if !is_package_family_name(pfn) {
            return Err(invalid("app", format!("{pfn:?} is not a package family name (Name_publisherid)")));
        }
        let node = format!("{STORE_INSTALL_ROOT}/{pfn}");
        let job = format!(r#"<Application id="{product}" flags="4" skuid="0016"/>"#);
        return Ok(vec![
            Command::Add(item_command(item(&node, "node", None))),
            Command::Exec(item_command(item(&format!("{node}/StoreInstall"), "xml", Some(job)))),
        ]);
    }
    if let Some(rest) = app.strip_prefix("msi:") {
        let form = "msi:{ProductCode}@https://host/path.msi#sha256=<64 hex>";
        let (code, rest) = rest.split_once('@').ok_or_else(|| invalid("app", form))?;
        let (url, hash) = rest.split_once("#sha256=").ok_or_else(|| invalid("app", form))?;
        if !is_guid_braced(code) {
            return Err(invalid("app", format!("{code:?} is not a product code ({{GUID}})")));
        }
        if !url.starts_with("https://") || url.len() <= 8 || url.len() > MAX_URL || !url_ok(url) {
            return Err(invalid("app", "the MSI URL must be https:// without spaces, quotes or markup"));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("app", "sha256 must be 64 hex digits"));
        }
        let node = format!("{MSI_ROOT}/{}/DownloadInstall", code.to_ascii_uppercase());
        let job = format!(
            "<MsiInstallJob id=\"{code}\"><Product Version=\"1.0.0.0\"><Download><ContentURLList><ContentURL>{}</ContentURL></ContentURLList></Download><Validation><FileHash>{}</FileHash></Validation><Enforcement><CommandLine>/quiet</CommandLine><TimeOut>10</TimeOut><RetryCount>3</RetryCount><RetryInterval>5</RetryInterval></Enforcement></Product></MsiInstallJob>",
            url.replace('&', "&amp;"),
            hash.to_ascii_uppercase()
        );
        return Ok(vec![
            Command::Add(item_command(item(&node, "node", None))),
            Command::Exec(item_command(item(&node, "xml", Some(job)))),
        ]);
    }
    Err(invalid(
        "app",
        "Windows apps are `store:<ProductId>/<PackageFamilyName>` or `msi:{ProductCode}@<https URL>#sha256=<hex>`",
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn replaced(settings: serde_json::Value) -> Result<Vec<(String, String)>, CommandError> {
        let s: Settings = serde_json::from_value(settings).unwrap();
        Ok(settings_commands(&s)?
            .into_iter()
            .map(|c| match c {
                Command::Replace(r) => {
                    let i = &r.items[0];
                    assert_eq!(i.meta.as_ref().and_then(|m| m.get("Format")), Some("int"));
                    (i.target.clone().unwrap(), i.data.clone().unwrap())
                }
                other => panic!("not a Replace: {other:?}"),
            })
            .collect())
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn settings_table() {
        let cases: Vec<(serde_json::Value, Vec<(&str, &str)>)> = vec![
            (json!({"password_required": true}), vec![(DEVICE_PASSWORD_ENABLED, "0")]),
            (json!({"password_required": false}), vec![(DEVICE_PASSWORD_ENABLED, "1")]),
            (
                json!({"password_min_length": 6}),
                vec![(DEVICE_PASSWORD_ENABLED, "0"), (MIN_DEVICE_PASSWORD_LENGTH, "6")],
            ),
            (
                json!({"screen_lock_timeout_s": 61}),
                vec![(DEVICE_PASSWORD_ENABLED, "0"), (MAX_INACTIVITY_TIME_DEVICE_LOCK, "2")],
            ),
            (json!({"camera_disabled": true}), vec![(ALLOW_CAMERA, "0")]),
            (json!({"camera_disabled": false}), vec![(ALLOW_CAMERA, "1")]),
            (json!({"screen_capture_disabled": true}), vec![(ALLOW_SCREEN_CAPTURE, "0")]),
            (json!({"storage_encryption_required": true}), vec![(REQUIRE_DEVICE_ENCRYPTION, "1")]),
            (
                json!({"storage_encryption_required": false, "camera_disabled": true, "password_required": true}),
                vec![(DEVICE_PASSWORD_ENABLED, "0"), (ALLOW_CAMERA, "0"), (REQUIRE_DEVICE_ENCRYPTION, "0")],
            ),
        ];
        for (settings, want) in cases {
            assert_eq!(replaced(settings.clone()).unwrap(), pairs(&want), "{settings}");
        }
        for (bad, field) in [
            (json!({}), "settings"),
            (json!({"password_required": false, "password_min_length": 6}), "password_required"),
            (json!({"password_min_length": 3}), "password_min_length"),
            (json!({"screen_lock_timeout_s": 60_000}), "screen_lock_timeout_s"),
            (json!({"extra": {"x": 1}}), "settings"),
        ] {
            match replaced(bad.clone()) {
                Err(CommandError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn install_forms() {
        let store = install_commands("store:9WZDNCRFJ3PZ/Microsoft.CompanyPortal_8wekyb3d8bbwe", false).unwrap();
        let [Command::Add(add), Command::Exec(exec)] = store.as_slice() else { panic!("{store:?}") };
        assert_eq!(
            add.items[0].target.as_deref(),
            Some(
                "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation/Microsoft.CompanyPortal_8wekyb3d8bbwe"
            )
        );
        assert!(exec.items[0].target.as_deref().unwrap().ends_with("/StoreInstall"));
        assert_eq!(exec.items[0].data.as_deref(), Some(r#"<Application id="9WZDNCRFJ3PZ" flags="4" skuid="0016"/>"#));

        let hash = "ab".repeat(32);
        let msi = install_commands(
            &format!(
                "msi:{{23170F69-40C1-2702-1900-000001000000}}@https://apps.example.com/7z.msi?a=1&b=2#sha256={hash}"
            ),
            false,
        )
        .unwrap();
        let [Command::Add(add), Command::Exec(exec)] = msi.as_slice() else { panic!("{msi:?}") };
        assert_eq!(add.items[0].target, exec.items[0].target);
        assert!(
            add.items[0]
                .target
                .as_deref()
                .unwrap()
                .ends_with("/MSI/{23170F69-40C1-2702-1900-000001000000}/DownloadInstall")
        );
        let job = exec.items[0].data.as_deref().unwrap();
        assert!(job.contains("<ContentURL>https://apps.example.com/7z.msi?a=1&amp;b=2</ContentURL>"), "{job}");
        assert!(job.contains(&format!("<FileHash>{}</FileHash>", hash.to_uppercase())), "{job}");

        for bad in [
            "com.example.app",
            "store:9WZDNCRFJ3PZ",
            "store:short/Microsoft.CompanyPortal_8wekyb3d8bbwe",
            "store:9WZDNCRFJ3PZ/NoPublisher",
            "msi:{23170F69-40C1-2702-1900-000001000000}@http://x/y.msi#sha256=00",
            &format!("msi:23170F69@https://x/y.msi#sha256={hash}"),
            &format!("msi:{{23170F69-40C1-2702-1900-000001000000}}@https://x/y\".msi#sha256={hash}"),
        ] {
            assert!(install_commands(bad, false).is_err(), "{bad}");
        }
        assert!(install_commands("store:9WZDNCRFJ3PZ/Microsoft.CompanyPortal_8wekyb3d8bbwe", true).is_err());
    }
}
