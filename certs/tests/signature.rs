//! `Mdm-Signature`: detached CMS over the exact body.

mod common;

use base64::Engine as _;
use common::{Ca, openssl_cli, run_openssl, write};
use mdm_certs::{IdentityError, sign_detached, sign_detached_with_chain, verify_mdm_signature};
use openssl::{
    pkcs7::{Pkcs7, Pkcs7Flags},
    stack::Stack,
};

const BODY: &[u8] = include_bytes!("data/authenticate.plist");
/// A body with CR LF, NUL and high bytes: a text-mode (non-BINARY) signer or verifier would change it.
const BINARY_BODY: &[u8] = include_bytes!("data/binary-with-crlf.bin");

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[test]
fn round_trip_returns_the_signer() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let header = sign_detached(&cert, &key, BODY).unwrap();
    let signed = verify_mdm_signature(&header, BODY).unwrap();
    assert_eq!(signed.signer.to_der().unwrap(), cert.to_der().unwrap());
    assert!(signed.chain.is_empty());
}

#[test]
fn round_trip_with_rsa_identity() {
    let ca = Ca::root("Test CA");
    let key = mdm_certs::devpki::generate_rsa_key(2048).unwrap();
    let cert = mdm_certs::devpki::issue_device_certificate(
        &ca.cert,
        &ca.key,
        &key,
        "rsa-device",
        common::NOW - 10,
        common::NOW + 10,
        &[7],
    )
    .unwrap();
    let header = sign_detached(&cert, &key, BODY).unwrap();
    let signed = verify_mdm_signature(&header, BODY).unwrap();
    assert_eq!(signed.signer.to_der().unwrap(), cert.to_der().unwrap());
}

#[test]
fn binary_body_is_not_canonicalised() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let header = sign_detached(&cert, &key, BINARY_BODY).unwrap();
    verify_mdm_signature(&header, BINARY_BODY).unwrap();
    // Same bytes with CR LF turned into LF (what text-mode canonicalisation would blur) must fail.
    let lf: Vec<u8> = BINARY_BODY.iter().copied().filter(|b| *b != b'\r').collect();
    assert!(matches!(verify_mdm_signature(&header, &lf), Err(IdentityError::SignatureInvalid)));
}

#[test]
fn signature_over_other_bytes_is_invalid() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let header = sign_detached(&cert, &key, BODY).unwrap();
    let mut tampered = BODY.to_vec();
    let last = tampered.len() - 2;
    tampered[last] ^= 0x01;
    let err = verify_mdm_signature(&header, &tampered).unwrap_err();
    assert!(matches!(err, IdentityError::SignatureInvalid), "{err:?}");
    assert_eq!(err.reason(), "signature_invalid");
    assert!(matches!(verify_mdm_signature(&header, b""), Err(IdentityError::SignatureInvalid)));
}

#[test]
fn header_with_line_breaks_and_spaces_verifies() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let header = sign_detached(&cert, &key, BODY).unwrap();
    let wrapped: String =
        header.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\r\n ");
    assert!(wrapped.contains('\n'));
    verify_mdm_signature(&format!(" {wrapped}\n"), BODY).unwrap();
    // Missing padding is tolerated too.
    verify_mdm_signature(header.trim_end_matches('='), BODY).unwrap();
}

#[test]
fn garbage_base64_is_bad_base64() {
    let err = verify_mdm_signature("this is *not* base64!", BODY).unwrap_err();
    assert!(matches!(err, IdentityError::BadBase64), "{err:?}");
    assert_eq!(err.reason(), "bad_base64");
}

#[test]
fn base64_of_non_cms_is_not_cms() {
    let err = verify_mdm_signature(&b64(b"hello, this is not DER"), BODY).unwrap_err();
    assert!(matches!(err, IdentityError::NotCms), "{err:?}");
    // A certificate is DER but not a ContentInfo.
    let ca = Ca::root("Test CA");
    let err = verify_mdm_signature(&b64(&ca.cert.to_der().unwrap()), BODY).unwrap_err();
    assert!(matches!(err, IdentityError::NotCms), "{err:?}");
    assert!(matches!(verify_mdm_signature("", BODY), Err(IdentityError::NotCms)));
}

#[test]
fn pkcs7_data_is_not_signed_data() {
    // ContentInfo { contentType id-data (1.2.840.113549.1.7.1), content [0] EXPLICIT OCTET STRING "hi" }
    let mut der = vec![0x30, 0x11, 0x06, 0x09];
    der.extend_from_slice(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]);
    der.extend_from_slice(&[0xa0, 0x04, 0x04, 0x02, b'h', b'i']);
    let err = verify_mdm_signature(&b64(&der), BODY).unwrap_err();
    assert!(matches!(err, IdentityError::NotSignedData), "{err:?}");
}

#[test]
fn signer_certificate_left_out_is_no_signer_certificate() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let flags = Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY | Pkcs7Flags::NOCERTS;
    let p7 = Pkcs7::sign(&cert, &key, &Stack::new().unwrap(), BODY, flags).unwrap();
    let err = verify_mdm_signature(&b64(&p7.to_der().unwrap()), BODY).unwrap_err();
    assert!(matches!(err, IdentityError::NoSignerCertificate), "{err:?}");
}

