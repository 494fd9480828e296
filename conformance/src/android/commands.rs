//! `devices.issueCommand`: checking the `Command` body and deciding how a simulated device
//! answers it.

use std::time::Duration;

use serde_json::{Map, Value};

use super::errors::ApiError;

/// Command types of discovery schema `Command.type` (except the unspecified one).
const TYPES: &[&str] = &[
    "LOCK",
    "RESET_PASSWORD",
    "REBOOT",
    "RELINQUISH_OWNERSHIP",
    "CLEAR_APP_DATA",
    "START_LOST_MODE",
    "STOP_LOST_MODE",
    "ADD_ESIM",
    "REMOVE_ESIM",
    "REQUEST_DEVICE_INFO",
    "WIPE",
];

const RESET_PASSWORD_FLAGS: &[&str] =
    &["RESET_PASSWORD_FLAG_UNSPECIFIED", "REQUIRE_ENTRY", "DO_NOT_ASK_CREDENTIALS_ON_BOOT", "LOCK_NOW"];

/// How simulated devices carry out commands.
#[derive(Debug, Clone)]
pub struct CommandSettings {
    /// Time from `issueCommand` to the operation being done.
    pub delay: Duration,
    /// Publish a COMMAND notification when an operation is done (off: the operation still
    /// finishes, and only `operations.get` tells).
    pub publish: bool,
    /// Commands that fail; the first matching entry applies. Others succeed.
    pub failures: Vec<CommandFailure>,
    /// Leave operations pending forever (a device that is off).
    pub never_finish: bool,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings { delay: Duration::from_millis(50), publish: true, failures: Vec::new(), never_finish: false }
    }
}

/// "Commands of this type (on this device) fail with this error".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    /// `Command.type`, or `None` for all.
    pub command_type: Option<String>,
    /// A device name, or `None` for all.
    pub device: Option<String>,
    /// `Command.errorCode` (`UNKNOWN`, `API_LEVEL`, `MANAGEMENT_MODE`, `INVALID_VALUE`,
    /// `UNSUPPORTED`).
    pub error_code: String,
    /// `Operation.error.code` (a `google.rpc.Code`; 9 = FAILED_PRECONDITION).
    pub rpc_code: i32,
    pub message: String,
}

impl CommandFailure {
    /// `command_type` commands fail with `error_code` and FAILED_PRECONDITION.
    pub fn of_type(command_type: &str, error_code: &str, message: &str) -> CommandFailure {
        CommandFailure {
            command_type: Some(command_type.to_owned()),
            device: None,
            error_code: error_code.to_owned(),
            rpc_code: 9,
            message: message.to_owned(),
        }
    }

    fn applies(&self, command_type: &str, device: &str) -> bool {
        self.command_type.as_deref().is_none_or(|t| t == command_type)
            && self.device.as_deref().is_none_or(|d| d == device)
    }
}

impl CommandSettings {
    pub(super) fn failure_for(&self, command_type: &str, device: &str) -> Option<&CommandFailure> {
        self.failures.iter().find(|f| f.applies(command_type, device))
    }
}

/// Checks a `Command` body and returns the operation's metadata (the command with `@type` and
/// `createTime`, without the new password).
pub(super) fn command_metadata(body: &Value, create_time: &str, user_name: Option<&str>) -> Result<Value, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid("Invalid JSON payload received. Expected an object."));
    };
    let ty = match obj.get("type") {
        None => return Err(ApiError::invalid("Command type must be specified.")),
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => t.clone(),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid value at 'command.type' (type.googleapis.com/google.android.devicemanagement.v1.Command.CommandType), {other}"
            )));
        }
    };
    if let Some(flags) = obj.get("resetPasswordFlags") {
        let ok = flags
            .as_array()
            .is_some_and(|a| a.iter().all(|f| f.as_str().is_some_and(|f| RESET_PASSWORD_FLAGS.contains(&f))));
        if !ok {
            return Err(ApiError::invalid(format!("Invalid value at 'command.reset_password_flags', {flags}")));
        }
    }
    if ty != "RESET_PASSWORD" && (obj.contains_key("newPassword") || obj.contains_key("resetPasswordFlags")) {
        return Err(ApiError::invalid(
            "newPassword and resetPasswordFlags are only allowed for RESET_PASSWORD commands.",
        ));
    }
    if let Some(d) = obj.get("duration")
        && d.as_str().and_then(super::util::parse_duration_millis).is_none()
    {
        return Err(ApiError::invalid(format!(
            "Invalid value at 'command.duration' (type.googleapis.com/google.protobuf.Duration), {d}"
        )));
    }
    let mut meta = Map::new();
    meta.insert("@type".into(), Value::String("type.googleapis.com/google.android.devicemanagement.v1.Command".into()));
    for (k, v) in obj {
        if k != "newPassword" && k != "createTime" && k != "errorCode" {
            meta.insert(k.clone(), v.clone());
        }
    }
    meta.insert("createTime".into(), Value::String(create_time.to_owned()));
    if let Some(user) = user_name {
        meta.entry("userName").or_insert_with(|| Value::String(user.to_owned()));
    }
    Ok(Value::Object(meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_and_validation() {
        let m = command_metadata(
            &json!({"type": "RESET_PASSWORD", "newPassword": "1234", "resetPasswordFlags": ["LOCK_NOW"]}),
            "2026-01-01T00:00:00.000Z",
            None,
        )
        .unwrap();
        assert_eq!(m["@type"], "type.googleapis.com/google.android.devicemanagement.v1.Command");
        assert!(m.get("newPassword").is_none());
        assert_eq!(m["resetPasswordFlags"][0], "LOCK_NOW");
        assert_eq!(command_metadata(&json!({}), "t", None).unwrap_err().code, 400);
        assert_eq!(command_metadata(&json!({"type": "SELF_DESTRUCT"}), "t", None).unwrap_err().code, 400);
        assert_eq!(command_metadata(&json!({"type": "LOCK", "newPassword": "x"}), "t", None).unwrap_err().code, 400);
        let f = CommandSettings {
            failures: vec![CommandFailure::of_type("REBOOT", "UNSUPPORTED", "no")],
            ..Default::default()
        };
        assert!(f.failure_for("REBOOT", "d").is_some());
        assert!(f.failure_for("LOCK", "d").is_none());
    }
}
