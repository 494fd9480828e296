//! Per-device `{{Token}}` placeholders in app configuration values (`app_config`, and
//! `install_app`'s `managed_config`), as Intune's app configuration tokens.
//!
//! The backend sends one configuration for many devices; the gateway fills in each device's
//! values when it queues the command. Only string values are scanned (keys are left alone). A
//! token the gateway does not know, or one this device has no value for yet, is an error at
//! enqueue, so a literal `{{Typo}}` never reaches a device.

use serde_json::Value;

use crate::CommandError;

/// The tokens the gateway fills in, as written between `{{` and `}}`.
pub const PLACEHOLDERS: [&str; 5] = ["UserPrincipalName", "UserEmail", "DeviceId", "SerialNumber", "UDID"];

/// What the gateway knows about one device, for [`substitute`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceFacts<'a> {
    pub user_principal_name: Option<&'a str>,
    pub user_email: Option<&'a str>,
    /// The gateway's device id (`apple:…`, `windows:…`, `android:…`).
    pub device_id: Option<&'a str>,
    pub serial_number: Option<&'a str>,
    /// Apple's UDID.
    pub udid: Option<&'a str>,
}

impl<'a> DeviceFacts<'a> {
    fn value(&self, token: &str) -> Option<Option<&'a str>> {
        Some(match token {
            "UserPrincipalName" => self.user_principal_name,
            "UserEmail" => self.user_email,
            "DeviceId" => self.device_id,
            "SerialNumber" => self.serial_number,
            "UDID" => self.udid,
            _ => return None,
        })
    }
}

fn invalid(reason: String) -> CommandError {
    CommandError::Invalid { field: "config", reason }
}

/// Checks every placeholder in `value` is a known token, without filling anything in.
pub fn check(value: &Value) -> Result<(), CommandError> {
    let all = DeviceFacts {
        user_principal_name: Some(""),
        user_email: Some(""),
        device_id: Some(""),
        serial_number: Some(""),
        udid: Some(""),
    };
    substitute(value, &all).map(|_| ())
}

/// `value` with every `{{Token}}` in its strings replaced by the device's value.
pub fn substitute(value: &Value, facts: &DeviceFacts<'_>) -> Result<Value, CommandError> {
    Ok(match value {
        Value::String(s) => Value::String(substitute_str(s, facts)?),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, facts)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(substitute_map(map, facts)?),
        other => other.clone(),
    })
}

/// [`substitute`] for a JSON object (an app configuration), keeping it an object.
pub fn substitute_map(
    map: &serde_json::Map<String, Value>,
    facts: &DeviceFacts<'_>,
) -> Result<serde_json::Map<String, Value>, CommandError> {
    map.iter().map(|(k, v)| Ok((k.clone(), substitute(v, facts)?))).collect()
}

fn substitute_str(s: &str, facts: &DeviceFacts<'_>) -> Result<String, CommandError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| invalid(format!("unterminated placeholder in {s:?}")))?;
        let token = after[..end].trim();
        match facts.value(token) {
            None => {
                return Err(invalid(format!(
                    "unknown placeholder {{{{{token}}}}} (known: {})",
                    PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")
                )));
            }
            Some(None) => {
                return Err(invalid(format!("the device has no value for {{{{{token}}}}} yet")));
            }
            Some(Some(v)) => out.push_str(v),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn facts() -> DeviceFacts<'static> {
        DeviceFacts {
            user_principal_name: Some("ann@example.com"),
            user_email: Some("ann.lee@example.com"),
            device_id: Some("apple:66ADE930"),
            serial_number: Some("C02XYZ"),
            udid: Some("66ADE930"),
        }
    }

    #[test]
    fn fills_every_token_in_nested_strings() {
        let config = json!({
            "user": "{{UserPrincipalName}}",
            "mail": "{{ UserEmail }}",
            "ids": ["{{DeviceId}}/{{SerialNumber}}", "{{UDID}}{{UDID}}", 7, true, null],
            "{{UDID}}": { "deep": "x{{SerialNumber}}y" },
            "plain": "no tokens, single { braces }",
        });
        let out = substitute(&config, &facts()).unwrap();
        assert_eq!(
            out,
            json!({
                "user": "ann@example.com",
                "mail": "ann.lee@example.com",
                "ids": ["apple:66ADE930/C02XYZ", "66ADE93066ADE930", 7, true, null],
                "{{UDID}}": { "deep": "xC02XYZy" },
                "plain": "no tokens, single { braces }",
            })
        );
        assert!(check(&config).is_ok());
    }

    #[test]
    fn unknown_missing_and_unterminated_tokens_are_errors() {
        let e = substitute(&json!({"a": ["{{UserName}}"]}), &facts()).unwrap_err();
        assert_eq!(e.code(), "invalid_command");
        assert!(e.to_string().contains("unknown placeholder {{UserName}}"), "{e}");
        assert!(check(&json!("{{userprincipalname}}")).is_err(), "tokens are case-sensitive");
        let no_serial = DeviceFacts { serial_number: None, ..facts() };
        let e = substitute(&json!("{{SerialNumber}}"), &no_serial).unwrap_err();
        assert!(e.to_string().contains("no value for {{SerialNumber}}"), "{e}");
        assert!(substitute(&json!("{{UDID"), &facts()).unwrap_err().to_string().contains("unterminated"));
    }
}
