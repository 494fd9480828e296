//! End-entity certificates: TLS server certificates for the gateway and device identities. Does not
//! make CSRs or handle SCEP; the key is given.

use openssl::{
    pkey::{HasPublic, Id, PKeyRef, Private, Public},
    x509::{
        X509, X509NameRef, X509Ref,
        extension::{
            AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
            SubjectKeyIdentifier,
        },
    },
};

use super::{DevPkiError, SubjectAltName, Usage, build};

/// Everything about a leaf certificate except the keys and issuer.
#[derive(Clone, Copy, Debug)]
pub struct LeafProfile<'a> {
    /// Subject commonName; `None` leaves the subject empty (then SANs are required and critical).
    pub common_name: Option<&'a str>,
    pub names: &'a [SubjectAltName],
    pub usage: Usage,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Big-endian unsigned serial number.
    pub serial: &'a [u8],
}

/// TLS server certificate for `names`: SANs, EKU serverAuth, keyUsage digitalSignature
/// (+keyEncipherment for RSA keys), signed by `ca`. The subject CN is the first name when it fits.
/// Valid from `now - BACKDATE_SECONDS` for `valid_days` days after `now`.
pub fn issue_server_certificate(
    ca: &X509Ref,
    ca_key: &PKeyRef<Private>,
    key: &PKeyRef<Private>,
    names: &[SubjectAltName],
    now: i64,
    valid_days: u32,
    serial: &[u8],
) -> Result<X509, DevPkiError> {
    let first = names.first().ok_or(DevPkiError::NoNames)?;
    let first = match first {
        SubjectAltName::Dns(dns) => dns.clone(),
        SubjectAltName::Ip(ip) => ip.to_string(),
    };
    let profile = LeafProfile {
        // Clients match SANs only; a CN is there for humans and old tools, so a long name just omits it.
        common_name: build::valid_common_name(&first).then_some(first.as_str()),
        names,
        usage: Usage::ServerAuth,
        not_before: build::backdated(now)?,
        not_after: build::days_after(now, valid_days)?,
        serial,
    };
    issue_leaf_certificate(ca, ca_key, key, &profile)
}

/// Device identity: subject CN, EKU clientAuth, keyUsage digitalSignature (+keyEncipherment for RSA),
/// signed by `ca`, valid exactly from `not_before` to `not_after` (unix seconds).
pub fn issue_device_certificate(
    ca: &X509Ref,
    ca_key: &PKeyRef<Private>,
    device_key: &PKeyRef<Private>,
    common_name: &str,
    not_before: i64,
    not_after: i64,
    serial: &[u8],
) -> Result<X509, DevPkiError> {
    let profile = LeafProfile {
        common_name: Some(common_name),
        names: &[],
        usage: Usage::ClientAuth,
        not_before,
        not_after,
        serial,
    };
    issue_leaf_certificate(ca, ca_key, device_key, &profile)
}

/// Device identity for a certificate request (SCEP): the request's subject as it is and its
/// public key; otherwise as [`issue_device_certificate`] (EKU clientAuth, keyUsage
/// digitalSignature, +keyEncipherment for RSA keys), valid exactly from `not_before` to
/// `not_after`. The subject must not be empty.
pub fn issue_certificate_for_request(
    ca: &X509Ref,
    ca_key: &PKeyRef<Private>,
    subject: &X509NameRef,
    public_key: &PKeyRef<Public>,
    not_before: i64,
    not_after: i64,
    serial: &[u8],
) -> Result<X509, DevPkiError> {
    if subject.entries().next().is_none() {
        return Err(DevPkiError::NoNames);
    }
    let profile =
        LeafProfile { common_name: None, names: &[], usage: Usage::ClientAuth, not_before, not_after, serial };
    issue_leaf(ca, ca_key, subject, public_key, &profile)
}

/// Any leaf: basicConstraints CA:false, keyUsage digitalSignature (+keyEncipherment for RSA), the
/// profile's EKU and SANs, SKI and AKI.
pub fn issue_leaf_certificate(
    ca: &X509Ref,
    ca_key: &PKeyRef<Private>,
    key: &PKeyRef<Private>,
    profile: &LeafProfile<'_>,
) -> Result<X509, DevPkiError> {
    if profile.common_name.is_none() && profile.names.is_empty() {
        return Err(DevPkiError::NoNames);
    }
    let subject = build::name(profile.common_name)?;
    issue_leaf(ca, ca_key, &subject, key, profile)
}

/// `profile.common_name` is ignored here: the subject is given.
fn issue_leaf<T: HasPublic>(
    ca: &X509Ref,
    ca_key: &PKeyRef<Private>,
    subject: &X509NameRef,
    key: &PKeyRef<T>,
    profile: &LeafProfile<'_>,
) -> Result<X509, DevPkiError> {
    build::check_issuer_key(ca, ca_key)?;
    let mut builder = build::start(subject, key, profile.serial, profile.not_before, profile.not_after)?;
    builder.set_issuer_name(ca.subject_name())?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;

    let mut key_usage = KeyUsage::new();
    key_usage.critical().digital_signature();
    // RSA key transport (TLS 1.2 RSA kex, CMS enveloped data to the device) needs keyEncipherment;
    // it is meaningless for EC keys.
    if key.id() == Id::RSA {
        key_usage.key_encipherment();
    }
    builder.append_extension(key_usage.build()?)?;

    if let Some(eku) = extended_key_usage(profile.usage) {
        builder.append_extension(eku.build()?)?;
    }

    if !profile.names.is_empty() {
        let mut san = SubjectAlternativeName::new();
        // RFC 5280 §4.2.1.6: with an empty subject the SAN extension must be critical.
        if subject.entries().next().is_none() {
            san.critical();
        }
        for name in profile.names {
            match name {
                SubjectAltName::Dns(dns) => san.dns(dns),
                SubjectAltName::Ip(ip) => san.ip(&ip.to_string()),
            };
        }
        let san = san.build(&builder.x509v3_context(Some(ca), None))?;
        builder.append_extension(san)?;
    }

    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(Some(ca), None))?;
    builder.append_extension(ski)?;
    // Copy the issuer's SKI when it has one; older operator CAs may not, and then openssl falls
    // back to issuer name + serial instead of failing.
    let aki =
        AuthorityKeyIdentifier::new().keyid(false).issuer(false).build(&builder.x509v3_context(Some(ca), None))?;
    builder.append_extension(aki)?;

    build::sign(&mut builder, ca_key)?;
    Ok(builder.build())
}

fn extended_key_usage(usage: Usage) -> Option<ExtendedKeyUsage> {
    let mut eku = ExtendedKeyUsage::new();
    match usage {
        Usage::ClientAuth => eku.client_auth(),
        Usage::ServerAuth => eku.server_auth(),
        Usage::ClientAndServerAuth => eku.server_auth().client_auth(),
        Usage::AnyExtendedKeyUsage => eku.other("anyExtendedKeyUsage"),
        Usage::Unrestricted => return None,
    };
    Some(eku)
}
