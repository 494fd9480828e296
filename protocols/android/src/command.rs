//! Normalised [`Command`] → the AMAPI call that carries it, as data ([`AmapiCall`]). The gateway
//! stores the call as the command's payload and its dispatcher sends it; nothing here does IO.
//!
//! | normalised | AMAPI |
//! |---|---|
//! | `lock` | `devices.issueCommand` `{"type": "LOCK"}` |
//! | `restart` | `devices.issueCommand` `{"type": "REBOOT"}` |
//! | `clear_passcode` | `devices.issueCommand` `{"type": "RESET_PASSWORD"}` (no new password: cleared) |
//! | `wipe` | `devices.delete`; `preserve_data_plan: false` adds `wipeDataFlags=WIPE_ESIMS` |
//! | `device_info` | `devices.get` (the newest status report); `fields` becomes the `fields` partial-response parameter |
//! | `set_settings` | the device's own policy: `policies.patch` of the fields ([`crate::policy`]) |
//! | `install_app` | the device's own policy: `applications[]` entry `FORCE_INSTALLED` |
//! | `app_config` | the device's own policy: `applications[].managedConfiguration` |
//! | `raw` | `{"method", "path", "body"?}` under the device's enterprise, or an AMAPI `Command` object (has `type`) → issueCommand |
//!
//! `lock`'s `pin`, `message` and `phone` have no AMAPI `LOCK` equivalent and are refused rather
//! than dropped (a backend that sets a PIN must not believe the device got one).

use mdm_core::{Command, CommandError, DeviceId, Platform};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::policy::{self, PolicyChange};

/// HTTP methods AMAPI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn parse(s: &str) -> Option<Method> {
        Some(match s.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }
}

/// What the reply to a call means for the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallKind {
    /// `devices.issueCommand`: the reply is a long-running operation; the command becomes `sent`
    /// and is resolved by the COMMAND notification (or `operations.get`).
    IssueCommand {
        /// The AMAPI command type (`LOCK`, `REBOOT`, …).
        command_type: String,
    },
    /// `devices.delete`: acknowledged when AMAPI accepts it (the DELETED notification unenrolls).
    DeleteDevice,
    /// `devices.get`: acknowledged with the device resource as the result.
    GetDevice,
    /// A raw call: acknowledged with the reply body.
    Raw,
    /// A change to the device's own policy (`path` names it): several calls (read, patch, maybe
    /// `devices.patch`), then `sent` until the device reports the patched version applied.
    Policy { change: PolicyChange },
}

/// One AMAPI REST call as data. `path` is relative to `<api_base_url>/v1/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AmapiCall {
    pub method: Method,
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Json>,
    #[serde(flatten)]
    pub kind: CallKind,
}

impl AmapiCall {
    /// The request type the gateway stores for the command (`LOCK`, `devices.delete`, …).
    pub fn request_type(&self) -> String {
        match &self.kind {
            CallKind::IssueCommand { command_type } => command_type.clone(),
            CallKind::DeleteDevice => "devices.delete".into(),
            CallKind::GetDevice => "devices.get".into(),
            CallKind::Raw => "raw".into(),
            CallKind::Policy { .. } => "policies.patch".into(),
        }
    }
}

/// `enterprises/<e>/devices/<d>` for `android:<e>:<d>`.
pub fn device_name(device: &DeviceId) -> Result<String, CommandError> {
    let invalid = || CommandError::Invalid {
        field: "device_id",
        reason: format!("{device} is not android:<enterprise id>:<device id>"),
    };
    if device.platform() != Platform::Android {
        return Err(invalid());
    }
    match device.native().split(':').collect::<Vec<_>>()[..] {
        [e, d] => Ok(format!("enterprises/{e}/devices/{d}")),
        _ => Err(invalid()),
    }
}

