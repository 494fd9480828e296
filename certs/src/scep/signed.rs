//! CMS SignedData with signed attributes: the outer layer of every SCEP PKI message, and the
//! certs-only ("degenerate") form that carries certificates. Decoding is structural
//! ([`decode`]); signature checking is a separate step ([`Signed::verify`]) so a server can still
//! answer a message whose signature fails.

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};

use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::SetOfVec;
use der::{Any, Encode, Tag, Tagged};
use openssl::hash::hash;
use openssl::pkey::{Id, PKeyRef, Private};
use openssl::sign::{Signer, Verifier};
use openssl::x509::{X509, X509Ref};
use x509_cert::attr::Attribute;

use super::asn1::{self, alg_absent, alg_null, matches_issuer_serial, matches_ski, to_rc_cert};
use super::{Digest, ScepError, oids};

/// A decoded SignedData with one signer, nothing verified yet.
#[derive(Debug)]
pub(crate) struct Signed {
    pub(crate) signer: X509,
    /// Every certificate carried, signer included, in the order decoded.
    pub(crate) certificates: Vec<X509>,
    pub(crate) attrs: Vec<Attribute>,
    /// The eContent octets, when present.
    pub(crate) content: Option<Vec<u8>>,
    econtent_type: der::oid::ObjectIdentifier,
    info: SignerInfo,
}

fn signed_data(der: &[u8]) -> Result<SignedData, ScepError> {
    asn1::content_as::<SignedData>(der, oids::SIGNED_DATA, ScepError::NotSignedData, || ScepError::NotCms)
}

