//! Reading the certificate requests Windows sends to an MS-WSTEP enrollment service, leniently
//! where real Windows is quirky, strictly where it matters:
//!
//! - the request is a PKCS#10, or a PKCS#7 SignedData whose content is one (renewals; the
//!   signature is verified and its signers are reported);
//! - subjects may hold `!` and NUL bytes inside a PrintableString (Windows VMs do this): the
//!   subject is read with a DER walker that does not judge string contents, and only shown;
//! - `sha1WithRSA` may come under its ISO OID (1.3.14.3.2.29, `szOID_OIWSEC_sha1RSASign`,
//!   what MS-XCEP policies hand out) as well as PKCS#1's;
//! - the device id may be in extension 1.3.6.1.4.1.311.66.1.0 of the extension request.
//!
//! The self-signature is always verified over the exact bytes received, and the key must be
//! RSA of at least 2048 bits or EC on P-256/384/521.

use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Decode, Reader, SliceReader, Tag, TagNumber, Tagged};
use openssl::hash::MessageDigest;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

const fn oid(dotted: &str) -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap(dotted)
}

/// PKCS#9 extensionRequest, and Microsoft's older attribute for the same.
const EXTENSION_REQUEST: ObjectIdentifier = oid("1.2.840.113549.1.9.14");
const MS_CERT_EXTENSIONS: ObjectIdentifier = oid("1.3.6.1.4.1.311.2.1.14");
/// The device id extension the Windows enrollment client writes.
pub const DEVICE_ID_EXTENSION: &str = "1.3.6.1.4.1.311.66.1.0";
const DEVICE_ID: ObjectIdentifier = oid(DEVICE_ID_EXTENSION);
const SIGNED_DATA: ObjectIdentifier = oid("1.2.840.113549.1.7.2");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
}

/// A signature algorithm accepted on a request: OID, name, hash, key family.
type SignatureAlgorithm = (ObjectIdentifier, &'static str, fn() -> MessageDigest, Family);

const SIGNATURES: &[SignatureAlgorithm] = &[
    (oid("1.2.840.113549.1.1.5"), "sha1WithRSAEncryption", MessageDigest::sha1, Family::Rsa),
    (oid("1.3.14.3.2.29"), "sha1WithRSA (ISO OID)", MessageDigest::sha1, Family::Rsa),
    (oid("1.2.840.113549.1.1.11"), "sha256WithRSAEncryption", MessageDigest::sha256, Family::Rsa),
    (oid("1.2.840.113549.1.1.12"), "sha384WithRSAEncryption", MessageDigest::sha384, Family::Rsa),
    (oid("1.2.840.113549.1.1.13"), "sha512WithRSAEncryption", MessageDigest::sha512, Family::Rsa),
    (oid("1.2.840.10045.4.3.2"), "ecdsa-with-SHA256", MessageDigest::sha256, Family::Ec),
    (oid("1.2.840.10045.4.3.3"), "ecdsa-with-SHA384", MessageDigest::sha384, Family::Ec),
    (oid("1.2.840.10045.4.3.4"), "ecdsa-with-SHA512", MessageDigest::sha512, Family::Ec),
];

/// Short names for the subject attributes Windows uses; others are shown as dotted OIDs.
const NAMES: &[(ObjectIdentifier, &str)] = &[
    (oid("2.5.4.3"), "CN"),
    (oid("2.5.4.10"), "O"),
    (oid("2.5.4.11"), "OU"),
    (oid("2.5.4.6"), "C"),
    (oid("2.5.4.7"), "L"),
    (oid("2.5.4.8"), "ST"),
    (oid("1.2.840.113549.1.9.1"), "E"),
    (oid("0.9.2342.19200300.100.1.25"), "DC"),
];

/// Why a certificate request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("not a PKCS#10 or PKCS#7 certificate request: {0}")]
    Malformed(String),
    #[error("the PKCS#7 around the request does not verify: {0}")]
    Pkcs7(String),
    #[error("unsupported request signature algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("the request's signature does not verify")]
    BadSignature,
    #[error("the request's public key cannot be used: {0}")]
    BadKey(String),
    #[error("the request's key is too weak: {0}")]
    WeakKey(String),
}

