//! The development PKI: what it issues is what clients and `openssl verify` expect.

mod common;

use std::{cmp::Ordering, net::IpAddr};

use common::{Ca, DAY, NOW, openssl_cli, run_openssl, write};
use mdm_certs::{
    IdentityError, TrustAnchors, X509,
    devpki::{self, BACKDATE_SECONDS, DevPkiError, SubjectAltName},
};
use openssl::{
    asn1::Asn1Time,
    nid::Nid,
    stack::Stack,
    x509::{
        X509ExtendedKeyUsage, X509KeyUsage, X509PurposeId, X509StoreContext, store::X509StoreBuilder,
        verify::X509VerifyParam,
    },
};

fn same_time(t: &openssl::asn1::Asn1TimeRef, unix: i64) -> bool {
    t.compare(&Asn1Time::from_unix(unix).unwrap()).unwrap() == Ordering::Equal
}

fn server_names() -> Vec<SubjectAltName> {
    vec![
        SubjectAltName::Dns("mdm.example.test".into()),
        SubjectAltName::Ip("127.0.0.1".parse().unwrap()),
        SubjectAltName::Ip("::1".parse().unwrap()),
    ]
}

/// What `openssl verify -purpose sslserver -verify_hostname/-verify_ip -attime` does, through the API.
fn verify_server(ca: &X509, cert: &X509, host: Option<&str>, ip: Option<IpAddr>) -> Result<(), String> {
    let mut store = X509StoreBuilder::new().unwrap();
    store.add_cert(ca.clone()).unwrap();
    let mut param = X509VerifyParam::new().unwrap();
    param.set_time(NOW);
    if let Some(host) = host {
        param.set_host(host).unwrap();
    }
    if let Some(ip) = ip {
        param.set_ip(ip).unwrap();
    }
    store.set_param(&param).unwrap();
    store.set_purpose(X509PurposeId::SSL_SERVER).unwrap();
    let store = store.build();
    let mut ctx = X509StoreContext::new().unwrap();
    ctx.init(&store, cert, &Stack::new().unwrap(), |c| {
        Ok(if c.verify_cert()? { Ok(()) } else { Err(c.error().error_string().to_string()) })
    })
    .unwrap()
}

#[test]
fn ca_is_a_self_signed_ca_with_the_requested_validity() {
    let key = devpki::generate_key().unwrap();
    let ca = devpki::create_ca(&key, "Gateway Dev CA", NOW, 3650, &[0x42, 0x01]).unwrap();
    assert!(ca.verify(&key).unwrap(), "self-signature");
    assert_eq!(ca.issued(&ca), openssl::x509::X509VerifyResult::OK);
    assert_eq!(ca.key_usage(), Some(X509KeyUsage::KEY_CERT_SIGN | X509KeyUsage::CRL_SIGN));
    assert!(ca.subject_key_id().is_some());
    assert_eq!(ca.extended_key_usage(), None);
    assert_eq!(ca.version(), 2);
    assert!(same_time(ca.not_before(), NOW - BACKDATE_SECONDS));
    assert!(same_time(ca.not_after(), NOW + 3650 * DAY));
    assert_eq!(ca.serial_number().to_bn().unwrap().to_vec(), vec![0x42, 0x01]);
    let cn = ca.subject_name().entries_by_nid(Nid::COMMONNAME).next().unwrap();
    assert_eq!(cn.data().to_string().unwrap(), "Gateway Dev CA");
}

#[test]
fn ca_extensions_as_openssl_prints_them() {
    let Some(cli) = openssl_cli() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = devpki::generate_key().unwrap();
    let ca = devpki::create_ca(&key, "Gateway Dev CA", NOW, 3650, &[1]).unwrap();
    write(dir.path(), "ca.pem", devpki::to_pem(&ca));
    let text = run_openssl(cli, dir.path(), &["x509", "-in", "ca.pem", "-noout", "-ext", "basicConstraints,keyUsage"]);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("X509v3 Basic Constraints: critical"), "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
}