/// Translates `command` for the Android device `device`.
pub fn translate(command: &Command, device: &DeviceId) -> Result<AmapiCall, CommandError> {
    let name = device_name(device)?;
    let issue = |command_type: &str, body: Json| AmapiCall {
        method: Method::Post,
        path: format!("{name}:issueCommand"),
        query: Vec::new(),
        body: Some(body),
        kind: CallKind::IssueCommand { command_type: command_type.to_owned() },
    };
    match command {
        Command::Lock { pin, message, phone } => {
            for (field, v) in [("pin", pin), ("message", message), ("phone", phone)] {
                if v.is_some() {
                    return Err(CommandError::Invalid {
                        field,
                        reason: "Android's LOCK command takes no such value".into(),
                    });
                }
            }
            Ok(issue("LOCK", serde_json::json!({"type": "LOCK"})))
        }
        Command::Restart {} => Ok(issue("REBOOT", serde_json::json!({"type": "REBOOT"}))),
        Command::ClearPasscode {} => Ok(issue("RESET_PASSWORD", serde_json::json!({"type": "RESET_PASSWORD"}))),
        Command::Wipe { preserve_data_plan } => {
            let mut query = Vec::new();
            if *preserve_data_plan == Some(false) {
                query.push(("wipeDataFlags".to_owned(), "WIPE_ESIMS".to_owned()));
            }
            Ok(AmapiCall { method: Method::Delete, path: name, query, body: None, kind: CallKind::DeleteDevice })
        }
        Command::DeviceInfo { fields } => {
            let mut query = Vec::new();
            if let Some(f) = fields.as_ref().filter(|f| !f.is_empty()) {
                for one in f {
                    if one.is_empty() || !one.chars().all(|c| c.is_ascii_alphanumeric() || "._/()".contains(c)) {
                        return Err(CommandError::Invalid {
                            field: "fields",
                            reason: format!("`{one}` is not an AMAPI Device field path"),
                        });
                    }
                }
                query.push(("fields".to_owned(), f.join(",")));
            }
            Ok(AmapiCall { method: Method::Get, path: name, query, body: None, kind: CallKind::GetDevice })
        }
        Command::Raw { platform, payload } => {
            if *platform != Platform::Android {
                return Err(CommandError::Invalid {
                    field: "platform",
                    reason: format!("a raw command for {platform} cannot go to an Android device"),
                });
            }
            raw(payload, device, &name)
        }
        Command::SetSettings { settings } => policy_call(device, policy::settings_change(settings)?),
        Command::InstallApp { app, managed_config } => {
            policy_call(device, policy::install_change(app, managed_config.as_ref())?)
        }
        Command::AppConfig { app, config } => policy_call(device, policy::app_config_change(app, config)?),
    }
}

fn policy_call(device: &DeviceId, change: PolicyChange) -> Result<AmapiCall, CommandError> {
    Ok(AmapiCall {
        method: Method::Patch,
        path: policy::device_policy_name(device)?,
        query: Vec::new(),
        body: None,
        kind: CallKind::Policy { change },
    })
}

fn raw(payload: &Json, device: &DeviceId, name: &str) -> Result<AmapiCall, CommandError> {
    let invalid = |reason: String| CommandError::Invalid { field: "payload", reason };
    let obj = payload.as_object().ok_or_else(|| invalid("must be a JSON object".into()))?;
    // An AMAPI `Command` resource: issued to this device.
    if let Some(t) = obj.get("type") {
        let t = t
            .as_str()
            .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .ok_or_else(|| invalid("`type` must be an AMAPI command type such as LOCK".into()))?;
        return Ok(AmapiCall {
            method: Method::Post,
            path: format!("{name}:issueCommand"),
            query: Vec::new(),
            body: Some(payload.clone()),
            kind: CallKind::IssueCommand { command_type: t.to_owned() },
        });
    }
    for k in obj.keys() {
        if !matches!(k.as_str(), "method" | "path" | "body" | "query") {
            return Err(invalid(format!(
                "unknown key `{k}` (expected method, path, body, query, or an AMAPI Command)"
            )));
        }
    }
    let method = obj
        .get("method")
        .and_then(Json::as_str)
        .and_then(Method::parse)
        .ok_or_else(|| invalid("`method` must be GET, POST, PATCH or DELETE".into()))?;
    let path = obj.get("path").and_then(Json::as_str).ok_or_else(|| invalid("`path` is required".into()))?;
    let path = path.strip_prefix("/").unwrap_or(path);
    let path = path.strip_prefix("v1/").unwrap_or(path);
    let enterprise = device.native().split(':').next().unwrap_or_default();
    let root = format!("enterprises/{enterprise}");
    check_path(path, &root).map_err(invalid)?;
    let mut query = Vec::new();
    match obj.get("query") {
        None | Some(Json::Null) => {}
        Some(Json::Object(q)) => {
            for (k, v) in q {
                let v = match v {
                    Json::String(s) => s.clone(),
                    Json::Number(_) | Json::Bool(_) => v.to_string(),
                    _ => return Err(invalid(format!("query `{k}` must be a string, number or boolean"))),
                };
                query.push((k.clone(), v));
            }
        }
        Some(_) => return Err(invalid("`query` must be an object".into())),
    }
    let body = match obj.get("body") {
        None | Some(Json::Null) => None,
        Some(b @ Json::Object(_)) => Some(b.clone()),
        Some(_) => return Err(invalid("`body` must be a JSON object".into())),
    };
    Ok(AmapiCall { method, path: path.to_owned(), query, body, kind: CallKind::Raw })
}

