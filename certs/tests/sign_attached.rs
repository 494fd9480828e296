//! `sign_attached`: CMS SignedData with the content inside, as a signed configuration profile is
//! packaged. Proven with the real `openssl cms -verify` (content out equals content in) and with the
//! openssl library; tampering and a wrong key are refused.

mod common;

use common::{Ca, openssl_cli, run_openssl, write};
use mdm_certs::devpki::{self, SubjectAltName, Usage};
use mdm_certs::{SignError, sign_attached};
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;

/// Bytes a text-mode signer would change (CR LF, NUL, high bytes).
const CONTENT: &[u8] = include_bytes!("data/binary-with-crlf.bin");

/// A TLS server certificate (EKU serverAuth) issued by an intermediate: what the gateway signs
/// profiles with.
fn server_identity(ca: &Ca) -> (Ca, openssl::x509::X509, mdm_certs::PKey<mdm_certs::Private>) {
    let inter = ca.intermediate("Test Intermediate");
    let key = devpki::generate_key().unwrap();
    let names = [SubjectAltName::Dns("mdm.example.com".into())];
    let cert = devpki::issue_server_certificate(&inter.cert, &inter.key, &key, &names, common::NOW, 30, &[9]).unwrap();
    (inter, cert, key)
}

#[test]
fn openssl_cms_verify_gives_back_the_content() {
    let Some(cli) = openssl_cli() else { return };
    let ca = Ca::root("Test CA");
    let (inter, cert, key) = server_identity(&ca);
    let der = sign_attached(&cert, &key, std::slice::from_ref(&inter.cert), CONTENT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "signed.der", &der);
    write(dir.path(), "ca.pem", ca.cert.to_pem().unwrap());
    // `-purpose any`: the signer is a TLS server certificate (EKU serverAuth), not an S/MIME one, and
    // Apple devices do not ask for emailProtection; the chain to ca.pem is still checked. The test
    // certificates are dated around common::NOW, hence `-attime`.
    let attime = common::NOW.to_string();
    let out = run_openssl(
        cli,
        dir.path(),
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            "signed.der",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "any",
            "-attime",
            &attime,
            "-binary",
        ],
    );
    assert_eq!(out, CONTENT, "the verified content is exactly what was signed");
}

#[test]
fn openssl_refuses_another_root_and_a_tampered_signature() {
    let Some(cli) = openssl_cli() else { return };
    let ca = Ca::root("Test CA");
    let other = Ca::root("Other CA");
    let (inter, cert, key) = server_identity(&ca);
    let mut der = sign_attached(&cert, &key, std::slice::from_ref(&inter.cert), CONTENT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "other.pem", other.cert.to_pem().unwrap());
    write(dir.path(), "ca.pem", ca.cert.to_pem().unwrap());
    write(dir.path(), "signed.der", &der);
    let attime = common::NOW.to_string();
    let verify = |ca_file: &str| {
        std::process::Command::new(cli)
            .current_dir(dir.path())
            .args(["cms", "-verify", "-inform", "DER", "-in", "signed.der", "-CAfile", ca_file])
            .args(["-purpose", "any", "-attime", &attime, "-binary"])
            .output()
            .unwrap()
    };
    assert!(verify("ca.pem").status.success());
    assert!(!verify("other.pem").status.success(), "a signer that does not chain to the CA file is refused");
    // Flip one byte of the content inside the CMS.
    let at = der.windows(CONTENT.len()).position(|w| w == CONTENT).expect("content is attached");
    der[at] ^= 0x01;
    write(dir.path(), "signed.der", &der);
    let out = verify("ca.pem");
    assert!(!out.status.success(), "tampered content is refused");
}

#[test]
fn openssl_library_verifies_and_carries_the_chain() {
    let ca = Ca::root("Test CA");
    let (inter, cert, key) = server_identity(&ca);
    let der = sign_attached(&cert, &key, std::slice::from_ref(&inter.cert), CONTENT).unwrap();
    let p7 = Pkcs7::from_der(&der).unwrap();
    let carried: Vec<Vec<u8>> =
        p7.signed().unwrap().certificates().unwrap().iter().map(|c| c.to_der().unwrap()).collect();
    assert!(carried.contains(&cert.to_der().unwrap()));
    assert!(carried.contains(&inter.cert.to_der().unwrap()));
    let store = X509StoreBuilder::new().unwrap().build();
    let mut out = Vec::new();
    // Signature only (NOVERIFY): the chain is what the openssl CLI test above checks.
    p7.verify(&Stack::new().unwrap(), &store, None, Some(&mut out), Pkcs7Flags::NOVERIFY | Pkcs7Flags::BINARY).unwrap();
    assert_eq!(out, CONTENT);
}

#[test]
fn rsa_signer_works_too() {
    let ca = Ca::root("Test CA");
    let key = devpki::generate_rsa_key(2048).unwrap();
    let profile = devpki::LeafProfile {
        common_name: Some("signer"),
        names: &[],
        usage: Usage::ServerAuth,
        not_before: common::NOW - 10,
        not_after: common::NOW + 10,
        serial: &[3],
    };
    let cert = devpki::issue_leaf_certificate(&ca.cert, &ca.key, &key, &profile).unwrap();
    let der = sign_attached(&cert, &key, &[], CONTENT).unwrap();
    let p7 = Pkcs7::from_der(&der).unwrap();
    let mut out = Vec::new();
    let store = X509StoreBuilder::new().unwrap().build();
    p7.verify(&Stack::new().unwrap(), &store, None, Some(&mut out), Pkcs7Flags::NOVERIFY | Pkcs7Flags::BINARY).unwrap();
    assert_eq!(out, CONTENT);
}

#[test]
fn key_of_another_certificate_is_refused() {
    let ca = Ca::root("Test CA");
    let (_, cert, _) = server_identity(&ca);
    let other = devpki::generate_key().unwrap();
    assert!(matches!(sign_attached(&cert, &other, &[], CONTENT), Err(SignError::KeyMismatch)));
}
