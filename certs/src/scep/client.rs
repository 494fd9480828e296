//! The requester side: PKCSReq / RenewalReq messages, and reading the CertRep back. Used by tests
//! and the device emulator; a real device does the same.

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, PKeyRef, Private};
use openssl::x509::{X509, X509Builder, X509NameRef, X509Ref};

use super::asn1::{self, attribute, octets, printable};
use super::server::printable_or_utf8;
use super::{
    ContentCipher, Digest, EnvelopeSecret, FailInfo, MessageType, PkiStatus, ScepError, envelope, oids, signed,
};

/// Everything a PKCSReq or RenewalReq is made of.
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    /// [`MessageType::PKCS_REQ`] or [`MessageType::RENEWAL_REQ`].
    pub message_type: MessageType,
    /// The PKCS#10 request (see [`super::build_csr`]).
    pub csr_der: &'a [u8],
    /// Self-signed certificate of the CSR's key (PKCSReq), or the certificate being renewed.
    pub signer_cert: &'a X509,
    pub signer_key: &'a PKey<Private>,
    /// The CA/RA certificate to encrypt to (the one with an RSA key from GetCACert).
    pub recipient: &'a X509,
    pub transaction_id: &'a str,
    pub sender_nonce: &'a [u8],
    pub cipher: ContentCipher,
    pub digest: Digest,
    pub secret: &'a EnvelopeSecret,
}

/// The DER PKI message for `req`.
pub fn build_request(req: &ClientRequest<'_>) -> Result<Vec<u8>, ScepError> {
    if req.transaction_id.is_empty() || req.sender_nonce.is_empty() {
        return Err(ScepError::InvalidInput("transaction id and sender nonce must not be empty"));
    }
    let enveloped = envelope::encrypt(req.csr_der, req.recipient, req.cipher, req.secret)?;
    let attrs = vec![
        attribute(oids::MESSAGE_TYPE, printable(&req.message_type.to_string())?)?,
        attribute(oids::TRANSACTION_ID, printable_or_utf8(req.transaction_id)?)?,
        attribute(oids::SENDER_NONCE, octets(req.sender_nonce)?)?,
    ];
    signed::sign(Some(&enveloped), attrs, req.signer_cert, req.signer_key, &[], req.digest)
}

/// A transient self-signed certificate for `key` (what a PKCSReq is signed with), valid from
/// `not_before` to `not_after` (unix seconds), with the given serial (big-endian, positive).
pub fn self_signed_certificate(
    key: &PKeyRef<Private>,
    subject: &X509NameRef,
    not_before: i64,
    not_after: i64,
    serial: &[u8],
) -> Result<X509, ScepError> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    b.set_serial_number(BigNum::from_slice(serial)?.to_asn1_integer()?.as_ref())?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(subject)?;
    b.set_pubkey(key)?;
    #[allow(clippy::useless_conversion)]
    let (nb, na) = (
        not_before.try_into().map_err(|_| ScepError::InvalidInput("time out of range"))?,
        not_after.try_into().map_err(|_| ScepError::InvalidInput("time out of range"))?,
    );
    b.set_not_before(Asn1Time::from_unix(nb)?.as_ref())?;
    b.set_not_after(Asn1Time::from_unix(na)?.as_ref())?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

/// A CertRep as the requester reads it.
#[derive(Debug, Clone)]
pub struct CertRep {
    pub status: PkiStatus,
    /// Present exactly when `status` is FAILURE.
    pub fail_info: Option<FailInfo>,
    pub transaction_id: String,
    pub recipient_nonce: Vec<u8>,
    pub sender_nonce: Vec<u8>,
    /// SUCCESS: the certificates of the decrypted certs-only SignedData (the issued one first
    /// when it can be told by the requester's key, see [`parse_cert_rep`]).
    pub certificates: Vec<X509>,
    /// The cipher of the encrypted reply (SUCCESS only).
    pub cipher: Option<ContentCipher>,
}

/// Reads a CertRep: signed by `server_cert`, answering `transaction_id` / `sender_nonce`, and for
/// SUCCESS decrypted with the requester's `recipient_cert` / `recipient_key`. Certificates whose
/// key is `new_key` (the CSR's key) are put first.
pub fn parse_cert_rep(
    der: &[u8],
    server_cert: &X509Ref,
    transaction_id: &str,
    sender_nonce: &[u8],
    recipient_cert: &X509Ref,
    recipient_key: &PKeyRef<Private>,
    new_key: Option<&PKeyRef<Private>>,
) -> Result<CertRep, ScepError> {
    let s = signed::decode(der)?;
    if s.signer.to_der()? != server_cert.to_der()? {
        return Err(ScepError::UnexpectedSigner);
    }
    s.verify()?;
    let attrs = &s.attrs;
    let read_str = |oid, name| -> Result<String, ScepError> {
        asn1::read_string(asn1::single(attrs, oid, name)?.ok_or(ScepError::MissingAttribute(name))?, name)
    };
    let read_num = |oid, name| -> Result<u32, ScepError> {
        asn1::read_number(asn1::single(attrs, oid, name)?.ok_or(ScepError::MissingAttribute(name))?, name)
    };
    let read_oct = |oid, name| -> Result<Vec<u8>, ScepError> {
        asn1::read_octets(asn1::single(attrs, oid, name)?.ok_or(ScepError::MissingAttribute(name))?, name)
    };
    if MessageType(read_num(oids::MESSAGE_TYPE, "messageType")?) != MessageType::CERT_REP {
        return Err(ScepError::BadAttribute("messageType"));
    }
    let status = PkiStatus(read_num(oids::PKI_STATUS, "pkiStatus")?);
    let tid = read_str(oids::TRANSACTION_ID, "transactionID")?;
    let recipient_nonce = read_oct(oids::RECIPIENT_NONCE, "recipientNonce")?;
    let server_nonce = read_oct(oids::SENDER_NONCE, "senderNonce")?;
    if tid != transaction_id {
        return Err(ScepError::NotOurTransaction("transactionID"));
    }
    if recipient_nonce != sender_nonce {
        return Err(ScepError::NotOurTransaction("recipientNonce"));
    }
    let mut rep = CertRep {
        status,
        fail_info: None,
        transaction_id: tid,
        recipient_nonce,
        sender_nonce: server_nonce,
        certificates: Vec::new(),
        cipher: None,
    };
    match status {
        PkiStatus::SUCCESS => {
            let envelope = s.content.as_deref().ok_or(ScepError::NoCertificate)?;
            let (inner, cipher) = envelope::decrypt(envelope, recipient_cert, recipient_key, true)?;
            let mut certs = signed::parse_certs_only(&inner)?;
            if let Some(k) = new_key {
                certs.sort_by_key(|c| !c.public_key().map(|p| p.public_eq(k)).unwrap_or(false));
            }
            if certs.is_empty() {
                return Err(ScepError::NoCertificate);
            }
            rep.certificates = certs;
            rep.cipher = Some(cipher);
        }
        PkiStatus::FAILURE => rep.fail_info = Some(FailInfo(read_num(oids::FAIL_INFO, "failInfo")?)),
        _ => {}
    }
    Ok(rep)
}
