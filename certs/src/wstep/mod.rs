//! Windows enrollment (MS-WSTEP as MS-MDE2 profiles it): reading the certificate requests
//! Windows sends ([`read_certificate_request`]), issuing the device certificate
//! ([`issue_windows_device_certificate`]), the SHA-1 thumbprints of provisioning documents,
//! and building such requests for emulated devices ([`build_windows_csr`], [`wrap_pkcs7`]).
//!
//! What it does not do: decide whether a request may be granted (credentials, renewal
//! eligibility, which signer may renew), or read the clock.

mod build;
mod csr;
mod issue;

pub use build::{BuildError, CsrOptions, CsrSignature, build_windows_csr, wrap_pkcs7};
pub use csr::{CsrError, DEVICE_ID_EXTENSION, WindowsCsr, read_certificate_request};
pub use issue::{MAX_DEVICE_ID_CHARS, issue_windows_device_certificate, thumbprint_sha1};

#[cfg(test)]
mod tests;
