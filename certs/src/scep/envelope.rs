//! CMS EnvelopedData with RSA key transport (the pkcsPKIEnvelope of RFC 8894 §3.2.2): content
//! encrypted with AES-CBC or triple DES (single DES only when the caller allows it), the key
//! encrypted to a certificate's RSA key with PKCS#1 v1.5.

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo, RecipientInfos,
};
use der::asn1::SetOfVec;
use der::{Any, Encode, Tag, Tagged};
use openssl::pkey::{Id, PKeyRef, Private};
use openssl::rsa::Padding;
use openssl::symm;
use openssl::x509::X509Ref;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::asn1::{self, alg_null, matches_issuer_serial, matches_ski, to_rc_cert};
use super::{ContentCipher, EnvelopeSecret, ScepError, oids};

/// Encrypts `content` to `recipient` (which must have an RSA key) and returns the DER
/// ContentInfo(EnvelopedData).
pub(crate) fn encrypt(
    content: &[u8],
    recipient: &X509Ref,
    cipher: ContentCipher,
    secret: &EnvelopeSecret,
) -> Result<Vec<u8>, ScepError> {
    let key = recipient.public_key()?;
    if key.id() != Id::RSA {
        return Err(ScepError::InvalidInput("the recipient certificate must have an RSA key"));
    }
    let rsa = key.rsa()?;
    let cek = secret.key(cipher);
    let iv = secret.iv(cipher);
    let mut enc_key = vec![0u8; rsa.size() as usize];
    let n = rsa.public_encrypt(cek, &mut enc_key, Padding::PKCS1)?;
    enc_key.truncate(n);
    let ciphertext = symm::encrypt(cipher.cipher(), cek, Some(iv), content)?;
    let rc = to_rc_cert(recipient)?;
    let ktri = KeyTransRecipientInfo {
        version: CmsVersion::V0,
        rid: RecipientIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: rc.tbs_certificate.issuer.clone(),
            serial_number: rc.tbs_certificate.serial_number.clone(),
        }),
        key_enc_alg: alg_null(oids::RSA_ENCRYPTION),
        enc_key: asn1::octet_string(&enc_key)?,
    };
    let ed = EnvelopedData {
        version: CmsVersion::V0,
        originator_info: None,
        recip_infos: RecipientInfos(SetOfVec::try_from(vec![RecipientInfo::Ktri(ktri)])?),
        encrypted_content: EncryptedContentInfo {
            content_type: oids::DATA,
            content_enc_alg: AlgorithmIdentifierOwned { oid: cipher.oid(), parameters: Some(asn1::octets(iv)?) },
            encrypted_content: Some(asn1::octet_string(&ciphertext)?),
        },
        unprotected_attrs: None,
    };
    let ci = ContentInfo { content_type: oids::ENVELOPED_DATA, content: Any::encode_from(&ed)? };
    Ok(ci.to_der()?)
}

/// Decrypts a BER/DER ContentInfo(EnvelopedData) addressed to `cert` with `key`. Returns the
/// content and the cipher it was encrypted with.
pub(crate) fn decrypt(
    bytes: &[u8],
    cert: &X509Ref,
    key: &PKeyRef<Private>,
    allow_des: bool,
) -> Result<(Vec<u8>, ContentCipher), ScepError> {
    let ed = asn1::content_as::<EnvelopedData>(bytes, oids::ENVELOPED_DATA, ScepError::BadEnvelope, || {
        ScepError::BadEnvelope
    })?;
    let rc = to_rc_cert(cert)?;
    let ktri = ed
        .recip_infos
        .0
        .iter()
        .filter_map(|ri| match ri {
            RecipientInfo::Ktri(k) => Some(k),
            _ => None,
        })
        .find(|k| match &k.rid {
            RecipientIdentifier::IssuerAndSerialNumber(ias) => matches_issuer_serial(&rc, ias),
            RecipientIdentifier::SubjectKeyIdentifier(ski) => matches_ski(cert, ski.0.as_bytes()),
        })
        .ok_or(ScepError::NotForUs)?;
    if ktri.key_enc_alg.oid != oids::RSA_ENCRYPTION {
        return Err(ScepError::UnsupportedKeyTransport(ktri.key_enc_alg.oid.to_string()));
    }
    let alg = &ed.encrypted_content.content_enc_alg;
    let cipher = ContentCipher::from_oid(&alg.oid)
        .filter(|c| allow_des || *c != ContentCipher::DesCbc)
        .ok_or_else(|| ScepError::UnsupportedContentCipher(alg.oid.to_string()))?;
    let iv = match &alg.parameters {
        Some(p) if p.tag() == Tag::OctetString && p.value().len() == cipher.iv_len() => p.value().to_vec(),
        _ => return Err(ScepError::BadEnvelope),
    };
    let ciphertext = ed.encrypted_content.encrypted_content.as_ref().ok_or(ScepError::BadEnvelope)?;

    let rsa = key.rsa().map_err(|_| ScepError::InvalidInput("the decryption key must be RSA"))?;
    let mut cek = vec![0u8; rsa.size() as usize];
    let n =
        rsa.private_decrypt(ktri.enc_key.as_bytes(), &mut cek, Padding::PKCS1).map_err(|_| ScepError::DecryptFailed)?;
    cek.truncate(n);
    if cek.len() != cipher.key_len() {
        return Err(ScepError::DecryptFailed);
    }
    let plain = symm::decrypt(cipher.cipher(), &cek, Some(&iv), ciphertext.as_bytes()).map_err(|e| {
        // A cipher openssl cannot even start (single DES without the legacy provider) is an
        // algorithm problem, not a wrong key.
        if symm::Crypter::new(cipher.cipher(), symm::Mode::Decrypt, &cek, Some(&iv)).is_err() {
            let _ = e;
            ScepError::UnsupportedContentCipher(alg.oid.to_string())
        } else {
            ScepError::DecryptFailed
        }
    })?;
    Ok((plain, cipher))
}
