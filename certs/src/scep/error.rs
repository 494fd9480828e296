//! Why a SCEP message was refused. Each variant says which check failed; [`ScepError::fail_info`]
//! says how a server answers it: `None` means the bytes are not a usable PKI message at all (no
//! CertRep can be addressed to the sender, so the transport answers, e.g. HTTP 400), `Some` is the
//! failInfo of a FAILURE CertRep.

use openssl::error::ErrorStack;

use super::{FailInfo, MessageType};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScepError {
    // --- Not a PKI message: answered by the transport, not with a CertRep. -------------------
    /// Not a BER/DER CMS ContentInfo.
    #[error("not a CMS/PKCS#7 structure")]
    NotCms,
    /// CMS, but not SignedData.
    #[error("CMS structure is not SignedData")]
    NotSignedData,
    /// SignedData without exactly one SignerInfo.
    #[error("SignedData must have exactly one signer, has {0}")]
    SignerCount(usize),
    /// The SignerInfo names a certificate that the message does not carry.
    #[error("signer certificate not included in the message")]
    NoSignerCertificate,
    /// A signed attribute every PKI message must have is missing (or the signer has no signed
    /// attributes at all).
    #[error("signed attribute {0} is missing")]
    MissingAttribute(&'static str),
    /// A signed attribute has the wrong type or an impossible value.
    #[error("signed attribute {0} is malformed")]
    BadAttribute(&'static str),

    // --- badAlg ---------------------------------------------------------------------------------
    /// Digest algorithm other than SHA-1/SHA-256/SHA-384/SHA-512.
    #[error("unsupported digest algorithm {0}")]
    UnsupportedDigest(String),
    /// Signature algorithm that is not RSA PKCS#1 v1.5 or ECDSA, or that does not fit the key.
    #[error("unsupported signature algorithm {0}")]
    UnsupportedSignatureAlgorithm(String),
    /// Key transport other than RSA PKCS#1 v1.5 (rsaEncryption).
    #[error("unsupported key transport algorithm {0}")]
    UnsupportedKeyTransport(String),
    /// Content encryption other than AES-CBC / DES-EDE3-CBC (or single DES when not allowed).
    #[error("unsupported content encryption algorithm {0}")]
    UnsupportedContentCipher(String),
    /// The CSR's key is of a kind this server does not certify (not RSA or EC on a NIST curve).
    #[error("unsupported public key type in the CSR: {0}")]
    UnsupportedKeyType(String),
    /// The requester's certificate (which the reply is encrypted to) has no RSA key, so no
    /// key-transport reply can be made.
    #[error("the requester certificate's key is not RSA; the reply cannot be encrypted to it")]
    RequesterKeyNotRsa,
    /// The CSR's key is too weak: RSA below 2048 bits, EC below P-256.
    #[error("public key too weak: {0}")]
    WeakKey(String),

    // --- badMessageCheck ----------------------------------------------------------------------
    /// The signer's signature over the signed attributes does not verify.
    #[error("message signature does not verify")]
    SignatureInvalid,
    /// The messageDigest attribute does not match the content.
    #[error("messageDigest attribute does not match the content")]
    ContentDigestMismatch,
    /// The pkcsPKIEnvelope is missing or is not EnvelopedData.
    #[error("pkcsPKIEnvelope is missing or not EnvelopedData")]
    BadEnvelope,
    /// No RecipientInfo is addressed to our certificate.
    #[error("pkcsPKIEnvelope is not encrypted to this server's certificate")]
    NotForUs,
    /// The envelope could not be decrypted (wrong key, bad padding, bad IV).
    #[error("pkcsPKIEnvelope could not be decrypted")]
    DecryptFailed,
    /// The CSR's own signature does not verify.
    #[error("CSR signature does not verify")]
    CsrSignatureInvalid,

    // --- badRequest ---------------------------------------------------------------------------
    /// A message type this server does not serve (GetCertInitial, GetCert, GetCRL, UpdateReq...).
    #[error("message type {0} is not supported")]
    UnsupportedMessageType(MessageType),
    /// The decrypted content is not a PKCS#10 request.
    #[error("content is not a PKCS#10 certificate request")]
    BadCsr,
    /// PKCSReq not signed with a self-signed certificate.
    #[error("PKCSReq signer certificate is not self-signed")]
    SignerNotSelfSigned,
    /// PKCSReq signed with a key other than the CSR's.
    #[error("PKCSReq signer key is not the CSR's key")]
    SignerKeyMismatch,

    // --- badCertId / badTime (RenewalReq) ------------------------------------------------------
    /// The RenewalReq signer does not chain to the issuing CA (or is unfit as an identity).
    #[error("renewal certificate was not issued by this CA: {0}")]
    RenewalCertNotOurs(String),
    /// The RenewalReq signer is outside its validity period.
    #[error("renewal certificate is not currently valid: {0}")]
    RenewalCertNotValid(String),

    // --- Client side --------------------------------------------------------------------------
    /// A CertRep whose signer is not the expected CA/RA certificate.
    #[error("CertRep is not signed by the expected server certificate")]
    UnexpectedSigner,
    /// A CertRep that does not answer our transaction (transactionID or recipientNonce differ).
    #[error("CertRep does not answer this request: {0}")]
    NotOurTransaction(&'static str),
    /// A SUCCESS CertRep without a certificate.
    #[error("CertRep SUCCESS carries no certificate")]
    NoCertificate,
    /// Invalid input from the caller (empty challenge, subject, etc.).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),

    /// openssl or the DER encoder failed for a reason unrelated to the input.
    #[error("internal error: {0}")]
    Crypto(#[from] ErrorStack),
    /// DER encoding of something this crate built failed.
    #[error("DER encoding failed: {0}")]
    Encode(String),
}

impl ScepError {
    /// How a server answers this error: `None` when there is no PKI message to answer (the
    /// transport refuses it), otherwise the failInfo of the FAILURE CertRep.
    pub fn fail_info(&self) -> Option<FailInfo> {
        use ScepError::*;
        Some(match self {
            NotCms | NotSignedData | SignerCount(_) | NoSignerCertificate | MissingAttribute(_) | BadAttribute(_) => {
                return None;
            }
            UnsupportedDigest(_)
            | UnsupportedSignatureAlgorithm(_)
            | UnsupportedKeyTransport(_)
            | UnsupportedContentCipher(_)
            | UnsupportedKeyType(_)
            | RequesterKeyNotRsa
            | WeakKey(_) => FailInfo::BAD_ALG,
            SignatureInvalid | ContentDigestMismatch | BadEnvelope | NotForUs | DecryptFailed | CsrSignatureInvalid => {
                FailInfo::BAD_MESSAGE_CHECK
            }
            UnsupportedMessageType(_) | BadCsr | SignerNotSelfSigned | SignerKeyMismatch => FailInfo::BAD_REQUEST,
            RenewalCertNotOurs(_) => FailInfo::BAD_CERT_ID,
            RenewalCertNotValid(_) => FailInfo::BAD_TIME,
            UnexpectedSigner | NotOurTransaction(_) | NoCertificate | InvalidInput(_) | Crypto(_) | Encode(_) => {
                return None;
            }
        })
    }

    /// Short stable label for metrics and logs (never contains input data).
    pub fn reason(&self) -> &'static str {
        use ScepError::*;
        match self {
            NotCms => "not_cms",
            NotSignedData => "not_signed_data",
            SignerCount(_) => "signer_count",
            NoSignerCertificate => "no_signer_certificate",
            MissingAttribute(_) => "missing_attribute",
            BadAttribute(_) => "bad_attribute",
            UnsupportedDigest(_) => "unsupported_digest",
            UnsupportedSignatureAlgorithm(_) => "unsupported_signature_algorithm",
            UnsupportedKeyTransport(_) => "unsupported_key_transport",
            UnsupportedContentCipher(_) => "unsupported_content_cipher",
            UnsupportedKeyType(_) => "unsupported_key_type",
            WeakKey(_) => "weak_key",
            RequesterKeyNotRsa => "requester_key_not_rsa",
            SignatureInvalid => "signature_invalid",
            ContentDigestMismatch => "content_digest_mismatch",
            BadEnvelope => "bad_envelope",
            NotForUs => "not_for_us",
            DecryptFailed => "decrypt_failed",
            CsrSignatureInvalid => "csr_signature_invalid",
            UnsupportedMessageType(_) => "unsupported_message_type",
            BadCsr => "bad_csr",
            SignerNotSelfSigned => "signer_not_self_signed",
            SignerKeyMismatch => "signer_key_mismatch",
            RenewalCertNotOurs(_) => "renewal_cert_not_ours",
            RenewalCertNotValid(_) => "renewal_cert_not_valid",
            UnexpectedSigner => "unexpected_signer",
            NotOurTransaction(_) => "not_our_transaction",
            NoCertificate => "no_certificate",
            InvalidInput(_) => "invalid_input",
            Crypto(_) => "crypto_error",
            Encode(_) => "encode_error",
        }
    }
}

impl From<der::Error> for ScepError {
    fn from(e: der::Error) -> Self {
        ScepError::Encode(e.to_string())
    }
}
