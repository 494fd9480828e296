//! The emulated device's management tree: node URI → value.

use std::collections::BTreeMap;

/// The nodes a fresh emulated device has, for device id `device_id`.
pub fn default_tree(device_id: &str) -> BTreeMap<String, String> {
    let short: String = device_id.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    [
        ("./DevInfo/DevId", device_id.to_owned()),
        ("./DevInfo/Man", "Emulated Devices Inc.".into()),
        ("./DevInfo/Mod", "Emulated PC 1".into()),
        ("./DevInfo/DmV", "1.3".into()),
        ("./DevInfo/Lang", "en-US".into()),
        ("./DevDetail/SwV", "10.0.22631.4460".into()),
        ("./DevDetail/HwV", "1.0".into()),
        ("./DevDetail/FwV", "2.1".into()),
        ("./DevDetail/OEM", "Emulated Devices Inc.".into()),
        ("./DevDetail/DevTyp", "EmulatedPC1,1".into()),
        ("./DevDetail/Ext/Microsoft/OSPlatform", "Windows 11 Enterprise".into()),
        ("./DevDetail/Ext/Microsoft/DeviceName", format!("EMU-{short}")),
        ("./DevDetail/Ext/Microsoft/SMBIOSSerialNumber", format!("SN{short}")),
        ("./DevDetail/Ext/Microsoft/TotalStorage", "256000".into()),
        ("./DevDetail/Ext/WLANMACAddress", "00:15:5D:01:02:03".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Exec nodes the emulator carries out (with and without the `./Device` prefix).
pub(crate) fn executable(uri: &str) -> bool {
    let uri = uri.strip_prefix("./Device").map(|r| format!(".{r}")).unwrap_or_else(|| uri.to_owned());
    // App installs: a Store app's StoreInstall, an MSI's DownloadInstall (each under the node
    // the install's Add created).
    let app_install = |root: &str, leaf: &str| {
        uri.strip_prefix(root)
            .and_then(|r| r.strip_suffix(leaf))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
    };
    matches!(
        uri.as_str(),
        "./Vendor/MSFT/RemoteLock/Lock"
            | "./Vendor/MSFT/Reboot/RebootNow"
            | "./Vendor/MSFT/RemoteWipe/doWipe"
            | "./Vendor/MSFT/RemoteWipe/doWipeProtected"
    ) || app_install("./Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation/", "/StoreInstall")
        || app_install("./Vendor/MSFT/EnterpriseDesktopAppManagement/MSI/", "/DownloadInstall")
}

/// The nodes an app install's Exec leaves, as a real device reports them once the app is in:
/// `AppInstallation/<PFN>/Status` `3` (installed) for a Store app, `MSI/<ProductCode>/Status` `70`
/// (enforcement completed) for an MSI, each with `LastError` `0`. `None` for other URIs.
pub(crate) fn install_result(uri: &str) -> Option<[(String, &'static str); 2]> {
    let base = uri
        .strip_suffix("/StoreInstall")
        .filter(|b| b.contains("/EnterpriseModernAppManagement/AppInstallation/"))
        .map(|b| (b, "3"))
        .or_else(|| {
            uri.strip_suffix("/DownloadInstall")
                .filter(|b| b.contains("/EnterpriseDesktopAppManagement/MSI/"))
                .map(|b| (b, "70"))
        })?;
    Some([(format!("{}/Status", base.0), base.1), (format!("{}/LastError", base.0), "0")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_leave_status_nodes() {
        let store = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation/A.B_8wekyb3d8bbwe/StoreInstall";
        let [(s, v), (e, z)] = install_result(store).unwrap();
        assert_eq!(
            (s.as_str(), v),
            ("./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation/A.B_8wekyb3d8bbwe/Status", "3")
        );
        assert!(e.ends_with("/LastError") && z == "0");
        let msi = "./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI/{X}/DownloadInstall";
        assert_eq!(install_result(msi).unwrap()[0].1, "70");
        assert!(install_result("./Device/Vendor/MSFT/Reboot/RebootNow").is_none());
    }
}
