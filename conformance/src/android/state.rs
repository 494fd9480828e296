//! The emulator's model of one Google project: signup URLs, enterprises, enrollment tokens,
//! policies, devices and operations. Every change happens under one lock; what must happen
//! afterwards (a notification, a command to carry out) is returned as [`Effect`]s.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::commands::{CommandSettings, command_metadata};
use super::device::{DeviceSpec, FromToken, new_device};
use super::errors::ApiError;
use super::faults::{FaultRule, RecordedRequest};
use super::policy::{self as device_policy, PolicySettings};
use super::util::{ALNUM, B64URL, HEX, UPPER, parse_duration_millis, random_string, rfc3339_millis};

/// Pub/Sub notification types (discovery `Enterprise.enabledNotificationTypes`).
const NOTIFICATION_TYPES: &[&str] =
    &["ENROLLMENT", "COMPLIANCE_REPORT", "STATUS_REPORT", "COMMAND", "USAGE_LOGS", "ENTERPRISE_UPGRADE"];
const PERSONAL_USAGE: &[&str] = &[
    "ALLOW_PERSONAL_USAGE_UNSPECIFIED",
    "PERSONAL_USAGE_ALLOWED",
    "PERSONAL_USAGE_DISALLOWED",
    "PERSONAL_USAGE_DISALLOWED_USERLESS",
];
const WIPE_FLAGS: &[&str] =
    &["WIPE_DATA_FLAG_UNSPECIFIED", "PRESERVE_RESET_PROTECTION_DATA", "WIPE_EXTERNAL_STORAGE", "WIPE_ESIMS"];
/// devices.list: 10 when unspecified, at most 100.
const DEFAULT_PAGE: usize = 10;
const MAX_PAGE: usize = 100;
/// Kept requests, oldest dropped first.
const MAX_REQUESTS: usize = 100_000;

/// Something to do once the state lock is released.
#[derive(Debug, Clone)]
pub(super) enum Effect {
    /// Publish to the enterprise's topic: `data` is the resource JSON (none for the test
    /// message).
    Notify { topic: String, notification_type: String, data: Option<Value> },
    /// Carry out this operation after the configured delay.
    Execute { operation: String },
    /// The device applies its policy after the configured delay.
    ApplyPolicy { device: String },
}

#[derive(Debug)]
pub(super) struct Signup {
    pub(super) callback_url: String,
    /// Set by `complete_signup`.
    pub(super) enterprise_token: Option<String>,
}

#[derive(Debug)]
pub(super) struct Token {
    pub(super) json: Value,
    pub(super) expires_ms: i64,
    pub(super) used: bool,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) project_id: String,
    pub(super) signups: HashMap<String, Signup>,
    pub(super) used_enterprise_tokens: HashSet<String>,
    pub(super) enterprises: BTreeMap<String, Value>,
    /// By token value.
    pub(super) tokens: HashMap<String, Token>,
    pub(super) policies: HashMap<String, Value>,
    pub(super) policy_history: HashMap<String, Vec<Value>>,
    pub(super) policy_patches: u64,
    /// By name; ordered, for paging. Deleted devices stay with state `DELETED`.
    pub(super) devices: BTreeMap<String, Value>,
    pub(super) operations: BTreeMap<String, Value>,
    /// Access token -> expiry (unix ms).
    pub(super) access_tokens: HashMap<String, i64>,
    pub(super) grants: u64,
    pub(super) requests: Vec<RecordedRequest>,
    pub(super) faults: Vec<FaultRule>,
    pub(super) commands: CommandSettings,
    pub(super) policy: PolicySettings,
    /// Device name → the policy it applied last (as it was then).
    pub(super) applied: HashMap<String, Value>,
    pub(super) op_seq: i64,
}

fn obj(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| ApiError::invalid("Invalid JSON payload received. Expected an object."))
}

impl State {
    pub(super) fn new(project_id: &str, commands: CommandSettings, policy: PolicySettings) -> State {
        State { project_id: project_id.to_owned(), commands, policy, ..State::default() }
    }

    pub(super) fn record(&mut self, r: RecordedRequest) {
        if self.requests.len() >= MAX_REQUESTS {
            self.requests.drain(..MAX_REQUESTS / 10);
        }
        self.requests.push(r);
    }