/// A raw path must name a resource of the device's own enterprise: `enterprises/<e>` or below,
/// made of plain segments (no `..`, query, fragment or escapes).
fn check_path(path: &str, root: &str) -> Result<(), String> {
    if path != root && !path.starts_with(&format!("{root}/")) && !path.starts_with(&format!("{root}:")) {
        return Err(format!("`path` must be under {root}"));
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err("`path` has an empty or dot segment".into());
        }
        if !seg.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:~".contains(c)) {
            return Err(format!("`path` segment `{seg}` has characters AMAPI names do not use"));
        }
    }
    Ok(())
}

/// The body of `enrollmentTokens.create` for the two enrollment modes the gateway offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentMode {
    /// Company-owned, fully managed: `allowPersonalUsage: PERSONAL_USAGE_DISALLOWED`.
    FullyManaged,
    /// Personally owned with a work profile: `allowPersonalUsage: PERSONAL_USAGE_ALLOWED`.
    WorkProfile,
}

/// `EnrollmentToken` resource for `enrollmentTokens.create`.
/// The key of the enrolling user in an enrollment token's `additionalData`.
pub const TOKEN_USER_KEY: &str = "mdm_gateway_user";

pub fn enrollment_token_body(
    mode: EnrollmentMode,
    policy_name: &str,
    user: Option<&str>,
    duration_s: Option<u64>,
    one_time: bool,
) -> Json {
    let mut m = Map::new();
    m.insert("policyName".into(), policy_name.into());
    m.insert(
        "allowPersonalUsage".into(),
        match mode {
            EnrollmentMode::FullyManaged => "PERSONAL_USAGE_DISALLOWED",
            EnrollmentMode::WorkProfile => "PERSONAL_USAGE_ALLOWED",
        }
        .into(),
    );
    if let Some(d) = duration_s {
        m.insert("duration".into(), format!("{d}s").into());
    }
    if one_time {
        m.insert("oneTimeOnly".into(), true.into());
    }
    if let Some(u) = user {
        m.insert("user".into(), serde_json::json!({ "accountIdentifier": u }));
        // Echoed back in the Device's `enrollmentTokenData`: how the gateway knows whose device
        // enrolled (the enrollment gate counts devices per user).
        m.insert("additionalData".into(), serde_json::json!({ TOKEN_USER_KEY: u }).to_string().into());
    }
    Json::Object(m)
}

