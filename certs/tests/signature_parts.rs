//! The direct reading of `Mdm-Signature` ([`SignatureParts`]): it must read the shapes devices send
//! (so the fast path is really taken), agree with OpenSSL's PKCS#7 verification, and leave every
//! other shape to it.

mod common;

use base64::Engine as _;
use common::{Ca, openssl_cli, run_openssl, write};
use mdm_certs::{IdentityError, SignatureParts, decode_signature_header, sign_detached, sign_detached_with_chain};
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;

const BODY: &[u8] = include_bytes!("data/authenticate.plist");

fn der_of(header: &str) -> Vec<u8> {
    decode_signature_header(header).unwrap()
}

fn tampered() -> Vec<u8> {
    let mut t = BODY.to_vec();
    let i = t.len() - 3;
    t[i] ^= 0x20;
    t
}

#[test]
fn reads_and_verifies_p256_and_rsa_without_attributes() {
    let ca = Ca::root("Test CA");
    let (ec_cert, ec_key) = ca.device("ec-device");
    let rsa_key = mdm_certs::devpki::generate_rsa_key(2048).unwrap();
    let rsa_cert = mdm_certs::devpki::issue_device_certificate(
        &ca.cert,
        &ca.key,
        &rsa_key,
        "rsa",
        common::NOW - 10,
        common::NOW + 10,
        &[9],
    )
    .unwrap();
    for (cert, key) in [(ec_cert, ec_key), (rsa_cert, rsa_key)] {
        let der = der_of(&sign_detached(&cert, &key, BODY).unwrap());
        let parts = SignatureParts::parse(&der).expect("the common shape is read directly");
        assert_eq!(parts.signer_der(), cert.to_der().unwrap());
        assert!(parts.chain_der().is_empty());
        let public = cert.public_key().unwrap();
        parts.verify(&public, BODY).unwrap();
        assert!(matches!(parts.verify(&public, &tampered()), Err(IdentityError::SignatureInvalid)));
        assert!(matches!(parts.verify(&public, b""), Err(IdentityError::SignatureInvalid)));
    }
}

#[test]
fn signed_attributes_bind_the_body() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    // Without NOATTR, openssl adds contentType, signingTime, messageDigest and capabilities, as
    // devices do.
    let flags = Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY;
    let der = Pkcs7::sign(&cert, &key, &Stack::new().unwrap(), BODY, flags).unwrap().to_der().unwrap();
    let parts = SignatureParts::parse(&der).expect("read directly");
    let public = cert.public_key().unwrap();
    parts.verify(&public, BODY).unwrap();
    assert!(matches!(parts.verify(&public, &tampered()), Err(IdentityError::SignatureInvalid)));

    // A flipped byte inside the signed attributes (here: in signingTime's digits) breaks the
    // signature even though messageDigest still matches the body.
    let mut forged = der.clone();
    // The last UTCTime: signingTime, in the SignerInfo after the certificates' validity dates.
    let utc = forged.windows(2).rposition(|w| w == [0x17, 0x0d]).expect("UTCTime in the attributes");
    forged[utc + 3] = if forged[utc + 3] == b'1' { b'2' } else { b'1' };
    let parts = SignatureParts::parse(&forged).expect("still well-formed");
    assert!(matches!(parts.verify(&public, BODY), Err(IdentityError::SignatureInvalid)));
    assert!(matches!(mdm_certs::verify_mdm_signature(&b64(&forged), BODY), Err(IdentityError::SignatureInvalid)));
}

#[test]
fn chain_certificates_are_not_the_signer() {
    let root = Ca::root("Test Root");
    let issuing = root.intermediate("Test Issuing CA");
    let (cert, key) = issuing.device("device-1");
    let header = sign_detached_with_chain(&cert, &key, std::slice::from_ref(&issuing.cert), BODY).unwrap();
    let der = der_of(&header);
    let parts = SignatureParts::parse(&der).expect("read directly");
    assert_eq!(parts.signer_der(), cert.to_der().unwrap());
    assert_eq!(parts.chain_der(), [issuing.cert.to_der().unwrap().as_slice()]);
    parts.verify(&cert.public_key().unwrap(), BODY).unwrap();
}

#[test]
fn the_wrong_key_does_not_verify() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let (other, _) = ca.device("device-2");
    let rsa = mdm_certs::devpki::generate_rsa_key(2048).unwrap();
    let rsa_public = openssl::pkey::PKey::public_key_from_der(&rsa.public_key_to_der().unwrap()).unwrap();
    let der = der_of(&sign_detached(&cert, &key, BODY).unwrap());
    let parts = SignatureParts::parse(&der).unwrap();
    assert!(matches!(parts.verify(&other.public_key().unwrap(), BODY), Err(IdentityError::SignatureInvalid)));
    assert!(matches!(parts.verify(&rsa_public, BODY), Err(IdentityError::SignatureInvalid)), "EC signature, RSA key");
}

#[test]
fn signer_left_out_is_not_read_directly() {
    let ca = Ca::root("Test CA");
    let (cert, key) = ca.device("device-1");
    let flags = Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY | Pkcs7Flags::NOCERTS;
    let der = Pkcs7::sign(&cert, &key, &Stack::new().unwrap(), BODY, flags).unwrap().to_der().unwrap();
    assert!(SignatureParts::parse(&der).is_none());
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[test]
fn openssl_cli_shapes() {
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
    let sign = |extra: &[&str]| {
        let mut args = vec![
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
        ];
        args.extend_from_slice(extra);
        run_openssl(cli, dir.path(), &args)
    };
    // Signer named by subject key identifier, and SHA-384 / SHA-512 digests: read directly.
    for extra in [&["-keyid"][..], &["-md", "sha384"], &["-md", "sha512", "-noattr"], &["-md", "sha1"]] {
        let der = sign(extra);
        let parts = SignatureParts::parse(&der).unwrap_or_else(|| panic!("{extra:?} not read directly"));
        assert_eq!(parts.signer_der(), a.to_der().unwrap(), "{extra:?}");
        parts.verify(&a.public_key().unwrap(), BODY).unwrap();
        assert!(matches!(parts.verify(&a.public_key().unwrap(), &tampered()), Err(IdentityError::SignatureInvalid)));
    }
    // Two signers: left to OpenSSL, which names the error.
    let der = sign(&["-signer", "b.pem", "-inkey", "b.key"]);
    assert!(SignatureParts::parse(&der).is_none());
    let err = mdm_certs::verify_mdm_signature(&b64(&der), BODY).unwrap_err();
    assert!(matches!(err, IdentityError::MultipleSigners), "{err:?}");
}
