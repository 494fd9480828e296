//! CA certificates: the self-signed development root and intermediates under it. Does not make CRLs.

use openssl::{
    pkey::{PKeyRef, Private},
    x509::{
        X509, X509Ref,
        extension::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier},
    },
};

use super::{DevPkiError, build};

/// Self-signed CA: basicConstraints CA:true (critical), keyUsage keyCertSign + cRLSign (critical),
/// subjectKeyIdentifier. Valid from `now - BACKDATE_SECONDS` for `valid_days` days after `now`.
pub fn create_ca(
    key: &PKeyRef<Private>,
    common_name: &str,
    now: i64,
    valid_days: u32,
    serial: &[u8],
) -> Result<X509, DevPkiError> {
    let subject = build::name(Some(common_name))?;
    let mut builder = build::start(&subject, key, serial, build::backdated(now)?, build::days_after(now, valid_days)?)?;
    builder.set_issuer_name(&subject)?;
    builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    builder.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(ski)?;
    build::sign(&mut builder, key)?;
    Ok(builder.build())
}

/// Intermediate CA signed by `parent`: like [`create_ca`] plus pathLenConstraint 0 (it may only
/// issue leaves) and an authorityKeyIdentifier.
pub fn create_intermediate_ca(
    parent: &X509Ref,
    parent_key: &PKeyRef<Private>,
    key: &PKeyRef<Private>,
    common_name: &str,
    now: i64,
    valid_days: u32,
    serial: &[u8],
) -> Result<X509, DevPkiError> {
    build::check_issuer_key(parent, parent_key)?;
    let subject = build::name(Some(common_name))?;
    let mut builder = build::start(&subject, key, serial, build::backdated(now)?, build::days_after(now, valid_days)?)?;
    builder.set_issuer_name(parent.subject_name())?;
    builder.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    builder.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(Some(parent), None))?;
    builder.append_extension(ski)?;
    // Copy the issuer's SKI when it has one; older operator CAs may not, and then openssl falls
    // back to issuer name + serial instead of failing.
    let aki =
        AuthorityKeyIdentifier::new().keyid(false).issuer(false).build(&builder.x509v3_context(Some(parent), None))?;
    builder.append_extension(aki)?;
    build::sign(&mut builder, parent_key)?;
    Ok(builder.build())
}
