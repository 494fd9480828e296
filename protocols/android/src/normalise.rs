//! What the gateway emits for a notification, as data: event type, device id, command id, the
//! event `data` and, for status reports, the normalised [`Inventory`].
//!
//! | notification | emits |
//! |---|---|
//! | `ENROLLMENT` | `device.enrolled` |
//! | `STATUS_REPORT` | `device.status_report`, then `device.inventory` when the report carries any |
//! | `ENROLLMENT` / `STATUS_REPORT` with `state: DELETED` | `device.unenrolled` only |
//! | `COMMAND`, `done: true` | `command.acknowledged` (no `error`) or `command.error` |
//! | `USAGE_LOGS` | `device.usage_logs` ([`DEVICE_USAGE_LOGS`]) |
//! | `ENTERPRISE_UPGRADE` | `android.enterprise_upgrade` ([`ENTERPRISE_UPGRADE`]), `device_id` `android:<enterprise id>` |
//! | `COMMAND`, `done: false`; `test`; unknown types | nothing |
//!
//! Device ids follow CONTRACT §4: `android:<enterprise id>:<device id>`, both taken from the
//! resource name `enterprises/{e}/devices/{d}`. The command id is the operation name's last segment.

use mdm_core::{DeviceId, EventType, Inventory, Platform};
use serde_json::{Map, Value as Json, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::amapi::{BatchUsageLogEvents, Device, EnterpriseUpgradeEvent, NonComplianceDetail, Operation};
use crate::{DecodeError, Notification};

/// `USAGE_LOGS`: a batch of the device's security/usage log events.
pub const DEVICE_USAGE_LOGS: EventType = EventType::named("device.usage_logs");
/// `ENTERPRISE_UPGRADE`: an enterprise's upgrade (managed Google Play Accounts enterprise to
/// managed Google domain) progressed. Not about a device: its `device_id` is the enterprise,
/// `android:<enterprise id>`.
pub const ENTERPRISE_UPGRADE: EventType = EventType::named("android.enterprise_upgrade");

/// One event the gateway should emit. The gateway adds the event id and time.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission {
    pub event_type: EventType,
    pub device_id: DeviceId,
    pub command_id: Option<String>,
    pub data: Json,
    /// For `device.inventory`: the inventory to merge into the stored one ([`Inventory::merge`]).
    pub inventory: Option<Inventory>,
}

/// `android:<enterprise>:<device>` from `enterprises/{e}/devices/{d}` (anything after `{d}`, such
/// as `/operations/{o}`, is ignored).
pub fn device_id_from_name(name: &str) -> Result<DeviceId, DecodeError> {
    let bad = || DecodeError::BadResourceName(name.to_owned());
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("enterprises"), Some(e), Some("devices"), Some(d)) if !e.is_empty() && !d.is_empty() => {
            Ok(DeviceId::new(Platform::Android, &[e, d])?)
        }
        _ => Err(bad()),
    }
}

impl Notification {
    /// The events this notification becomes, in emission order. Empty for notifications the
    /// gateway does not turn into events (see the module table).
    pub fn emissions(&self) -> Result<Vec<Emission>, DecodeError> {
        match self {
            Notification::Enrollment(d) => device_emissions(d, EventType::DEVICE_ENROLLED),
            Notification::StatusReport(d) => device_emissions(d, EventType::DEVICE_STATUS_REPORT),
            Notification::Command(op) => command_emissions(op),
            Notification::UsageLogs(logs) => usage_log_emissions(logs),
            Notification::EnterpriseUpgrade(up) => enterprise_upgrade_emissions(up),
            Notification::Test | Notification::Other { .. } => Ok(Vec::new()),
        }
    }
}

/// What a device notification (`ENROLLMENT`, `STATUS_REPORT`) says, each part computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    pub device_id: DeviceId,
    /// `state: DELETED`: the device is gone.
    pub deleted: bool,
    /// The event `data` ([`device_event_data`]).
    pub data: Json,
    /// The normalised inventory ([`device_inventory`]).
    pub inventory: Inventory,
}

/// The device id, event data and inventory of a `Device` resource; an error when its name
/// gives no device.
pub fn device_report(d: &Device) -> Result<DeviceReport, DecodeError> {
    let name = d.name.as_deref().ok_or_else(|| DecodeError::BadResourceName(String::new()))?;
    Ok(DeviceReport {
        device_id: device_id_from_name(name)?,
        deleted: d.is_deleted(),
        data: device_event_data(d),
        inventory: device_inventory(d),
    })
}

