use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Platform;

/// A normalised command from the backend (CONTRACT §6). Each protocol crate translates it to its
/// own wire form or refuses it with [`CommandError::UnsupportedOnPlatform`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    DeviceInfo {
        /// Platform query names to ask for; the platform's default set when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields: Option<Vec<String>>,
    },
    Lock {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
    },
    Restart {},
    Wipe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preserve_data_plan: Option<bool>,
    },
    ClearPasscode {},
    SetSettings {
        settings: Settings,
    },
    InstallApp {
        app: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        managed_config: Option<serde_json::Map<String, serde_json::Value>>,
    },
    AppConfig {
        app: String,
        config: serde_json::Map<String, serde_json::Value>,
    },
    /// A platform payload passed through untouched: an Apple command plist (as XML text, or as a
    /// JSON object converted key for key), SyncML commands, or AMAPI JSON.
    Raw {
        platform: Platform,
        payload: serde_json::Value,
    },
}

impl Command {
    /// The `type` tag as it appears on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::DeviceInfo { .. } => "device_info",
            Command::Lock { .. } => "lock",
            Command::Restart {} => "restart",
            Command::Wipe { .. } => "wipe",
            Command::ClearPasscode {} => "clear_passcode",
            Command::SetSettings { .. } => "set_settings",
            Command::InstallApp { .. } => "install_app",
            Command::AppConfig { .. } => "app_config",
            Command::Raw { .. } => "raw",
        }
    }
}

/// Normalised device settings for `set_settings`. Unknown keys are refused so a typo never
/// silently does nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_min_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_encryption_required: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_lock_timeout_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_capture_disabled: Option<bool>,
    /// Vendor-specific settings kept for later translation layers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Why a normalised command cannot become a platform command. Maps to API 422 codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command `{command}` is not supported on {platform}")]
    UnsupportedOnPlatform { platform: Platform, command: &'static str },
    #[error("invalid command: field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl CommandError {
    /// The stable error code the backend API reports.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::UnsupportedOnPlatform { .. } => "unsupported_on_platform",
            CommandError::Invalid { .. } => "invalid_command",
        }
    }
}

/// A command's lifecycle as the backend sees it (CONTRACT §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Queued,
    Sent,
    Acknowledged,
    Error,
    NotNow,
    Expired,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Acknowledged => "acknowledged",
            CommandStatus::Error => "error",
            CommandStatus::NotNow => "not_now",
            CommandStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => CommandStatus::Queued,
            "sent" => CommandStatus::Sent,
            "acknowledged" => CommandStatus::Acknowledged,
            "error" => CommandStatus::Error,
            "not_now" => CommandStatus::NotNow,
            "expired" => CommandStatus::Expired,
            _ => return None,
        })
    }

    /// A final status: the command leaves the device's queue.
    pub fn is_final(self) -> bool {
        matches!(self, CommandStatus::Acknowledged | CommandStatus::Error | CommandStatus::Expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_contract_shapes() {
        let c: Command = serde_json::from_str(r#"{"type":"lock","pin":"123456"}"#).unwrap();
        assert_eq!(c, Command::Lock { pin: Some("123456".into()), message: None, phone: None });
        let c: Command = serde_json::from_str(r#"{"type":"restart"}"#).unwrap();
        assert_eq!(c.type_name(), "restart");
        assert!(serde_json::from_str::<Command>(r#"{"type":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"type":"lock","pni":"1"}"#).is_err());
    }
}
