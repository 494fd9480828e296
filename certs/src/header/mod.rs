//! Client certificates forwarded by a TLS-terminating load balancer in a request header.
//!
//! These functions only decode. They do not decide whether the header may be believed (only when the
//! peer is a configured trusted proxy, which the caller knows), and they do not verify the certificate
//! (call [`crate::verify_device_certificate`] next).

mod client_cert;
mod nginx;

pub use client_cert::parse_client_cert;
pub use nginx::parse_nginx_escaped_pem;

use openssl::x509::X509;

use crate::IdentityError;

/// One DER certificate, with nothing after it: trailing bytes mean the proxy or something between it
/// and us mangled the value, so it is refused rather than half-read.
pub(crate) fn single_der_certificate(der: &[u8]) -> Result<X509, IdentityError> {
    let cert = X509::from_der(der).map_err(|_| IdentityError::BadCertificateDer)?;
    let reencoded_len = cert.to_der()?.len();
    if reencoded_len != der.len() {
        return Err(IdentityError::BadCertificateDer);
    }
    Ok(cert)
}