fn device_emissions(d: &Device, primary: EventType) -> Result<Vec<Emission>, DecodeError> {
    let DeviceReport { device_id, deleted, data, inventory } = device_report(d)?;
    let event = |event_type: EventType, data: Json, inventory: Option<Inventory>| Emission {
        event_type,
        device_id: device_id.clone(),
        command_id: None,
        data,
        inventory,
    };
    if deleted {
        return Ok(vec![event(EventType::DEVICE_UNENROLLED, data, None)]);
    }
    let mut out = vec![event(primary.clone(), data, None)];
    if primary == EventType::DEVICE_STATUS_REPORT && !inventory.is_empty() {
        let data = serde_json::to_value(&inventory).unwrap_or(Json::Null);
        out.push(event(EventType::DEVICE_INVENTORY, data, Some(inventory)));
    }
    Ok(out)
}

/// Normalised inventory from a `Device`'s hardware, software and network info.
pub fn device_inventory(d: &Device) -> Inventory {
    // Only the fields taken are cloned, not the whole sub-objects.
    let hw = d.hardware_info.as_ref();
    let sw = d.software_info.as_ref();
    let net = d.network_info.as_ref();
    let settings = d.device_settings.as_ref();
    let android_version = sw.and_then(|s| s.android_version.clone());
    Inventory {
        serial_number: hw.and_then(|h| h.serial_number.clone()),
        model: hw.and_then(|h| h.model.clone()),
        manufacturer: hw.and_then(|h| h.manufacturer.clone()),
        os_name: android_version.is_some().then(|| "Android".to_owned()),
        os_version: android_version,
        build_version: sw.and_then(|s| s.android_build_number.clone()),
        imei: net.and_then(|n| n.imei.clone()),
        meid: net.and_then(|n| n.meid.clone()),
        wifi_mac: net.and_then(|n| n.wifi_mac_address.clone()),
        storage_capacity_bytes: d
            .memory_info
            .as_ref()
            .and_then(|m| m.total_internal_storage)
            .and_then(|b| u64::try_from(b).ok()),
        encrypted: settings.and_then(|s| s.is_encrypted).or_else(|| match settings?.encryption_status.as_deref()? {
            "ENCRYPTED" | "ACTIVE_PER_USER" => Some(true),
            "INACTIVE" | "ACTIVATING" | "UNSUPPORTED" => Some(false),
            _ => None,
        }),
        compliant: d.policy_compliant,
        ownership: d.ownership.as_deref().and_then(|o| match o {
            "COMPANY_OWNED" => Some("corporate".to_owned()),
            "PERSONALLY_OWNED" => Some("personal".to_owned()),
            _ => None,
        }),
        enrolled_user: d.gateway_token_user().or_else(|| d.user_name.clone()),
        ..Inventory::default()
    }
}

/// The event `data` for device events: the AMAPI fields the backend acts on, snake_case.
pub fn device_event_data(d: &Device) -> Json {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Json>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    let s = |v: &Option<String>| v.clone().map(Json::from);
    put("name", s(&d.name));
    put("management_mode", s(&d.management_mode));
    put("state", s(&d.state));
    put("applied_state", s(&d.applied_state));
    put("policy_compliant", d.policy_compliant.map(Json::from));
    put("policy_name", s(&d.policy_name));
    put("applied_policy_name", s(&d.applied_policy_name));
    put("applied_policy_version", d.applied_policy_version.map(Json::from));
    put("enrollment_time", d.enrollment_time.and_then(rfc3339));
    put("last_status_report_time", d.last_status_report_time.and_then(rfc3339));
    put("ownership", s(&d.ownership));
    put("enrollment_token_name", s(&d.enrollment_token_name));
    put("user_name", s(&d.user_name));
    if let Some(hw) = &d.hardware_info {
        put("brand", s(&hw.brand));
        put("manufacturer", s(&hw.manufacturer));
        put("hardware", s(&hw.hardware));
    }
    if let Some(sw) = &d.software_info {
        put("security_patch_level", s(&sw.security_patch_level));
    }
    put("device_posture", d.security_posture.as_ref().and_then(|p| s(&p.device_posture)));
    if !d.non_compliance_details.is_empty() {
        let list = d.non_compliance_details.iter().map(non_compliance_json).collect();
        put("non_compliance", Some(Json::Array(list)));
    }
    Json::Object(m)
}

