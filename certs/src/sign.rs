//! Making CMS SignedData: a detached `Mdm-Signature` value, for emulated devices and tests, and an
//! attached signature around content the gateway hands out (the enrollment profile). Does not pick
//! the key or certificate.

use openssl::{
    error::ErrorStack,
    pkcs7::{Pkcs7, Pkcs7Flags},
    pkey::{PKeyRef, Private},
    stack::Stack,
    x509::{X509, X509Ref},
};

use crate::b64;

/// Signing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The private key is not the one certified by the signer certificate.
    #[error("private key does not match the signer certificate")]
    KeyMismatch,
    /// openssl could not sign (unsupported key type, allocation).
    #[error("openssl failed to sign: {0}")]
    Crypto(#[from] ErrorStack),
}

/// Base64 of a detached PKCS#7 SignedData over `body`, including the signer certificate.
pub fn sign_detached(cert: &X509Ref, key: &PKeyRef<Private>, body: &[u8]) -> Result<String, SignError> {
    sign_detached_with_chain(cert, key, &[], body)
}

/// Like [`sign_detached`], also carrying `chain` (intermediates) in the CMS, as a device whose identity
/// was issued by an intermediate CA does.
///
/// No signed attributes are added (`NOATTR`): openssl would otherwise stamp a signingTime from the
/// system clock, which this crate must not read, and RSA signatures stay deterministic.
pub fn sign_detached_with_chain(
    cert: &X509Ref,
    key: &PKeyRef<Private>,
    chain: &[X509],
    body: &[u8],
) -> Result<String, SignError> {
    if !cert.public_key()?.public_eq(key) {
        return Err(SignError::KeyMismatch);
    }
    let mut extra = Stack::new()?;
    for c in chain {
        extra.push(c.clone())?;
    }
    let flags = Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY | Pkcs7Flags::NOATTR;
    let p7 = Pkcs7::sign(cert, key, &extra, body, flags)?;
    Ok(b64::encode(&p7.to_der()?))
}

/// DER of a PKCS#7/CMS SignedData that *contains* `content` (attached, not detached), signed with
/// `key`, carrying `cert` and `chain` (intermediates, optionally the root) so a verifier can build
/// the path. This is how a signed configuration profile (`.mobileconfig`) is packaged.
///
/// `BINARY`: the content is signed byte for byte (a plist must not be canonicalised as MIME text).
/// `NOATTR`: no signed attributes, so openssl does not stamp a signingTime from the system clock,
/// which this crate must not read; the signature then covers the content directly (RFC 5652 §5.4),
/// which CMS verifiers (openssl, NSS-derived ones) accept.
pub fn sign_attached(
    cert: &X509Ref,
    key: &PKeyRef<Private>,
    chain: &[X509],
    content: &[u8],
) -> Result<Vec<u8>, SignError> {
    if !cert.public_key()?.public_eq(key) {
        return Err(SignError::KeyMismatch);
    }
    let mut extra = Stack::new()?;
    for c in chain {
        extra.push(c.clone())?;
    }
    let p7 = Pkcs7::sign(cert, key, &extra, content, Pkcs7Flags::BINARY | Pkcs7Flags::NOATTR)?;
    Ok(p7.to_der()?)
}
