//! Development PKI: a CA the gateway can generate on first start, TLS server certificates for itself,
//! and device identities for emulators and tests.
//!
//! What it does not do: store anything (the caller persists the PEM), read the clock (`now` and
//! validity bounds are parameters), choose serial numbers (the caller passes them; use 16 random bytes
//! or a counter), or act as a production CA (no CRLs, no policies, no name constraints).
//!
//! Randomness: [`generate_key`] and [`generate_rsa_key`] are the only functions here that draw
//! randomness, from openssl's DRBG; the caller decides when to call them. Signing with an EC key also
//! uses an openssl-generated nonce.

mod build;
mod ca;
mod error;
mod keys;
mod leaf;
mod pem;
mod serial;

pub use ca::{create_ca, create_intermediate_ca};
pub use error::DevPkiError;
pub use keys::{generate_key, generate_rsa_key, key_to_pem, parse_private_key_pem};
pub use leaf::{
    LeafProfile, issue_certificate_for_request, issue_device_certificate, issue_leaf_certificate,
    issue_server_certificate,
};
pub use pem::{parse_certificate_pem, to_pem};
pub use serial::serial_from_random;

use std::net::IpAddr;

/// How far before `now` CA and server certificates start being valid, so clients whose clocks run a
/// little behind (devices just out of the box, VMs resumed from suspend) accept them.
pub const BACKDATE_SECONDS: i64 = 3600;

/// A subjectAltName entry of a server certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectAltName {
    Dns(String),
    Ip(IpAddr),
}

/// The extended key usage put in a leaf certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// clientAuth only: a device identity.
    ClientAuth,
    /// serverAuth only: a TLS server (and, as a device identity, refused).
    ServerAuth,
    /// clientAuth and serverAuth.
    ClientAndServerAuth,
    /// anyExtendedKeyUsage only.
    AnyExtendedKeyUsage,
    /// No extendedKeyUsage extension at all (unrestricted).
    Unrestricted,
}
