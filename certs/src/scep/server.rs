//! The CA side: a PKCSReq/RenewalReq goes through typed stages, [`PkiMessage::decode`] (can it
//! be answered at all?), then [`PkiMessage::verify`] (every stateless check), leaving a
//! [`CertRequest`] for the caller's own checks (challenge, policy) and issuance; any stage's
//! refusal carries a [`ReplyTo`] to build the FAILURE CertRep with.

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use x509_cert::attr::Attribute;

use super::asn1::{self, attribute, octets, printable};
use super::csr::{CsrInfo, inspect_csr};
use super::{
    ContentCipher, Digest, EnvelopeSecret, FailInfo, MessageType, PkiStatus, ScepError, envelope, oids, signed,
};
use crate::{IdentityError, TrustAnchors};

/// The certificate and key that decrypt requests and sign CertReps (an RA, or the CA itself when
/// its key is RSA). The key must be RSA: clients encrypt to it with RSA key transport.
#[derive(Debug, Clone, Copy)]
pub struct ServerIdentity<'a> {
    pub cert: &'a X509,
    pub key: &'a PKey<Private>,
}

/// Stateless policy for [`PkiMessage::verify`].
#[derive(Debug, Clone, Copy)]
pub struct VerifyOptions<'a> {
    /// Accept single-DES pkcsPKIEnvelopes (legacy clients). Needs openssl's legacy provider.
    pub allow_des: bool,
    /// What a RenewalReq's signer must chain to (the issuing CA).
    pub renewal_anchors: &'a TrustAnchors,
    /// Unix seconds, for the renewal certificate's validity.
    pub now: i64,
}

/// A PKI message whose transactionID, messageType, senderNonce and signer could be read: enough to
/// address a CertRep to, nothing verified yet.
#[derive(Debug)]
pub struct PkiMessage {
    pub message_type: MessageType,
    pub transaction_id: String,
    pub sender_nonce: Vec<u8>,
    signed: signed::Signed,
}

/// Where and how to answer a request: echoed transactionID, recipientNonce, the requester's
/// certificate to encrypt to, and the algorithms to use.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    pub transaction_id: String,
    pub recipient_nonce: Vec<u8>,
    pub recipient: X509,
    pub digest: Digest,
    pub cipher: ContentCipher,
}

/// A request refused at a stage that can still be answered with a CertRep.
#[derive(Debug)]
pub struct Refused {
    pub error: ScepError,
    pub reply: ReplyTo,
}

impl Refused {
    /// The failInfo for the FAILURE CertRep (internal errors answer badRequest).
    pub fn fail_info(&self) -> FailInfo {
        self.error.fail_info().unwrap_or(FailInfo::BAD_REQUEST)
    }
}

/// A request that passed every stateless check: signature, (renewal) signer trust, decryption,
/// CSR signature and key strength, and for PKCSReq the self-signed signer holding the CSR's key.
#[derive(Debug)]
pub struct CertRequest {
    pub message_type: MessageType,
    pub transaction_id: String,
    /// The certificate that signed the message (self-signed for PKCSReq, the certificate being
    /// renewed for RenewalReq).
    pub signer: X509,
    pub csr: CsrInfo,
    pub reply: ReplyTo,
}

/// Longest senderNonce / transactionID accepted (RFC 8894 nonces are 16 bytes; transaction ids
/// are usually a hash in hex or base64).
const MAX_NONCE: usize = 64;
const MAX_TRANSACTION_ID: usize = 256;

impl PkiMessage {
    /// Reads the outer SignedData and its SCEP attributes. Errors here have no failInfo: there is
    /// nobody to address a CertRep to.
    pub fn decode(der: &[u8]) -> Result<PkiMessage, ScepError> {
        let signed = signed::decode(der)?;
        let attrs = &signed.attrs;
        let message_type = asn1::single(attrs, oids::MESSAGE_TYPE, "messageType")?
            .ok_or(ScepError::MissingAttribute("messageType"))?;
        let message_type = MessageType(asn1::read_number(message_type, "messageType")?);
        let transaction_id = asn1::single(attrs, oids::TRANSACTION_ID, "transactionID")?
            .ok_or(ScepError::MissingAttribute("transactionID"))?;
        let transaction_id = asn1::read_string(transaction_id, "transactionID")?;
        if transaction_id.is_empty() || transaction_id.len() > MAX_TRANSACTION_ID {
            return Err(ScepError::BadAttribute("transactionID"));
        }
        let sender_nonce = asn1::single(attrs, oids::SENDER_NONCE, "senderNonce")?
            .ok_or(ScepError::MissingAttribute("senderNonce"))?;
        let sender_nonce = asn1::read_octets(sender_nonce, "senderNonce")?;
        if sender_nonce.is_empty() || sender_nonce.len() > MAX_NONCE {
            return Err(ScepError::BadAttribute("senderNonce"));
        }
        Ok(PkiMessage { message_type, transaction_id, sender_nonce, signed })
    }

    /// The certificate that signed the message (not yet verified).
    pub fn signer(&self) -> &X509 {
        &self.signed.signer
    }

    /// How to answer before anything is known about the algorithms: SHA-256, AES-128-CBC.
    pub fn reply_to(&self) -> ReplyTo {
        ReplyTo {
            transaction_id: self.transaction_id.clone(),
            recipient_nonce: self.sender_nonce.clone(),
            recipient: self.signed.signer.clone(),
            digest: Digest::Sha256,
            cipher: ContentCipher::Aes128Cbc,
        }
    }

