//! Why the development PKI could not make a key or certificate. These are caller mistakes or openssl
//! failures; nothing here comes from a device.

use openssl::error::ErrorStack;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevPkiError {
    /// Serial must be 1..=20 bytes (RFC 5280 §4.1.2.2, as a positive DER INTEGER) and not zero.
    #[error("serial number must be a positive integer of at most 20 octets")]
    InvalidSerial,
    /// notAfter must be after notBefore.
    #[error("validity period is empty or reversed")]
    InvalidValidity,
    /// A time before 1970 or after 9999-12-31T23:59:59Z (the end of X.509 GeneralizedTime).
    #[error("time out of range")]
    TimeOutOfRange,
    /// commonName must be 1..=64 characters (RFC 5280 ub-common-name).
    #[error("common name must be 1 to 64 characters")]
    InvalidCommonName,
    /// A server certificate needs at least one subjectAltName.
    #[error("server certificate needs at least one subject alternative name")]
    NoNames,
    /// The private key is not the one certified by the CA certificate.
    #[error("CA private key does not match the CA certificate")]
    KeyMismatch,
    /// RSA keys must be 2048..=8192 bits and a multiple of 8.
    #[error("unsupported RSA key size {bits}")]
    RsaKeySize { bits: u32 },
    /// Text is not a PEM certificate / private key.
    #[error("not a PEM-encoded {0}")]
    BadPem(&'static str),
    /// openssl failed (allocation, unsupported key type).
    #[error("openssl error: {0}")]
    Crypto(#[from] ErrorStack),
}
