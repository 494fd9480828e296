//! Certificates for enrolled Windows devices: the device id as subject CN, the request's key,
//! client authentication, signed by the gateway CA (through
//! [`devpki::issue_certificate_for_request`](crate::devpki::issue_certificate_for_request));
//! and the SHA-1 thumbprints provisioning documents name certificates by.

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKeyRef, Private, Public};
use openssl::x509::{X509, X509Name, X509Ref};

use crate::devpki::{self, DevPkiError};

/// Longest device id that fits a commonName (RFC 5280 ub-common-name).
pub const MAX_DEVICE_ID_CHARS: usize = 64;

/// A client-auth certificate for `device_id` and `public_key` (the request's), valid exactly
/// from `not_before` to `not_after` (unix seconds). The request's own subject is not copied:
/// Windows subjects may not even be valid DER strings, and the device id is what the
/// management side reads.
pub fn issue_windows_device_certificate(
    ca: &X509Ref,
    ca_key: &PKeyRef<Private>,
    device_id: &str,
    public_key: &PKeyRef<Public>,
    not_before: i64,
    not_after: i64,
    serial: &[u8],
) -> Result<X509, DevPkiError> {
    let chars = device_id.chars().count();
    if chars == 0 || chars > MAX_DEVICE_ID_CHARS {
        return Err(DevPkiError::InvalidCommonName);
    }
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, device_id)?;
    let name = name.build();
    devpki::issue_certificate_for_request(ca, ca_key, &name, public_key, not_before, not_after, serial)
}

/// SHA-1 of the DER, upper-case hex: the node name of a certificate in a provisioning document.
pub fn thumbprint_sha1(cert: &X509Ref) -> String {
    // X509_digest only fails when it cannot allocate.
    let digest = cert.digest(MessageDigest::sha1()).expect("openssl failed to allocate while hashing a certificate");
    hex::encode_upper(digest)
}
