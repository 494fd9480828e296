//! Why a device identity was refused. One variant per check, so the gateway can count and log the
//! exact reason; it does not decide the HTTP reply (Apple devices should get a 400 for all of them).

use openssl::error::ErrorStack;

/// A device identity (signature, certificate or forwarded certificate header) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The value is not base64 (after removing whitespace).
    #[error("not valid base64")]
    BadBase64,
    /// The decoded bytes are not a DER PKCS#7/CMS structure (CMS signers identified by subject key
    /// identifier are not supported and land here too).
    #[error("not a DER-encoded CMS/PKCS#7 structure")]
    NotCms,
    /// A CMS structure, but not SignedData.
    #[error("CMS structure is not SignedData")]
    NotSignedData,
    /// SignedData with no SignerInfo at all.
    #[error("CMS SignedData has no signers")]
    NoSigners,
    /// A SignerInfo whose certificate is not carried in the CMS.
    #[error("signer certificate not included in the CMS")]
    NoSignerCertificate,
    /// More than one signer: a device signs with exactly one identity, so which one would be ambiguous.
    #[error("CMS SignedData has more than one signer")]
    MultipleSigners,
    /// The signature does not cover these bytes (or is malformed / uses an unsupported algorithm).
    #[error("signature does not verify over the request body")]
    SignatureInvalid,
    /// No chain from the certificate to any trust anchor.
    #[error("certificate does not chain to a trusted anchor")]
    UntrustedIssuer,
    /// The certificate (or one in its chain) is past its notAfter at `now`.
    #[error("certificate has expired")]
    Expired,
    /// The certificate (or one in its chain) is before its notBefore at `now`.
    #[error("certificate is not yet valid")]
    NotYetValid,
    /// Extended or plain key usage does not allow TLS client authentication / signing.
    #[error("certificate is not usable for client authentication")]
    NotForClientAuth,
    /// A certificate's signature does not verify with its issuer's key.
    #[error("certificate signature does not verify")]
    BadCertificateSignature,
    /// An issuing certificate in the chain is not a CA, or a path length constraint is exceeded.
    #[error("issuer in the chain is not a valid CA")]
    InvalidCa,
    /// Any other chain verification failure reported by openssl, with its code and text.
    #[error("certificate chain rejected: {message} (X509_V_ERR {code})")]
    ChainRejected {
        /// openssl's `X509_V_ERR_*` value.
        code: i32,
        /// openssl's description of it.
        message: &'static str,
    },
    /// `now` does not fit the platform's `time_t`.
    #[error("time out of range")]
    TimeOutOfRange,
    /// A forwarded-certificate header is syntactically wrong.
    #[error("malformed certificate header")]
    BadCertificateHeader,
    /// A forwarded-certificate header is present but empty (the proxy saw no client certificate).
    #[error("certificate header is empty")]
    EmptyCertificateHeader,
    /// Bytes that should be one DER certificate are not (or have trailing data).
    #[error("not a DER-encoded X.509 certificate")]
    BadCertificateDer,
    /// Text that should be a PEM certificate is not.
    #[error("not a PEM-encoded X.509 certificate")]
    BadPem,
    /// A PEM bundle with no certificate in it.
    #[error("PEM bundle contains no certificate")]
    EmptyPemBundle,
    /// openssl failed for a reason unrelated to the input (allocation, library state).
    #[error("openssl internal error: {0}")]
    Crypto(#[from] ErrorStack),
}

impl IdentityError {
    /// Short stable label for metrics and logs (low cardinality; never contains input data).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadBase64 => "bad_base64",
            Self::NotCms => "not_cms",
            Self::NotSignedData => "not_signed_data",
            Self::NoSigners => "no_signers",
            Self::NoSignerCertificate => "no_signer_certificate",
            Self::MultipleSigners => "multiple_signers",
            Self::SignatureInvalid => "signature_invalid",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::NotForClientAuth => "not_for_client_auth",
            Self::BadCertificateSignature => "bad_certificate_signature",
            Self::InvalidCa => "invalid_ca",
            Self::ChainRejected { .. } => "chain_rejected",
            Self::TimeOutOfRange => "time_out_of_range",
            Self::BadCertificateHeader => "bad_certificate_header",
            Self::EmptyCertificateHeader => "empty_certificate_header",
            Self::BadCertificateDer => "bad_certificate_der",
            Self::BadPem => "bad_pem",
            Self::EmptyPemBundle => "empty_pem_bundle",
            Self::Crypto(_) => "crypto_error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdentityError;

    #[test]
    fn reason_labels_are_distinct_snake_case() {
        let all = [
            IdentityError::BadBase64,
            IdentityError::NotCms,
            IdentityError::NotSignedData,
            IdentityError::NoSigners,
            IdentityError::NoSignerCertificate,
            IdentityError::MultipleSigners,
            IdentityError::SignatureInvalid,
            IdentityError::UntrustedIssuer,
            IdentityError::Expired,
            IdentityError::NotYetValid,
            IdentityError::NotForClientAuth,
            IdentityError::BadCertificateSignature,
            IdentityError::InvalidCa,
            IdentityError::ChainRejected { code: 1, message: "x" },
            IdentityError::TimeOutOfRange,
            IdentityError::BadCertificateHeader,
            IdentityError::EmptyCertificateHeader,
            IdentityError::BadCertificateDer,
            IdentityError::BadPem,
            IdentityError::EmptyPemBundle,
            IdentityError::Crypto(openssl::error::ErrorStack::get()),
        ];
        let mut labels: Vec<&str> = all.iter().map(IdentityError::reason).collect();
        assert!(
            labels.iter().all(|l| { l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') })
        );
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
    }
}
