//! Inventory from command results: `DeviceInformation` query responses.
//!
//! Reading is lenient: a field of an unexpected type is skipped, not an error, because an
//! inventory update must never make a valid report fail. Other request types (including
//! SecurityInfo, whose fields have no place in [`Inventory`] yet) give no inventory.

use mdm_core::Inventory;
use plist::{Dictionary, Value};

use crate::os_name;

/// Apple reports storage in decimal gigabytes (as Finder and Settings show it).
const BYTES_PER_GB: f64 = 1_000_000_000.0;

pub(crate) fn from_report(dict: &Dictionary, request_type: &str) -> Option<Inventory> {
    match request_type {
        "DeviceInformation" => {
            let q = dict.get("QueryResponses")?.as_dictionary()?;
            Some(device_information(q)).filter(|i| !i.is_empty())
        }
        _ => None,
    }
}

fn device_information(q: &Dictionary) -> Inventory {
    let s = |k: &str| q.get(k).and_then(Value::as_string).map(str::to_owned);
    let num = |k: &str| match q.get(k)? {
        Value::Real(f) => Some(*f),
        Value::Integer(i) => i.as_signed().map(|i| i as f64),
        _ => None,
    };
    let gb = |k: &str| num(k).filter(|g| g.is_finite() && *g >= 0.0).map(|g| (g * BYTES_PER_GB).round() as u64);
    let product_name = s("ProductName");
    let model = s("Model");
    let os_version = s("OSVersion");
    Inventory {
        serial_number: s("SerialNumber"),
        udid: s("UDID"),
        os_name: os_name::infer(product_name.as_deref(), model.as_deref(), os_version.as_deref()).map(Into::into),
        model,
        model_name: s("ModelName"),
        product_name,
        os_version,
        build_version: s("BuildVersion"),
        device_name: s("DeviceName"),
        imei: s("IMEI"),
        meid: s("MEID"),
        storage_capacity_bytes: gb("DeviceCapacity"),
        storage_available_bytes: gb("AvailableDeviceCapacity"),
        // Apple sends -1.0 when the level is unknown; the normalised range is 0.0 ..= 1.0.
        battery_level: num("BatteryLevel").filter(|b| (0.0..=1.0).contains(b)),
        wifi_mac: s("WiFiMAC"),
        bluetooth_mac: s("BluetoothMAC"),
        hostname: s("HostName").or_else(|| s("LocalHostName")),
        supervised: q.get("IsSupervised").and_then(Value::as_boolean),
        manufacturer: Some("Apple".into()),
        ..Inventory::default()
    }
}
