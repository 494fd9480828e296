//! nginx `$ssl_client_escaped_cert`: the PEM certificate, URL-encoded. Does not accept the deprecated
//! `$ssl_client_cert` (tab-indented PEM), which breaks header framing and which nginx itself replaced.

use openssl::x509::X509;
use percent_encoding::percent_decode_str;

use crate::IdentityError;

/// Parse a value produced by nginx's `$ssl_client_escaped_cert` (also what several other proxies
/// emit as "URL-encoded PEM"). Exactly one certificate is expected.
pub fn parse_nginx_escaped_pem(value: &str) -> Result<X509, IdentityError> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(IdentityError::EmptyCertificateHeader);
    }
    let pem: Vec<u8> = percent_decode_str(value).collect();
    let mut certs = X509::stack_from_pem(&pem).map_err(|_| IdentityError::BadPem)?;
    match certs.len() {
        0 => Err(IdentityError::BadPem),
        1 => certs.pop().ok_or(IdentityError::BadPem),
        // A proxy forwarding a whole chain here is misconfigured; picking one would be a guess.
        _ => Err(IdentityError::BadCertificateHeader),
    }
}
