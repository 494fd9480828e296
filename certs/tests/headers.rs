//! Certificates forwarded by a TLS-terminating proxy.

mod common;

use base64::Engine as _;
use common::Ca;
use mdm_certs::{
    IdentityError, X509,
    header::{parse_client_cert, parse_nginx_escaped_pem},
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

fn der(cert: &X509) -> Vec<u8> {
    cert.to_der().unwrap()
}

fn sf_binary(bytes: &[u8]) -> String {
    format!(":{}:", base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[test]
fn rfc9440_client_cert_parses_the_same_certificate() {
    let (cert, _) = Ca::root("Test CA").device("device-1");
    let parsed = parse_client_cert(&sf_binary(&der(&cert))).unwrap();
    assert_eq!(der(&parsed), der(&cert));
}

#[test]
fn rfc9440_tolerates_surrounding_space_parameters_and_missing_padding() {
    let (cert, _) = Ca::root("Test CA").device("device-1");
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(der(&cert));
    for value in [format!("  :{b64}: "), format!(":{b64}:;a=1;b"), format!("\t:{b64}:")] {
        let parsed = parse_client_cert(&value).unwrap_or_else(|e| panic!("{value:?}: {e:?}"));
        assert_eq!(der(&parsed), der(&cert));
    }
}

#[test]
fn rfc9440_malformed_values_are_refused() {
    let (cert, _) = Ca::root("Test CA").device("device-1");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der(&cert));
    let cases = [
        b64.clone(),             // no colons
        format!(":{b64}"),       // unterminated
        format!("{b64}:"),       // no opening colon
        format!(":{b64}:extra"), // junk after the item
        format!(":{b64}-_:"),    // URL-safe alphabet is not sf-binary
        format!(": {b64}:"),     // whitespace inside
        format!("\"{b64}\""),    // a string, not bytes
    ];
    for value in cases {
        let err = parse_client_cert(&value).unwrap_err();
        assert!(matches!(err, IdentityError::BadCertificateHeader), "{value:?}: {err:?}");
        assert_eq!(err.reason(), "bad_certificate_header");
    }
}

#[test]
fn rfc9440_bytes_that_are_not_one_certificate_are_refused() {
    let (cert, _) = Ca::root("Test CA").device("device-1");
    let err = parse_client_cert(&sf_binary(b"definitely not DER")).unwrap_err();
    assert!(matches!(err, IdentityError::BadCertificateDer), "{err:?}");
    let mut trailing = der(&cert);
    trailing.extend_from_slice(&[0, 0]);
    let err = parse_client_cert(&sf_binary(&trailing)).unwrap_err();
    assert!(matches!(err, IdentityError::BadCertificateDer), "{err:?}");
    let err = parse_client_cert(":A:").unwrap_err(); // one base64 char cannot encode a whole byte
    assert!(matches!(err, IdentityError::BadBase64), "{err:?}");
}

#[test]
fn rfc9440_empty_is_empty() {
    for value in ["", "  ", "::"] {
        let err = parse_client_cert(value).unwrap_err();
        assert!(matches!(err, IdentityError::EmptyCertificateHeader), "{value:?}: {err:?}");
    }
}

/// What nginx's ngx_escape_uri(NGX_ESCAPE_URI_COMPONENT) leaves alone: unreserved characters.
const NGINX_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[test]
fn nginx_escaped_pem_parses_the_same_certificate() {
    let (cert, _) = Ca::root("Test CA").device("device-1");
    let pem = String::from_utf8(cert.to_pem().unwrap()).unwrap();
    let escaped = utf8_percent_encode(&pem, NGINX_COMPONENT).to_string();
    assert!(escaped.starts_with("-----BEGIN%20CERTIFICATE-----%0A"), "{escaped}");
    let parsed = parse_nginx_escaped_pem(&escaped).unwrap();
    assert_eq!(der(&parsed), der(&cert));
    // Proxies that escape less (only newlines and spaces) are read the same way.
    let light = pem.replace('\n', "%0A").replace(' ', "%20");
    assert_eq!(der(&parse_nginx_escaped_pem(&light).unwrap()), der(&cert));
}

#[test]
fn nginx_bad_values_are_refused() {
    let err = parse_nginx_escaped_pem("").unwrap_err();
    assert!(matches!(err, IdentityError::EmptyCertificateHeader), "{err:?}");
    let err = parse_nginx_escaped_pem("not%20a%20certificate").unwrap_err();
    assert!(matches!(err, IdentityError::BadPem), "{err:?}");
    let truncated = "-----BEGIN%20CERTIFICATE-----%0AMIIB%0A-----END%20CERTIFICATE-----%0A";
    let err = parse_nginx_escaped_pem(truncated).unwrap_err();
    assert!(matches!(err, IdentityError::BadPem), "{err:?}");
}

#[test]
fn nginx_two_certificates_are_refused() {
    let ca = Ca::root("Test CA");
    let (cert, _) = ca.device("device-1");
    let mut pem = cert.to_pem().unwrap();
    pem.extend_from_slice(&ca.cert.to_pem().unwrap());
    let escaped = utf8_percent_encode(std::str::from_utf8(&pem).unwrap(), NGINX_COMPONENT).to_string();
    let err = parse_nginx_escaped_pem(&escaped).unwrap_err();
    assert!(matches!(err, IdentityError::BadCertificateHeader), "{err:?}");
}
