//! The enrollment profile builder: the device and user variants decoded back and compared key by
//! key with the expected profiles (tests/vectors/profile/*.plist), the facts Apple's schema and the
//! gateway rely on asserted one by one, and every refused input.

mod common;

use common::own;
use mdm_apple::profile::{ACCESS_RIGHTS_ALL, PROFILE_CONTENT_TYPE};
use mdm_apple::{EnrollmentProfile, PayloadUuids, ProfileError, ProfileVariant};
use plist::{Dictionary, Value};

const UUIDS: PayloadUuids<'static> = PayloadUuids {
    profile: "0B5E2A40-1C1D-4F0E-9A61-7E0C9D3B1A01",
    mdm: "0B5E2A40-1C1D-4F0E-9A61-7E0C9D3B1A02",
    scep: "0B5E2A40-1C1D-4F0E-9A61-7E0C9D3B1A03",
    ca: "0B5E2A40-1C1D-4F0E-9A61-7E0C9D3B1A04",
};
/// Not a real certificate: the builder carries the bytes without reading them.
const CA_DER: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x2a];

fn profile(variant: &ProfileVariant) -> EnrollmentProfile<'_> {
    EnrollmentProfile {
        public_url: "https://mdm.example.com:8443/",
        topic: "com.apple.mgmt.External.0f6f3d2c-5d57-4c5e-8a3b-1f2e3d4c5b6a",
        identifier: "com.example.mdm.enrollment",
        organization: "Example Corp",
        uuids: UUIDS,
        scep_challenge: "c2VjcmV0LWNoYWxsZW5nZQ",
        scep_subject_cn: "MDM identity 0B5E2A40-1C1D-4F0E-9A61-7E0C9D3B1A01",
        scep_name: "mdm-gateway",
        ca_der: CA_DER,
        variant,
    }
}

fn decode(xml: &[u8]) -> Dictionary {
    assert!(xml.starts_with(b"<?xml"), "an XML plist");
    Value::from_reader_xml(xml).expect("plist").into_dictionary().expect("top-level dictionary")
}

fn payloads(top: &Dictionary) -> Vec<Dictionary> {
    top["PayloadContent"]
        .as_array()
        .expect("PayloadContent array")
        .iter()
        .map(|p| p.as_dictionary().expect("payload dictionary").clone())
        .collect()
}

fn keys(d: &Dictionary) -> Vec<&str> {
    let mut k: Vec<&str> = d.keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

fn s<'a>(d: &'a Dictionary, key: &str) -> &'a str {
    d.get(key).and_then(Value::as_string).unwrap_or_else(|| panic!("{key} is a string"))
}

fn int(d: &Dictionary, key: &str) -> i64 {
    d.get(key).and_then(Value::as_signed_integer).unwrap_or_else(|| panic!("{key} is an integer"))
}

fn boolean(d: &Dictionary, key: &str) -> bool {
    d.get(key).and_then(Value::as_boolean).unwrap_or_else(|| panic!("{key} is a boolean"))
}

#[test]
fn device_profile_matches_the_expected_profile() {
    let xml = profile(&ProfileVariant::Device).to_xml().expect("builds");
    let expected = decode(&own("profile/device.plist"));
    assert_eq!(decode(&xml), expected);
}

#[test]
fn user_profile_matches_the_expected_profile() {
    let variant = ProfileVariant::User { assigned_managed_apple_id: "ana@example.com".into() };
    let xml = profile(&variant).to_xml().expect("builds");
    let expected = decode(&own("profile/user.plist"));
    assert_eq!(decode(&xml), expected);
}