#[test]
fn server_certificate_verifies_for_its_names_only() {
    let ca = Ca::root("Gateway Dev CA");
    let key = devpki::generate_key().unwrap();
    let cert = devpki::issue_server_certificate(&ca.cert, &ca.key, &key, &server_names(), NOW, 825, &[3]).unwrap();
    assert_eq!(cert.extended_key_usage(), Some(X509ExtendedKeyUsage::SSL_SERVER));
    assert_eq!(cert.key_usage(), Some(X509KeyUsage::DIGITAL_SIGNATURE));
    assert_eq!(cert.authority_key_id().unwrap().as_slice(), ca.cert.subject_key_id().unwrap().as_slice());
    verify_server(&ca.cert, &cert, Some("mdm.example.test"), None).unwrap();
    verify_server(&ca.cert, &cert, None, Some("127.0.0.1".parse().unwrap())).unwrap();
    verify_server(&ca.cert, &cert, None, Some("::1".parse().unwrap())).unwrap();
    assert!(verify_server(&ca.cert, &cert, Some("other.example.test"), None).is_err());
    assert!(verify_server(&ca.cert, &cert, None, Some("10.0.0.1".parse().unwrap())).is_err());
    // A server certificate is not a device identity.
    let err = mdm_certs::verify_device_certificate(&cert, &[], &ca.anchors(), NOW).unwrap_err();
    assert!(matches!(err, IdentityError::NotForClientAuth), "{err:?}");
}

#[test]
fn rsa_server_certificate_has_key_encipherment() {
    let ca = Ca::root("Gateway Dev CA");
    let key = devpki::generate_rsa_key(2048).unwrap();
    let cert = devpki::issue_server_certificate(&ca.cert, &ca.key, &key, &server_names(), NOW, 825, &[3]).unwrap();
    assert_eq!(cert.key_usage(), Some(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::KEY_ENCIPHERMENT));
    verify_server(&ca.cert, &cert, Some("mdm.example.test"), None).unwrap();
}

#[test]
fn server_certificate_with_a_long_name_has_no_cn_but_verifies() {
    let ca = Ca::root("Gateway Dev CA");
    let key = devpki::generate_key().unwrap();
    let long = format!("{}.example.test", "a".repeat(60));
    let names = [SubjectAltName::Dns(long.clone())];
    let cert = devpki::issue_server_certificate(&ca.cert, &ca.key, &key, &names, NOW, 30, &[3]).unwrap();
    assert_eq!(cert.subject_name().entries().count(), 0);
    verify_server(&ca.cert, &cert, Some(&long), None).unwrap();
}

