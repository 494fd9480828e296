//! Pieces shared by every certificate the development PKI makes: version, serial, names, validity,
//! signing. Does not decide extensions; `ca.rs` and `leaf.rs` do.

use openssl::{
    asn1::{Asn1Integer, Asn1Time},
    bn::BigNum,
    hash::MessageDigest,
    nid::Nid,
    pkey::{HasPublic, PKeyRef, Private},
    x509::{X509Builder, X509Name, X509NameRef, X509Ref},
};

use super::DevPkiError;

/// RFC 5280 ub-common-name.
const MAX_COMMON_NAME_CHARS: usize = 64;

/// A v3 certificate builder with serial, subject, public key and validity set; issuer, extensions and
/// signature are up to the caller.
pub(crate) fn start<T: HasPublic>(
    subject: &X509NameRef,
    key: &PKeyRef<T>,
    serial: &[u8],
    not_before: i64,
    not_after: i64,
) -> Result<X509Builder, DevPkiError> {
    if not_after <= not_before {
        return Err(DevPkiError::InvalidValidity);
    }
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?; // X.509 v3 is encoded as 2.
    builder.set_serial_number(serial_number(serial)?.as_ref())?;
    builder.set_subject_name(subject)?;
    builder.set_pubkey(key)?;
    builder.set_not_before(time(not_before)?.as_ref())?;
    builder.set_not_after(time(not_after)?.as_ref())?;
    Ok(builder)
}

/// A subject name with just a commonName (or empty, for server certificates named only by SANs).
pub(crate) fn name(common_name: Option<&str>) -> Result<X509Name, DevPkiError> {
    let mut name = X509Name::builder()?;
    if let Some(cn) = common_name {
        if !valid_common_name(cn) {
            return Err(DevPkiError::InvalidCommonName);
        }
        name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    }
    Ok(name.build())
}

pub(crate) fn valid_common_name(cn: &str) -> bool {
    let chars = cn.chars().count();
    (1..=MAX_COMMON_NAME_CHARS).contains(&chars)
}

/// Refuse to sign with a key that is not the CA's: the result would never verify.
pub(crate) fn check_issuer_key(issuer: &X509Ref, issuer_key: &PKeyRef<Private>) -> Result<(), DevPkiError> {
    if issuer.public_key()?.public_eq(issuer_key) { Ok(()) } else { Err(DevPkiError::KeyMismatch) }
}

pub(crate) fn sign(builder: &mut X509Builder, issuer_key: &PKeyRef<Private>) -> Result<(), DevPkiError> {
    builder.sign(issuer_key, MessageDigest::sha256())?;
    Ok(())
}

/// `now + days`, checked.
pub(crate) fn days_after(now: i64, days: u32) -> Result<i64, DevPkiError> {
    now.checked_add(i64::from(days) * 86_400).ok_or(DevPkiError::TimeOutOfRange)
}

pub(crate) fn backdated(now: i64) -> Result<i64, DevPkiError> {
    now.checked_sub(super::BACKDATE_SECONDS).ok_or(DevPkiError::TimeOutOfRange)
}

fn serial_number(bytes: &[u8]) -> Result<Asn1Integer, DevPkiError> {
    // A 20-octet value with the top bit set needs a 21st (sign) octet in DER.
    let too_long = bytes.len() > 20 || (bytes.len() == 20 && bytes[0] & 0x80 != 0);
    if bytes.is_empty() || too_long || bytes.iter().all(|b| *b == 0) {
        return Err(DevPkiError::InvalidSerial);
    }
    Ok(BigNum::from_slice(bytes)?.to_asn1_integer()?)
}

/// 9999-12-31T23:59:59Z, the last instant a GeneralizedTime can hold. openssl encodes later times
/// without complaint into something no parser accepts, so the bound is checked here.
const LAST_ENCODABLE: i64 = 253_402_300_799;

fn time(unix: i64) -> Result<Asn1Time, DevPkiError> {
    // Before 1970 is no use to a development PKI and keeps time_t sign questions away.
    if !(0..=LAST_ENCODABLE).contains(&unix) {
        return Err(DevPkiError::TimeOutOfRange);
    }
    // time_t is 32 bits on some targets, hence the (here useless) conversion.
    #[allow(clippy::useless_conversion)]
    let t = unix.try_into().map_err(|_| DevPkiError::TimeOutOfRange)?;
    Asn1Time::from_unix(t).map_err(|_| DevPkiError::TimeOutOfRange)
}
