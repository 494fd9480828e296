//! Real captures from NanoMDM and Commandment (shared vectors) replay through decode.
//! Skipped, with a message, when the shared vectors are absent.

mod common;

use common::shared;
use mdm_apple::{CheckinMessage, ReportStatus, decode_checkin, decode_report};

#[test]
fn nanomdm_authenticate_ios9() {
    let Some(body) = shared("apple/captures/nanomdm_Authenticate.1.plist") else {
        return;
    };
    let m = decode_checkin(&body).unwrap();
    let CheckinMessage::Authenticate(a) = &m else { panic!("{m:?}") };
    assert_eq!(a.udid.as_deref(), Some("663b07bb783e9ade1dae4fbb92ea12afc0ce5b69"));
    assert_eq!(a.serial_number.as_deref(), Some("F5JM992LF193"));
    assert_eq!(a.product_name.as_deref(), Some("iPad2,5"));
    assert_eq!(a.os_version.as_deref(), Some("9.3.5"));
    assert_eq!(a.build_version.as_deref(), Some("13G36"));
    assert_eq!(a.device_name, None);
    let inv = m.inventory().unwrap();
    assert_eq!(inv.os_name.as_deref(), Some("iOS"), "iPads ran iOS before 13");
    assert_eq!(m.ids().device_id().unwrap().as_str(), "apple:663b07bb783e9ade1dae4fbb92ea12afc0ce5b69");
}

#[test]
fn nanomdm_authenticate_macos() {
    let Some(body) = shared("apple/captures/nanomdm_Authenticate.2.plist") else {
        return;
    };
    let m = decode_checkin(&body).unwrap();
    let CheckinMessage::Authenticate(a) = &m else { panic!("{m:?}") };
    assert_eq!(a.udid.as_deref(), Some("66ADE930-5FDF-5EC4-8429-15640684C489"));
    assert_eq!(a.serial_number.as_deref(), Some("C02MT66KFLHH"));
    assert_eq!(a.model.as_deref(), Some("iMac14,2"));
    assert_eq!(a.model_name.as_deref(), Some("iMac"));
    assert_eq!(a.device_name.as_deref(), Some("Fruit"));
    assert_eq!(a.os_version.as_deref(), Some("10.12.6"));
    assert_eq!(a.build_version.as_deref(), Some("16G2136"));
    // The Challenge data is kept in the dictionary but is not in the event.
    assert_eq!(a.dict.get("Challenge").and_then(|v| v.as_data()), Some(&b"apple"[..]));
    assert!(!m.event_data().to_string().contains("YXBwbGU"));
    assert_eq!(m.inventory().unwrap().os_name.as_deref(), Some("macOS"));
}

#[test]
fn nanomdm_token_update() {
    let Some(body) = shared("apple/captures/nanomdm_TokenUpdate.1.plist") else {
        return;
    };
    let m = decode_checkin(&body).unwrap();
    let CheckinMessage::TokenUpdate(t) = &m else { panic!("{m:?}") };
    assert_eq!(t.push_magic, "CEFDF0BD-E342-4A27-8742-E930EA116B0A");
    assert_eq!(t.token.len(), 32);
    assert!(!t.awaiting_configuration);
    let unlock = t.unlock_token.as_deref().unwrap();
    assert!(unlock.starts_with(b"DATA"), "Apple keybag blob");
    assert_eq!(m.ids().device_id().unwrap().as_str(), "apple:663b07bb783e9ade1dae4fbb92ea12afc0ce5b69");
}

#[test]
fn nanomdm_device_information() {
    let Some(body) = shared("apple/captures/nanomdm_DeviceInformation.1.plist") else {
        return;
    };
    let r = decode_report(&body).unwrap();
    assert_eq!(r.status, ReportStatus::Acknowledged);
    assert_eq!(r.command_uuid.as_deref(), Some("76eda240-5488-4989-8339-f2ae160113c4"));
    assert_eq!(r.request_type(), Some("DeviceInformation"));
    let inv = r.inventory("DeviceInformation").unwrap();
    assert_eq!(inv.hostname.as_deref(), Some("fruit.example.com"));
    assert_eq!(inv.udid.as_deref(), Some("66ADE930-5FDF-5EC4-8429-15640684C489"));
    assert_eq!(r.event_data()["payload"]["QueryResponses"]["HostName"], "fruit.example.com");
}

#[test]
fn commandment_checkout() {
    let Some(body) = shared("apple/captures/commandment_CheckOut_iOS-11.3.1.xml") else {
        return;
    };
    let m = decode_checkin(&body).unwrap();
    let CheckinMessage::CheckOut(c) = &m else { panic!("{m:?}") };
    assert_eq!(c.topic.as_deref(), Some("com.apple.mgmt.XServer.1c111c11-1c11-1c11-1c11-1c111c111c11"));
    assert_eq!(m.ids().device_id().unwrap().as_str(), "apple:1c111c111c111c111c111c111c111c111c111c11");
}

#[test]
fn commandment_remove_profile_error() {
    let Some(body) = shared("apple/captures/commandment_Errors_iOS-11.3.1-RemoveProfile-Unmanaged.xml") else {
        return;
    };
    let r = decode_report(&body).unwrap();
    assert_eq!(r.status, ReportStatus::Error);
    assert_eq!(r.command_uuid.as_deref(), Some("b2da2591-a2e5-45e5-8dd8-0ffb050d8407"));
    assert_eq!(r.error_chain.len(), 1);
    let e = &r.error_chain[0];
    assert_eq!(e.error_code, 12013);
    assert_eq!(e.error_domain, "MCMDMErrorDomain");
    // The capture stores the curly quotes as literal `\xe2\x80\x9c` text; kept as sent.
    assert!(e.us_english_description.as_deref().unwrap().contains("is not managed by MDM"));
    assert_eq!(r.inventory("RemoveProfile"), None);
}
