//! A direct reading of a `Mdm-Signature`, for the common shape devices send.
//!
//! [`crate::verify_mdm_signature`] hands the whole CMS to OpenSSL's PKCS#7 code, whose decoder
//! (OpenSSL 3's provider machinery, run for every embedded certificate's public key) costs far
//! more than the signature check itself. Every command report a device sends carries a new
//! signature, so that cost is paid per report. This module reads the CMS with a DER walker
//! instead and gives back borrowed parts: the signer's certificate as DER (so a caller can keep
//! decoded certificates by their bytes), the other certificates, and what the signature covers.
//! The signature is then checked with the signer's public key through an EVP verifier.
//!
//! Only one shape is read here: DER `ContentInfo` / `SignedData` with exactly one `SignerInfo`,
//! its certificate carried in the CMS (identified by issuer and serial number, or by subject key
//! identifier), RSA PKCS#1 v1.5 or ECDSA with SHA-1/SHA-2, with or without signed attributes.
//! Anything else (BER, several signers, PSS, unknown algorithms) is `None` from
//! [`SignatureParts::parse`], and callers fall back to the OpenSSL path, which is also the one
//! that names the error of a signature that fails here.

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Reader, SliceReader, Tag, TagNumber, Tagged};
use openssl::hash::{MessageDigest, hash};
use openssl::pkey::{Id, PKeyRef, Public};
use openssl::sign::Verifier;

use crate::IdentityError;

const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");

const fn oid(dotted: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(dotted)
}

/// Digest algorithms by OID.
const DIGESTS: &[(ObjectIdentifier, Hash)] = &[
    (oid("1.3.14.3.2.26"), Hash::Sha1),
    (oid("2.16.840.1.101.3.4.2.1"), Hash::Sha256),
    (oid("2.16.840.1.101.3.4.2.2"), Hash::Sha384),
    (oid("2.16.840.1.101.3.4.2.3"), Hash::Sha512),
];