#[test]
fn device_profile_keys_one_by_one() {
    let top = decode(&profile(&ProfileVariant::Device).to_xml().expect("builds"));
    assert_eq!(
        keys(&top),
        [
            "PayloadContent",
            "PayloadDescription",
            "PayloadDisplayName",
            "PayloadIdentifier",
            "PayloadOrganization",
            "PayloadType",
            "PayloadUUID",
            "PayloadVersion"
        ]
    );
    assert_eq!(s(&top, "PayloadType"), "Configuration");
    assert_eq!(int(&top, "PayloadVersion"), 1);
    assert_eq!(s(&top, "PayloadIdentifier"), "com.example.mdm.enrollment");
    assert_eq!(s(&top, "PayloadUUID"), UUIDS.profile);
    assert_eq!(s(&top, "PayloadOrganization"), "Example Corp");
    assert_eq!(s(&top, "PayloadDisplayName"), "Example Corp device management");
    assert!(s(&top, "PayloadDescription").contains("Example Corp"));

    let p = payloads(&top);
    let types: Vec<&str> = p.iter().map(|d| s(d, "PayloadType")).collect();
    assert_eq!(types, ["com.apple.security.root", "com.apple.security.scep", "com.apple.mdm"]);
    for d in &p {
        assert_eq!(int(d, "PayloadVersion"), 1);
    }
    let (ca, scep, mdm) = (&p[0], &p[1], &p[2]);

    assert_eq!(
        keys(ca),
        [
            "PayloadCertificateFileName",
            "PayloadContent",
            "PayloadDisplayName",
            "PayloadIdentifier",
            "PayloadType",
            "PayloadUUID",
            "PayloadVersion"
        ]
    );
    assert_eq!(ca["PayloadContent"].as_data(), Some(CA_DER));
    assert_eq!(s(ca, "PayloadUUID"), UUIDS.ca);
    assert_eq!(s(ca, "PayloadIdentifier"), "com.example.mdm.enrollment.ca");
    assert_eq!(s(ca, "PayloadCertificateFileName"), "ca.cer");

    assert_eq!(
        keys(scep),
        ["PayloadContent", "PayloadDisplayName", "PayloadIdentifier", "PayloadType", "PayloadUUID", "PayloadVersion"]
    );
    assert_eq!(s(scep, "PayloadUUID"), UUIDS.scep);
    assert_eq!(s(scep, "PayloadIdentifier"), "com.example.mdm.enrollment.scep");
    let sc = scep["PayloadContent"].as_dictionary().expect("SCEP content dictionary");
    assert_eq!(keys(sc), ["Challenge", "Key Type", "Key Usage", "Keysize", "Name", "Subject", "URL"]);
    assert_eq!(s(sc, "URL"), "https://mdm.example.com:8443/scep");
    assert_eq!(s(sc, "Challenge"), "c2VjcmV0LWNoYWxsZW5nZQ");
    assert_eq!(int(sc, "Keysize"), 2048);
    assert_eq!(s(sc, "Key Type"), "RSA");
    assert_eq!(int(sc, "Key Usage"), 5);
    assert_eq!(s(sc, "Name"), "mdm-gateway");
    let subject = Value::Array(vec![Value::Array(vec![Value::Array(vec![
        "CN".into(),
        "MDM identity 0B5E2A40-1C1D-4F0E-9A61-7E0C9D3B1A01".into(),
    ])])]);
    assert_eq!(sc["Subject"], subject);

    assert_eq!(
        keys(mdm),
        [
            "AccessRights",
            "CheckInURL",
            "CheckOutWhenRemoved",
            "IdentityCertificateUUID",
            "PayloadDisplayName",
            "PayloadIdentifier",
            "PayloadType",
            "PayloadUUID",
            "PayloadVersion",
            "ServerCapabilities",
            "ServerURL",
            "SignMessage",
            "Topic"
        ]
    );
    assert_eq!(s(mdm, "PayloadUUID"), UUIDS.mdm);
    assert_eq!(s(mdm, "PayloadIdentifier"), "com.example.mdm.enrollment.mdm");
    assert_eq!(s(mdm, "ServerURL"), "https://mdm.example.com:8443/mdm");
    assert_eq!(s(mdm, "CheckInURL"), "https://mdm.example.com:8443/checkin");
    assert_eq!(s(mdm, "Topic"), "com.apple.mgmt.External.0f6f3d2c-5d57-4c5e-8a3b-1f2e3d4c5b6a");
    assert_eq!(s(mdm, "IdentityCertificateUUID"), s(scep, "PayloadUUID"), "the identity is the SCEP payload");
    assert!(boolean(mdm, "SignMessage"));
    assert!(boolean(mdm, "CheckOutWhenRemoved"));
    assert_eq!(int(mdm, "AccessRights"), 8191);
    assert_eq!(ACCESS_RIGHTS_ALL, (1..=4096).filter(|b: &i64| b.count_ones() == 1).sum::<i64>());
    let caps: Vec<&str> =
        mdm["ServerCapabilities"].as_array().expect("array").iter().map(|v| v.as_string().expect("string")).collect();
    assert_eq!(caps, ["com.apple.mdm.per-user-connections", "com.apple.mdm.bootstraptoken"]);
}

