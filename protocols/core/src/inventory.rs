use serde::{Deserialize, Serialize};

/// Normalised inventory, the same shape for every platform. Every field is optional: a platform
/// reports what it has, and a partial report only updates what it carries (see [`Inventory::merge`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imei: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_capacity_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_available_bytes: Option<u64>,
    /// 0.0 ..= 1.0
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_level: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wifi_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bluetooth_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervised: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Storage encryption is on (FileVault/BitLocker/Android encryption), as the device reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// The device reports itself compliant with its applied policy (Android `policyCompliant`,
    /// Windows `DeviceStatus/Compliance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compliant: Option<bool>,
    /// `corporate` or `personal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ownership: Option<String>,
    /// The user the device is enrolled for (UPN, Managed Apple ID, AMAPI user), as the platform names them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrolled_user: Option<String>,
}

impl Inventory {
    /// Overwrites the fields `newer` carries, keeps the rest.
    pub fn merge(&mut self, newer: &Inventory) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f.clone(); } )* };
        }
        take!(
            serial_number,
            udid,
            model,
            model_name,
            product_name,
            os_name,
            os_version,
            build_version,
            device_name,
            imei,
            meid,
            storage_capacity_bytes,
            storage_available_bytes,
            battery_level,
            wifi_mac,
            bluetooth_mac,
            hostname,
            supervised,
            manufacturer,
            encrypted,
            compliant,
            ownership,
            enrolled_user
        );
    }

    pub fn is_empty(&self) -> bool {
        *self == Inventory::default()
    }
}