    /// Every stateless check, in this order: signature (badMessageCheck / badAlg), message type
    /// (badRequest), an RSA requester key to answer to (badAlg), for RenewalReq the signer's chain and validity (badCertId / badTime), the
    /// envelope (badMessageCheck / badAlg), the CSR (badRequest / badMessageCheck / badAlg), and
    /// for PKCSReq a self-signed signer with the CSR's key (badRequest).
    pub fn verify(self, server: ServerIdentity<'_>, opts: &VerifyOptions<'_>) -> Result<CertRequest, Refused> {
        let mut reply = self.reply_to();
        let refuse = |error: ScepError, reply: &ReplyTo| Refused { error, reply: reply.clone() };
        reply.digest = self.signed.verify().map_err(|e| refuse(e, &reply))?;
        let renewal = match self.message_type {
            MessageType::PKCS_REQ => false,
            MessageType::RENEWAL_REQ => true,
            other => return Err(refuse(ScepError::UnsupportedMessageType(other), &reply)),
        };
        let signer = self.signed.signer.clone();
        // Checked before anything else about the request: without an RSA key nothing, not even
        // a certificate, could be sent back.
        if signer.public_key().map(|k| k.id() != openssl::pkey::Id::RSA).unwrap_or(true) {
            return Err(refuse(ScepError::RequesterKeyNotRsa, &reply));
        }
        if renewal {
            let chain: Vec<X509> =
                self.signed.certificates.iter().filter(|c| c.to_der().ok() != signer.to_der().ok()).cloned().collect();
            crate::verify_device_certificate(&signer, &chain, opts.renewal_anchors, opts.now).map_err(|e| {
                let error = match e {
                    IdentityError::Expired | IdentityError::NotYetValid => {
                        ScepError::RenewalCertNotValid(e.to_string())
                    }
                    other => ScepError::RenewalCertNotOurs(other.to_string()),
                };
                refuse(error, &reply)
            })?;
        }
        let envelope = self.signed.content.as_deref().ok_or_else(|| refuse(ScepError::BadEnvelope, &reply))?;
        let (csr_der, cipher) =
            envelope::decrypt(envelope, server.cert, server.key, opts.allow_des).map_err(|e| refuse(e, &reply))?;
        reply.cipher = cipher.for_reply();
        let csr = inspect_csr(&csr_der).map_err(|e| refuse(e, &reply))?;
        if !renewal {
            let own_key = signer.public_key().map_err(|e| refuse(e.into(), &reply))?;
            // Not X509_check_issued: it also wants keyCertSign, which a requester's transient
            // certificate rightly lacks (scepclient's has digitalSignature + keyEncipherment).
            let same_name = signer.subject_name().to_der().ok() == signer.issuer_name().to_der().ok();
            let self_signed = same_name && signer.verify(&own_key).unwrap_or(false);
            if !self_signed {
                return Err(refuse(ScepError::SignerNotSelfSigned, &reply));
            }
            if !own_key.public_eq(&csr.public_key) {
                return Err(refuse(ScepError::SignerKeyMismatch, &reply));
            }
        }
        Ok(CertRequest { message_type: self.message_type, transaction_id: self.transaction_id, signer, csr, reply })
    }
}

impl ReplyTo {
    fn attrs(&self, status: PkiStatus, sender_nonce: &[u8]) -> Result<Vec<Attribute>, ScepError> {
        Ok(vec![
            attribute(oids::MESSAGE_TYPE, printable(&MessageType::CERT_REP.to_string())?)?,
            attribute(oids::PKI_STATUS, printable(&status.to_string())?)?,
            attribute(oids::TRANSACTION_ID, printable_or_utf8(&self.transaction_id)?)?,
            attribute(oids::RECIPIENT_NONCE, octets(&self.recipient_nonce)?)?,
            attribute(oids::SENDER_NONCE, octets(sender_nonce)?)?,
        ])
    }

    /// SUCCESS: `issued` in a certs-only SignedData, encrypted to the requester, signed by `server`.
    pub fn success(
        &self,
        server: ServerIdentity<'_>,
        issued: &X509,
        sender_nonce: &[u8],
        secret: &EnvelopeSecret,
    ) -> Result<Vec<u8>, ScepError> {
        let degenerate = signed::certs_only(std::slice::from_ref(issued))?;
        let enveloped = envelope::encrypt(&degenerate, &self.recipient, self.cipher, secret)?;
        let attrs = self.attrs(PkiStatus::SUCCESS, sender_nonce)?;
        signed::sign(Some(&enveloped), attrs, server.cert, server.key, &[], self.digest)
    }

    /// FAILURE with `fail_info`, no content.
    pub fn failure(
        &self,
        server: ServerIdentity<'_>,
        fail_info: FailInfo,
        sender_nonce: &[u8],
    ) -> Result<Vec<u8>, ScepError> {
        let mut attrs = self.attrs(PkiStatus::FAILURE, sender_nonce)?;
        attrs.push(attribute(oids::FAIL_INFO, printable(&fail_info.to_string())?)?);
        signed::sign(None, attrs, server.cert, server.key, &[], self.digest)
    }

    /// PENDING, no content (for manual approval; the gateway does not use it).
    pub fn pending(&self, server: ServerIdentity<'_>, sender_nonce: &[u8]) -> Result<Vec<u8>, ScepError> {
        let attrs = self.attrs(PkiStatus::PENDING, sender_nonce)?;
        signed::sign(None, attrs, server.cert, server.key, &[], self.digest)
    }
}

/// transactionID is a PrintableString on the wire; one the client sent as UTF8String (outside
/// PrintableString's alphabet) is echoed as UTF8String rather than altered.
pub(crate) fn printable_or_utf8(s: &str) -> Result<der::Any, ScepError> {
    let printable = s.bytes().all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b));
    if printable { asn1::printable(s) } else { Ok(der::Any::new(der::Tag::Utf8String, s.as_bytes())?) }
}
