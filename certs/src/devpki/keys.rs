//! Key generation and key PEM. The generation functions are the one place this crate asks for fresh
//! randomness (openssl's DRBG); the caller decides when.

use openssl::{
    ec::{EcGroup, EcKey},
    nid::Nid,
    pkey::{PKey, PKeyRef, Private},
    rsa::Rsa,
};

use super::DevPkiError;

/// A new EC P-256 (prime256v1) key, encoded with the named curve.
pub fn generate_key() -> Result<PKey<Private>, DevPkiError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

/// A new RSA key (Apple devices commonly enroll with RSA 2048 identities).
pub fn generate_rsa_key(bits: u32) -> Result<PKey<Private>, DevPkiError> {
    // Below 2048 openssl's default security level refuses them in TLS anyway; above 8192 generation
    // takes minutes, which in a test or emulator is a bug.
    if !(2048..=8192).contains(&bits) || !bits.is_multiple_of(8) {
        return Err(DevPkiError::RsaKeySize { bits });
    }
    Ok(PKey::from_rsa(Rsa::generate(bits)?)?)
}

/// Unencrypted PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
pub fn key_to_pem(key: &PKeyRef<Private>) -> String {
    // Only fails if openssl cannot allocate.
    let pem = key.private_key_to_pem_pkcs8().expect("openssl failed to allocate while encoding a private key");
    String::from_utf8(pem).expect("PEM is ASCII")
}

/// Read an unencrypted private key in PEM (PKCS#8, or traditional RSA / EC).
pub fn parse_private_key_pem(pem: &[u8]) -> Result<PKey<Private>, DevPkiError> {
    PKey::private_key_from_pem(pem).map_err(|_| DevPkiError::BadPem("private key"))
}
