//! The set of CAs whose device certificates are accepted. Does not read files: the gateway loads the
//! PEM and hands the bytes here.

use openssl::x509::X509;

use crate::IdentityError;

/// Certificates accepted as issuers of device identities: the gateway's own CA plus operator-supplied
/// CAs. An anchor need not be self-signed: an operator may trust just its issuing intermediate, and a
/// chain ending at any anchor is accepted (openssl's `PARTIAL_CHAIN`).
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    roots: Vec<X509>,
}

impl TrustAnchors {
    pub fn new(roots: Vec<X509>) -> Self {
        Self { roots }
    }

    /// Parse every `CERTIFICATE` block in a PEM bundle (other block types are skipped). An empty bundle
    /// is an error: trusting nothing is almost certainly a configuration mistake.
    pub fn from_pem_bundle(pem: &[u8]) -> Result<Vec<X509>, IdentityError> {
        let certs = X509::stack_from_pem(pem).map_err(|_| IdentityError::BadPem)?;
        if certs.is_empty() {
            return Err(IdentityError::EmptyPemBundle);
        }
        Ok(certs)
    }

    pub fn roots(&self) -> &[X509] {
        &self.roots
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}
