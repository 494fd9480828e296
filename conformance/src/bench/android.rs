//! Android load for `mdm-bench android`: Pub/Sub push deliveries of AMAPI `STATUS_REPORT`
//! notifications, as Google's push subscription sends them (a JSON envelope with the Device
//! resource base64-encoded in `message.data`, `attributes.notificationType`, a unique
//! `messageId` and `publishTime`), POSTed to `/android/pubsub?token=…` over keep-alive TLS by
//! [`super::load`].
//!
//! Every body is distinct (its own message id), so each one is a new message for the gateway:
//! authenticated, decoded, checked against the handled ids and the device's newest publish time,
//! merged into the device's enrollment and stored with its events, one transaction, before the
//! 2xx. Bodies cycle over `devices` devices with publish times that only grow, so none is stale.
//! The run stops at the number of prepared bodies ([`super::load::LoadSpec::max_requests`]), so no
//! body is sent twice; a second pass with the same bodies measures duplicates (answered from the
//! handled-id check alone).

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;

use super::load::Prepared;

/// Where pushes go (the token is added as `?token=`).
pub const PUSH_PATH: &str = "/android/pubsub";
/// The enterprise of the bench devices.
pub const ENTERPRISE: &str = "enterprises/LCbench0001";

/// The AMAPI device name of bench device `i`.
pub fn device_name(i: usize) -> String {
    format!("{ENTERPRISE}/devices/bench{i:07}")
}

/// RFC 3339 with milliseconds for `ms` since the Unix epoch (UTC), as Pub/Sub writes it.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).expect("time in range");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The Device resource of a STATUS_REPORT for device `i`, reported at `ms`.
pub fn status_report(i: usize, ms: i64) -> serde_json::Value {
    let when = rfc3339_ms(ms);
    json!({
        "name": device_name(i),
        "managementMode": "DEVICE_OWNER",
        "state": "ACTIVE",
        "appliedState": "ACTIVE",
        "policyCompliant": !i.is_multiple_of(5),
        "enrollmentTime": "2026-01-05T12:09:50.719Z",
        "lastStatusReportTime": when,
        "lastPolicySyncTime": when,
        "appliedPolicyVersion": (1 + i % 3).to_string(),
        "apiLevel": 34,
        "policyName": format!("{ENTERPRISE}/policies/default"),
        "appliedPolicyName": format!("{ENTERPRISE}/policies/default"),
        "ownership": "COMPANY_OWNED",
        "hardwareInfo": {
            "brand": "google",
            "hardware": "tensor",
            "manufacturer": "Google",
            "serialNumber": format!("BENCHSN{i:07}"),
            "model": "Pixel 8",
            "enterpriseSpecificId": format!("ESID{i:07}"),
        },
        "softwareInfo": {
            "androidVersion": "14",
            "androidBuildNumber": "AP2A.240905.003",
            "securityPatchLevel": "2026-09-05",
            "primaryLanguageCode": "en-US",
            "deviceKernelVersion": "5.15.137",
        },
        "memoryInfo": { "totalRam": "8589934592", "totalInternalStorage": "128000000000" },
        "networkInfo": { "imei": format!("35{i:013}"), "wifiMacAddress": "02:00:00:00:00:00" },
        "securityPosture": { "devicePosture": "SECURE" },
        "nonComplianceDetails": if i.is_multiple_of(5) {
            json!([{ "settingName": "passwordPolicies", "nonComplianceReason": "USER_ACTION" }])
        } else {
            json!([])
        },
    })
}

/// The push body Pub/Sub would POST for `device` (a Device resource) as message `message_id`,
/// published at `publish_ms`.
pub fn push_body(device: &serde_json::Value, notification_type: &str, message_id: &str, publish_ms: i64) -> Bytes {
    let data = base64::engine::general_purpose::STANDARD.encode(device.to_string());
    let envelope = json!({
        "message": {
            "attributes": { "notificationType": notification_type },
            "data": data,
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": rfc3339_ms(publish_ms),
            "publish_time": rfc3339_ms(publish_ms),
        },
        "subscription": "projects/bench-project/subscriptions/mdm-gateway",
    });
    Bytes::from(envelope.to_string())
}

/// `n` distinct STATUS_REPORT pushes over `devices` devices; push `k` is for device
/// `k % devices`, published at `start_ms + k` (later pushes are newer, so none is stale).
pub fn status_report_pushes(n: usize, devices: usize, start_ms: i64, run: &str) -> Vec<Prepared> {
    let devices = devices.max(1);
    (0..n)
        .map(|k| {
            let ms = start_ms + k as i64;
            let device = status_report(k % devices, ms);
            let body = push_body(&device, "STATUS_REPORT", &format!("bench-{run}-{k:09}"), ms);
            Prepared { body, signature: None }
        })
        .collect()
}

/// The indices `k` of this run's pushes (`bench-<run>-<k>`) the gateway recorded as handled, read
/// from its SQLite file.
pub fn handled_indices(db: &std::path::Path, run: &str) -> Result<Vec<usize>, String> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("open {}: {e}", db.display()))?;
    let prefix = format!("bench-{run}-");
    let mut stmt = conn.prepare("SELECT message_id FROM pubsub_messages").map_err(|e| e.to_string())?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for id in ids {
        let id = id.map_err(|e| e.to_string())?;
        if let Some(k) = id.strip_prefix(&prefix).and_then(|k| k.parse().ok()) {
            out.push(k);
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_distinct_envelopes_that_decode() {
        let pushes = status_report_pushes(4, 3, 1_790_000_000_000, "t");
        assert_eq!(pushes.len(), 4);
        let mut ids = std::collections::BTreeSet::new();
        for (k, p) in pushes.iter().enumerate() {
            let msg = mdm_android::PushMessage::decode(&p.body).expect("a push the gateway's decoder reads");
            assert!(ids.insert(msg.message_id.clone()), "duplicate id");
            assert_eq!(msg.notification_type(), Some("STATUS_REPORT"));
            let device: serde_json::Value =
                serde_json::from_slice(msg.data.as_deref().expect("data")).expect("device JSON");
            assert_eq!(device["name"], device_name(k % 3));
        }
        assert_eq!(rfc3339_ms(1_790_000_000_123), "2026-09-21T14:13:20.123Z");
    }
}
