//! Device identity for the MDM gateway: checks that a request really comes from an enrolled device's
//! certificate, and a small development PKI to make such certificates.
//!
//! What it covers:
//! - `Mdm-Signature` (Apple): a detached CMS/PKCS#7 SignedData over the exact request body
//!   ([`verify_mdm_signature`]), and making one for emulated devices ([`sign_detached`]).
//! - Signing content the gateway hands out, with the content inside the CMS ([`sign_attached`]):
//!   the enrollment profile.
//! - Whether a device certificate is acceptable: chains to a [`TrustAnchors`] root, is valid at a given
//!   time and is fit for TLS client authentication ([`verify_device_certificate`]).
//! - Certificates forwarded by a TLS-terminating proxy ([`header`]).
//! - The value an enrollment is bound to ([`fingerprint_sha256`]).
//! - A development CA, server and device certificates ([`devpki`]).
//! - Windows enrollment requests (PKCS#10 / PKCS#7 as Windows writes them), the device
//!   certificates issued for them and provisioning-document thumbprints ([`wstep`]).
//! - Bearer JWTs from an identity provider, verified against configured keys ([`jwt`]).
//!
//! What it does not do:
//! - No IO of any kind: no files, sockets, clock reads or calls to the OS random source of its own.
//!   `now` comes in as unix seconds, serial numbers and keys come in from the caller. The only
//!   randomness is inside openssl (key generation in [`devpki`], which the caller chooses when to call,
//!   and ECDSA nonces while signing).
//! - It does not decide whom to trust: whether a proxy header may be believed, which CAs are anchors and
//!   what an enrollment's bound fingerprint is all belong to the caller.
//! - No revocation (CRL/OCSP) checking: that needs network or state and is the gateway's job.
//! - No PKCS#12 push certificates, no TLS. SCEP messages are built and read ([`scep`]), but which
//!   challenge is valid and what was issued is the caller's state.

mod anchors;
mod b64;
mod chain;
mod error;
mod fingerprint;
mod sign;
mod signature;
mod signature_parts;

pub mod devpki;
pub mod header;
pub mod jwt;
pub mod scep;
pub mod wstep;

pub use openssl::{
    pkey::{PKey, Private},
    x509::X509,
};

pub use anchors::TrustAnchors;
pub use chain::verify_device_certificate;
pub use error::IdentityError;
pub use fingerprint::fingerprint_sha256;
pub use sign::{SignError, sign_attached, sign_detached, sign_detached_with_chain};
pub use signature::{SignedBy, decode_signature_header, verify_mdm_signature};
pub use signature_parts::SignatureParts;