#[test]
fn user_profile_differs_only_where_apple_says() {
    let variant = ProfileVariant::User { assigned_managed_apple_id: "ana@example.com".into() };
    let user = decode(&profile(&variant).to_xml().expect("builds"));
    let device = decode(&profile(&ProfileVariant::Device).to_xml().expect("builds"));
    let (u, d) = (payloads(&user), payloads(&device));
    assert_eq!(u[0], d[0], "same CA payload");
    assert_eq!(u[1], d[1], "same SCEP payload");
    let (mut um, mut dm) = (u[2].clone(), d[2].clone());
    assert_eq!(s(&um, "EnrollmentMode"), "BYOD");
    assert_eq!(s(&um, "AssignedManagedAppleID"), "ana@example.com");
    assert!(!um.contains_key("AccessRights"), "ignored in User Enrollment, so left out");
    um.remove("EnrollmentMode");
    um.remove("AssignedManagedAppleID");
    dm.remove("AccessRights");
    assert_eq!(um, dm, "otherwise the same MDM payload");
    assert!(s(&user, "PayloadDescription").contains("ana@example.com"));
}

#[test]
fn public_url_without_trailing_slash_or_with_a_prefix() {
    for (url, server) in [
        ("https://mdm.example.com", "https://mdm.example.com/mdm"),
        ("https://mdm.example.com/gw//", "https://mdm.example.com/gw/mdm"),
        ("https://[::1]:8443", "https://[::1]:8443/mdm"),
    ] {
        let mut p = profile(&ProfileVariant::Device);
        p.public_url = url;
        let top = decode(&p.to_xml().unwrap_or_else(|e| panic!("{url}: {e}")));
        assert_eq!(s(&payloads(&top)[2], "ServerURL"), server);
    }
}

#[test]
fn refused_inputs() {
    let device = ProfileVariant::Device;
    let check = |f: &dyn Fn(&mut EnrollmentProfile<'_>), want: &dyn Fn(&ProfileError) -> bool| {
        let mut p = profile(&device);
        f(&mut p);
        let e = p.to_xml().expect_err("refused");
        assert!(want(&e), "unexpected error {e:?}");
    };
    for url in ["http://mdm.example.com", "https://", "https:///mdm", "https://h/?a=1", "https://h/#x", "https://a b"] {
        check(&|p| p.public_url = url, &|e| matches!(e, ProfileError::BadPublicUrl { .. }));
    }
    check(&|p| p.topic = "com.example.push", &|e| matches!(e, ProfileError::BadTopic { .. }));
    check(&|p| p.uuids.scep = "not-a-uuid", &|e| matches!(e, ProfileError::BadUuid { which: "SCEP payload", .. }));
    check(&|p| p.uuids.ca = UUIDS.scep, &|e| matches!(e, ProfileError::DuplicateUuid { .. }));
    check(&|p| p.scep_challenge = "", &|e| matches!(e, ProfileError::BadField { field: "SCEP challenge" }));
    check(&|p| p.organization = "Evil\nCorp", &|e| matches!(e, ProfileError::BadField { field: "organization" }));
    check(&|p| p.ca_der = &[], &|e| matches!(e, ProfileError::NoCaCertificate));
    for id in ["ana", "ana@", "@example.com", "ana@localhost", "ana @example.com"] {
        let user = ProfileVariant::User { assigned_managed_apple_id: id.into() };
        let e = profile(&user).to_xml().expect_err(id);
        assert!(matches!(e, ProfileError::BadManagedAppleId { .. }), "{id}: {e:?}");
    }
}

#[test]
fn content_type_is_apples() {
    assert_eq!(PROFILE_CONTENT_TYPE, "application/x-apple-aspen-config");
}
