//! SCEP's small vocabularies: message types, pkiStatus and failInfo values, carried on the wire as
//! decimal PrintableStrings. Each is open: a value this crate has no name for still decodes and
//! re-encodes exactly (`Display` gives the wire form).

use std::fmt;

/// `messageType` (RFC 8894 §3.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType(pub u32);

impl MessageType {
    /// CertRep: the server's answer.
    pub const CERT_REP: MessageType = MessageType(3);
    /// RenewalReq: a new certificate, signed with the current one.
    pub const RENEWAL_REQ: MessageType = MessageType(17);
    /// UpdateReq (obsolete in RFC 8894).
    pub const UPDATE_REQ: MessageType = MessageType(18);
    /// PKCSReq: first enrollment, signed with a self-signed certificate.
    pub const PKCS_REQ: MessageType = MessageType(19);
    /// CertPoll / GetCertInitial: polling after PENDING.
    pub const CERT_POLL: MessageType = MessageType(20);
    /// GetCert.
    pub const GET_CERT: MessageType = MessageType(21);
    /// GetCRL.
    pub const GET_CRL: MessageType = MessageType(22);

    /// Stable low-cardinality label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::CERT_REP => "CertRep",
            Self::RENEWAL_REQ => "RenewalReq",
            Self::UPDATE_REQ => "UpdateReq",
            Self::PKCS_REQ => "PKCSReq",
            Self::CERT_POLL => "CertPoll",
            Self::GET_CERT => "GetCert",
            Self::GET_CRL => "GetCRL",
            _ => "other",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `pkiStatus` (RFC 8894 §3.2.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PkiStatus(pub u32);

impl PkiStatus {
    pub const SUCCESS: PkiStatus = PkiStatus(0);
    pub const FAILURE: PkiStatus = PkiStatus(2);
    pub const PENDING: PkiStatus = PkiStatus(3);
}

impl fmt::Display for PkiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `failInfo` (RFC 8894 §3.2.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailInfo(pub u32);

impl FailInfo {
    /// Unrecognized or unsupported algorithm (also: a key too weak to certify).
    pub const BAD_ALG: FailInfo = FailInfo(0);
    /// Integrity check (signature) failed, or the message cannot be decrypted.
    pub const BAD_MESSAGE_CHECK: FailInfo = FailInfo(1);
    /// Transaction not permitted or supported (also: wrong, used or expired challenge).
    pub const BAD_REQUEST: FailInfo = FailInfo(2);
    /// signingTime not close enough to the server's time (here also: renewal certificate outside
    /// its validity period).
    pub const BAD_TIME: FailInfo = FailInfo(3);
    /// No certificate could be identified (here: the renewal certificate is not one of ours).
    pub const BAD_CERT_ID: FailInfo = FailInfo(4);

    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::BAD_ALG => "badAlg",
            Self::BAD_MESSAGE_CHECK => "badMessageCheck",
            Self::BAD_REQUEST => "badRequest",
            Self::BAD_TIME => "badTime",
            Self::BAD_CERT_ID => "badCertId",
            _ => "other",
        }
    }
}

impl fmt::Display for FailInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Digest used for the signer's signature and the messageDigest attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    /// Accepted from requesters that choose it (old clients); never chosen by this crate.
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    pub(crate) fn md(self) -> openssl::hash::MessageDigest {
        use openssl::hash::MessageDigest;
        match self {
            Digest::Sha1 => MessageDigest::sha1(),
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }

    pub(crate) fn oid(self) -> der::oid::ObjectIdentifier {
        use super::oids;
        match self {
            Digest::Sha1 => oids::SHA1,
            Digest::Sha256 => oids::SHA256,
            Digest::Sha384 => oids::SHA384,
            Digest::Sha512 => oids::SHA512,
        }
    }

    pub(crate) fn from_oid(oid: &der::oid::ObjectIdentifier) -> Option<Digest> {
        use super::oids;
        Some(match *oid {
            oids::SHA1 => Digest::Sha1,
            oids::SHA256 => Digest::Sha256,
            oids::SHA384 => Digest::Sha384,
            oids::SHA512 => Digest::Sha512,
            _ => return None,
        })
    }
}

/// Content encryption of the pkcsPKIEnvelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentCipher {
    /// Single DES in CBC mode: what some old clients (micromdm's `scepclient` 2.1) still send.
    /// Only decrypted when the caller allows it ([`super::DecryptOptions::allow_des`]); never used
    /// to answer (a DES request is answered with [`ContentCipher::DesEde3Cbc`]).
    DesCbc,
    /// Triple DES (the RFC 8894 baseline every client supports).
    DesEde3Cbc,
    Aes128Cbc,
    Aes192Cbc,
    Aes256Cbc,
}

