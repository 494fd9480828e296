//! Normalised [`Command`] → Apple command plist.
//!
//! Refuses what Apple cannot do or what would fail on the device anyway (a lock PIN that is not
//! six digits, ClearPasscode without an unlock token) with [`CommandError::Invalid`], so the
//! backend hears about it at enqueue time rather than as a device error later. Settings, app
//! install and app configuration are in [`super::settings`].

use mdm_core::{Command, CommandError, Platform};
use plist::{Dictionary, Value};

use super::request_type as rt;
use super::{AppleCommand, raw, settings};

/// What translation needs to know about the target device beyond the command itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct TranslateContext<'a> {
    /// The device channel's UnlockToken from its last TokenUpdate, if it sent one.
    pub unlock_token: Option<&'a [u8]>,
    /// The device's OS name as it reported it (`iOS`, `iPadOS`, `macOS`…), when known:
    /// `set_settings` turns storage encryption into FileVault on macOS only.
    pub os_name: Option<&'a str>,
}

/// Queries `device_info` asks for when the command names none: everything
/// [`crate::CommandReport::inventory`] reads.
pub const DEFAULT_DEVICE_INFORMATION_QUERIES: [&str; 18] = [
    "UDID",
    "SerialNumber",
    "DeviceName",
    "Model",
    "ModelName",
    "ProductName",
    "OSVersion",
    "BuildVersion",
    "IMEI",
    "MEID",
    "DeviceCapacity",
    "AvailableDeviceCapacity",
    "BatteryLevel",
    "WiFiMAC",
    "BluetoothMAC",
    "HostName",
    "LocalHostName",
    "IsSupervised",
];

fn invalid(field: &'static str, reason: impl Into<String>) -> CommandError {
    CommandError::Invalid { field, reason: reason.into() }
}

/// Translates `cmd` into the plist the device fetches, with `command_uuid` as its CommandUUID.
pub fn translate(cmd: &Command, command_uuid: &str, ctx: &TranslateContext<'_>) -> Result<AppleCommand, CommandError> {
    if command_uuid.is_empty() {
        return Err(invalid("command_id", "empty command id"));
    }
    let mut c = Dictionary::new();
    let request_type = match cmd {
        Command::DeviceInfo { fields } => {
            let queries: Vec<Value> = match fields {
                None => DEFAULT_DEVICE_INFORMATION_QUERIES.iter().map(|q| Value::String((*q).into())).collect(),
                Some(f) if f.is_empty() => {
                    return Err(invalid("fields", "empty list queries nothing"));
                }
                Some(f) => f
                    .iter()
                    .map(|q| {
                        // Query names are Apple identifiers; anything else is a typo the device
                        // would silently ignore.
                        if !q.is_empty() && q.chars().all(|c| c.is_ascii_alphanumeric()) {
                            Ok(Value::String(q.clone()))
                        } else {
                            Err(invalid("fields", format!("`{q}` is not a query name")))
                        }
                    })
                    .collect::<Result<_, _>>()?,
            };
            c.insert("Queries".into(), Value::Array(queries));
            rt::DEVICE_INFORMATION
        }
        Command::Lock { pin, message, phone } => {
            if let Some(pin) = pin {
                // macOS Find My PIN: exactly six digits, or the Mac refuses the command.
                if pin.len() != 6 || !pin.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("pin", "must be exactly 6 digits"));
                }
                c.insert("PIN".into(), Value::String(pin.clone()));
            }
            if let Some(m) = message {
                c.insert("Message".into(), Value::String(m.clone()));
            }
            if let Some(p) = phone {
                c.insert("PhoneNumber".into(), Value::String(p.clone()));
            }
            rt::DEVICE_LOCK
        }
        Command::Restart {} => rt::RESTART_DEVICE,
        Command::Wipe { preserve_data_plan } => {
            if let Some(b) = preserve_data_plan {
                c.insert("PreserveDataPlan".into(), Value::Boolean(*b));
            }
            rt::ERASE_DEVICE
        }
        Command::ClearPasscode {} => {
            let token = ctx
                .unlock_token
                .filter(|t| !t.is_empty())
                .ok_or_else(|| invalid("unlock_token", "device has not sent an UnlockToken"))?;
            c.insert("UnlockToken".into(), Value::Data(token.to_vec()));
            rt::CLEAR_PASSCODE
        }
        Command::Raw { platform: Platform::Apple, payload } => {
            let (request_type, dict) = raw::command_dict(payload)?;
            return Ok(AppleCommand::build(command_uuid, &request_type, dict));
        }
        Command::Raw { platform, .. } => {
            return Err(invalid("platform", format!("raw {platform} payload sent to an Apple device")));
        }
        Command::SetSettings { settings } => {
            let profile = settings::settings_profile(settings, command_uuid, ctx.os_name)?;
            c.insert("Payload".into(), Value::Data(profile));
            rt::INSTALL_PROFILE
        }
        Command::InstallApp { app, managed_config } => {
            c = settings::install_application(app, managed_config.as_ref())?;
            rt::INSTALL_APPLICATION
        }
        Command::AppConfig { app, config } => {
            c = settings::application_configuration(app, config)?;
            rt::SETTINGS
        }
    };
    c.insert("RequestType".into(), Value::String(request_type.into()));
    Ok(AppleCommand::build(command_uuid, request_type, c))
}