#[test]
fn signed_attributes_are_checked_against_the_body() {
    // Real devices include signed attributes (contentType, messageDigest, signingTime).
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let flags = Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY;
    let p7 = Pkcs7::sign(&cert, &key, &Stack::new().unwrap(), BODY, flags).unwrap();
    let header = b64(&p7.to_der().unwrap());
    verify_mdm_signature(&header, BODY).unwrap();
    let err = verify_mdm_signature(&header, &BODY[1..]).unwrap_err();
    assert!(matches!(err, IdentityError::SignatureInvalid), "{err:?}");
}

#[test]
fn embedded_content_does_not_replace_the_body() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let p7 = Pkcs7::sign(&cert, &key, &Stack::new().unwrap(), BODY, Pkcs7Flags::BINARY).unwrap();
    let header = b64(&p7.to_der().unwrap());
    verify_mdm_signature(&header, BODY).unwrap();
    let err = verify_mdm_signature(&header, b"a different body").unwrap_err();
    assert!(matches!(err, IdentityError::SignatureInvalid), "{err:?}");
}

#[test]
fn intermediates_are_returned_as_chain_not_as_signer() {
    let root = Ca::root("Test Root");
    let issuing = root.intermediate("Test Issuing CA");
    let (cert, key) = issuing.device("device-1");
    let header = sign_detached_with_chain(&cert, &key, std::slice::from_ref(&issuing.cert), BODY).unwrap();
    let signed = verify_mdm_signature(&header, BODY).unwrap();
    assert_eq!(signed.signer.to_der().unwrap(), cert.to_der().unwrap());
    assert_eq!(signed.chain.len(), 1);
    assert_eq!(signed.chain[0].to_der().unwrap(), issuing.cert.to_der().unwrap());
}

#[test]
fn signing_with_the_wrong_key_is_refused() {
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.device("device-1");
    let other = mdm_certs::devpki::generate_key().unwrap();
    let err = sign_detached(&cert, &other, BODY).unwrap_err();
    assert!(matches!(err, mdm_certs::SignError::KeyMismatch), "{err:?}");
}

#[test]
fn verifies_signature_made_by_openssl_cms_cli() {
    let Some(cli) = openssl_cli() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    write(dir.path(), "cert.pem", cert.to_pem().unwrap());
    write(dir.path(), "key.pem", key.private_key_to_pem_pkcs8().unwrap());
    write(dir.path(), "body.bin", BINARY_BODY);
    for tool in ["cms", "smime"] {
        let der = run_openssl(
            cli,
            dir.path(),
            &[
                tool, "-sign", "-binary", "-outform", "DER", "-in", "body.bin", "-signer", "cert.pem", "-inkey",
                "key.pem",
            ],
        );
        let signed = verify_mdm_signature(&b64(&der), BINARY_BODY).unwrap();
        assert_eq!(signed.signer.to_der().unwrap(), cert.to_der().unwrap(), "{tool}");
        assert!(matches!(verify_mdm_signature(&b64(&der), BODY), Err(IdentityError::SignatureInvalid)));
    }
}

#[test]
fn two_signers_are_refused() {
    let Some(cli) = openssl_cli() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::root("Test CA");
    let (a, a_key) = ca.device("device-a");
    let (b, b_key) = ca.device("device-b");
    write(dir.path(), "a.pem", a.to_pem().unwrap());
    write(dir.path(), "a.key", a_key.private_key_to_pem_pkcs8().unwrap());
    write(dir.path(), "b.pem", b.to_pem().unwrap());
    write(dir.path(), "b.key", b_key.private_key_to_pem_pkcs8().unwrap());
    write(dir.path(), "body.plist", BODY);
    let der = run_openssl(
        cli,
        dir.path(),
        &[
            "cms",
            "-sign",
            "-binary",
            "-outform",
            "DER",
            "-in",
            "body.plist",
            "-signer",
            "a.pem",
            "-inkey",
            "a.key",
            "-signer",
            "b.pem",
            "-inkey",
            "b.key",
        ],
    );
    let err = verify_mdm_signature(&b64(&der), BODY).unwrap_err();
    assert!(matches!(err, IdentityError::MultipleSigners), "{err:?}");
}

#[test]
fn signed_data_without_signers_is_no_signers() {
    let Some(cli) = openssl_cli() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::root("Test CA");
    write(dir.path(), "ca.pem", ca.cert.to_pem().unwrap());
    // crl2pkcs7 makes a "certs-only" SignedData: certificates, no SignerInfo.
    let der = run_openssl(cli, dir.path(), &["crl2pkcs7", "-nocrl", "-certfile", "ca.pem", "-outform", "DER"]);
    let err = verify_mdm_signature(&b64(&der), BODY).unwrap_err();
    assert!(matches!(err, IdentityError::NoSigners), "{err:?}");
}
