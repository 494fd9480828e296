//! Certificate PEM in and out. Does not handle bundles of trust anchors
//! (see [`crate::TrustAnchors::from_pem_bundle`]).

use openssl::x509::{X509, X509Ref};

use super::DevPkiError;

/// `-----BEGIN CERTIFICATE-----` PEM.
pub fn to_pem(cert: &X509Ref) -> String {
    // Only fails if openssl cannot allocate.
    let pem = cert.to_pem().expect("openssl failed to allocate while encoding a certificate");
    String::from_utf8(pem).expect("PEM is ASCII")
}

/// The first certificate in a PEM text.
pub fn parse_certificate_pem(pem: &[u8]) -> Result<X509, DevPkiError> {
    X509::from_pem(pem).map_err(|_| DevPkiError::BadPem("certificate"))
}
