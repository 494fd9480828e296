//! Device certificate acceptance: anchors, validity at an injected `now`, client-auth usage.

mod common;

use common::{Ca, DAY, NOW};
use mdm_certs::{
    IdentityError, TrustAnchors, X509, devpki::Usage, sign_detached_with_chain, verify_device_certificate,
    verify_mdm_signature,
};
use openssl::{
    asn1::Asn1Time,
    bn::BigNum,
    hash::MessageDigest,
    x509::{
        X509Builder,
        extension::{AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage},
    },
};

fn check(cert: &X509, chain: &[X509], anchors: &TrustAnchors) -> Result<(), IdentityError> {
    verify_device_certificate(cert, chain, anchors, NOW)
}

#[test]
fn device_from_the_dev_ca_is_accepted() {
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.device("device-1");
    check(&cert, &[], &ca.anchors()).unwrap();
}

#[test]
fn client_auth_only_leaf_passes() {
    // The purpose trap: openssl's S/MIME default purpose rejects clientAuth-only certificates.
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.leaf_with_usage("device-1", Usage::ClientAuth);
    let eku = cert.extended_key_usage().unwrap();
    assert_eq!(eku, openssl::x509::X509ExtendedKeyUsage::SSL_CLIENT);
    check(&cert, &[], &ca.anchors()).unwrap();
}

#[test]
fn server_auth_only_leaf_is_not_for_client_auth() {
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.leaf_with_usage("not-a-device", Usage::ServerAuth);
    let err = check(&cert, &[], &ca.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::NotForClientAuth), "{err:?}");
    assert_eq!(err.reason(), "not_for_client_auth");
}

#[test]
fn any_eku_mixed_eku_and_no_eku_pass() {
    let ca = Ca::root("Test CA");
    for usage in [Usage::AnyExtendedKeyUsage, Usage::ClientAndServerAuth, Usage::Unrestricted] {
        let (cert, _) = ca.leaf_with_usage("device-1", usage);
        check(&cert, &[], &ca.anchors()).unwrap_or_else(|e| panic!("{usage:?}: {e:?}"));
    }
}

#[test]
fn unknown_ca_is_untrusted_issuer() {
    let ours = Ca::root("Our CA");
    let theirs = Ca::root("Their CA");
    let (cert, _) = theirs.device("device-1");
    let err = check(&cert, &[], &ours.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedIssuer), "{err:?}");
    assert_eq!(err.reason(), "untrusted_issuer");
    // Carrying the foreign root as an "intermediate" does not help.
    let err = check(&cert, std::slice::from_ref(&theirs.cert), &ours.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedIssuer), "{err:?}");
}

#[test]
fn same_name_different_key_ca_is_untrusted() {
    let ours = Ca::root("Test CA");
    let impostor = Ca::root("Test CA");
    let (cert, _) = impostor.device("device-1");
    let err = check(&cert, &[], &ours.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedIssuer | IdentityError::BadCertificateSignature), "{err:?}");
}

#[test]
fn no_anchors_trusts_nothing() {
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.device("device-1");
    let err = check(&cert, &[], &TrustAnchors::new(vec![])).unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedIssuer), "{err:?}");
}

#[test]
fn expired_device_is_expired() {
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.device_valid("device-1", NOW - 10 * DAY, NOW - DAY);
    let err = check(&cert, &[], &ca.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::Expired), "{err:?}");
    assert_eq!(err.reason(), "expired");
}

#[test]
fn not_yet_valid_device_is_not_yet_valid() {
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.device_valid("device-1", NOW + DAY, NOW + 10 * DAY);
    let err = check(&cert, &[], &ca.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::NotYetValid), "{err:?}");
    assert_eq!(err.reason(), "not_yet_valid");
}

#[test]
fn time_is_the_injected_now_not_the_clock() {
    // Valid only for one day in 2001: accepted at that time, refused a day later, whatever the clock says.
    let ca_key = mdm_certs::devpki::generate_key().unwrap();
    let then = 1_000_000_000;
    let ca_cert = mdm_certs::devpki::create_ca(&ca_key, "Old CA", then, 30, &[1]).unwrap();
    let ca = Ca { cert: ca_cert, key: ca_key };
    let (cert, _) = ca.device_valid("device-1", then, then + DAY);
    verify_device_certificate(&cert, &[], &ca.anchors(), then + 60).unwrap();
    let err = verify_device_certificate(&cert, &[], &ca.anchors(), then + 2 * DAY).unwrap_err();
    assert!(matches!(err, IdentityError::Expired), "{err:?}");
}

