//! Certificate requests as Windows writes them, for emulated devices and tests: PKCS#10 with
//! the quirks the reader must accept (a PrintableString subject holding `!` or NUL bytes,
//! `sha1WithRSA` under its ISO OID, the device id extension), and the PKCS#7 renewal wrapping
//! signed with the current certificate.

use der::asn1::{OctetString, SetOfVec};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode, Tag};
use openssl::hash::MessageDigest;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{Id, PKeyRef, Private};
use openssl::sign::Signer;
use openssl::stack::Stack;
use openssl::x509::X509Ref;
use x509_cert::attr::{Attribute, AttributeTypeAndValue};
use x509_cert::ext::Extension;
use x509_cert::name::{RdnSequence, RelativeDistinguishedName};
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

/// How to sign the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrSignature {
    /// SHA-256 (`sha256WithRSAEncryption` or `ecdsa-with-SHA256`).
    Sha256,
    /// RSA with SHA-1 under the ISO OID 1.3.14.3.2.29, as Windows does after the usual policy.
    Sha1IsoOid,
}

/// What goes into a built request.
#[derive(Debug, Clone, Copy)]
pub struct CsrOptions<'a> {
    /// The commonName's bytes, written as a PrintableString exactly as given (so `!` and NUL
    /// bytes can be in it, as real Windows does).
    pub subject_cn: &'a [u8],
    pub signature: CsrSignature,
    /// A device id in extension 1.3.6.1.4.1.311.66.1.0 (a UTF8String).
    pub device_id_extension: Option<&'a str>,
}

/// Why a request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("encoding: {0}")]
    Der(#[from] der::Error),
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    #[error("{0}")]
    Invalid(&'static str),
}

/// A PKCS#10 for `key` (RSA or EC) as [`CsrOptions`] says.
pub fn build_windows_csr(key: &PKeyRef<Private>, opts: &CsrOptions<'_>) -> Result<Vec<u8>, BuildError> {
    let atv = AttributeTypeAndValue { oid: CN, value: Any::new(Tag::PrintableString, opts.subject_cn)? };
    let rdn = RelativeDistinguishedName::from(SetOfVec::try_from(vec![atv])?);
    let subject = RdnSequence(vec![rdn]);
    let public_key = SubjectPublicKeyInfoOwned::from_der(&key.public_key_to_der()?)?;
    let mut attributes = SetOfVec::new();
    if let Some(id) = opts.device_id_extension {
        let value = Any::new(Tag::Utf8String, id.as_bytes())?.to_der()?;
        let ext = Extension {
            extn_id: ObjectIdentifier::new_unwrap(super::csr::DEVICE_ID_EXTENSION),
            critical: false,
            extn_value: OctetString::new(value)?,
        };
        let exts = Any::from_der(&vec![ext].to_der()?)?;
        attributes.insert(Attribute { oid: EXTENSION_REQUEST, values: SetOfVec::try_from(vec![exts])? })?;
    }
    let info = CertReqInfo { version: Version::V1, subject, public_key, attributes };
    let (oid, params, md) = match (opts.signature, key.id()) {
        (CsrSignature::Sha1IsoOid, Id::RSA) => ("1.3.14.3.2.29", Some(Any::null()), MessageDigest::sha1()),
        (CsrSignature::Sha1IsoOid, _) => return Err(BuildError::Invalid("the ISO sha1WithRSA OID needs an RSA key")),
        (CsrSignature::Sha256, Id::RSA) => ("1.2.840.113549.1.1.11", Some(Any::null()), MessageDigest::sha256()),
        (CsrSignature::Sha256, Id::EC) => ("1.2.840.10045.4.3.2", None, MessageDigest::sha256()),
        _ => return Err(BuildError::Invalid("the key must be RSA or EC")),
    };
    let algorithm = AlgorithmIdentifierOwned { oid: ObjectIdentifier::new_unwrap(oid), parameters: params };
    let signature = Signer::new(md, key)?.sign_oneshot_to_vec(&info.to_der()?)?;
    let req = CertReq { info, algorithm, signature: der::asn1::BitString::from_bytes(&signature)? };
    Ok(req.to_der()?)
}

/// A renewal request: `csr` inside a PKCS#7 SignedData signed with the current certificate
/// and key (the certificate is included).
pub fn wrap_pkcs7(csr: &[u8], signer: &X509Ref, key: &PKeyRef<Private>) -> Result<Vec<u8>, BuildError> {
    let none = Stack::new()?;
    let p7 = Pkcs7::sign(signer, key, &none, csr, Pkcs7Flags::BINARY)?;
    Ok(p7.to_der()?)
}