    fn check_project(&self, project: Option<&str>) -> Result<(), ApiError> {
        match project {
            None | Some("") => Err(ApiError::invalid("projectId is required.")),
            Some(p) if p == self.project_id => Ok(()),
            Some(p) => Err(ApiError::denied(format!(
                "The caller does not have permission: the service account belongs to project {}, not {p}.",
                self.project_id
            ))),
        }
    }

    /// A notification for `enterprise`, if it has a topic and the type enabled.
    fn notify(&self, enterprise: &str, notification_type: &str, data: Value, effects: &mut Vec<Effect>) {
        let Some(e) = self.enterprises.get(enterprise) else { return };
        let Some(topic) = e["pubsubTopic"].as_str() else { return };
        let enabled =
            e["enabledNotificationTypes"].as_array().is_some_and(|a| a.iter().any(|t| t == notification_type));
        if enabled {
            effects.push(Effect::Notify {
                topic: topic.to_owned(),
                notification_type: notification_type.to_owned(),
                data: Some(data),
            });
        }
    }

    fn enterprise_exists(&self, enterprise: &str) -> Result<(), ApiError> {
        if self.enterprises.contains_key(enterprise) { Ok(()) } else { Err(ApiError::not_found()) }
    }

    // signupUrls.create
    pub(super) fn create_signup_url(
        &mut self,
        project: Option<&str>,
        callback: Option<&str>,
    ) -> Result<Value, ApiError> {
        self.check_project(project)?;
        let Some(callback) = callback.filter(|c| c.starts_with("https://") || c.starts_with("http://")) else {
            return Err(ApiError::invalid("callbackUrl must be a valid URL."));
        };
        let name = format!("signupUrls/C{}", random_string(16, HEX));
        let url = format!(
            "https://enterprise.google.com/signup/android/email?origin=android&thirdPartyToken={}",
            random_string(40, B64URL)
        );
        self.signups.insert(name.clone(), Signup { callback_url: callback.to_owned(), enterprise_token: None });
        Ok(json!({"name": name, "url": url}))
    }

    /// What Google does when the admin finishes the signup page: the callback URL with
    /// `enterpriseToken` added.
    pub(super) fn complete_signup(&mut self, signup_name: &str) -> Option<String> {
        let s = self.signups.get_mut(signup_name)?;
        let token = format!("EA{}", random_string(60, B64URL));
        s.enterprise_token = Some(token.clone());
        let sep = if s.callback_url.contains('?') { '&' } else { '?' };
        Some(format!("{}{sep}enterpriseToken={token}", s.callback_url))
    }

    // enterprises.create
    pub(super) fn create_enterprise(
        &mut self,
        query: &Query,
        body: &Value,
        effects: &mut Vec<Effect>,
    ) -> Result<Value, ApiError> {
        self.check_project(query.get("projectId"))?;
        let body = obj(body)?;
        let (Some(signup), Some(token)) = (query.get("signupUrlName"), query.get("enterpriseToken")) else {
            return Err(ApiError::invalid("signupUrlName and enterpriseToken are required."));
        };
        if self.used_enterprise_tokens.contains(token) {
            return Err(ApiError::invalid("The enterprise token has already been used."));
        }
        let known = self.signups.get(signup).and_then(|s| s.enterprise_token.as_deref()) == Some(token);
        if !known {
            return Err(ApiError::invalid("Invalid enterprise token or signup URL name."));
        }
        let enterprise = self.insert_enterprise(body.clone(), effects)?;
        self.used_enterprise_tokens.insert(token.to_owned());
        Ok(enterprise)
    }