#[test]
fn dev_ca_and_server_certificate_pass_openssl_verify() {
    let Some(cli) = openssl_cli() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::root("Gateway Dev CA");
    let key = devpki::generate_key().unwrap();
    let cert = devpki::issue_server_certificate(&ca.cert, &ca.key, &key, &server_names(), NOW, 825, &[3]).unwrap();
    let (device, _) = ca.device("device-1");
    write(dir.path(), "ca.pem", devpki::to_pem(&ca.cert));
    write(dir.path(), "server.pem", devpki::to_pem(&cert));
    write(dir.path(), "device.pem", devpki::to_pem(&device));
    let at = NOW.to_string();
    let common = ["verify", "-x509_strict", "-attime", at.as_str(), "-CAfile", "ca.pem"];
    let with = |extra: &[&'static str]| -> Vec<String> { common.iter().chain(extra).map(|s| s.to_string()).collect() };
    for args in [
        with(&["-purpose", "sslserver", "-verify_hostname", "mdm.example.test", "server.pem"]),
        with(&["-purpose", "sslserver", "-verify_ip", "::1", "server.pem"]),
        with(&["-purpose", "sslclient", "device.pem"]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = String::from_utf8(run_openssl(cli, dir.path(), &args)).unwrap();
        assert!(out.contains(": OK"), "{args:?}: {out}");
    }
    // And it is not a yes-machine: the wrong host name fails.
    let out = std::process::Command::new(cli)
        .current_dir(dir.path())
        .args(with(&["-purpose", "sslserver", "-verify_hostname", "other.test", "server.pem"]))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn device_certificate_profile() {
    let ca = Ca::root("Gateway Dev CA");
    let ec = devpki::generate_key().unwrap();
    let cert = devpki::issue_device_certificate(&ca.cert, &ca.key, &ec, "UDID-1", NOW - 5, NOW + 5, &[9]).unwrap();
    assert_eq!(cert.extended_key_usage(), Some(X509ExtendedKeyUsage::SSL_CLIENT));
    assert_eq!(cert.key_usage(), Some(X509KeyUsage::DIGITAL_SIGNATURE));
    assert!(same_time(cert.not_before(), NOW - 5));
    assert!(same_time(cert.not_after(), NOW + 5));
    assert!(cert.public_key().unwrap().public_eq(&ec));
    assert_eq!(ca.cert.issued(&cert), openssl::x509::X509VerifyResult::OK);
    let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next().unwrap();
    assert_eq!(cn.data().to_string().unwrap(), "UDID-1");

    let rsa = devpki::generate_rsa_key(2048).unwrap();
    let cert = devpki::issue_device_certificate(&ca.cert, &ca.key, &rsa, "UDID-2", NOW - 5, NOW + 5, &[9]).unwrap();
    assert_eq!(cert.key_usage(), Some(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::KEY_ENCIPHERMENT));
    mdm_certs::verify_device_certificate(&cert, &[], &ca.anchors(), NOW).unwrap();
}

/// For a certificate request (SCEP): the request's subject as it is, its public key, the device
/// profile otherwise; an empty subject is refused.
#[test]
fn certificate_for_a_request_keeps_subject_and_key() {
    let ca = Ca::root("Gateway Dev CA");
    let rsa = devpki::generate_rsa_key(2048).unwrap();
    let public = openssl::pkey::PKey::public_key_from_der(&rsa.public_key_to_der().unwrap()).unwrap();
    let mut name = openssl::x509::X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::COUNTRYNAME, "US").unwrap();
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Example").unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, "device ünï").unwrap();
    let name = name.build();
    let cert =
        devpki::issue_certificate_for_request(&ca.cert, &ca.key, &name, &public, NOW - 5, NOW + 5, &[7]).unwrap();
    assert_eq!(cert.subject_name().to_der().unwrap(), name.to_der().unwrap());
    assert!(cert.public_key().unwrap().public_eq(&rsa));
    assert_eq!(cert.extended_key_usage(), Some(X509ExtendedKeyUsage::SSL_CLIENT));
    assert_eq!(cert.key_usage(), Some(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::KEY_ENCIPHERMENT));
    assert!(cert.subject_alt_names().is_none());
    mdm_certs::verify_device_certificate(&cert, &[], &ca.anchors(), NOW).unwrap();

    let empty = openssl::x509::X509Name::builder().unwrap().build();
    assert!(matches!(
        devpki::issue_certificate_for_request(&ca.cert, &ca.key, &empty, &public, NOW - 5, NOW + 5, &[7]),
        Err(DevPkiError::NoNames)
    ));
}

#[test]
fn generated_ec_key_is_p256() {
    let key = devpki::generate_key().unwrap();
    let curve = key.ec_key().unwrap().group().curve_name();
    assert_eq!(curve, Some(Nid::X9_62_PRIME256V1));
}

#[test]
fn pem_round_trips() {
    let ca = Ca::root("Gateway Dev CA");
    let pem = devpki::to_pem(&ca.cert);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
    let back = devpki::parse_certificate_pem(pem.as_bytes()).unwrap();
    assert_eq!(back.to_der().unwrap(), ca.cert.to_der().unwrap());

    let key_pem = devpki::key_to_pem(&ca.key);
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let key = devpki::parse_private_key_pem(key_pem.as_bytes()).unwrap();
    assert!(key.public_eq(&ca.key));

    assert!(matches!(devpki::parse_certificate_pem(b"nope"), Err(DevPkiError::BadPem(_))));
    assert!(matches!(devpki::parse_private_key_pem(pem.as_bytes()), Err(DevPkiError::BadPem(_))));
}

#[test]
fn trust_anchor_bundle_parsing() {
    let a = Ca::root("CA A");
    let b = Ca::root("CA B");
    let bundle = format!("{}{}{}", devpki::to_pem(&a.cert), devpki::key_to_pem(&a.key), devpki::to_pem(&b.cert));
    let roots = TrustAnchors::from_pem_bundle(bundle.as_bytes()).unwrap();
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[1].to_der().unwrap(), b.cert.to_der().unwrap());
    let err = TrustAnchors::from_pem_bundle(b"").unwrap_err();
    assert!(matches!(err, IdentityError::EmptyPemBundle), "{err:?}");
    let broken = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let err = TrustAnchors::from_pem_bundle(broken.as_bytes()).unwrap_err();
    assert!(matches!(err, IdentityError::BadPem), "{err:?}");
}

#[test]
fn serial_numbers_are_checked() {
    let key = devpki::generate_key().unwrap();
    let mut twenty = [0x7f_u8; 20];
    devpki::create_ca(&key, "CA", NOW, 1, &twenty).unwrap();
    twenty[0] = 0x80;
    for bad in [&[][..], &[0, 0][..], &[1; 21][..], &twenty[..]] {
        let err = devpki::create_ca(&key, "CA", NOW, 1, bad).unwrap_err();
        assert!(matches!(err, DevPkiError::InvalidSerial), "{bad:?}: {err:?}");
    }
}

#[test]
fn caller_mistakes_have_precise_errors() {
    let ca = Ca::root("CA");
    let key = devpki::generate_key().unwrap();
    let other = devpki::generate_key().unwrap();
    let err = devpki::issue_device_certificate(&ca.cert, &ca.key, &key, "d", NOW, NOW, &[1]).unwrap_err();
    assert!(matches!(err, DevPkiError::InvalidValidity), "{err:?}");
    let err = devpki::issue_device_certificate(&ca.cert, &other, &key, "d", NOW, NOW + 1, &[1]).unwrap_err();
    assert!(matches!(err, DevPkiError::KeyMismatch), "{err:?}");
    for cn in ["", &"x".repeat(65)] {
        let err = devpki::issue_device_certificate(&ca.cert, &ca.key, &key, cn, NOW, NOW + 1, &[1]).unwrap_err();
        assert!(matches!(err, DevPkiError::InvalidCommonName), "{cn:?}: {err:?}");
    }
    let err = devpki::issue_server_certificate(&ca.cert, &ca.key, &key, &[], NOW, 1, &[1]).unwrap_err();
    assert!(matches!(err, DevPkiError::NoNames), "{err:?}");
    for bits in [1024, 2047, 16384] {
        let err = devpki::generate_rsa_key(bits).unwrap_err();
        assert!(matches!(err, DevPkiError::RsaKeySize { .. }), "{bits}: {err:?}");
    }
    let err = devpki::create_ca(&key, "CA", i64::MAX - 10, 1, &[1]).unwrap_err();
    assert!(matches!(err, DevPkiError::TimeOutOfRange), "{err:?}");
    let err = devpki::create_ca(&key, "CA", 253_402_300_800, 1, &[1]).unwrap_err(); // year 10000
    assert!(matches!(err, DevPkiError::TimeOutOfRange), "{err:?}");
}