impl CsrError {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::Malformed(_) => "csr_malformed",
            CsrError::Pkcs7(_) => "csr_pkcs7_invalid",
            CsrError::UnsupportedAlgorithm(_) => "csr_unsupported_algorithm",
            CsrError::BadSignature => "csr_bad_signature",
            CsrError::BadKey(_) => "csr_bad_key",
            CsrError::WeakKey(_) => "csr_weak_key",
        }
    }
}

fn malformed(what: &str) -> impl Fn(der::Error) -> CsrError + '_ {
    move |e| CsrError::Malformed(format!("{what}: {e}"))
}

/// A certificate request whose signature verified and whose key is strong enough.
pub struct WindowsCsr {
    /// The PKCS#10 (unwrapped from PKCS#7 when it came so).
    pub der: Vec<u8>,
    pub public_key: PKey<Public>,
    /// The subject as text (`CN=…`), control characters shown as `\xNN`. For logs: never
    /// copied into a certificate.
    pub subject: String,
    pub signature_algorithm: &'static str,
    /// The value of extension 1.3.6.1.4.1.311.66.1.0, when present.
    pub device_id: Option<String>,
    /// When the request came inside a PKCS#7: the certificates that signed it (verified).
    pub pkcs7_signers: Option<Vec<X509>>,
}

impl std::fmt::Debug for WindowsCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowsCsr")
            .field("subject", &self.subject)
            .field("key_bits", &self.public_key.bits())
            .field("signature_algorithm", &self.signature_algorithm)
            .field("device_id", &self.device_id)
            .field("pkcs7_signers", &self.pkcs7_signers.as_ref().map(Vec::len))
            .finish()
    }
}

/// Reads a request: PKCS#10 or PKCS#7 around a PKCS#10, whatever the token's `ValueType`
/// claimed (the bytes decide).
pub fn read_certificate_request(bytes: &[u8]) -> Result<WindowsCsr, CsrError> {
    if is_content_info(bytes) {
        let (csr, signers) = unwrap_pkcs7(bytes)?;
        let mut r = read_pkcs10(&csr)?;
        r.pkcs7_signers = Some(signers);
        Ok(r)
    } else {
        read_pkcs10(bytes)
    }
}

/// `SEQUENCE { OBJECT IDENTIFIER signedData, … }` rather than `SEQUENCE { SEQUENCE … }`.
fn is_content_info(bytes: &[u8]) -> bool {
    let Ok(outer) = AnyRef::from_der(bytes) else {
        // BER (indefinite lengths) is not DER: a PKCS#10 is always DER, so try PKCS#7.
        return Pkcs7::from_der(bytes).is_ok();
    };
    if outer.tag() != Tag::Sequence {
        return false;
    }
    let mut r = SliceReader::new(outer.value()).ok();
    r.as_mut()
        .and_then(|r| AnyRef::decode(r).ok())
        .is_some_and(|first| first.tag() == Tag::ObjectIdentifier && first.value() == SIGNED_DATA.as_bytes())
}

fn unwrap_pkcs7(bytes: &[u8]) -> Result<(Vec<u8>, Vec<X509>), CsrError> {
    let p7 = Pkcs7::from_der(bytes).map_err(|e| CsrError::Pkcs7(format!("not PKCS#7: {e}")))?;
    let none = Stack::new().map_err(|e| CsrError::Pkcs7(e.to_string()))?;
    let store = X509StoreBuilder::new().map_err(|e| CsrError::Pkcs7(e.to_string()))?.build();
    let mut content = Vec::new();
    // NOVERIFY: the signature over the content is checked, not the signer's chain; who may
    // renew is decided by the caller from the signer certificate.
    p7.verify(&none, &store, None, Some(&mut content), Pkcs7Flags::NOVERIFY | Pkcs7Flags::BINARY)
        .map_err(|e| CsrError::Pkcs7(e.to_string()))?;
    let signers = p7
        .signers(&none, Pkcs7Flags::empty())
        .map_err(|e| CsrError::Pkcs7(format!("signers: {e}")))?
        .iter()
        .map(|c| c.to_owned())
        .collect();
    Ok((content, signers))
}