fn certificates(sd: &SignedData) -> Vec<&x509_cert::Certificate> {
    sd.certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|c| match c {
            CertificateChoices::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Decodes a BER/DER ContentInfo holding SignedData with exactly one signer whose certificate is
/// carried and which has signed attributes.
pub(crate) fn decode(der: &[u8]) -> Result<Signed, ScepError> {
    let sd = signed_data(der)?;
    let infos: Vec<&SignerInfo> = sd.signer_infos.0.iter().collect();
    let [info] = infos.as_slice() else { return Err(ScepError::SignerCount(infos.len())) };
    let rc_certs = certificates(&sd);
    let mut certs = Vec::with_capacity(rc_certs.len());
    let mut signer = None;
    for c in &rc_certs {
        let x = asn1::from_rc_cert(c).map_err(|_| ScepError::NoSignerCertificate)?;
        let is_signer = match &info.sid {
            SignerIdentifier::IssuerAndSerialNumber(ias) => matches_issuer_serial(c, ias),
            SignerIdentifier::SubjectKeyIdentifier(ski) => matches_ski(&x, ski.0.as_bytes()),
        };
        if is_signer && signer.is_none() {
            signer = Some(x.clone());
        }
        certs.push(x);
    }
    let signer = signer.ok_or(ScepError::NoSignerCertificate)?;
    let attrs: Vec<Attribute> = match &info.signed_attrs {
        Some(a) => a.iter().cloned().collect(),
        None => return Err(ScepError::MissingAttribute("signedAttrs")),
    };
    let content = match &sd.encap_content_info.econtent {
        None => None,
        Some(any) if any.tag() == Tag::OctetString => Some(any.value().to_vec()),
        Some(_) => return Err(ScepError::BadAttribute("eContent")),
    };
    Ok(Signed {
        signer,
        certificates: certs,
        attrs,
        content,
        econtent_type: sd.encap_content_info.econtent_type,
        info: (*info).clone(),
    })
}

impl Signed {
    /// Checks the signature over the signed attributes with the signer's key, and that the
    /// messageDigest and contentType attributes describe the content. Returns the digest used.
    pub(crate) fn verify(&self) -> Result<Digest, ScepError> {
        let info = &self.info;
        let digest = Digest::from_oid(&info.digest_alg.oid)
            .ok_or_else(|| ScepError::UnsupportedDigest(info.digest_alg.oid.to_string()))?;
        let key = self.signer.public_key()?;
        let sig_oid = info.signature_algorithm.oid;
        let family_ok = match key.id() {
            Id::RSA => matches!(
                sig_oid,
                oids::RSA_ENCRYPTION
                    | oids::SHA1_WITH_RSA
                    | oids::SHA256_WITH_RSA
                    | oids::SHA384_WITH_RSA
                    | oids::SHA512_WITH_RSA
            ),
            Id::EC => matches!(
                sig_oid,
                oids::EC_PUBLIC_KEY
                    | oids::ECDSA_WITH_SHA1
                    | oids::ECDSA_WITH_SHA256
                    | oids::ECDSA_WITH_SHA384
                    | oids::ECDSA_WITH_SHA512
            ),
            _ => false,
        };
        if !family_ok {
            return Err(ScepError::UnsupportedSignatureAlgorithm(sig_oid.to_string()));
        }
        let signed_attrs = info.signed_attrs.as_ref().ok_or(ScepError::MissingAttribute("signedAttrs"))?;
        // The signature covers the DER of the attributes as a SET OF (tag 0x31), not as the
        // [0] IMPLICIT field they travel in.
        let to_verify = signed_attrs.to_der()?;
        let mut verifier = Verifier::new(digest.md(), &key)?;
        let ok = verifier.verify_oneshot(info.signature.as_bytes(), &to_verify).unwrap_or(false);
        if !ok {
            return Err(ScepError::SignatureInvalid);
        }
        let expected = asn1::single(&self.attrs, oids::MESSAGE_DIGEST, "messageDigest")?
            .ok_or(ScepError::MissingAttribute("messageDigest"))?;
        let expected = asn1::read_octets(expected, "messageDigest")?;
        let actual = hash(digest.md(), self.content.as_deref().unwrap_or_default())?;
        if expected != *actual {
            return Err(ScepError::ContentDigestMismatch);
        }
        if let Some(ct) = asn1::single(&self.attrs, oids::CONTENT_TYPE, "contentType")? {
            let ct =
                ct.decode_as::<der::oid::ObjectIdentifier>().map_err(|_| ScepError::BadAttribute("contentType"))?;
            if ct != self.econtent_type {
                return Err(ScepError::ContentDigestMismatch);
            }
        }
        Ok(digest)
    }
}

fn cert_set(certs: &[&X509Ref]) -> Result<Option<CertificateSet>, ScepError> {
    if certs.is_empty() {
        return Ok(None);
    }
    let mut set = SetOfVec::new();
    for c in certs {
        set.insert(CertificateChoices::Certificate(to_rc_cert(c)?))?;
    }
    Ok(Some(CertificateSet(set)))
}

fn econtent(content: Option<&[u8]>) -> Result<EncapsulatedContentInfo, ScepError> {
    Ok(EncapsulatedContentInfo { econtent_type: oids::DATA, econtent: content.map(asn1::octets).transpose()? })
}

fn content_info(sd: &SignedData) -> Result<Vec<u8>, ScepError> {
    let ci = ContentInfo { content_type: oids::SIGNED_DATA, content: Any::encode_from(sd)? };
    Ok(ci.to_der()?)
}

/// A SignedData over `content` (eContentType id-data; absent content signs the empty string),
/// signed by `signer`/`key` with `attrs` plus contentType and messageDigest as signed attributes,
/// carrying `signer` and then `extra_certs`.
pub(crate) fn sign(
    content: Option<&[u8]>,
    mut attrs: Vec<Attribute>,
    signer: &X509Ref,
    key: &PKeyRef<Private>,
    extra_certs: &[X509],
    digest: Digest,
) -> Result<Vec<u8>, ScepError> {
    let (sig_alg, to_sign_digest) = match key.id() {
        // rsaEncryption as the signature algorithm, as OpenSSL's PKCS#7 code writes it; every
        // SCEP client accepts it.
        Id::RSA => (alg_null(oids::RSA_ENCRYPTION), digest),
        Id::EC => (
            alg_absent(match digest {
                Digest::Sha1 => oids::ECDSA_WITH_SHA1,
                Digest::Sha256 => oids::ECDSA_WITH_SHA256,
                Digest::Sha384 => oids::ECDSA_WITH_SHA384,
                Digest::Sha512 => oids::ECDSA_WITH_SHA512,
            }),
            digest,
        ),
        _ => return Err(ScepError::InvalidInput("signing key must be RSA or EC")),
    };
    let md = hash(digest.md(), content.unwrap_or_default())?;
    attrs.push(asn1::attribute(oids::CONTENT_TYPE, Any::encode_from(&oids::DATA)?)?);
    attrs.push(asn1::attribute(oids::MESSAGE_DIGEST, asn1::octets(&md)?)?);
    let signed_attrs = SetOfVec::try_from(attrs)?;
    let mut signer_ctx = Signer::new(to_sign_digest.md(), key)?;
    let signature = signer_ctx.sign_oneshot_to_vec(&signed_attrs.to_der()?)?;
    let rc_signer = to_rc_cert(signer)?;
    let info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: rc_signer.tbs_certificate.issuer.clone(),
            serial_number: rc_signer.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: alg_null(digest.oid()),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: sig_alg,
        signature: asn1::octet_string(&signature)?,
        unsigned_attrs: None,
    };
    let mut all: Vec<&X509Ref> = vec![signer];
    all.extend(extra_certs.iter().map(|c| c.as_ref()));
    let mut digest_algorithms = SetOfVec::new();
    digest_algorithms.insert(alg_null(digest.oid()))?;
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms,
        encap_content_info: econtent(content)?,
        certificates: cert_set(&all)?,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![info])?),
    };
    content_info(&sd)
}

/// A certs-only SignedData ("degenerate PKCS#7", RFC 8894 §3.4): no signers, no content, the
/// certificates in `certs`.
pub fn certs_only(certs: &[X509]) -> Result<Vec<u8>, ScepError> {
    let refs: Vec<&X509Ref> = certs.iter().map(|c| c.as_ref()).collect();
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: econtent(None)?,
        certificates: cert_set(&refs)?,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    content_info(&sd)
}

/// The certificates of a certs-only SignedData (any signers are ignored).
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<X509>, ScepError> {
    let sd = signed_data(der)?;
    certificates(&sd).into_iter().map(asn1::from_rc_cert).collect()
}
