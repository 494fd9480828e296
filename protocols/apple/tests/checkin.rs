//! Check-in messages decode from the crate's own vectors (one per message type and channel
//! kind), and malformed ones fail with the precise error.

mod common;

use common::{own, to_binary};
use mdm_apple::{CheckinMessage, DecodeError, EnrollmentType, decode_checkin};
use serde_json::json;

fn decode(rel: &str) -> CheckinMessage {
    decode_checkin(&own(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn authenticate_ios() {
    let m = decode("checkin/authenticate_ios.plist");
    assert_eq!(m.message_type(), "Authenticate");
    let CheckinMessage::Authenticate(a) = &m else { panic!("{m:?}") };
    assert_eq!(a.udid.as_deref(), Some("00008120-001A2B3C4D5E6F70"));
    assert_eq!(a.serial_number.as_deref(), Some("F2LXK0ABCDEF"));
    assert_eq!(a.imei.as_deref(), Some("35 123456 789012 3"));
    assert_eq!(a.meid.as_deref(), Some("35123456789012"));
    assert_eq!(a.topic, "com.apple.mgmt.External.00000000-1111-2222-3333-444444444444");
    // Extra keys survive in the dictionary.
    assert_eq!(a.dict.get("FutureKey").and_then(|v| v.as_string()), Some("kept in dict"));
    assert_eq!(m.ids().device_id().unwrap().as_str(), "apple:00008120-001A2B3C4D5E6F70");
    let inv = m.inventory().unwrap();
    assert_eq!(inv.os_name.as_deref(), Some("iOS"));
    assert_eq!(inv.product_name.as_deref(), Some("iPhone15,3"));
    assert_eq!(inv.device_name.as_deref(), Some("Front Desk iPhone"));
    let data = m.event_data();
    assert_eq!(data["message_type"], "Authenticate");
    assert_eq!(data["serial_number"], "F2LXK0ABCDEF");
    assert_eq!(data["enrollment"]["enrollment_type"], "device");
}

#[test]
fn binary_plist_decodes_the_same() {
    let xml = own("checkin/authenticate_ios.plist");
    assert_eq!(decode_checkin(&to_binary(&xml)).unwrap(), decode_checkin(&xml).unwrap());
}

#[test]
fn authenticate_user_enrollment() {
    let m = decode("checkin/authenticate_user_enrollment.plist");
    let CheckinMessage::Authenticate(a) = &m else { panic!("{m:?}") };
    assert_eq!(a.udid, None);
    assert_eq!(a.enrollment_id.as_deref(), Some("A1B2C3D4-E5F6-4A5B-8C7D-9E0F1A2B3C4D"));
    assert!(m.ids().is_user_enrollment());
    assert!(!m.ids().is_user_channel());
    assert_eq!(m.ids().enrollment_type(), Some(EnrollmentType::UserEnrollmentDevice));
    assert_eq!(m.ids().device_id().unwrap().as_str(), "apple:A1B2C3D4-E5F6-4A5B-8C7D-9E0F1A2B3C4D");
    assert_eq!(m.inventory().unwrap().os_name.as_deref(), Some("iPadOS"));
}

#[test]
fn token_update_device_channel() {
    let m = decode("checkin/token_update_device.plist");
    let CheckinMessage::TokenUpdate(t) = &m else { panic!("{m:?}") };
    assert_eq!(t.token, (0u8..32).collect::<Vec<_>>());
    assert_eq!(t.push_magic, "5F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0");
    assert_eq!(t.unlock_token.as_deref(), Some(&b"UNLOCKTOKEN"[..]));
    assert!(t.awaiting_configuration);
    assert!(!m.ids().is_user_channel());
    assert_eq!(m.inventory(), None);
    // No secrets in event data.
    let data = m.event_data();
    assert_eq!(data["token_present"], true);
    assert_eq!(data["unlock_token_present"], true);
    assert_eq!(data["push_magic_present"], true);
    let text = data.to_string();
    assert!(!text.contains("5F1E2D3C"), "push magic leaked: {text}");
    assert!(!text.contains("VU5MT0NL"), "unlock token leaked: {text}");
}

#[test]
fn token_update_macos_user_channel() {
    let m = decode("checkin/token_update_user_macos.plist");
    let CheckinMessage::TokenUpdate(t) = &m else { panic!("{m:?}") };
    assert_eq!(t.not_on_console, Some(false));
    assert!(!t.awaiting_configuration);
    assert_eq!(t.user_short_name.as_deref(), Some("jo"));
    assert_eq!(t.user_long_name.as_deref(), Some("Jo Example"));
    let ids = m.ids();
    assert!(ids.is_user_channel());
    assert_eq!(ids.enrollment_type(), Some(EnrollmentType::User));
    assert_eq!(
        ids.device_id().unwrap().as_str(),
        "apple:564D4A1E-0E1C-5E8B-9B3F-6C7D8E9FA0B1:B1C2D3E4-F5A6-4B7C-8D9E-0F1A2B3C4D5E"
    );
    assert_eq!(ids.device_channel_id().unwrap().as_str(), "apple:564D4A1E-0E1C-5E8B-9B3F-6C7D8E9FA0B1");
}

#[test]
fn token_update_shared_ipad_user_channel() {
    let m = decode("checkin/token_update_shared_ipad_user.plist");
    let ids = m.ids();
    assert!(ids.is_user_channel());
    assert_eq!(ids.enrollment_type(), Some(EnrollmentType::SharedIpad));
    // The constant UserID says nothing; the Managed Apple Account names the user.
    assert_eq!(ids.device_id().unwrap().as_str(), "apple:00008103-000A1B2C3D4E5F60:student42@school.example");
    assert_eq!(ids.device_channel_id().unwrap().as_str(), "apple:00008103-000A1B2C3D4E5F60");
}

#[test]
fn token_update_user_enrollment_user_channel() {
    let m = decode("checkin/token_update_user_enrollment_user.plist");
    let ids = m.ids();
    assert!(ids.is_user_enrollment());
    assert!(ids.is_user_channel());
    assert_eq!(ids.enrollment_type(), Some(EnrollmentType::UserEnrollment));
    assert_eq!(
        ids.device_id().unwrap().as_str(),
        "apple:A1B2C3D4-E5F6-4A5B-8C7D-9E0F1A2B3C4D:D4C3B2A1-6F5E-4B5A-8D7C-4D3C2B1A0F9E"
    );
    assert_eq!(ids.device_channel_id().unwrap().as_str(), "apple:A1B2C3D4-E5F6-4A5B-8C7D-9E0F1A2B3C4D");
}

#[test]
fn checkout() {
    let m = decode("checkin/checkout.plist");
    let CheckinMessage::CheckOut(c) = &m else { panic!("{m:?}") };
    assert!(c.topic.is_some());
    assert_eq!(m.event_data()["message_type"], "CheckOut");
}

#[test]
fn user_authenticate_both_rounds() {
    let first = decode("checkin/user_authenticate_first.plist");
    let CheckinMessage::UserAuthenticate(u) = &first else { panic!("{first:?}") };
    assert_eq!(u.user_id, "B1C2D3E4-F5A6-4B7C-8D9E-0F1A2B3C4D5E");
    assert!(!u.is_response());
    assert!(first.ids().is_user_channel());
    let second = decode("checkin/user_authenticate_digest.plist");
    let CheckinMessage::UserAuthenticate(u) = &second else { panic!("{second:?}") };
    assert!(u.is_response());
    let data = second.event_data();
    assert_eq!(data["digest_response_present"], true);
    assert!(!data.to_string().contains("nonce"));
}

#[test]
fn bootstrap_tokens() {
    let m = decode("checkin/set_bootstrap_token.plist");
    let CheckinMessage::SetBootstrapToken(s) = &m else { panic!("{m:?}") };
    assert_eq!(s.bootstrap_token.as_deref(), Some(&b"BOOTSTRAP-TOKEN"[..]));
    assert_eq!(m.event_data()["bootstrap_token_present"], true);
    assert!(!m.event_data().to_string().contains("Qk9PVFNU"));

    let m = decode("checkin/set_bootstrap_token_clear.plist");
    let CheckinMessage::SetBootstrapToken(s) = &m else { panic!("{m:?}") };
    assert_eq!(s.bootstrap_token, None);

    let m = decode("checkin/get_bootstrap_token.plist");
    let CheckinMessage::GetBootstrapToken(g) = &m else { panic!("{m:?}") };
    assert!(g.awaiting_configuration);
}

#[test]
fn declarative_management() {
    let m = decode("checkin/declarative_management_status.plist");
    let CheckinMessage::DeclarativeManagement(d) = &m else { panic!("{m:?}") };
    assert_eq!(d.endpoint, "status");
    assert!(d.data.is_some());
    assert_eq!(m.event_data()["data"], json!({"StatusItems": {"device": {"model": {"family": "iPhone"}}}}));

    assert_eq!(mdm_apple::ddm::Endpoint::parse(&d.endpoint), Ok(mdm_apple::ddm::Endpoint::Status));
    let report = mdm_apple::ddm::decode_status_report(d.data.as_deref()).unwrap();
    assert_eq!(report["StatusItems"]["device"]["model"]["family"], "iPhone");

    let m = decode("checkin/declarative_management_tokens.plist");
    let CheckinMessage::DeclarativeManagement(d) = &m else { panic!("{m:?}") };
    assert_eq!(d.endpoint, "tokens");
    assert_eq!(d.data, None);
    assert_eq!(mdm_apple::ddm::Endpoint::parse(&d.endpoint), Ok(mdm_apple::ddm::Endpoint::Tokens));
}

#[test]
fn get_token() {
    let m = decode("checkin/get_token.plist");
    let CheckinMessage::GetToken(g) = &m else { panic!("{m:?}") };
    assert_eq!(g.token_service_type, "com.apple.watch.pairing");
    assert_eq!(g.phone_udid().unwrap().as_deref(), Some("00008120-001A2B3C4D5E6F70"));
    assert_eq!(g.watch_udid().unwrap().as_deref(), Some("00008301-00AA11BB22CC33DD"));
    assert_eq!(g.security_token().unwrap().as_deref(), Some("s3cr3t"));
    let data = m.event_data();
    assert_eq!(data["token_parameters"]["security_token_present"], true);
    assert!(!data.to_string().contains("s3cr3t"));
    // The token service gets every parameter, the secret included.
    let params = g.parameters_json();
    assert_eq!(params["SecurityToken"], "s3cr3t");
    assert_eq!(params["PhoneUDID"], "00008120-001A2B3C4D5E6F70");
}

#[test]
fn unknown_message_type_survives() {
    let m = decode("checkin/unknown_message_type.plist");
    let CheckinMessage::Unknown { message_type, ids, dict } = &m else { panic!("{m:?}") };
    assert_eq!(message_type, "FutureCheckinMessage");
    assert_eq!(m.message_type(), "FutureCheckinMessage");
    assert_eq!(ids.udid.as_deref(), Some("00008120-001A2B3C4D5E6F70"));
    assert!(dict.contains_key("SomeSecret"));
    let data = m.event_data();
    assert_eq!(data["fields"], json!({"SomeSecret": {"redacted_bytes": 3}, "SomeField": 7}));
}

#[test]
fn invalid_check_ins_fail_precisely() {
    let cases: [(&str, &str); 8] = [
        ("invalid/checkin_missing_message_type.plist", "missing_message_type"),
        ("invalid/checkin_no_device_identifier.plist", "no_device_identifier"),
        ("invalid/checkin_token_wrong_type.plist", "wrong_type"),
        ("invalid/checkin_token_update_missing_push_magic.plist", "missing_field"),
        ("invalid/checkin_shared_ipad_without_short_name.plist", "no_shared_ipad_user"),
        ("invalid/checkin_message_type_integer.plist", "wrong_type"),
        ("invalid/top_level_array.plist", "not_dictionary"),
        ("invalid/not_a_plist.txt", "not_plist"),
    ];
    for (rel, reason) in cases {
        let err = decode_checkin(&own(rel)).expect_err(rel);
        assert_eq!(err.reason(), reason, "{rel}: {err}");
    }
    let err = decode_checkin(&own("invalid/checkin_token_wrong_type.plist")).unwrap_err();
    assert!(matches!(err, DecodeError::WrongType { field: "Token", expected: "data", found: "string" }), "{err:?}");
    let err = decode_checkin(&own("invalid/checkin_token_update_missing_push_magic.plist")).unwrap_err();
    assert!(matches!(err, DecodeError::MissingField { field: "PushMagic" }), "{err:?}");
    assert_eq!(decode_checkin(b"").unwrap_err().reason(), "not_plist");
}
