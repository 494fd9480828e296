//! The plists an emulated device sends, built from values (not typed-in XML).

use plist::{Dictionary, Value};

/// A user channel on the device (macOS user, or Shared iPad user).
#[derive(Debug, Clone)]
pub struct UserChannel {
    pub user_id: String,
    pub short_name: String,
    pub long_name: String,
}

pub(crate) fn to_xml(dict: Dictionary) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a Dictionary into a Vec cannot fail.
    plist::to_writer_xml(&mut out, &Value::Dictionary(dict)).expect("in-memory plist");
    out
}

pub(crate) fn base(message_type: &str, udid: &str, user: Option<&UserChannel>) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("MessageType".into(), message_type.into());
    d.insert("UDID".into(), udid.into());
    if let Some(u) = user {
        d.insert("UserID".into(), u.user_id.clone().into());
        d.insert("UserShortName".into(), u.short_name.clone().into());
        d.insert("UserLongName".into(), u.long_name.clone().into());
    }
    d
}

/// What a device answers to a command: (Status, extra keys). DeviceInformation and
/// SecurityInfo get realistic values; other commands are acknowledged.
pub fn answer_for(request_type: &str, command: &Dictionary, device: &crate::apple::AppleDevice) -> Dictionary {
    let mut d = Dictionary::new();
    match request_type {
        "DeviceInformation" => {
            let queries: Vec<String> = command
                .get("Queries")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_string().map(str::to_owned)).collect())
                .unwrap_or_default();
            let mut all = Dictionary::new();
            all.insert("UDID".into(), device.udid.clone().into());
            all.insert("SerialNumber".into(), device.serial.clone().into());
            all.insert("Model".into(), "MQ8J3LL/A".into());
            all.insert("ModelName".into(), "iPhone".into());
            all.insert("ProductName".into(), "iPhone15,3".into());
            all.insert("OSVersion".into(), "17.5.1".into());
            all.insert("BuildVersion".into(), "21F90".into());
            all.insert("DeviceName".into(), format!("Emulated {}", &device.serial).into());
            all.insert("IMEI".into(), "35 391108 563102 6".into());
            all.insert("MEID".into(), "35391108563102".into());
            all.insert("DeviceCapacity".into(), Value::Real(238.42));
            all.insert("AvailableDeviceCapacity".into(), Value::Real(101.5));
            all.insert("BatteryLevel".into(), Value::Real(0.87));
            all.insert("WiFiMAC".into(), "f0:18:98:12:34:56".into());
            all.insert("BluetoothMAC".into(), "f0:18:98:12:34:57".into());
            all.insert("IsSupervised".into(), Value::Boolean(true));
            let mut responses = Dictionary::new();
            for (k, v) in all {
                if queries.is_empty() || queries.iter().any(|q| q == &k) {
                    responses.insert(k, v);
                }
            }
            d.insert("QueryResponses".into(), Value::Dictionary(responses));
        }
        "SecurityInfo" => {
            let mut info = Dictionary::new();
            info.insert("HardwareEncryptionCaps".into(), Value::Integer(3.into()));
            info.insert("PasscodePresent".into(), Value::Boolean(true));
            info.insert("PasscodeCompliant".into(), Value::Boolean(true));
            info.insert("PasscodeCompliantWithProfiles".into(), Value::Boolean(true));
            d.insert("SecurityInfo".into(), Value::Dictionary(info));
        }
        _ => {}
    }
    d
}