fn read_pkcs10(bytes: &[u8]) -> Result<WindowsCsr, CsrError> {
    let outer = AnyRef::from_der(bytes).map_err(malformed("request"))?;
    if outer.tag() != Tag::Sequence {
        return Err(CsrError::Malformed("request is not a SEQUENCE".into()));
    }
    let mut r = SliceReader::new(outer.value()).map_err(malformed("request"))?;
    let info_tlv = r.tlv_bytes().map_err(malformed("certificationRequestInfo"))?;
    let alg = AnyRef::decode(&mut r).map_err(malformed("signatureAlgorithm"))?;
    let sig = AnyRef::decode(&mut r).map_err(malformed("signature"))?;
    if alg.tag() != Tag::Sequence || sig.tag() != Tag::BitString {
        return Err(CsrError::Malformed("signatureAlgorithm or signature has the wrong type".into()));
    }

    // certificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, [0] attributes }
    let info = AnyRef::from_der(info_tlv).map_err(malformed("certificationRequestInfo"))?;
    let mut ir = SliceReader::new(info.value()).map_err(malformed("certificationRequestInfo"))?;
    let version = AnyRef::decode(&mut ir).map_err(malformed("version"))?;
    if version.tag() != Tag::Integer {
        return Err(CsrError::Malformed("version is not an INTEGER".into()));
    }
    let subject = AnyRef::decode(&mut ir).map_err(malformed("subject"))?;
    let spki = ir.tlv_bytes().map_err(malformed("subjectPKInfo"))?;
    let attributes =
        if ir.is_finished() { None } else { Some(AnyRef::decode(&mut ir).map_err(malformed("attributes"))?) };

    let public_key = PKey::public_key_from_der(spki).map_err(|e| CsrError::BadKey(e.to_string()))?;
    check_key(&public_key)?;

    let mut ar = SliceReader::new(alg.value()).map_err(malformed("signatureAlgorithm"))?;
    let alg_oid = ObjectIdentifier::decode(&mut ar).map_err(malformed("signatureAlgorithm"))?;
    let &(_, name, md, family) = SIGNATURES
        .iter()
        .find(|(o, ..)| *o == alg_oid)
        .ok_or_else(|| CsrError::UnsupportedAlgorithm(alg_oid.to_string()))?;
    let key_family = match public_key.id() {
        Id::RSA => Family::Rsa,
        Id::EC => Family::Ec,
        _ => return Err(CsrError::BadKey("neither RSA nor EC".into())),
    };
    if key_family != family {
        return Err(CsrError::UnsupportedAlgorithm(format!("{name} with a {key_family:?} key")));
    }
    let (unused, signature) = sig.value().split_first().ok_or(CsrError::BadSignature)?;
    if *unused != 0 {
        return Err(CsrError::BadSignature);
    }
    {
        let mut verifier = Verifier::new(md(), &public_key).map_err(|e| CsrError::BadKey(e.to_string()))?;
        if !verifier.verify_oneshot(signature, info_tlv).unwrap_or(false) {
            return Err(CsrError::BadSignature);
        }
    }

    let device_id = match attributes {
        Some(a) if a.tag() == (Tag::ContextSpecific { constructed: true, number: TagNumber::N0 }) => {
            device_id_extension(a.value())?
        }
        Some(_) => return Err(CsrError::Malformed("attributes are not [0]".into())),
        None => None,
    };
    Ok(WindowsCsr {
        der: bytes.to_vec(),
        public_key,
        subject: subject_text(subject.value()),
        signature_algorithm: name,
        device_id,
        pkcs7_signers: None,
    })
}

fn check_key(key: &PKey<Public>) -> Result<(), CsrError> {
    crate::scep::check_key_strength(key).map_err(|e| match e {
        crate::scep::ScepError::WeakKey(m) => CsrError::WeakKey(m),
        other => CsrError::BadKey(other.to_string()),
    })
}

