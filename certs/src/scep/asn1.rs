//! Glue between openssl values and the RustCrypto ASN.1 types, and the attribute values SCEP uses.

use der::asn1::{OctetString, SetOfVec};
use der::oid::ObjectIdentifier;
use der::{Any, Decode, Encode, Tag, Tagged};
use openssl::x509::{X509, X509Ref};
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::ScepError;

/// Re-encodes BER as DER through openssl's PKCS#7 codec. Some CMS encoders (NSS heritage, OpenSSL
/// streaming) send indefinite lengths and constructed OCTET STRINGs; the DER types below only read
/// DER. Signed attributes are signed in DER by every conforming signer, so re-encoding keeps them
/// byte-identical.
pub(crate) fn normalize_pkcs7(ber: &[u8]) -> Result<Vec<u8>, ScepError> {
    let p7 = openssl::pkcs7::Pkcs7::from_der(ber).map_err(|_| ScepError::NotCms)?;
    p7.to_der().map_err(|_| ScepError::NotCms)
}

/// The content of a ContentInfo of type `content_type`, decoded as `T`: from DER, or, when strict
/// DER decoding fails anywhere (BER lengths, constructed OCTET STRINGs as Go's and NSS's encoders
/// write them), after re-encoding through [`normalize_pkcs7`]. `wrong_type` is returned when the
/// content type differs, `undecodable` when neither form decodes.
pub(crate) fn content_as<T>(
    bytes: &[u8],
    content_type: ObjectIdentifier,
    wrong_type: ScepError,
    undecodable: fn() -> ScepError,
) -> Result<T, ScepError>
where
    T: for<'a> der::Choice<'a> + for<'a> der::DecodeValue<'a>,
{
    use cms::content_info::ContentInfo;
    let strict = |der: &[u8]| -> Result<Result<T, ()>, ()> {
        let ci = ContentInfo::from_der(der).map_err(|_| ())?;
        if ci.content_type != content_type {
            return Ok(Err(()));
        }
        Ok(ci.content.decode_as::<T>().map_err(|_| ()))
    };
    match strict(bytes) {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(())) if ContentInfo::from_der(bytes).map(|ci| ci.content_type != content_type).unwrap_or(false) => {
            return Err(wrong_type);
        }
        _ => {}
    }
    let der = normalize_pkcs7(bytes).map_err(|_| undecodable())?;
    match strict(&der) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(())) => Err(wrong_type),
        Err(()) => Err(undecodable()),
    }
}

pub(crate) fn to_rc_cert(cert: &X509Ref) -> Result<Certificate, ScepError> {
    let der = cert.to_der()?;
    Certificate::from_der(&der).map_err(|e| ScepError::Encode(format!("certificate: {e}")))
}

pub(crate) fn from_rc_cert(cert: &Certificate) -> Result<X509, ScepError> {
    let der = cert.to_der()?;
    Ok(X509::from_der(&der)?)
}

/// An AlgorithmIdentifier with NULL parameters (as OpenSSL writes digest and RSA identifiers).
pub(crate) fn alg_null(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid, parameters: Some(Any::null()) }
}

pub(crate) fn alg_absent(oid: ObjectIdentifier) -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid, parameters: None }
}

pub(crate) fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, ScepError> {
    let mut values = SetOfVec::new();
    values.insert(value)?;
    Ok(Attribute { oid, values })
}

pub(crate) fn printable(s: &str) -> Result<Any, ScepError> {
    Ok(Any::new(Tag::PrintableString, s.as_bytes())?)
}

pub(crate) fn octets(b: &[u8]) -> Result<Any, ScepError> {
    Ok(Any::new(Tag::OctetString, b)?)
}

pub(crate) fn octet_string(b: &[u8]) -> Result<OctetString, ScepError> {
    Ok(OctetString::new(b)?)
}

/// The single value of attribute `oid`, if present. Several values, or the attribute twice, is
/// malformed.
pub(crate) fn single<'a>(
    attrs: &'a [Attribute],
    oid: ObjectIdentifier,
    name: &'static str,
) -> Result<Option<&'a Any>, ScepError> {
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let Some(attr) = found.next() else { return Ok(None) };
    if found.next().is_some() || attr.values.len() != 1 {
        return Err(ScepError::BadAttribute(name));
    }
    Ok(attr.values.get(0))
}

/// A string-typed attribute value: PrintableString as RFC 8894 says, and leniently UTF8String or
/// IA5String, which some clients use for the transactionID.
pub(crate) fn read_string(value: &Any, name: &'static str) -> Result<String, ScepError> {
    match value.tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String => {
            String::from_utf8(value.value().to_vec()).map_err(|_| ScepError::BadAttribute(name))
        }
        _ => Err(ScepError::BadAttribute(name)),
    }
}

pub(crate) fn read_octets(value: &Any, name: &'static str) -> Result<Vec<u8>, ScepError> {
    if value.tag() != Tag::OctetString {
        return Err(ScepError::BadAttribute(name));
    }
    Ok(value.value().to_vec())
}

/// A decimal number in a string attribute (messageType, pkiStatus, failInfo).
pub(crate) fn read_number(value: &Any, name: &'static str) -> Result<u32, ScepError> {
    let s = read_string(value, name)?;
    let s = s.trim();
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScepError::BadAttribute(name));
    }
    s.parse().map_err(|_| ScepError::BadAttribute(name))
}

/// Whether `cert` is the one an IssuerAndSerialNumber names.
pub(crate) fn matches_issuer_serial(cert: &Certificate, ias: &cms::cert::IssuerAndSerialNumber) -> bool {
    cert.tbs_certificate.issuer == ias.issuer && cert.tbs_certificate.serial_number == ias.serial_number
}

/// Whether `cert` carries this subjectKeyIdentifier.
pub(crate) fn matches_ski(cert: &X509Ref, ski: &[u8]) -> bool {
    cert.subject_key_id().is_some_and(|id| id.as_slice() == ski)
}
