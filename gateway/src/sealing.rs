//! Secrets at rest: values the store must hold but must not hold readable (a Mac's bootstrap
//! token) are sealed here before they reach it, with AES-256-GCM (openssl) under the storage key.
//!
//! Sealed form: `0x01 ‖ nonce (12 random bytes, new for every value) ‖ ciphertext ‖ tag (16)`.
//! The associated data is `mdm-gateway/<purpose>/v1:` followed by the device id, so a value
//! copied to another device's row, or used for another purpose, does not open. What is sealed,
//! and when, is the callers' decision; key rotation is not supported (a changed key makes the
//! values sealed under the old one unreadable, which [`Sealer::open`] reports).

use mdm_core::DeviceId;
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// What a sealed value is, bound into it as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    BootstrapToken,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::BootstrapToken => "bootstrap-token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is too short")]
    TooShort,
    #[error("sealed value has unknown format version {0}")]
    UnknownVersion(u8),
    /// Wrong key, another device's value, or altered bytes: GCM cannot tell them apart.
    #[error("sealed value does not open with this key for this device (other key, other device, or altered)")]
    Rejected,
    #[error("cipher failure: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// Seals and opens values with one key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Sealer {
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { key: <redacted> }")
    }
}

fn aad(purpose: Purpose, device: &DeviceId) -> Vec<u8> {
    format!("mdm-gateway/{}/v1:{}", purpose.label(), device.as_str()).into_bytes()
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { key }
    }

    pub fn seal(&self, purpose: Purpose, device: &DeviceId, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce)?;
        let mut tag = [0u8; TAG_LEN];
        let ciphertext =
            encrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(&nonce), &aad(purpose, device), plaintext, &mut tag)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    pub fn open(&self, purpose: Purpose, device: &DeviceId, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::TooShort)?;
        if version != VERSION {
            return Err(SealError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::TooShort);
        }
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        // openssl reports a failed tag check as an error stack; nothing else can fail here with
        // a 32-byte key and a 12-byte nonce.
        decrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(nonce), &aad(purpose, device), ciphertext, tag)
            .map_err(|_| SealError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        s.parse().expect("id")
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let s = Sealer::new([7; 32]);
        let d = id("apple:MAC-1");
        let a = s.seal(Purpose::BootstrapToken, &d, b"bootstrap").unwrap();
        let b = s.seal(Purpose::BootstrapToken, &d, b"bootstrap").unwrap();
        assert_ne!(a, b, "a new nonce for every value");
        assert_eq!(a.len(), 1 + 12 + 9 + 16);
        assert!(!a.windows(9).any(|w| w == b"bootstrap"));
        assert_eq!(s.open(Purpose::BootstrapToken, &d, &a).unwrap(), b"bootstrap");
        assert_eq!(s.open(Purpose::BootstrapToken, &d, &b).unwrap(), b"bootstrap");
        let empty = s.seal(Purpose::BootstrapToken, &d, b"").unwrap();
        assert_eq!(s.open(Purpose::BootstrapToken, &d, &empty).unwrap(), b"");
    }

    #[test]
    fn bound_to_key_device_and_bytes() {
        let s = Sealer::new([7; 32]);
        let d = id("apple:MAC-1");
        let sealed = s.seal(Purpose::BootstrapToken, &d, b"bootstrap").unwrap();
        assert!(matches!(s.open(Purpose::BootstrapToken, &id("apple:MAC-2"), &sealed), Err(SealError::Rejected)));
        assert!(matches!(Sealer::new([8; 32]).open(Purpose::BootstrapToken, &d, &sealed), Err(SealError::Rejected)));
        let mut altered = sealed.clone();
        altered[14] ^= 1;
        assert!(matches!(s.open(Purpose::BootstrapToken, &d, &altered), Err(SealError::Rejected)));
        let mut other_version = sealed.clone();
        other_version[0] = 2;
        assert!(matches!(s.open(Purpose::BootstrapToken, &d, &other_version), Err(SealError::UnknownVersion(2))));
        assert!(matches!(s.open(Purpose::BootstrapToken, &d, &sealed[..20]), Err(SealError::TooShort)));
        assert!(matches!(s.open(Purpose::BootstrapToken, &d, &[]), Err(SealError::TooShort)));
        assert_eq!(format!("{s:?}"), "Sealer { key: <redacted> }");
    }
}
