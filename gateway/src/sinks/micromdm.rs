//! The MicroMDM-compatible webhook shape (as NanoMDM's `microwebhook` emits it), built from our
//! events and the device message they carry. Events with no MicroMDM equivalent map to `None`.

use mdm_core::{Event, EventType, Platform};
use serde_json::{Value, json};

use mdm_apple::EnrollmentType;

/// The MicroMDM topic for an event type, when there is one.
fn topic(t: &EventType) -> Option<&'static str> {
    Some(match t.as_str() {
        "device.authenticated" => "mdm.Authenticate",
        "device.enrolled" | "device.token_updated" => "mdm.TokenUpdate",
        "device.unenrolled" => "mdm.CheckOut",
        "device.user_authenticate" => "mdm.UserAuthenticate",
        "device.bootstrap_token_set" => "mdm.SetBootstrapToken",
        "device.bootstrap_token_requested" => "mdm.GetBootstrapToken",
        "device.declarative_management" | "device.status_report" => "mdm.DeclarativeManagement",
        "device.token_requested" => "mdm.GetToken",
        "command.acknowledged" | "command.error" | "command.not_now" | "device.checked_in" => "mdm.Connect",
        _ => return None,
    })
}

pub fn convert(event: &Event) -> Option<Value> {
    if event.platform != Platform::Apple {
        return None;
    }
    let topic = topic(&event.event_type)?;
    let raw = event.raw.as_ref()?;
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.decode(&raw.body_b64).ok()?;
    let created_at = event.time.format(&time::format_description::well_known::Rfc3339).ok()?;
    let mut out = serde_json::Map::new();
    out.insert("topic".into(), json!(topic));
    out.insert("event_id".into(), json!(event.id));
    out.insert("created_at".into(), json!(created_at));
    let (key, inner) = if topic == "mdm.Connect" {
        let report = mdm_apple::decode_report(&body).ok()?;
        // A report that carries a result is posted once, from its command.* event; its
        // device.checked_in twin is only posted for Idle, which has no command event.
        if event.event_type == EventType::DEVICE_CHECKED_IN && report.status != mdm_apple::ReportStatus::Idle {
            return None;
        }
        let mut m = ids_fields(&report.ids, event);
        m.insert("status".into(), json!(report.status.as_str()));
        if let Some(uuid) = &report.command_uuid {
            m.insert("command_uuid".into(), json!(uuid));
        }
        m.insert("raw_payload".into(), json!(raw.body_b64));
        ("acknowledge_event", m)
    } else {
        let msg = mdm_apple::decode_checkin(&body).ok()?;
        let mut m = ids_fields(msg.ids(), event);
        m.insert("raw_payload".into(), json!(raw.body_b64));
        ("checkin_event", m)
    };
    out.insert(key.into(), Value::Object(inner));
    Some(Value::Object(out))
}

fn ids_fields(ids: &mdm_apple::EnrollmentIds, event: &Event) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    if let Some(udid) = &ids.udid {
        m.insert("udid".into(), json!(udid));
    }
    if let Some(eid) = &ids.enrollment_id {
        m.insert("enrollment_id".into(), json!(eid));
    }
    m.insert("ids".into(), json!({ "id": event.device_id.native(), "type": nanomdm_type(ids.enrollment_type()) }));
    m
}

/// NanoMDM's names for the kinds of enrollment, as its webhook reports them.
fn nanomdm_type(t: Option<EnrollmentType>) -> &'static str {
    match t {
        Some(EnrollmentType::Device) | None => "Device",
        Some(EnrollmentType::User) => "User",
        Some(EnrollmentType::UserEnrollmentDevice) => "User Enrollment (Device)",
        Some(EnrollmentType::UserEnrollment) => "User Enrollment",
        Some(EnrollmentType::SharedIpad) => "Shared iPad",
    }
}
