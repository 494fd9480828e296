//! DevInfo / DevDetail node values → normalised inventory.

use mdm_core::Inventory;

/// The inventory the given node values describe; nodes it has no field for are left out (the
/// caller keeps them as they came). Values are trimmed; empty values are ignored.
pub fn inventory_from_nodes<'a>(nodes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Inventory {
    let mut inv = Inventory::default();
    for (uri, value) in nodes {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let v = || Some(value.to_owned());
        match uri.trim_end_matches('/') {
            "./DevInfo/DevId" => inv.udid = v(),
            "./DevInfo/Mod" => inv.model = v(),
            "./DevInfo/Man" => inv.manufacturer = v(),
            // DeviceStatus CSP: 1 = encrypted / compliant, 0 = not (other values: unknown).
            "./Vendor/MSFT/DeviceStatus/Compliance/EncryptionCompliance"
            | "./Device/Vendor/MSFT/DeviceStatus/Compliance/EncryptionCompliance" => {
                inv.encrypted = match value {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }
            }
            "./DevDetail/DevTyp" => inv.product_name = v(),
            "./DevDetail/SwV" => inv.os_version = v(),
            "./DevDetail/Ext/Microsoft/OSPlatform" => inv.os_name = v(),
            "./DevDetail/Ext/Microsoft/DeviceName" => {
                inv.device_name = v();
                inv.hostname = v();
            }
            "./DevDetail/Ext/Microsoft/SMBIOSSerialNumber" => inv.serial_number = v(),
            // MB, as DevDetail reports it.
            "./DevDetail/Ext/Microsoft/TotalStorage" => {
                inv.storage_capacity_bytes = value.parse::<u64>().ok().map(|mb| mb * 1024 * 1024)
            }
            "./DevDetail/Ext/WLANMACAddress" => inv.wifi_mac = v(),
            "./Vendor/MSFT/DeviceStatus/Battery/EstimatedChargeRemaining"
            | "./Device/Vendor/MSFT/DeviceStatus/Battery/EstimatedChargeRemaining" => {
                inv.battery_level = value.parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).map(|p| p / 100.0)
            }
            _ => {}
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_known_nodes() {
        let inv = inventory_from_nodes([
            ("./DevInfo/DevId", "B5B954E81FBCB94EB79BD08BE625F4EE"),
            ("./DevInfo/Mod", "VMware7,1"),
            ("./DevInfo/Man", "VMware, Inc."),
            ("./DevDetail/SwV", "10.0.19043.1110"),
            ("./DevDetail/Ext/Microsoft/TotalStorage", "61440"),
            ("./DevDetail/Ext/Microsoft/DeviceName", " DESKTOP-1 "),
            ("./DevDetail/OEM", ""),
        ]);
        assert_eq!(inv.udid.as_deref(), Some("B5B954E81FBCB94EB79BD08BE625F4EE"));
        assert_eq!(inv.model.as_deref(), Some("VMware7,1"));
        assert_eq!(inv.manufacturer.as_deref(), Some("VMware, Inc."));
        assert_eq!(inv.os_version.as_deref(), Some("10.0.19043.1110"));
        assert_eq!(inv.storage_capacity_bytes, Some(61440 * 1024 * 1024));
        assert_eq!(inv.device_name.as_deref(), Some("DESKTOP-1"));
        assert!(inventory_from_nodes([("./Vendor/MSFT/Other", "1")]).is_empty());
    }
}
