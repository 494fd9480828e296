use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509NameBuilder, X509ReqBuilder};

use super::*;
use crate::devpki;

fn rsa() -> PKey<openssl::pkey::Private> {
    devpki::generate_rsa_key(2048).expect("rsa key")
}

fn openssl_csr(key: &PKey<openssl::pkey::Private>, cn: &str) -> Vec<u8> {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", cn).expect("cn");
    let mut b = X509ReqBuilder::new().expect("req");
    b.set_subject_name(&name.build()).expect("subject");
    b.set_pubkey(key).expect("key");
    b.sign(key, MessageDigest::sha256()).expect("sign");
    b.build().to_der().expect("der")
}

#[test]
fn a_plain_openssl_request() {
    let key = rsa();
    let csr = read_certificate_request(&openssl_csr(&key, "B5B954E81FBCB94EB79BD08BE625F4EE")).expect("reads");
    assert_eq!(csr.subject, "CN=B5B954E81FBCB94EB79BD08BE625F4EE");
    assert_eq!(csr.signature_algorithm, "sha256WithRSAEncryption");
    assert_eq!(csr.device_id, None);
    assert!(csr.pkcs7_signers.is_none());
    assert!(csr.public_key.public_eq(&key));
}

#[test]
fn windows_quirks_are_read() {
    let key = rsa();
    let opts = CsrOptions {
        subject_cn: b"user@example.com!\0\0",
        signature: CsrSignature::Sha1IsoOid,
        device_id_extension: Some("6F9A1C2B3D4E5F60718293A4B5C6D7E8"),
    };
    let der = build_windows_csr(&key, &opts).expect("builds");
    // openssl's own reader still takes it, but a strict DER string reader would not: check
    // that the PrintableString really holds `!` and NUL.
    assert!(der.windows(4).any(|w| w == b"!\0\0\x30") || der.windows(3).any(|w| w == b"!\0\0"));
    let csr = read_certificate_request(&der).expect("reads");
    assert_eq!(csr.subject, r"CN=user@example.com!\x00\x00");
    assert_eq!(csr.signature_algorithm, "sha1WithRSA (ISO OID)");
    assert_eq!(csr.device_id.as_deref(), Some("6F9A1C2B3D4E5F60718293A4B5C6D7E8"));

    let ec = devpki::generate_key().expect("ec");
    let opts = CsrOptions { subject_cn: b"x", signature: CsrSignature::Sha256, device_id_extension: None };
    let csr = read_certificate_request(&build_windows_csr(&ec, &opts).expect("ec csr")).expect("ec reads");
    assert_eq!(csr.signature_algorithm, "ecdsa-with-SHA256");
}

#[test]
fn pkcs7_wrapping_reports_its_signer() {
    let key = rsa();
    let csr = openssl_csr(&key, "DEV");
    let old_key = devpki::generate_key().expect("key");
    let ca_key = devpki::generate_key().expect("ca key");
    let ca = devpki::create_ca(&ca_key, "CA", 1_700_000_000, 10, &[1]).expect("ca");
    let old = devpki::issue_device_certificate(&ca, &ca_key, &old_key, "DEV", 1_700_000_000, 1_800_000_000, &[2])
        .expect("old cert");
    let p7 = wrap_pkcs7(&csr, &old, &old_key).expect("wraps");
    let read = read_certificate_request(&p7).expect("reads");
    assert_eq!(read.der, csr);
    let signers = read.pkcs7_signers.expect("signers");
    assert_eq!(signers.len(), 1);
    assert_eq!(signers[0].to_der().expect("der"), old.to_der().expect("der"));

    // A flipped byte in the signed content: the PKCS#7 signature no longer holds.
    let pos = p7.windows(csr.len()).position(|w| w == csr.as_slice()).expect("content inside");
    let mut bad = p7.clone();
    bad[pos + csr.len() - 10] ^= 1;
    assert!(matches!(read_certificate_request(&bad), Err(CsrError::Pkcs7(_))));
}

#[test]
fn refusals() {
    let key = rsa();
    let mut der = openssl_csr(&key, "DEV");
    let last = der.len() - 1;
    der[last] ^= 0x55;
    assert_eq!(read_certificate_request(&der).expect_err("tampered"), CsrError::BadSignature);

    let good = openssl_csr(&key, "DEV");
    let sha256_rsa = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    let at = good.windows(sha256_rsa.len()).position(|w| w == sha256_rsa).expect("alg oid");
    let mut md5 = good.clone();
    md5[at + 10] = 0x04;
    assert!(matches!(read_certificate_request(&md5), Err(CsrError::UnsupportedAlgorithm(_))));

    let weak = PKey::from_rsa(Rsa::generate(1024).expect("rsa 1024")).expect("pkey");
    assert!(matches!(read_certificate_request(&openssl_csr(&weak, "DEV")), Err(CsrError::WeakKey(_))));

    for garbage in [&b""[..], b"\x30\x03\x02\x01", b"hello", b"\x04\x00"] {
        assert!(matches!(read_certificate_request(garbage), Err(CsrError::Malformed(_))), "{garbage:?}");
    }
}

#[test]
fn issued_certificates_name_the_device() {
    let ca_key = devpki::generate_key().expect("ca key");
    let ca = devpki::create_ca(&ca_key, "CA", 1_700_000_000, 10, &[1]).expect("ca");
    let key = rsa();
    let csr = read_certificate_request(&openssl_csr(&key, "whatever")).expect("reads");
    let cert =
        issue_windows_device_certificate(&ca, &ca_key, "DEVICE-1", &csr.public_key, 1_700_000_000, 1_700_086_400, &[7])
            .expect("issues");
    let cn = cert.subject_name().entries().next().expect("cn").data().to_string().expect("utf8");
    assert_eq!(cn, "DEVICE-1");
    assert!(cert.verify(&ca.public_key().expect("ca pub")).expect("verify"));
    let anchors = crate::TrustAnchors::new(vec![ca.clone()]);
    crate::verify_device_certificate(&cert, &[], &anchors, 1_700_000_100).expect("a valid client-auth identity");
    let thumb = thumbprint_sha1(&cert);
    assert_eq!(thumb.len(), 40);
    assert_eq!(thumb, hex::encode_upper(openssl::sha::sha1(&cert.to_der().expect("der"))));
    assert!(issue_windows_device_certificate(&ca, &ca_key, &"X".repeat(65), &csr.public_key, 1, 2, &[7]).is_err());
}