/// One `nonComplianceDetails` entry in the gateway's snake_case form (event data, command errors).
pub fn non_compliance_json(n: &NonComplianceDetail) -> Json {
    let mut o = Map::new();
    for (k, v) in [
        ("setting_name", &n.setting_name),
        ("reason", &n.non_compliance_reason),
        ("specific_reason", &n.specific_non_compliance_reason),
        ("package_name", &n.package_name),
        ("field_path", &n.field_path),
        ("installation_failure_reason", &n.installation_failure_reason),
    ] {
        if let Some(v) = v {
            o.insert(k.to_owned(), v.clone().into());
        }
    }
    if let Some(v) = &n.current_value {
        o.insert("current_value".to_owned(), v.clone());
    }
    Json::Object(o)
}

fn command_emissions(op: &Operation) -> Result<Vec<Emission>, DecodeError> {
    if !op.done {
        return Ok(Vec::new());
    }
    let name = op.name.as_deref().ok_or_else(|| DecodeError::BadResourceName(String::new()))?;
    let device_id = device_id_from_name(name)?;
    let command_id = match name.split('/').collect::<Vec<_>>()[..] {
        [_, _, _, _, "operations", id] if !id.is_empty() => id.to_owned(),
        _ => return Err(DecodeError::BadResourceName(name.to_owned())),
    };
    let mut m = Map::new();
    m.insert("operation".into(), name.into());
    if let Some(meta) = &op.metadata {
        if let Some(t) = &meta.command_type {
            m.insert("command_type".into(), t.clone().into());
        }
        if let Some(t) = meta.create_time.and_then(rfc3339) {
            m.insert("create_time".into(), t);
        }
        if let Some(c) = &meta.error_code {
            m.insert("error_code".into(), c.clone().into());
        }
    }
    let event_type = match &op.error {
        None => {
            m.insert("status".into(), "Acknowledged".into());
            EventType::COMMAND_ACKNOWLEDGED
        }
        Some(e) => {
            m.insert("status".into(), "Error".into());
            m.insert("error".into(), json!({ "code": e.code, "message": e.message }));
            EventType::COMMAND_ERROR
        }
    };
    if let Some(r) = &op.response {
        m.insert("response".into(), r.clone());
    }
    Ok(vec![Emission { event_type, device_id, command_id: Some(command_id), data: Json::Object(m), inventory: None }])
}

fn usage_log_emissions(logs: &BatchUsageLogEvents) -> Result<Vec<Emission>, DecodeError> {
    let name = logs.device.as_deref().ok_or_else(|| DecodeError::BadResourceName(String::new()))?;
    let device_id = device_id_from_name(name)?;
    let mut m = Map::new();
    m.insert("device".into(), name.into());
    if let Some(u) = &logs.user {
        m.insert("user".into(), u.clone().into());
    }
    if let Some(t) = logs.retrieval_time.and_then(rfc3339) {
        m.insert("retrieval_time".into(), t);
    }
    m.insert("events".into(), Json::Array(logs.usage_log_events.clone()));
    Ok(vec![Emission {
        event_type: DEVICE_USAGE_LOGS,
        device_id,
        command_id: None,
        data: Json::Object(m),
        inventory: None,
    }])
}

/// `android:<enterprise id>` from `enterprises/{e}`.
pub fn enterprise_id_from_name(name: &str) -> Result<DeviceId, DecodeError> {
    match name.split('/').collect::<Vec<_>>()[..] {
        ["enterprises", e] if !e.is_empty() => Ok(DeviceId::new(Platform::Android, &[e])?),
        _ => Err(DecodeError::BadResourceName(name.to_owned())),
    }
}

fn enterprise_upgrade_emissions(up: &EnterpriseUpgradeEvent) -> Result<Vec<Emission>, DecodeError> {
    let name = up.enterprise.as_deref().ok_or_else(|| DecodeError::BadResourceName(String::new()))?;
    let device_id = enterprise_id_from_name(name)?;
    let mut m = Map::new();
    m.insert("enterprise".into(), name.into());
    if let Some(s) = &up.upgrade_state {
        m.insert("upgrade_state".into(), s.clone().into());
    }
    Ok(vec![Emission {
        event_type: ENTERPRISE_UPGRADE,
        device_id,
        command_id: None,
        data: Json::Object(m),
        inventory: None,
    }])
}

