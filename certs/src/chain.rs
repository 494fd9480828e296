//! Whether a device certificate is acceptable as an identity: chain, validity at `now`, usage.
//! Does not check revocation and does not look at names (a device's subject is whatever its enrollment
//! gave it; the binding is the fingerprint).

use openssl::{
    stack::Stack,
    x509::{
        X509, X509ExtendedKeyUsage, X509KeyUsage, X509Ref, X509StoreContext, X509StoreContextRef, X509VerifyResult,
        store::{X509Store, X509StoreBuilder},
        verify::{X509VerifyFlags, X509VerifyParam},
    },
};
use openssl_sys as ffi;

use crate::{IdentityError, TrustAnchors};

/// Check that `cert` chains to one of `anchors` (through any of the untrusted intermediates in
/// `chain`), that every certificate on the path is valid at `now` (unix seconds), and that the
/// certificate may be used for client authentication.
///
/// Usage rule: the leaf's and every intermediate's extended key usage must be absent or contain
/// clientAuth or anyExtendedKeyUsage, and the leaf's key usage, if present, must allow
/// digitalSignature or keyAgreement (what openssl's SSL client purpose asks of a leaf). Anchors are
/// trusted as configured and not checked for usage.
pub fn verify_device_certificate(
    cert: &X509Ref,
    chain: &[X509],
    anchors: &TrustAnchors,
    now: i64,
) -> Result<(), IdentityError> {
    let store = build_store(anchors, now)?;
    let mut untrusted = Stack::new()?;
    for c in chain {
        untrusted.push(c.clone())?;
    }
    let mut ctx = X509StoreContext::new()?;
    ctx.init(&store, cert, &untrusted, |ctx| {
        Ok(match ctx.verify_cert()? {
            true => check_usage(ctx),
            false => Err(map_verify_error(ctx.error())),
        })
    })?
}

fn build_store(anchors: &TrustAnchors, now: i64) -> Result<X509Store, IdentityError> {
    let mut builder = X509StoreBuilder::new()?;
    for root in anchors.roots() {
        builder.add_cert(root.clone())?;
    }
    let mut param = X509VerifyParam::new()?;
    // The verification time comes from the caller; set_time also stops openssl reading the clock.
    // time_t is 32 bits on some targets, hence the (here useless) conversion.
    #[allow(clippy::useless_conversion)]
    let now = now.try_into().map_err(|_| IdentityError::TimeOutOfRange)?;
    param.set_time(now);
    // Operators may configure an issuing intermediate as the anchor rather than its root.
    param.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
    // No purpose is set on purpose: openssl's SSL_CLIENT purpose rejects anyExtendedKeyUsage-only leaves
    // and the S/MIME default (inside PKCS7_verify) rejects clientAuth-only ones, so usage is checked
    // explicitly in `check_usage` after the chain is built.
    builder.set_param(&param)?;
    Ok(builder.build())
}

fn check_usage(ctx: &X509StoreContextRef) -> Result<(), IdentityError> {
    let Some(path) = ctx.chain() else {
        // verify_cert succeeded, so openssl has built a chain; absence would be a library bug.
        return Err(IdentityError::ChainRejected {
            code: ffi::X509_V_ERR_UNSPECIFIED,
            message: "no chain after successful verification",
        });
    };
    // path = [leaf, intermediates.., anchor]; the anchor (last) is exempt.
    let issuers_and_leaf = path.len().saturating_sub(1).max(1);
    for cert in path.iter().take(issuers_and_leaf) {
        if !eku_allows_client_auth(cert) {
            return Err(IdentityError::NotForClientAuth);
        }
    }
    let leaf = path.get(0).ok_or(IdentityError::NotForClientAuth)?;
    if let Some(ku) = leaf.key_usage()
        && !ku.intersects(X509KeyUsage::DIGITAL_SIGNATURE | X509KeyUsage::KEY_AGREEMENT)
    {
        return Err(IdentityError::NotForClientAuth);
    }
    Ok(())
}

fn eku_allows_client_auth(cert: &X509Ref) -> bool {
    match cert.extended_key_usage() {
        None => true,
        Some(eku) => eku.intersects(X509ExtendedKeyUsage::SSL_CLIENT | X509ExtendedKeyUsage::ANYEKU),
    }
}

fn map_verify_error(result: X509VerifyResult) -> IdentityError {
    match result.as_raw() {
        ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        | ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        | ffi::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        | ffi::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        | ffi::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        | ffi::X509_V_ERR_CERT_UNTRUSTED => IdentityError::UntrustedIssuer,
        ffi::X509_V_ERR_CERT_HAS_EXPIRED => IdentityError::Expired,
        ffi::X509_V_ERR_CERT_NOT_YET_VALID => IdentityError::NotYetValid,
        ffi::X509_V_ERR_INVALID_PURPOSE => IdentityError::NotForClientAuth,
        ffi::X509_V_ERR_CERT_SIGNATURE_FAILURE => IdentityError::BadCertificateSignature,
        ffi::X509_V_ERR_INVALID_CA | ffi::X509_V_ERR_PATH_LENGTH_EXCEEDED | ffi::X509_V_ERR_KEYUSAGE_NO_CERTSIGN => {
            IdentityError::InvalidCa
        }
        code => IdentityError::ChainRejected { code, message: result.error_string() },
    }
}