    /// Checks and stores an enterprise body, naming it; publishes the test message.
    pub(super) fn insert_enterprise(
        &mut self,
        mut body: Map<String, Value>,
        effects: &mut Vec<Effect>,
    ) -> Result<Value, ApiError> {
        if let Some(types) = body.get("enabledNotificationTypes") {
            let ok = types
                .as_array()
                .is_some_and(|a| a.iter().all(|t| t.as_str().is_some_and(|t| NOTIFICATION_TYPES.contains(&t))));
            if !ok {
                return Err(ApiError::invalid(format!(
                    "Invalid value at 'enterprise.enabled_notification_types', {types}"
                )));
            }
        }
        if let Some(topic) = body.get("pubsubTopic") {
            let ok = topic.as_str().is_some_and(|t| {
                let p: Vec<&str> = t.split('/').collect();
                p.len() == 4 && p[0] == "projects" && p[2] == "topics" && !p[1].is_empty() && !p[3].is_empty()
            });
            if !ok {
                return Err(ApiError::invalid(format!(
                    "pubsubTopic must be of the form projects/{{project}}/topics/{{topic}}: {topic}"
                )));
            }
        }
        let name = format!("enterprises/LC{}", random_string(8, ALNUM).to_ascii_lowercase());
        body.insert("name".into(), Value::String(name.clone()));
        let enterprise = Value::Object(body);
        if let Some(topic) = enterprise["pubsubTopic"].as_str() {
            // Google checks the topic with a data-less message when it is set.
            effects.push(Effect::Notify { topic: topic.to_owned(), notification_type: "test".into(), data: None });
        }
        self.enterprises.insert(name, enterprise.clone());
        Ok(enterprise)
    }

    // enterprises.enrollmentTokens.create
    pub(super) fn create_enrollment_token(
        &mut self,
        enterprise: &str,
        body: &Value,
        now_ms: i64,
    ) -> Result<Value, ApiError> {
        self.enterprise_exists(enterprise)?;
        let mut t = obj(body)?.clone();
        let duration_ms = match t.get("duration") {
            None => 3_600_000,
            Some(d) => match d.as_str().and_then(parse_duration_millis) {
                Some(ms) if ms >= 60_000 => ms,
                _ => return Err(ApiError::invalid(format!("Invalid enrollment token duration {d}: at least 60s."))),
            },
        };
        if let Some(p) = t.get("allowPersonalUsage")
            && !p.as_str().is_some_and(|p| PERSONAL_USAGE.contains(&p))
        {
            return Err(ApiError::invalid(format!("Invalid value at 'enrollment_token.allow_personal_usage', {p}")));
        }
        if let Some(p) = t.get("policyName") {
            let ok = p.as_str().is_some_and(|p| {
                let short = !p.contains('/');
                let full = p
                    .strip_prefix(enterprise)
                    .and_then(|r| r.strip_prefix("/policies/"))
                    .is_some_and(|id| !id.is_empty() && !id.contains('/'));
                (short && !p.is_empty()) || full
            });
            if !ok {
                return Err(ApiError::invalid(format!("Invalid policy name {p} for {enterprise}.")));
            }
            if let Some(short) = p.as_str().filter(|p| !p.contains('/')) {
                t.insert("policyName".into(), Value::String(format!("{enterprise}/policies/{short}")));
            }
        }
        if let Some(d) = t.get("additionalData")
            && !d.is_string()
        {
            return Err(ApiError::invalid("additionalData must be a string."));
        }
        let value = random_string(20, UPPER);
        let expires_ms = now_ms.saturating_add(duration_ms);
        t.insert("name".into(), Value::String(format!("{enterprise}/enrollmentTokens/{}", random_string(43, B64URL))));
        t.insert("value".into(), Value::String(value.clone()));
        t.insert("expirationTimestamp".into(), Value::String(rfc3339_millis(expires_ms)));
        t.insert("duration".into(), Value::String(format!("{}s", duration_ms / 1000)));
        t.insert("qrCode".into(), Value::String(qr_code(&value)));
        let json = Value::Object(t);
        self.tokens.insert(value, Token { json: json.clone(), expires_ms, used: false });
        Ok(json)
    }

