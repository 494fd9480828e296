//! The certificate fingerprint an enrollment is bound to. Does not normalise anything: two encodings of
//! "the same" certificate are different identities.

use openssl::{hash::MessageDigest, x509::X509Ref};

/// SHA-256 of the certificate's DER encoding, lowercase hex (64 characters).
pub fn fingerprint_sha256(cert: &X509Ref) -> String {
    // X509_digest only fails when it cannot allocate; treat that like any other allocation failure.
    let digest = cert.digest(MessageDigest::sha256()).expect("openssl failed to allocate while hashing a certificate");
    hex::encode(digest)
}
