//! The enrollment binding value.

mod common;

use common::{Ca, openssl_cli, run_openssl, write};
use mdm_certs::fingerprint_sha256;
use openssl::hash::{MessageDigest, hash};

#[test]
fn fingerprint_is_sha256_of_der_in_lowercase_hex() {
    let (cert, _) = Ca::root("Test CA").device("device-1");
    let expected = hex::encode(hash(MessageDigest::sha256(), &cert.to_der().unwrap()).unwrap());
    let got = fingerprint_sha256(&cert);
    assert_eq!(got, expected);
    assert_eq!(got.len(), 64);
    assert!(got.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}

#[test]
fn different_certificates_same_key_have_different_fingerprints() {
    let ca = Ca::root("Test CA");
    let key = mdm_certs::devpki::generate_key().unwrap();
    let a = mdm_certs::devpki::issue_device_certificate(&ca.cert, &ca.key, &key, "d", 0, 100, &[1]).unwrap();
    let b = mdm_certs::devpki::issue_device_certificate(&ca.cert, &ca.key, &key, "d", 0, 100, &[2]).unwrap();
    assert_ne!(fingerprint_sha256(&a), fingerprint_sha256(&b));
}

#[test]
fn fingerprint_matches_openssl_cli() {
    let Some(cli) = openssl_cli() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = Ca::root("Test CA").device("device-1");
    write(dir.path(), "cert.pem", cert.to_pem().unwrap());
    let out = run_openssl(cli, dir.path(), &["x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha256"]);
    // "sha256 Fingerprint=AB:CD:..."
    let out = String::from_utf8(out).unwrap();
    let hex_part = out.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(fingerprint_sha256(&cert), hex_part);
}
