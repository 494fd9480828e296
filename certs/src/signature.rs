//! `Mdm-Signature`: Apple devices sign each check-in and command-report body with their identity key
//! and send a detached PKCS#7/CMS SignedData, base64, in this header. This module checks that the
//! signature covers the body and says who signed. It does not check the signer's chain, validity or
//! usage (that is [`crate::verify_device_certificate`], kept separate so the caller chooses anchors and
//! time), nor whether the signer is the enrolled device (compare [`crate::fingerprint_sha256`]).

use openssl::{
    error::ErrorStack,
    pkcs7::{Pkcs7, Pkcs7Flags},
    stack::Stack,
    x509::{X509, store::X509StoreBuilder},
};

use crate::{IdentityError, SignatureParts, b64};

/// openssl's ERR_LIB_PKCS7 (err.h) and PKCS7_R_NO_SIGNERS (pkcs7err.h), both unchanged since 1.1.0;
/// openssl-sys exports neither.
const ERR_LIB_PKCS7: i32 = 33;
const PKCS7_R_NO_SIGNERS: i32 = 142;

/// Who signed a body, as carried in the CMS. Nothing here is trusted yet.
#[derive(Clone, Debug)]
pub struct SignedBy {
    /// The certificate whose key made the (verified) signature.
    pub signer: X509,
    /// Every other certificate in the CMS, in order (intermediates, possibly the root).
    pub chain: Vec<X509>,
}

/// Check a `Mdm-Signature` header value against the exact request `body`.
///
/// The value is base64 (whitespace anywhere is ignored, padding optional) of a DER PKCS#7 SignedData
/// with exactly one signer whose certificate is included. Signatures with or without signed attributes
/// are accepted. If the CMS also embeds content, the signature is still checked over `body`, never over
/// the embedded copy.
///
/// The common shape is read directly ([`SignatureParts`]); anything else, and any signature that
/// fails that way, goes through OpenSSL's PKCS#7 code, whose answer (and error) is final.
pub fn verify_mdm_signature(header_value: &str, body: &[u8]) -> Result<SignedBy, IdentityError> {
    let der = decode_signature_header(header_value)?;
    if let Some(signed) = SignatureParts::parse(&der).and_then(|parts| direct(&parts, body).ok()) {
        return Ok(signed);
    }
    verify_with_pkcs7(&der, body)
}

/// The DER inside a `Mdm-Signature` value: base64, whitespace anywhere ignored, padding optional.
pub fn decode_signature_header(header_value: &str) -> Result<Vec<u8>, IdentityError> {
    b64::decode_ignoring_whitespace(header_value).map_err(|_| IdentityError::BadBase64)
}

fn direct(parts: &SignatureParts<'_>, body: &[u8]) -> Result<SignedBy, IdentityError> {
    let signer = X509::from_der(parts.signer_der())?;
    parts.verify(&*signer.public_key()?, body)?;
    let chain = parts.chain_der().iter().map(|d| X509::from_der(d)).collect::<Result<Vec<_>, _>>()?;
    Ok(SignedBy { signer, chain })
}

fn verify_with_pkcs7(der: &[u8], body: &[u8]) -> Result<SignedBy, IdentityError> {
    let p7 = Pkcs7::from_der(der).map_err(|_| IdentityError::NotCms)?;
    let carried: Vec<X509> = match p7.signed() {
        None => return Err(IdentityError::NotSignedData),
        Some(signed) => {
            signed.certificates().map(|certs| certs.iter().map(|c| c.to_owned()).collect()).unwrap_or_default()
        }
    };

    let no_extra_certs = Stack::<X509>::new()?;
    let signers = p7.signers(&no_extra_certs, Pkcs7Flags::empty()).map_err(signer_error)?;
    let signer = match signers.len() {
        0 => return Err(IdentityError::NoSigners),
        1 => signers.get(0).map(|c| c.to_owned()).ok_or(IdentityError::NoSigners)?,
        _ => return Err(IdentityError::MultipleSigners),
    };

    // NOVERIFY: the chain is checked by verify_device_certificate with the caller's anchors and time;
    // openssl's own chain check here would use the S/MIME purpose and the system clock.
    // BINARY: the body is a plist and must be hashed byte for byte, never as canonicalised text.
    let empty_store = X509StoreBuilder::new()?.build();
    p7.verify(&no_extra_certs, &empty_store, Some(body), None, Pkcs7Flags::NOVERIFY | Pkcs7Flags::BINARY)
        .map_err(|_| IdentityError::SignatureInvalid)?;

    let chain = carried.into_iter().filter(|c| !same_cert(c, &signer)).collect();
    Ok(SignedBy { signer, chain })
}

fn signer_error(stack: ErrorStack) -> IdentityError {
    let no_signers =
        stack.errors().iter().any(|e| e.library_code() == ERR_LIB_PKCS7 && e.reason_code() == PKCS7_R_NO_SIGNERS);
    if no_signers { IdentityError::NoSigners } else { IdentityError::NoSignerCertificate }
}

fn same_cert(a: &X509, b: &X509) -> bool {
    match (a.to_der(), b.to_der()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