/// The link a user opens to enroll with an enrollment token's value.
pub fn enrollment_link(token_value: &str) -> String {
    let enc: String = token_value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("https://enterprise.google.com/android/enroll?et={enc}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dev() -> DeviceId {
        "android:LC01:3a4f".parse().unwrap()
    }

    fn cmd(v: Json) -> Command {
        serde_json::from_value(v).unwrap()
    }

    /// (normalised, method, path, query, body, request type)
    type Case = (Json, Method, &'static str, Vec<(&'static str, &'static str)>, Option<Json>, &'static str);

    #[test]
    fn command_table() {
        let cases: Vec<Case> = vec![
            (
                json!({"type": "lock"}),
                Method::Post,
                "enterprises/LC01/devices/3a4f:issueCommand",
                vec![],
                Some(json!({"type": "LOCK"})),
                "LOCK",
            ),
            (
                json!({"type": "restart"}),
                Method::Post,
                "enterprises/LC01/devices/3a4f:issueCommand",
                vec![],
                Some(json!({"type": "REBOOT"})),
                "REBOOT",
            ),
            (
                json!({"type": "clear_passcode"}),
                Method::Post,
                "enterprises/LC01/devices/3a4f:issueCommand",
                vec![],
                Some(json!({"type": "RESET_PASSWORD"})),
                "RESET_PASSWORD",
            ),
            (json!({"type": "wipe"}), Method::Delete, "enterprises/LC01/devices/3a4f", vec![], None, "devices.delete"),
            (
                json!({"type": "wipe", "preserve_data_plan": false}),
                Method::Delete,
                "enterprises/LC01/devices/3a4f",
                vec![("wipeDataFlags", "WIPE_ESIMS")],
                None,
                "devices.delete",
            ),
            (
                json!({"type": "wipe", "preserve_data_plan": true}),
                Method::Delete,
                "enterprises/LC01/devices/3a4f",
                vec![],
                None,
                "devices.delete",
            ),
            (json!({"type": "device_info"}), Method::Get, "enterprises/LC01/devices/3a4f", vec![], None, "devices.get"),
            (
                json!({"type": "device_info", "fields": ["hardwareInfo", "softwareInfo.androidVersion"]}),
                Method::Get,
                "enterprises/LC01/devices/3a4f",
                vec![("fields", "hardwareInfo,softwareInfo.androidVersion")],
                None,
                "devices.get",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"type": "START_LOST_MODE",
                    "startLostModeParams": {"lostMessage": {"defaultMessage": "call"}}}}),
                Method::Post,
                "enterprises/LC01/devices/3a4f:issueCommand",
                vec![],
                Some(
                    json!({"type": "START_LOST_MODE", "startLostModeParams": {"lostMessage": {"defaultMessage": "call"}}}),
                ),
                "START_LOST_MODE",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "patch",
                    "path": "/v1/enterprises/LC01/policies/p1", "query": {"updateMask": "cameraDisabled"},
                    "body": {"cameraDisabled": true}}}),
                Method::Patch,
                "enterprises/LC01/policies/p1",
                vec![("updateMask", "cameraDisabled")],
                Some(json!({"cameraDisabled": true})),
                "raw",
            ),
        ];
        for (normalised, method, path, query, body, request_type) in cases {
            let call = translate(&cmd(normalised.clone()), &dev()).unwrap();
            assert_eq!(call.method, method, "{normalised}");
            assert_eq!(call.path, path, "{normalised}");
            let q: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(call.query, q, "{normalised}");
            assert_eq!(call.body, body, "{normalised}");
            assert_eq!(call.request_type(), request_type, "{normalised}");
            // The stored payload round-trips.
            let back: AmapiCall = serde_json::from_value(serde_json::to_value(&call).unwrap()).unwrap();
            assert_eq!(back, call);
        }
    }

    #[test]
    fn policy_commands_address_the_devices_own_policy() {
        for (c, settings) in [
            (json!({"type": "set_settings", "settings": {"camera_disabled": true}}), vec!["cameraAccess"]),
            (json!({"type": "install_app", "app": "com.example"}), vec!["applications"]),
            (json!({"type": "app_config", "app": "com.example", "config": {"k": "v"}}), vec!["applications"]),
        ] {
            let call = translate(&cmd(c.clone()), &dev()).unwrap();
            assert_eq!((call.method, call.path.as_str()), (Method::Patch, "enterprises/LC01/policies/device-3a4f"));
            assert_eq!(call.request_type(), "policies.patch");
            let CallKind::Policy { change } = &call.kind else { panic!("{c}: {call:?}") };
            assert_eq!(change.settings(), settings, "{c}");
            let back: AmapiCall = serde_json::from_value(serde_json::to_value(&call).unwrap()).unwrap();
            assert_eq!(back, call);
        }
        for (c, field) in [
            (json!({"type": "set_settings", "settings": {"extra": {"knox": 1}}}), "settings"),
            (json!({"type": "install_app", "app": "361309726"}), "app"),
            (json!({"type": "app_config", "app": "not a package", "config": {}}), "app"),
        ] {
            match translate(&cmd(c.clone()), &dev()) {
                Err(CommandError::Invalid { field: f, .. }) => assert_eq!(f, field, "{c}"),
                other => panic!("{c}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_commands_name_the_field() {
        let cases = [
            (json!({"type": "lock", "pin": "123456"}), "pin"),
            (json!({"type": "lock", "message": "hi"}), "message"),
            (json!({"type": "device_info", "fields": ["a b"]}), "fields"),
            (json!({"type": "raw", "platform": "apple", "payload": {}}), "platform"),
            (json!({"type": "raw", "platform": "android", "payload": "LOCK"}), "payload"),
            (json!({"type": "raw", "platform": "android", "payload": {"type": "lock"}}), "payload"),
            (json!({"type": "raw", "platform": "android", "payload": {"method": "GET"}}), "payload"),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "PUT", "path": "enterprises/LC01"}}),
                "payload",
            ),
            // Another enterprise, escapes, traversal, other services.
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "enterprises/OTHER/devices/x"}}),
                "payload",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "enterprises/LC01/../OTHER"}}),
                "payload",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "enterprises/LC01/devices/%2e%2e"}}),
                "payload",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "enterprises/LC01?x=1"}}),
                "payload",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "enterprises/LC012"}}),
                "payload",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "signupUrls"}}),
                "payload",
            ),
            (
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "enterprises/LC01", "extra": 1}}),
                "payload",
            ),
        ];
        for (c, field) in cases {
            match translate(&cmd(c.clone()), &dev()) {
                Err(CommandError::Invalid { field: f, .. }) => assert_eq!(f, field, "{c}"),
                other => panic!("{c}: {other:?}"),
            }
        }
        // Not an Android device id.
        let e = translate(&cmd(json!({"type": "lock"})), &"android:onlyone".parse().unwrap()).unwrap_err();
        assert_eq!(e.code(), "invalid_command");
        // The enterprise itself is allowed.
        let ok = translate(
            &cmd(
                json!({"type": "raw", "platform": "android", "payload": {"method": "GET", "path": "enterprises/LC01"}}),
            ),
            &dev(),
        )
        .unwrap();
        assert_eq!(ok.path, "enterprises/LC01");
    }

    #[test]
    fn enrollment_tokens_and_links() {
        let b = enrollment_token_body(
            EnrollmentMode::WorkProfile,
            "enterprises/E/policies/p",
            Some("alice"),
            Some(3600),
            true,
        );
        assert_eq!(
            b,
            json!({"policyName": "enterprises/E/policies/p", "allowPersonalUsage": "PERSONAL_USAGE_ALLOWED",
                "duration": "3600s", "oneTimeOnly": true, "user": {"accountIdentifier": "alice"},
                "additionalData": "{\"mdm_gateway_user\":\"alice\"}"})
        );
        // The device echoes additionalData back; the gateway reads its user from it.
        let device: crate::Device = serde_json::from_value(json!({
            "name": "enterprises/E/devices/d1",
            "enrollmentTokenData": b["additionalData"],
            "userName": "enterprises/E/users/123",
        }))
        .unwrap();
        assert_eq!(device.gateway_token_user().as_deref(), Some("alice"));
        assert_eq!(crate::normalise::device_inventory(&device).enrolled_user.as_deref(), Some("alice"));
        let b = enrollment_token_body(EnrollmentMode::FullyManaged, "enterprises/E/policies/p", None, None, false);
        assert_eq!(
            b,
            json!({"policyName": "enterprises/E/policies/p", "allowPersonalUsage": "PERSONAL_USAGE_DISALLOWED"})
        );
        assert_eq!(enrollment_link("ABC-def_1"), "https://enterprise.google.com/android/enroll?et=ABC-def_1");
        assert_eq!(enrollment_link("a+b/c"), "https://enterprise.google.com/android/enroll?et=a%2Bb%2Fc");
    }
}