impl ContentCipher {
    pub(crate) fn cipher(self) -> openssl::symm::Cipher {
        use openssl::symm::Cipher;
        match self {
            ContentCipher::DesCbc => Cipher::des_cbc(),
            ContentCipher::DesEde3Cbc => Cipher::des_ede3_cbc(),
            ContentCipher::Aes128Cbc => Cipher::aes_128_cbc(),
            ContentCipher::Aes192Cbc => Cipher::aes_192_cbc(),
            ContentCipher::Aes256Cbc => Cipher::aes_256_cbc(),
        }
    }

    pub(crate) fn key_len(self) -> usize {
        match self {
            ContentCipher::DesCbc => 8,
            ContentCipher::DesEde3Cbc => 24,
            ContentCipher::Aes128Cbc => 16,
            ContentCipher::Aes192Cbc => 24,
            ContentCipher::Aes256Cbc => 32,
        }
    }

    pub(crate) fn iv_len(self) -> usize {
        match self {
            ContentCipher::DesCbc | ContentCipher::DesEde3Cbc => 8,
            _ => 16,
        }
    }

    pub(crate) fn oid(self) -> der::oid::ObjectIdentifier {
        use super::oids;
        match self {
            ContentCipher::DesCbc => oids::DES_CBC,
            ContentCipher::DesEde3Cbc => oids::DES_EDE3_CBC,
            ContentCipher::Aes128Cbc => oids::AES128_CBC,
            ContentCipher::Aes192Cbc => oids::AES192_CBC,
            ContentCipher::Aes256Cbc => oids::AES256_CBC,
        }
    }

    pub(crate) fn from_oid(oid: &der::oid::ObjectIdentifier) -> Option<ContentCipher> {
        use super::oids;
        Some(match *oid {
            oids::DES_CBC => ContentCipher::DesCbc,
            oids::DES_EDE3_CBC => ContentCipher::DesEde3Cbc,
            oids::AES128_CBC => ContentCipher::Aes128Cbc,
            oids::AES192_CBC => ContentCipher::Aes192Cbc,
            oids::AES256_CBC => ContentCipher::Aes256Cbc,
            _ => return None,
        })
    }

    /// The cipher to answer a request that used `self`: the same, except single DES, which is
    /// answered with triple DES.
    pub fn for_reply(self) -> ContentCipher {
        match self {
            ContentCipher::DesCbc => ContentCipher::DesEde3Cbc,
            other => other,
        }
    }

    /// Stable label for logs.
    pub fn label(self) -> &'static str {
        match self {
            ContentCipher::DesCbc => "des-cbc",
            ContentCipher::DesEde3Cbc => "des-ede3-cbc",
            ContentCipher::Aes128Cbc => "aes-128-cbc",
            ContentCipher::Aes192Cbc => "aes-192-cbc",
            ContentCipher::Aes256Cbc => "aes-256-cbc",
        }
    }
}

/// Caller-supplied randomness for one EnvelopedData: the content-encryption key (the first
/// `key_len` bytes) and the IV (the last 16, or 8 for DES). This crate reads no randomness itself.
#[derive(Clone)]
pub struct EnvelopeSecret(pub [u8; 48]);

impl fmt::Debug for EnvelopeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvelopeSecret(..)")
    }
}

impl EnvelopeSecret {
    pub(crate) fn key(&self, cipher: ContentCipher) -> &[u8] {
        &self.0[..cipher.key_len()]
    }

    pub(crate) fn iv(&self, cipher: ContentCipher) -> &[u8] {
        &self.0[48 - cipher.iv_len()..]
    }
}
