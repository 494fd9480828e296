//! Command reports decode from the crate's own vectors: every Status, an ErrorChain, an
//! unknown Status, and DeviceInformation inventory.

mod common;

use common::{own, to_binary};
use mdm_apple::{CommandReport, ErrorChainItem, ReportStatus, decode_report};
use mdm_core::CommandStatus;
use serde_json::json;

fn decode(rel: &str) -> CommandReport {
    decode_report(&own(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn each_status() {
    let cases = [
        ("report/idle.plist", ReportStatus::Idle, None),
        ("report/acknowledged.plist", ReportStatus::Acknowledged, Some(CommandStatus::Acknowledged)),
        ("report/not_now.plist", ReportStatus::NotNow, Some(CommandStatus::NotNow)),
        ("report/error_chain.plist", ReportStatus::Error, Some(CommandStatus::Error)),
        ("report/command_format_error.plist", ReportStatus::CommandFormatError, Some(CommandStatus::Error)),
        ("report/unknown_status.plist", ReportStatus::Unknown("Deferred".into()), None),
    ];
    for (rel, status, command_status) in cases {
        let r = decode(rel);
        assert_eq!(r.status, status, "{rel}");
        assert_eq!(r.status.command_status(), command_status, "{rel}");
        assert_eq!(r.event_data()["status"], status.as_str(), "{rel}");
        assert_eq!(r.command_uuid.is_none(), status == ReportStatus::Idle, "{rel}");
    }
}

#[test]
fn unknown_status_round_trips() {
    let r = decode("report/unknown_status.plist");
    assert_eq!(r.status.as_str(), "Deferred");
    assert_eq!(r.command_uuid.as_deref(), Some("0190a3c4-7b1e-7c2d-9e3f-000000000005"));
}

#[test]
fn error_chain() {
    let r = decode("report/error_chain.plist");
    assert_eq!(
        r.error_chain,
        vec![
            ErrorChainItem {
                error_code: 4001,
                error_domain: "MDMClientError".into(),
                localized_description: Some("Le code n’est pas valide.".into()),
                us_english_description: Some("The passcode is invalid.".into()),
            },
            ErrorChainItem {
                error_code: -25300,
                error_domain: "NSOSStatusErrorDomain".into(),
                localized_description: None,
                us_english_description: None,
            },
        ]
    );
    let data = r.event_data();
    assert_eq!(data["error_chain"][1], json!({"error_code": -25300, "error_domain": "NSOSStatusErrorDomain"}));
    assert_eq!(data["payload"], json!({}));
}

#[test]
fn acknowledged_payload_in_event_data() {
    let r = decode("report/acknowledged.plist");
    assert_eq!(
        r.event_data(),
        json!({
            "status": "Acknowledged",
            "command_uuid": "0190a3c4-7b1e-7c2d-9e3f-4a5b6c7d8e9f",
            "enrollment": {"udid": "00008120-001A2B3C4D5E6F70", "enrollment_type": "device"},
            "payload": {"MessageResult": "Success"}
        })
    );
}

#[test]
fn user_enrollment_report_ids() {
    let r = decode("report/user_enrollment_idle.plist");
    assert!(r.ids.is_user_channel());
    assert_eq!(
        r.ids.device_id().unwrap().as_str(),
        "apple:A1B2C3D4-E5F6-4A5B-8C7D-9E0F1A2B3C4D:D4C3B2A1-6F5E-4B5A-8D7C-4D3C2B1A0F9E"
    );
}

#[test]
fn device_information_inventory() {
    let r = decode("report/device_information_full.plist");
    assert_eq!(r.inventory("ProfileList"), None);
    let inv = r.inventory("DeviceInformation").unwrap();
    assert_eq!(inv.serial_number.as_deref(), Some("F2LXK0ABCDEF"));
    assert_eq!(inv.udid.as_deref(), Some("00008120-001A2B3C4D5E6F70"));
    assert_eq!(inv.model.as_deref(), Some("MQ9X3LL/A"));
    assert_eq!(inv.model_name.as_deref(), Some("iPhone"));
    assert_eq!(inv.product_name.as_deref(), Some("iPhone15,3"));
    assert_eq!(inv.os_name.as_deref(), Some("iOS"));
    assert_eq!(inv.os_version.as_deref(), Some("17.0.3"));
    assert_eq!(inv.build_version.as_deref(), Some("21A351"));
    assert_eq!(inv.device_name.as_deref(), Some("Front Desk iPhone"));
    assert_eq!(inv.imei.as_deref(), Some("35 123456 789012 3"));
    assert_eq!(inv.meid.as_deref(), Some("35123456789012"));
    assert_eq!(inv.storage_capacity_bytes, Some(128_000_000_000));
    assert_eq!(inv.storage_available_bytes, Some(87_250_000_000));
    assert_eq!(inv.battery_level, Some(0.82));
    assert_eq!(inv.wifi_mac.as_deref(), Some("a4:83:e7:00:11:23"));
    assert_eq!(inv.bluetooth_mac.as_deref(), Some("a4:83:e7:00:11:22"));
    assert_eq!(inv.supervised, Some(true));
    // Dates and data convert for the event.
    let q = &r.event_data()["payload"]["QueryResponses"];
    assert_eq!(q["LastCloudBackupDate"], "2024-03-01T12:30:00Z");
    assert_eq!(q["PushToken"], "AAECAw==");
    // Binary plist gives the same result.
    let bin = decode_report(&to_binary(&own("report/device_information_full.plist"))).unwrap();
    assert_eq!(bin.inventory("DeviceInformation"), Some(inv));
}

#[test]
fn inventory_is_lenient_about_odd_values() {
    let r = decode("report/device_information_battery_unknown.plist");
    let inv = r.inventory("DeviceInformation").unwrap();
    assert_eq!(inv.battery_level, None, "-1 means unknown");
    assert_eq!(inv.storage_capacity_bytes, None, "wrong type skipped");
    assert_eq!(inv.hostname.as_deref(), Some("lab-mac"), "LocalHostName when HostName absent");
    assert_eq!(inv.os_name.as_deref(), Some("macOS"));
}

#[test]
fn no_inventory_from_failed_reports() {
    assert_eq!(decode("report/error_chain.plist").inventory("DeviceInformation"), None);
}

#[test]
fn invalid_reports_fail_precisely() {
    let cases = [
        ("invalid/report_missing_status.plist", "missing_status"),
        ("invalid/report_error_chain_not_array.plist", "wrong_type"),
        ("invalid/report_error_chain_item_missing_code.plist", "missing_field"),
        ("invalid/report_no_device_identifier.plist", "no_device_identifier"),
        ("invalid/top_level_array.plist", "not_dictionary"),
        ("invalid/not_a_plist.txt", "not_plist"),
    ];
    for (rel, reason) in cases {
        let err = decode_report(&own(rel)).expect_err(rel);
        assert_eq!(err.reason(), reason, "{rel}: {err}");
    }
}