fn rfc3339(t: OffsetDateTime) -> Option<Json> {
    t.format(&Rfc3339).ok().map(Json::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PushMessage;
    use base64::Engine as _;

    fn notification(t: &str, data: Json) -> Notification {
        let body = json!({"message": {
            "messageId": "1", "publishTime": "2025-08-11T13:00:03Z",
            "attributes": {"notificationType": t},
            "data": base64::engine::general_purpose::STANDARD.encode(data.to_string()),
        }});
        Notification::decode(&PushMessage::decode(body.to_string().as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn device_ids_follow_the_contract() {
        assert_eq!(device_id_from_name("enterprises/E1/devices/D1").unwrap().as_str(), "android:E1:D1");
        assert_eq!(device_id_from_name("enterprises/E1/devices/D1/operations/9").unwrap().as_str(), "android:E1:D1");
        for bad in ["", "enterprises/E1", "enterprises//devices/D1", "enterprises/E1/policies/P", "devices/D1"] {
            assert_eq!(device_id_from_name(bad).unwrap_err().reason(), "bad_resource_name", "{bad}");
        }
        assert_eq!(device_id_from_name("enterprises/E 1/devices/D1").unwrap_err().reason(), "bad_device_id");
    }

    #[test]
    fn enrollment_emits_enrolled() {
        let n = notification(
            "ENROLLMENT",
            json!({"name": "enterprises/E1/devices/D1", "state": "ACTIVE",
            "appliedPolicyVersion": "4", "hardwareInfo": {"serialNumber": "S1"}}),
        );
        let out = n.emissions().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_type, EventType::DEVICE_ENROLLED);
        assert_eq!(out[0].device_id.as_str(), "android:E1:D1");
        assert_eq!(out[0].data["applied_policy_version"], 4);
        assert_eq!(out[0].inventory, None);
    }

    #[test]
    fn status_report_emits_report_and_inventory() {
        let n = notification(
            "STATUS_REPORT",
            json!({"name": "enterprises/E1/devices/D1", "state": "ACTIVE",
            "lastStatusReportTime": "2025-08-11T12:17:30.534Z",
            "hardwareInfo": {"serialNumber": "S1", "model": "Pixel 8", "brand": "google"},
            "softwareInfo": {"androidVersion": "15", "androidBuildNumber": "AP3A", "securityPatchLevel": "2025-07-01"},
            "networkInfo": {"imei": "35", "meid": "A1", "wifiMacAddress": "aa:bb"},
            "securityPosture": {"devicePosture": "AT_RISK"},
            "nonComplianceDetails": [{"settingName": "cameraAccess", "nonComplianceReason": "MANAGEMENT_MODE"}]}),
        );
        let out = n.emissions().unwrap();
        let types: Vec<_> = out.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["device.status_report", "device.inventory"]);
        let d = &out[0].data;
        assert_eq!(d["last_status_report_time"], "2025-08-11T12:17:30.534Z");
        assert_eq!(d["device_posture"], "AT_RISK");
        assert_eq!(d["security_patch_level"], "2025-07-01");
        assert_eq!(d["non_compliance"][0]["setting_name"], "cameraAccess");
        let inv = out[1].inventory.clone().unwrap();
        assert_eq!(inv.serial_number.as_deref(), Some("S1"));
        assert_eq!(inv.model.as_deref(), Some("Pixel 8"));
        assert_eq!(inv.os_name.as_deref(), Some("Android"));
        assert_eq!(inv.os_version.as_deref(), Some("15"));
        assert_eq!(inv.build_version.as_deref(), Some("AP3A"));
        assert_eq!((inv.imei.as_deref(), inv.meid.as_deref()), (Some("35"), Some("A1")));
        assert_eq!(inv.wifi_mac.as_deref(), Some("aa:bb"));
        assert_eq!(out[1].data["serial_number"], "S1");
    }

    #[test]
    fn status_report_without_inventory_emits_only_the_report() {
        let n = notification("STATUS_REPORT", json!({"name": "enterprises/E1/devices/D1"}));
        let out = n.emissions().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_type, EventType::DEVICE_STATUS_REPORT);
    }

    #[test]
    fn deleted_device_emits_unenrolled() {
        for t in ["STATUS_REPORT", "ENROLLMENT"] {
            let n = notification(
                t,
                json!({"name": "enterprises/E1/devices/D1", "state": "DELETED",
                "hardwareInfo": {"serialNumber": "S1"}}),
            );
            let out = n.emissions().unwrap();
            assert_eq!(out.len(), 1, "{t}");
            assert_eq!(out[0].event_type, EventType::DEVICE_UNENROLLED);
            assert_eq!(out[0].data["state"], "DELETED");
        }
    }

    #[test]
    fn device_without_name_is_rejected() {
        let n = notification("ENROLLMENT", json!({"state": "ACTIVE"}));
        assert_eq!(n.emissions().unwrap_err().reason(), "bad_resource_name");
    }

    #[test]
    fn commands_emit_acknowledged_or_error() {
        let ok = notification(
            "COMMAND",
            json!({"name": "enterprises/E1/devices/D1/operations/77", "done": true,
            "metadata": {"type": "LOCK", "createTime": "2025-08-11T13:00:00Z"}}),
        );
        let out = ok.emissions().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_type, EventType::COMMAND_ACKNOWLEDGED);
        assert_eq!(out[0].command_id.as_deref(), Some("77"));
        assert_eq!(out[0].device_id.as_str(), "android:E1:D1");
        assert_eq!(out[0].data["command_type"], "LOCK");
        assert_eq!(out[0].data["create_time"], "2025-08-11T13:00:00Z");

        let err = notification(
            "COMMAND",
            json!({"name": "enterprises/E1/devices/D1/operations/78", "done": true,
            "metadata": {"type": "REBOOT", "errorCode": "API_LEVEL"}, "error": {"code": 9, "message": "no"}}),
        );
        let out = err.emissions().unwrap();
        assert_eq!(out[0].event_type, EventType::COMMAND_ERROR);
        assert_eq!(out[0].command_id.as_deref(), Some("78"));
        assert_eq!(out[0].data["error"], json!({"code": 9, "message": "no"}));
        assert_eq!(out[0].data["error_code"], "API_LEVEL");

        let pending = notification("COMMAND", json!({"name": "enterprises/E1/devices/D1/operations/79"}));
        assert!(pending.emissions().unwrap().is_empty());

        let bad = notification("COMMAND", json!({"name": "enterprises/E1/devices/D1", "done": true}));
        assert_eq!(bad.emissions().unwrap_err().reason(), "bad_resource_name");
    }

    #[test]
    fn usage_logs_and_enterprise_upgrade() {
        let logs = json!({"device": "enterprises/E1/devices/D1", "user": "enterprises/E1/users/U1",
            "retrievalTime": "2025-08-11T13:00:00Z",
            "usageLogEvents": [{"eventType": "KEYGUARD_DISMISSED", "eventId": "7"}]});
        let out = notification("USAGE_LOGS", logs).emissions().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_type, DEVICE_USAGE_LOGS);
        assert_eq!(out[0].device_id.as_str(), "android:E1:D1");
        assert_eq!(out[0].data["events"][0]["eventType"], "KEYGUARD_DISMISSED");
        assert_eq!(out[0].data["retrieval_time"], "2025-08-11T13:00:00Z");
        assert_eq!(out[0].data["user"], "enterprises/E1/users/U1");
        let e = notification("USAGE_LOGS", json!({"usageLogEvents": []})).emissions().unwrap_err();
        assert_eq!(e.reason(), "bad_resource_name");

        let up = json!({"enterprise": "enterprises/E1", "upgradeState": "UPGRADE_STATE_SUCCEEDED"});
        let out = notification("ENTERPRISE_UPGRADE", up).emissions().unwrap();
        assert_eq!(out[0].event_type, ENTERPRISE_UPGRADE);
        assert_eq!(out[0].device_id.as_str(), "android:E1");
        assert_eq!(out[0].data, json!({"enterprise": "enterprises/E1", "upgrade_state": "UPGRADE_STATE_SUCCEEDED"}));
        for bad in [json!({}), json!({"enterprise": "enterprises/E1/devices/D1"}), json!({"enterprise": "E1"})] {
            let e = notification("ENTERPRISE_UPGRADE", bad).emissions().unwrap_err();
            assert_eq!(e.reason(), "bad_resource_name");
        }
    }

    #[test]
    fn other_notifications_emit_nothing() {
        assert!(notification("NEW_KIND", json!({})).emissions().unwrap().is_empty());
        assert!(Notification::Test.emissions().unwrap().is_empty());
    }
}