/// Signature algorithms by OID: the key family and, when the OID names one, the hash.
const SIGNATURES: &[(ObjectIdentifier, Family, Option<Hash>)] = &[
    (oid("1.2.840.113549.1.1.1"), Family::Rsa, None),
    (oid("1.2.840.113549.1.1.5"), Family::Rsa, Some(Hash::Sha1)),
    (oid("1.2.840.113549.1.1.11"), Family::Rsa, Some(Hash::Sha256)),
    (oid("1.2.840.113549.1.1.12"), Family::Rsa, Some(Hash::Sha384)),
    (oid("1.2.840.113549.1.1.13"), Family::Rsa, Some(Hash::Sha512)),
    (oid("1.2.840.10045.2.1"), Family::Ec, None),
    (oid("1.2.840.10045.4.1"), Family::Ec, Some(Hash::Sha1)),
    (oid("1.2.840.10045.4.3.2"), Family::Ec, Some(Hash::Sha256)),
    (oid("1.2.840.10045.4.3.3"), Family::Ec, Some(Hash::Sha384)),
    (oid("1.2.840.10045.4.3.4"), Family::Ec, Some(Hash::Sha512)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn md(self) -> MessageDigest {
        match self {
            Hash::Sha1 => MessageDigest::sha1(),
            Hash::Sha256 => MessageDigest::sha256(),
            Hash::Sha384 => MessageDigest::sha384(),
            Hash::Sha512 => MessageDigest::sha512(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

/// The parts of a detached CMS signature, borrowed from its DER.
#[derive(Debug)]
pub struct SignatureParts<'a> {
    signer: &'a [u8],
    others: Vec<&'a [u8]>,
    hash: Hash,
    family: Family,
    /// The signed attributes re-tagged as the `SET OF` the signature covers, and the
    /// `messageDigest` value among them.
    signed_attrs: Option<(Vec<u8>, &'a [u8])>,
    signature: &'a [u8],
}

impl<'a> SignatureParts<'a> {
    /// Reads `der` (the decoded `Mdm-Signature` value). `None` when it is not of the shape this
    /// module handles; see the module documentation.
    pub fn parse(der: &'a [u8]) -> Option<SignatureParts<'a>> {
        parse(der).ok().flatten()
    }

    /// The signer's certificate, as carried (DER).
    pub fn signer_der(&self) -> &'a [u8] {
        self.signer
    }

    /// The other certificates carried, in order.
    pub fn chain_der(&self) -> &[&'a [u8]] {
        &self.others
    }

    /// Checks the signature over `body` with `key`, the public key of the certificate
    /// [`SignatureParts::signer_der`] returned. With signed attributes, their `messageDigest`
    /// must be the digest of `body` and the signature must cover the attributes; without, the
    /// signature covers `body` itself.
    pub fn verify(&self, key: &PKeyRef<Public>, body: &[u8]) -> Result<(), IdentityError> {
        let family = match key.id() {
            Id::RSA => Family::Rsa,
            Id::EC => Family::Ec,
            _ => return Err(IdentityError::SignatureInvalid),
        };
        if family != self.family {
            return Err(IdentityError::SignatureInvalid);
        }
        let md = self.hash.md();
        let covered: &[u8] = match &self.signed_attrs {
            Some((attrs, digest)) => {
                let actual = hash(md, body)?;
                if &*actual != *digest {
                    return Err(IdentityError::SignatureInvalid);
                }
                attrs
            }
            None => body,
        };
        let mut verifier = Verifier::new(md, key)?;
        verifier.update(covered)?;
        // A malformed signature value is an error from openssl; either way it did not verify.
        match verifier.verify(self.signature) {
            Ok(true) => Ok(()),
            _ => Err(IdentityError::SignatureInvalid),
        }
    }
}

/// `Ok(None)`: well-formed DER of a shape not handled here.
fn parse(der: &[u8]) -> der::Result<Option<SignatureParts<'_>>> {
    let mut outer = SliceReader::new(der)?;
    let content_info = outer.decode::<AnyRef<'_>>()?;
    outer.finish(())?;
    if content_info.tag() != Tag::Sequence {
        return Ok(None);
    }
    let mut ci = SliceReader::new(content_info.value())?;
    if ci.decode::<ObjectIdentifier>()? != SIGNED_DATA {
        return Ok(None);
    }
    let explicit = ci.decode::<AnyRef<'_>>()?;
    if explicit.tag() != context(0, true) {
        return Ok(None);
    }
    let mut wrapper = SliceReader::new(explicit.value())?;
    let signed_data = wrapper.decode::<AnyRef<'_>>()?;
    if signed_data.tag() != Tag::Sequence {
        return Ok(None);
    }

    let mut sd = SliceReader::new(signed_data.value())?;
    let _version = sd.decode::<AnyRef<'_>>()?;
    let _digest_algorithms = sd.decode::<AnyRef<'_>>()?;
    let _encap_content_info = sd.decode::<AnyRef<'_>>()?;
    let mut certificates = Vec::new();
    let mut signer_infos = None;
    while !sd.is_finished() {
        let tag = sd.peek_tag()?;
        let raw = sd.tlv_bytes()?;
        let item = AnyRef::from_der(raw)?;
        if tag == context(0, true) {
            let mut certs = SliceReader::new(item.value())?;
            while !certs.is_finished() {
                let cert = certs.tlv_bytes()?;
                // Other CertificateChoices (attribute certificates, `other`) are context-tagged.
                if AnyRef::from_der(cert)?.tag() == Tag::Sequence {
                    certificates.push(cert);
                }
            }
        } else if tag == Tag::Set {
            signer_infos = Some(item.value());
        }
        // [1] CRLs are ignored, as the OpenSSL path ignores them.
    }
    let Some(signer_infos) = signer_infos else { return Ok(None) };

    let mut infos = SliceReader::new(signer_infos)?;
    let info = infos.decode::<AnyRef<'_>>()?;
    if !infos.is_finished() || info.tag() != Tag::Sequence {
        return Ok(None); // none, or several signers: the OpenSSL path names the error
    }
    let mut si = SliceReader::new(info.value())?;
    let _version = si.decode::<AnyRef<'_>>()?;
    let sid_raw = si.tlv_bytes()?;
    let digest_alg = algorithm(si.decode::<AnyRef<'_>>()?)?;
    let mut signed_attrs = None;
    if si.peek_tag()? == context(0, true) {
        let raw = si.tlv_bytes()?;
        let value = AnyRef::from_der(raw)?.value();
        let Some(message_digest) = message_digest(value)? else { return Ok(None) };
        // The signature covers the attributes with their universal SET tag, not [0].
        let mut covered = raw.to_vec();
        covered[0] = 0x31;
        signed_attrs = Some((covered, message_digest));
    }
    let signature_alg = algorithm(si.decode::<AnyRef<'_>>()?)?;
    let signature = si.decode::<AnyRef<'_>>()?;
    if signature.tag() != Tag::OctetString {
        return Ok(None);
    }

    let Some(&(_, hash)) = DIGESTS.iter().find(|(oid, _)| *oid == digest_alg) else { return Ok(None) };
    let Some(&(_, family, named)) = SIGNATURES.iter().find(|(oid, _, _)| *oid == signature_alg) else {
        return Ok(None);
    };
    if named.is_some_and(|h| h != hash) {
        return Ok(None);
    }

    let Some(signer_index) = find_signer(sid_raw, &certificates)? else { return Ok(None) };
    let signer = certificates.remove(signer_index);
    Ok(Some(SignatureParts { signer, others: certificates, hash, family, signed_attrs, signature: signature.value() }))
}

fn context(number: u8, constructed: bool) -> Tag {
    Tag::ContextSpecific { constructed, number: TagNumber::new(number) }
}

/// The algorithm OID of an `AlgorithmIdentifier`.
fn algorithm(any: AnyRef<'_>) -> der::Result<ObjectIdentifier> {
    let mut r = SliceReader::new(any.value())?;
    r.decode::<ObjectIdentifier>()
}

/// The `messageDigest` value among the signed attributes (the content of `[0]`).
fn message_digest(attrs: &[u8]) -> der::Result<Option<&[u8]>> {
    let mut r = SliceReader::new(attrs)?;
    let mut found = None;
    while !r.is_finished() {
        let attr = r.decode::<AnyRef<'_>>()?;
        let mut a = SliceReader::new(attr.value())?;
        if a.decode::<ObjectIdentifier>()? != MESSAGE_DIGEST {
            continue;
        }
        let values = a.decode::<AnyRef<'_>>()?;
        let mut v = SliceReader::new(values.value())?;
        let digest = v.decode::<AnyRef<'_>>()?;
        if found.is_some() || !v.is_finished() || digest.tag() != Tag::OctetString {
            return Ok(None); // several values or attributes: not the shape we read
        }
        found = Some(digest.value());
    }
    Ok(found)
}

/// Which carried certificate the `SignerIdentifier` (`sid_raw`, its whole TLV) names.
fn find_signer(sid_raw: &[u8], certificates: &[&[u8]]) -> der::Result<Option<usize>> {
    let sid = AnyRef::from_der(sid_raw)?;
    let mut matches = Vec::new();
    if sid.tag() == Tag::Sequence {
        let wanted = cms::cert::IssuerAndSerialNumber::from_der(sid_raw)?;
        for (i, der) in certificates.iter().enumerate() {
            let Ok(cert) = x509_cert::Certificate::from_der(der) else { return Ok(None) };
            let tbs = &cert.tbs_certificate;
            if tbs.issuer == wanted.issuer && tbs.serial_number == wanted.serial_number {
                matches.push(i);
            }
        }
    } else if sid.tag() == context(0, false) {
        for (i, der) in certificates.iter().enumerate() {
            let Ok(cert) = x509_cert::Certificate::from_der(der) else { return Ok(None) };
            let ski = cert.tbs_certificate.extensions.iter().flatten().find(|e| e.extn_id == SUBJECT_KEY_IDENTIFIER);
            if let Some(ext) = ski {
                let value = der::asn1::OctetStringRef::from_der(ext.extn_value.as_bytes())?;
                if value.as_bytes() == sid.value() {
                    matches.push(i);
                }
            }
        }
    }
    // Exactly one: the same certificate carried twice, or two matching, is left to OpenSSL.
    Ok(if matches.len() == 1 { matches.pop() } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_read() {
        assert!(SignatureParts::parse(b"").is_none());
        assert!(SignatureParts::parse(b"\x30\x03\x02\x01\x01").is_none());
        assert!(SignatureParts::parse(&[0x30, 0x80, 0, 0]).is_none(), "BER indefinite length");
    }
}