    // enterprises.policies.patch
    pub(super) fn patch_policy(
        &mut self,
        name: &str,
        update_mask: Option<&str>,
        body: &Value,
        effects: &mut Vec<Effect>,
    ) -> Result<Value, ApiError> {
        let enterprise = name.split("/policies/").next().unwrap_or_default();
        self.enterprise_exists(enterprise)?;
        let body = obj(body)?;
        let previous = self.policies.get(name).cloned().unwrap_or_else(|| json!({}));
        let version: i64 = previous["version"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0) + 1;
        let mut policy = match update_mask.filter(|m| !m.is_empty()) {
            None => body.clone(),
            Some(mask) => {
                let mut p = previous.as_object().cloned().unwrap_or_default();
                for path in mask.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let field = path.split('.').next().unwrap_or(path);
                    let camel = snake_to_camel(field);
                    match body.get(&camel).or_else(|| body.get(field)) {
                        Some(v) => p.insert(camel, v.clone()),
                        None => p.remove(&camel),
                    };
                }
                p
            }
        };
        policy.insert("name".into(), Value::String(name.to_owned()));
        policy.insert("version".into(), Value::String(version.to_string()));
        let policy = Value::Object(policy);
        self.policies.insert(name.to_owned(), policy.clone());
        self.policy_history.entry(name.to_owned()).or_default().push(policy.clone());
        self.policy_patches += 1;
        // Every device using the policy applies the new version.
        for (device, d) in &self.devices {
            if d["state"] != "DELETED" && d["policyName"].as_str() == Some(name) {
                effects.push(Effect::ApplyPolicy { device: device.clone() });
            }
        }
        Ok(policy)
    }

    // enterprises.devices.patch: `policyName` and `state` (ACTIVE / DISABLED) are modifiable.
    pub(super) fn patch_device(
        &mut self,
        name: &str,
        update_mask: Option<&str>,
        body: &Value,
        effects: &mut Vec<Effect>,
    ) -> Result<Value, ApiError> {
        self.live_device(name)?;
        let body = obj(body)?;
        let enterprise = enterprise_of(name);
        let fields: Vec<String> = match update_mask.filter(|m| !m.is_empty()) {
            Some(m) => m.split(',').map(|f| snake_to_camel(f.trim())).collect(),
            None => ["policyName", "state"].into_iter().filter(|f| body.contains_key(*f)).map(str::to_owned).collect(),
        };
        let mut changes = Vec::new();
        for f in &fields {
            match (f.as_str(), body.get(f)) {
                ("policyName", Some(Value::String(p))) => {
                    let full = if p.contains('/') { p.clone() } else { format!("{enterprise}/policies/{p}") };
                    let ok = full
                        .strip_prefix(&format!("{enterprise}/policies/"))
                        .is_some_and(|id| !id.is_empty() && !id.contains('/'));
                    if !ok {
                        return Err(ApiError::invalid(format!("Invalid policy name {p} for {enterprise}.")));
                    }
                    changes.push(("policyName", Value::String(full)));
                }
                ("state", Some(Value::String(st))) if st == "ACTIVE" || st == "DISABLED" => {
                    changes.push(("state", Value::String(st.clone())));
                }
                (f, _) => {
                    return Err(ApiError::invalid(format!(
                        "Device field {f} cannot be modified (or has a bad value)."
                    )));
                }
            }
        }
        let d = self.devices.get_mut(name).ok_or_else(ApiError::not_found)?;
        let mut policy_changed = false;
        for (k, v) in changes {
            policy_changed |= k == "policyName" && d[k] != v;
            d[k] = v;
        }
        let d = d.clone();
        if policy_changed {
            effects.push(Effect::ApplyPolicy { device: name.to_owned() });
        }
        Ok(d)
    }

    /// `device` applies the current version of its policy and reports it (STATUS_REPORT).
    pub(super) fn apply_policy(&mut self, device: &str, now_ms: i64, effects: &mut Vec<Effect>) {
        if !self.policy.apply {
            return;
        }
        let Some(d) = self.devices.get(device).filter(|d| d["state"] != "DELETED") else { return };
        let Some(policy) = d["policyName"].as_str().and_then(|p| self.policies.get(p)).cloned() else { return };
        let d = self.devices.get_mut(device).expect("checked above");
        device_policy::apply(d, &policy, &self.policy, &rfc3339_millis(now_ms));
        let d = d.clone();
        self.applied.insert(device.to_owned(), policy);
        self.notify(&enterprise_of(device), "STATUS_REPORT", d, effects);
    }

    fn live_device(&self, name: &str) -> Result<&Value, ApiError> {
        match self.devices.get(name) {
            Some(d) if d["state"] != "DELETED" => Ok(d),
            _ => Err(ApiError::not_found()),
        }
    }

    pub(super) fn get_device(&self, name: &str) -> Result<Value, ApiError> {
        self.live_device(name).cloned()
    }

    pub(super) fn list_devices(&self, enterprise: &str, query: &Query) -> Result<Value, ApiError> {
        self.enterprise_exists(enterprise)?;
        let size = match query.get("pageSize") {
            None => DEFAULT_PAGE,
            Some(s) => match s.parse::<i64>() {
                Ok(n) if n <= 0 => DEFAULT_PAGE,
                Ok(n) => (n as usize).min(MAX_PAGE),
                Err(_) => return Err(ApiError::invalid(format!("Invalid value at 'page_size' (TYPE_INT32), \"{s}\""))),
            },
        };
        let prefix = format!("{enterprise}/devices/");
        // The page token is the name of the last device of the previous page (opaque to clients).
        let after = match query.get("pageToken").filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => {
                use base64::Engine;
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t).ok();
                let name = raw.and_then(|r| String::from_utf8(r).ok()).filter(|n| n.starts_with(&prefix));
                Some(name.ok_or_else(|| ApiError::invalid("Invalid page token."))?)
            }
        };
        let mut page: Vec<&Value> = Vec::with_capacity(size);
        let mut more = false;
        let range = self.devices.range::<String, _>((
            after.as_ref().map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            std::ops::Bound::Unbounded,
        ));
        for (name, d) in range {
            if !name.starts_with(&prefix) || d["state"] == "DELETED" {
                continue;
            }
            if page.len() == size {
                more = true;
                break;
            }
            page.push(d);
        }
        let mut reply = json!({"devices": page});
        if page.is_empty() {
            reply = json!({});
        }
        if more && let Some(last) = page.last().and_then(|d| d["name"].as_str()) {
            use base64::Engine;
            reply["nextPageToken"] = Value::String(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last));
        }
        Ok(reply)
    }

    pub(super) fn delete_device(
        &mut self,
        name: &str,
        query: &Query,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<Value, ApiError> {
        self.live_device(name)?;
        let flags: Vec<&str> = query.all("wipeDataFlags");
        if let Some(bad) = flags.iter().find(|f| !WIPE_FLAGS.contains(f)) {
            return Err(ApiError::invalid(format!(
                "Invalid value at 'wipe_data_flags' (type.googleapis.com/google.android.devicemanagement.v1.WipeDataFlag), \"{bad}\""
            )));
        }
        if let Some(m) = query.get("wipeReasonMessage")
            && m.chars().count() > 200
        {
            return Err(ApiError::invalid("wipeReasonMessage must be at most 200 characters."));
        }
        let device = self.devices.get_mut(name).ok_or_else(ApiError::not_found)?;
        device["state"] = Value::String("DELETED".into());
        device["appliedState"] = Value::String("DELETED".into());
        device["lastStatusReportTime"] = Value::String(rfc3339_millis(now_ms));
        let final_report = device.clone();
        let enterprise = enterprise_of(name);
        // "If the device is deleted via the API call, this state is published to Pub/Sub"
        // (discovery, Device.state DELETED): the device's final status report.
        self.notify(&enterprise, "STATUS_REPORT", final_report, effects);
        Ok(json!({}))
    }

    pub(super) fn issue_command(
        &mut self,
        device: &str,
        body: &Value,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<Value, ApiError> {
        let d = self.live_device(device)?;
        let user = d["userName"].as_str().map(str::to_owned);
        let meta = command_metadata(body, &rfc3339_millis(now_ms), user.as_deref())?;
        // Google's operation ids look like creation times in ms; keep them unique.
        self.op_seq = self.op_seq.max(now_ms - 1) + 1;
        let name = format!("{device}/operations/{}", self.op_seq);
        let op = json!({"name": name, "metadata": meta});
        self.operations.insert(name.clone(), op.clone());
        effects.push(Effect::Execute { operation: name });
        Ok(op)
    }

    /// The simulated device has carried out `operation`: done, maybe failed; COMMAND published.
    pub(super) fn finish_operation(&mut self, operation: &str, effects: &mut Vec<Effect>) {
        let device = operation.split("/operations/").next().unwrap_or_default().to_owned();
        let Some(op) = self.operations.get_mut(operation) else { return };
        if op["done"] == true {
            return;
        }
        let ty = op["metadata"]["type"].as_str().unwrap_or_default().to_owned();
        op["done"] = Value::Bool(true);
        if let Some(f) = self.commands.failure_for(&ty, &device) {
            op["metadata"]["errorCode"] = Value::String(f.error_code.clone());
            op["error"] = json!({"code": f.rpc_code, "message": f.message});
        }
        let op = op.clone();
        if self.commands.publish {
            self.notify(&enterprise_of(&device), "COMMAND", op, effects);
        }
    }

    pub(super) fn get_operation(&self, name: &str) -> Result<Value, ApiError> {
        self.operations.get(name).cloned().ok_or_else(ApiError::not_found)
    }

    /// A simulated device enrolls with enrollment token `value`.
    pub(super) fn enroll(
        &mut self,
        value: &str,
        spec: &DeviceSpec,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<String, String> {
        let token = self.tokens.get_mut(value).ok_or_else(|| format!("unknown enrollment token {value}"))?;
        if token.expires_ms <= now_ms {
            return Err(format!("enrollment token {value} expired"));
        }
        if token.used && token.json["oneTimeOnly"] == true {
            return Err(format!("enrollment token {value} was for one use and is used"));
        }
        token.used = true;
        let t = token.json.clone();
        let token_name = t["name"].as_str().unwrap_or_default();
        let enterprise = token_name.split("/enrollmentTokens/").next().unwrap_or_default().to_owned();
        let policy_name =
            t["policyName"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{enterprise}/policies/default"));
        let version = self.policies.get(&policy_name).and_then(|p| p["version"].as_str()).unwrap_or("0").to_owned();
        let from = FromToken {
            enterprise: &enterprise,
            token_name,
            policy_name: &policy_name,
            allow_personal_usage: t["allowPersonalUsage"].as_str().unwrap_or("ALLOW_PERSONAL_USAGE_UNSPECIFIED"),
            additional_data: t["additionalData"].as_str(),
            account: t["user"]["accountIdentifier"].as_str(),
        };
        let mut device = new_device(spec, &from, &version, now_ms);
        let name = device["name"].as_str().unwrap_or_default().to_owned();
        if let Some(old) = self.devices.get(&name)
            && old["state"] != "DELETED"
        {
            return Err(format!("device {name} is already enrolled"));
        }
        if self.devices.contains_key(&name) {
            // The same phone enrolling again after a wipe gets a new device name; Google lists
            // the old ones in previousDeviceNames.
            let again = DeviceSpec { id: None, ..spec.clone() };
            let mut fresh = new_device(&again, &from, &version, now_ms);
            fresh["previousDeviceNames"] = json!([name]);
            device = fresh;
        }
        let name = device["name"].as_str().unwrap_or_default().to_owned();
        self.devices.insert(name.clone(), device.clone());
        self.notify(&enterprise, "ENROLLMENT", device, effects);
        Ok(name)
    }

    /// A fresh status report from `device`: with its policy applied if a newer version (or
    /// another policy) is due and devices apply policies.
    pub(super) fn status_report(&mut self, device: &str, now_ms: i64, effects: &mut Vec<Effect>) -> Result<(), String> {
        let due = {
            let d = self.devices.get(device).ok_or_else(|| format!("no device {device}"))?;
            if d["state"] == "DELETED" {
                return Err(format!("device {device} is deleted"));
            }
            let policy = d["policyName"].as_str().and_then(|p| self.policies.get(p));
            policy.is_some_and(|p| p["version"] != d["appliedPolicyVersion"] || p["name"] != d["appliedPolicyName"])
        };
        if due && self.policy.apply {
            self.apply_policy(device, now_ms, effects);
            return Ok(());
        }
        let d = self.devices.get_mut(device).ok_or_else(|| format!("no device {device}"))?;
        d["lastStatusReportTime"] = Value::String(rfc3339_millis(now_ms));
        let d = d.clone();
        self.notify(&enterprise_of(device), "STATUS_REPORT", d, effects);
        Ok(())
    }
}

/// `enterprises/X` of `enterprises/X/devices/Y…`.
pub(super) fn enterprise_of(name: &str) -> String {
    name.splitn(3, '/').take(2).collect::<Vec<_>>().join("/")
}

fn snake_to_camel(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut up = false;
    for c in s.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The provisioning extras a QR code carries (what Google returns in `qrCode`).
fn qr_code(token_value: &str) -> String {
    json!({
        "android.app.extra.PROVISIONING_DEVICE_ADMIN_COMPONENT_NAME":
            "com.google.android.apps.work.clouddpc/.receivers.CloudDeviceAdminReceiver",
        "android.app.extra.PROVISIONING_DEVICE_ADMIN_SIGNATURE_CHECKSUM": "I5YvS0O5hXY46mb01BlRjq4oJJGs2kuUcHvVkAPEXlg",
        "android.app.extra.PROVISIONING_DEVICE_ADMIN_PACKAGE_DOWNLOAD_LOCATION":
            "https://play.google.com/managed/downloadManagingApp?identifier=setup",
        "android.app.extra.PROVISIONING_ADMIN_EXTRAS_BUNDLE": {
            "com.google.android.apps.work.clouddpc.EXTRA_ENROLLMENT_TOKEN": token_value
        }
    })
    .to_string()
}

/// Query parameters (repeatable).
#[derive(Debug, Default)]
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(q: &str) -> Result<Query, ApiError> {
        serde_urlencoded::from_str(q).map(Query).map_err(|_| ApiError::invalid("Malformed query string."))
    }

    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    pub(super) fn all(&self, k: &str) -> Vec<&str> {
        self.0.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_enterprise() -> (State, String) {
        let mut s = State::new("p-emu", CommandSettings::default(), PolicySettings::default());
        let mut fx = Vec::new();
        let body = json!({"pubsubTopic": "projects/p-emu/topics/amapi", "enabledNotificationTypes": ["ENROLLMENT", "STATUS_REPORT", "COMMAND"]});
        let e = s.insert_enterprise(body.as_object().unwrap().clone(), &mut fx).unwrap();
        assert!(matches!(&fx[0], Effect::Notify { notification_type, data: None, .. } if notification_type == "test"));
        (s, e["name"].as_str().unwrap().to_owned())
    }

    #[test]
    fn policy_patch_with_mask_merges_and_counts_versions() {
        let (mut s, e) = state_with_enterprise();
        let name = format!("{e}/policies/p1");
        let mut fx = Vec::new();
        let p = s
            .patch_policy(&name, None, &json!({"cameraDisabled": true, "screenCaptureDisabled": true}), &mut fx)
            .unwrap();
        assert_eq!(p["version"], "1");
        let p = s
            .patch_policy(
                &name,
                Some("camera_disabled"),
                &json!({"cameraDisabled": false, "screenCaptureDisabled": false}),
                &mut fx,
            )
            .unwrap();
        assert_eq!(p["version"], "2");
        assert_eq!(p["cameraDisabled"], false);
        assert_eq!(p["screenCaptureDisabled"], true, "not in the mask: kept");
        assert_eq!(s.policy_history[&name].len(), 2);
        assert_eq!(s.patch_policy("enterprises/nope/policies/x", None, &json!({}), &mut fx).unwrap_err().code, 404);
    }

    #[test]
    fn paging_walks_every_device_once() {
        let (mut s, e) = state_with_enterprise();
        let t = s.create_enrollment_token(&e, &json!({}), 0).unwrap();
        let mut fx = Vec::new();
        for n in 0..25 {
            s.enroll(t["value"].as_str().unwrap(), &DeviceSpec::numbered(n), 1, &mut fx).unwrap();
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let q = Query::parse(&format!("pageSize=10&pageToken={token}")).unwrap();
            let page = s.list_devices(&e, &q).unwrap();
            seen.extend(page["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_owned()));
            match page["nextPageToken"].as_str() {
                Some(t) => token = t.to_owned(),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        seen.dedup();
        assert_eq!(seen.len(), 25);
        assert_eq!(s.list_devices(&e, &Query::parse("pageToken=zzz").unwrap()).unwrap_err().code, 400);
    }

    #[test]
    fn a_wiped_device_enrolls_again_under_a_new_name() {
        let (mut s, e) = state_with_enterprise();
        let t = s.create_enrollment_token(&e, &json!({}), 0).unwrap();
        let value = t["value"].as_str().unwrap();
        let mut fx = Vec::new();
        let first = s.enroll(value, &DeviceSpec::numbered(5), 1, &mut fx).unwrap();
        assert!(s.enroll(value, &DeviceSpec::numbered(5), 1, &mut fx).is_err(), "still enrolled");
        s.delete_device(&first, &Query::default(), 2, &mut fx).unwrap();
        let second = s.enroll(value, &DeviceSpec::numbered(5), 3, &mut fx).unwrap();
        assert_ne!(first, second);
        assert_eq!(s.devices[&second]["previousDeviceNames"], json!([first]));
        assert_eq!(s.devices[&first]["state"], "DELETED");
    }
}