/// Each `Attribute ::= SEQUENCE { type, SET OF value }`; in an extension request, each
/// `Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }`.
fn device_id_extension(attributes: &[u8]) -> Result<Option<String>, CsrError> {
    let mut r = SliceReader::new(attributes).map_err(malformed("attributes"))?;
    while !r.is_finished() {
        let attr = AnyRef::decode(&mut r).map_err(malformed("attribute"))?;
        let mut ar = SliceReader::new(attr.value()).map_err(malformed("attribute"))?;
        let attr_type = ObjectIdentifier::decode(&mut ar).map_err(malformed("attribute type"))?;
        if attr_type != EXTENSION_REQUEST && attr_type != MS_CERT_EXTENSIONS {
            continue;
        }
        let values = AnyRef::decode(&mut ar).map_err(malformed("attribute values"))?;
        let mut vr = SliceReader::new(values.value()).map_err(malformed("attribute values"))?;
        while !vr.is_finished() {
            let exts = AnyRef::decode(&mut vr).map_err(malformed("extensions"))?;
            let mut er = SliceReader::new(exts.value()).map_err(malformed("extensions"))?;
            while !er.is_finished() {
                let ext = AnyRef::decode(&mut er).map_err(malformed("extension"))?;
                let mut xr = SliceReader::new(ext.value()).map_err(malformed("extension"))?;
                let id = ObjectIdentifier::decode(&mut xr).map_err(malformed("extension id"))?;
                let mut value = AnyRef::decode(&mut xr).map_err(malformed("extension value"))?;
                if value.tag() == Tag::Boolean {
                    value = AnyRef::decode(&mut xr).map_err(malformed("extension value"))?;
                }
                if id == DEVICE_ID {
                    return Ok(Some(device_id_text(value.value())));
                }
            }
        }
    }
    Ok(None)
}

/// The device id extension's value as text. What Windows puts there is not documented; it is
/// read as a DER string when it is one, else as UTF-8, else as UTF-16LE, else as hex.
fn device_id_text(value: &[u8]) -> String {
    if let Ok(inner) = AnyRef::from_der(value) {
        match inner.tag() {
            Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::OctetString | Tag::TeletexString => {
                if let Ok(s) = std::str::from_utf8(inner.value()) {
                    return s.trim_matches(char::from(0)).trim().to_owned();
                }
            }
            Tag::BmpString => {
                let units: Vec<u16> =
                    inner.value().chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
                return String::from_utf16_lossy(&units).trim_matches(char::from(0)).trim().to_owned();
            }
            _ => {}
        }
    }
    if let Ok(s) = std::str::from_utf8(value)
        && s.chars().all(|c| !c.is_control() || c == '\0')
    {
        return s.trim_matches(char::from(0)).trim().to_owned();
    }
    if value.len().is_multiple_of(2) {
        let units: Vec<u16> = value.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        if let Ok(s) = String::from_utf16(&units)
            && s.chars().all(|c| !c.is_control() || c == '\0')
        {
            return s.trim_matches(char::from(0)).trim().to_owned();
        }
    }
    hex::encode_upper(value)
}

/// `CN=…,O=…` from a Name's RDNSequence content, without judging string types.
fn subject_text(rdns: &[u8]) -> String {
    let mut parts = Vec::new();
    let Ok(mut r) = SliceReader::new(rdns) else { return String::new() };
    while !r.is_finished() {
        let Ok(set) = AnyRef::decode(&mut r) else { break };
        let Ok(mut sr) = SliceReader::new(set.value()) else { break };
        while !sr.is_finished() {
            let Ok(atv) = AnyRef::decode(&mut sr) else { break };
            let Ok(mut ar) = SliceReader::new(atv.value()) else { break };
            let (Ok(t), Ok(v)) = (ObjectIdentifier::decode(&mut ar), AnyRef::decode(&mut ar)) else { break };
            let name = NAMES.iter().find(|(o, _)| *o == t).map(|(_, n)| (*n).to_owned()).unwrap_or(t.to_string());
            let text = if v.tag() == Tag::BmpString {
                let units: Vec<u16> =
                    v.value().chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
                String::from_utf16_lossy(&units)
            } else {
                String::from_utf8_lossy(v.value()).into_owned()
            };
            let shown: String = text
                .chars()
                .map(|c| if c.is_control() { format!("\\x{:02X}", c as u32) } else { c.to_string() })
                .collect();
            parts.push(format!("{name}={shown}"));
        }
    }
    parts.join(",")
}
