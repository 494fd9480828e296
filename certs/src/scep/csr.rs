//! The PKCS#10 request inside a PKCSReq/RenewalReq: what the server needs from it (subject, key,
//! challengePassword), its own signature, and the key strength rule. Also builds requests for the
//! client side, since openssl's safe API cannot add a challengePassword attribute.

use der::asn1::{BitString, SetOfVec};
use der::{Any, Decode, Encode, Tag, Tagged};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private, Public};
use openssl::sign::Signer;
use openssl::x509::{X509Name, X509NameRef, X509Req};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::asn1::{self, alg_absent, alg_null};
use super::{ScepError, oids};

/// Smallest RSA modulus certified.
pub const MIN_RSA_BITS: u32 = 2048;

/// A certificate request whose signature verified and whose key is strong enough.
pub struct CsrInfo {
    /// The request as received (DER).
    pub der: Vec<u8>,
    pub subject: X509Name,
    pub public_key: PKey<Public>,
    /// The challengePassword attribute, when present.
    pub challenge: Option<String>,
}

impl std::fmt::Debug for CsrInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrInfo")
            .field("subject", &subject_text(&self.subject))
            .field("key_bits", &self.public_key.bits())
            .field("challenge", &self.challenge.as_ref().map(|_| ".."))
            .finish()
    }
}

/// `CN=x,O=y` style text of a name (short names, in order), for logs and records.
pub fn subject_text(name: &X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `der` as PKCS#10, checks its self-signature and the key strength rule: RSA of at least
/// [`MIN_RSA_BITS`] bits, or EC on P-256, P-384 or P-521.
pub fn inspect_csr(der: &[u8]) -> Result<CsrInfo, ScepError> {
    let req = X509Req::from_der(der).map_err(|_| ScepError::BadCsr)?;
    let public_key = req.public_key().map_err(|_| ScepError::BadCsr)?;
    check_key_strength(&public_key)?;
    if !req.verify(&public_key).unwrap_or(false) {
        return Err(ScepError::CsrSignatureInvalid);
    }
    let parsed = CertReq::from_der(der).map_err(|_| ScepError::BadCsr)?;
    let attrs: Vec<_> = parsed.info.attributes.iter().cloned().collect();
    let challenge = match asn1::single(&attrs, oids::CHALLENGE_PASSWORD, "challengePassword") {
        Ok(Some(v)) => Some(directory_string(v).ok_or(ScepError::BadCsr)?),
        Ok(None) => None,
        Err(_) => return Err(ScepError::BadCsr),
    };
    Ok(CsrInfo { der: der.to_vec(), subject: req.subject_name().to_owned()?, public_key, challenge })
}

/// The key rule shared by requests and renewals.
pub fn check_key_strength(key: &PKeyRef<Public>) -> Result<(), ScepError> {
    match key.id() {
        Id::RSA => {
            let bits = key.bits();
            if bits < MIN_RSA_BITS {
                return Err(ScepError::WeakKey(format!("RSA {bits} bits (at least {MIN_RSA_BITS} required)")));
            }
            Ok(())
        }
        Id::EC => {
            let ec = key.ec_key()?;
            match ec.group().curve_name() {
                Some(Nid::X9_62_PRIME256V1 | Nid::SECP384R1 | Nid::SECP521R1) => Ok(()),
                Some(other) => {
                    Err(ScepError::WeakKey(format!("EC curve {} (P-256 or stronger required)", other.as_raw())))
                }
                None => Err(ScepError::UnsupportedKeyType("EC with explicit parameters".into())),
            }
        }
        other => Err(ScepError::UnsupportedKeyType(format!("key type {}", other.as_raw()))),
    }
}

/// DirectoryString (and, leniently, IA5String) as text; BMPString as UTF-16BE.
fn directory_string(v: &Any) -> Option<String> {
    match v.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String | Tag::TeletexString => {
            String::from_utf8(v.value().to_vec()).ok()
        }
        Tag::BmpString => {
            let bytes = v.value();
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// A PKCS#10 request for `key` with `subject` and, when given, a challengePassword (as
/// PrintableString when it fits, else UTF8String), signed with SHA-256.
pub fn build_csr(key: &PKeyRef<Private>, subject: &X509NameRef, challenge: Option<&str>) -> Result<Vec<u8>, ScepError> {
    let subject = Name::from_der(&subject.to_der()?).map_err(|e| ScepError::Encode(format!("subject: {e}")))?;
    let public_key = SubjectPublicKeyInfoOwned::from_der(&key.public_key_to_der()?)
        .map_err(|e| ScepError::Encode(format!("public key: {e}")))?;
    let mut attributes = SetOfVec::new();
    if let Some(c) = challenge {
        if c.is_empty() {
            return Err(ScepError::InvalidInput("challenge must not be empty"));
        }
        let printable = c.bytes().all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b));
        let value = Any::new(if printable { Tag::PrintableString } else { Tag::Utf8String }, c.as_bytes())?;
        attributes.insert(asn1::attribute(oids::CHALLENGE_PASSWORD, value)?)?;
    }
    let info = CertReqInfo { version: Version::V1, subject, public_key, attributes };
    let algorithm = match key.id() {
        Id::RSA => alg_null(oids::SHA256_WITH_RSA),
        Id::EC => alg_absent(oids::ECDSA_WITH_SHA256),
        _ => return Err(ScepError::InvalidInput("CSR key must be RSA or EC")),
    };
    let mut signer = Signer::new(openssl::hash::MessageDigest::sha256(), key)?;
    let signature = signer.sign_oneshot_to_vec(&info.to_der()?)?;
    let req = CertReq { info, algorithm, signature: BitString::from_bytes(&signature)? };
    Ok(req.to_der()?)
}
