//! RFC 9440 `Client-Cert`: the DER certificate as an RFC 8941 structured-field Byte Sequence,
//! `:<base64>:`. Does not handle the companion `Client-Cert-Chain` list.

use openssl::x509::X509;

use crate::{IdentityError, b64};

/// Parse an RFC 9440 `Client-Cert` field value.
///
/// Surrounding spaces/tabs are allowed (RFC 8941 parsing strips them). Parameters after the byte
/// sequence (`;name=value`) are syntactically tolerated and ignored: RFC 9440 defines none and RFC 8941
/// says unknown ones are ignored. Missing `=` padding is accepted (RFC 8941 §4.2.7).
pub fn parse_client_cert(value: &str) -> Result<X509, IdentityError> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(IdentityError::EmptyCertificateHeader);
    }
    let inner = value.strip_prefix(':').ok_or(IdentityError::BadCertificateHeader)?;
    let (content, rest) = inner.split_once(':').ok_or(IdentityError::BadCertificateHeader)?;
    if !(rest.is_empty() || rest.starts_with(';')) {
        return Err(IdentityError::BadCertificateHeader);
    }
    // RFC 8941 §3.3.5: only the base64 alphabet and "=" may appear between the colons.
    if !content.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
        return Err(IdentityError::BadCertificateHeader);
    }
    if content.is_empty() {
        return Err(IdentityError::EmptyCertificateHeader);
    }
    let der = b64::decode_strict(content).map_err(|_| IdentityError::BadBase64)?;
    super::single_der_certificate(&der)
}