#[test]
fn expired_ca_is_expired() {
    let ca_key = mdm_certs::devpki::generate_key().unwrap();
    let ca_cert = mdm_certs::devpki::create_ca(&ca_key, "Short CA", NOW - 10 * DAY, 5, &[1]).unwrap();
    let ca = Ca { cert: ca_cert, key: ca_key };
    let (cert, _) = ca.device("device-1");
    let err = check(&cert, &[], &ca.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::Expired), "{err:?}");
}

#[test]
fn chain_through_intermediate_carried_in_the_cms_passes() {
    let root = Ca::root("Test Root");
    let issuing = root.intermediate("Test Issuing CA");
    let (cert, key) = issuing.device("device-1");
    let body = include_bytes!("data/authenticate.plist");
    let header = sign_detached_with_chain(&cert, &key, std::slice::from_ref(&issuing.cert), body).unwrap();
    let signed = verify_mdm_signature(&header, body).unwrap();
    verify_device_certificate(&signed.signer, &signed.chain, &root.anchors(), NOW).unwrap();
    // Without the intermediate the root alone cannot reach the leaf.
    let err = verify_device_certificate(&signed.signer, &[], &root.anchors(), NOW).unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedIssuer), "{err:?}");
}

#[test]
fn intermediate_configured_as_anchor_is_enough() {
    let root = Ca::root("Test Root");
    let issuing = root.intermediate("Test Issuing CA");
    let (cert, _) = issuing.device("device-1");
    check(&cert, &[], &issuing.anchors()).unwrap();
}

#[test]
fn several_anchors_any_one_suffices() {
    let a = Ca::root("CA A");
    let b = Ca::root("CA B");
    let anchors = TrustAnchors::new(vec![a.cert.clone(), b.cert.clone()]);
    check(&b.device("device-b").0, &[], &anchors).unwrap();
    check(&a.device("device-a").0, &[], &anchors).unwrap();
}

#[test]
fn leaf_used_as_issuer_is_invalid_ca() {
    // A device certificate (CA:false) cannot issue another device certificate.
    let root = Ca::root("Test Root");
    let (fake_ca_cert, fake_ca_key) = root.device("pretend-ca");
    let fake = Ca { cert: fake_ca_cert, key: fake_ca_key };
    let (cert, _) = fake.device("device-1");
    let err = check(&cert, std::slice::from_ref(&fake.cert), &root.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::InvalidCa), "{err:?}");
}

#[test]
fn self_signed_device_is_untrusted() {
    let ca = Ca::root("device-made-this-up");
    let err = check(&ca.cert, &[], &Ca::root("Test CA").anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::UntrustedIssuer), "{err:?}");
}

/// A certificate built by hand for shapes devpki deliberately does not offer.
fn custom(issuer: &Ca, cn: &str, ca: bool, eku: Option<ExtendedKeyUsage>, ku: KeyUsage) -> Ca {
    let key = mdm_certs::devpki::generate_key().unwrap();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(99).unwrap().to_asn1_integer().unwrap()).unwrap();
    let mut name = openssl::x509::X509Name::builder().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_issuer_name(issuer.cert.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(NOW - DAY).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::from_unix(NOW + DAY).unwrap()).unwrap();
    let mut bc = BasicConstraints::new();
    bc.critical();
    if ca {
        bc.ca();
    }
    b.append_extension(bc.build().unwrap()).unwrap();
    b.append_extension(ku.build().unwrap()).unwrap();
    if let Some(eku) = eku {
        b.append_extension(eku.build().unwrap()).unwrap();
    }
    let aki = AuthorityKeyIdentifier::new().keyid(true).build(&b.x509v3_context(Some(&issuer.cert), None)).unwrap();
    b.append_extension(aki).unwrap();
    b.sign(&issuer.key, MessageDigest::sha256()).unwrap();
    Ca { cert: b.build(), key }
}

#[test]
fn intermediate_restricted_to_server_auth_is_not_for_client_auth() {
    let root = Ca::root("Test Root");
    let mut eku = ExtendedKeyUsage::new();
    eku.server_auth();
    let mut ku = KeyUsage::new();
    ku.critical().key_cert_sign();
    let tls_only = custom(&root, "TLS-only Issuing CA", true, Some(eku), ku);
    let (cert, _) = tls_only.device("device-1");
    let err = check(&cert, std::slice::from_ref(&tls_only.cert), &root.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::NotForClientAuth), "{err:?}");
}

#[test]
fn leaf_key_usage_without_digital_signature_is_not_for_client_auth() {
    let root = Ca::root("Test Root");
    let mut eku = ExtendedKeyUsage::new();
    eku.client_auth();
    let mut ku = KeyUsage::new();
    ku.critical().key_encipherment();
    let leaf = custom(&root, "encrypt-only", false, Some(eku), ku);
    let err = check(&leaf.cert, &[], &root.anchors()).unwrap_err();
    assert!(matches!(err, IdentityError::NotForClientAuth), "{err:?}");
}
