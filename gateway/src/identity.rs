//! Who is this device? The certificate behind an Apple request, from (in this order) the
//! `Mdm-Signature` header, the TLS client certificate, or a trusted load balancer's header.
//!
//! This module only establishes a verified certificate and its fingerprint; whether that
//! certificate is the one bound to the enrollment is the source's decision.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use mdm_certs::{IdentityError, TrustAnchors, X509};

use crate::server::ConnInfo;

/// Where the certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    MdmSignature,
    TlsClientCertificate,
    ProxyHeader,
}

/// A certificate that chains to a trusted device CA, is valid now and fit for client auth.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub cert: X509,
    pub fingerprint: String,
    pub source: IdentitySource,
}

/// Why no identity could be established. `reason` is a stable metric label.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct IdentityFailure {
    pub reason: &'static str,
    pub detail: String,
}

impl IdentityFailure {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        IdentityFailure { reason, detail: detail.into() }
    }
}

impl From<IdentityError> for IdentityFailure {
    fn from(e: IdentityError) -> Self {
        IdentityFailure { reason: e.reason(), detail: e.to_string() }
    }
}

pub const MDM_SIGNATURE: &str = "mdm-signature";

#[derive(Debug)]
pub struct IdentityVerifier {
    anchors: TrustAnchors,
    trusted_proxies: Vec<IpNet>,
    header: HeaderName,
    rfc9440: bool,
}

impl IdentityVerifier {
    pub fn new(anchors: TrustAnchors, trusted_proxies: Vec<IpNet>, header: HeaderName) -> Self {
        let rfc9440 = header.as_str().eq_ignore_ascii_case("client-cert");
        IdentityVerifier { anchors, trusted_proxies, header, rfc9440 }
    }

    fn trusted_proxy(&self, peer: Option<IpAddr>) -> bool {
        let Some(ip) = peer else { return false };
        // An IPv4 peer may show up as an IPv4-mapped IPv6 address on dual-stack sockets.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Establishes the identity behind a request whose body is `body`. `now` is unix seconds.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], conn: &ConnInfo, now: i64) -> Result<DeviceIdentity, IdentityFailure> {
        let (cert, chain, source) = if let Some(sig) = headers.get(MDM_SIGNATURE) {
            let sig = sig.to_str().map_err(|_| IdentityFailure::new("bad_signature_header", "Mdm-Signature is not ASCII"))?;
            let signed = mdm_certs::verify_mdm_signature(sig, body)?;
            (signed.signer, signed.chain, IdentitySource::MdmSignature)
        } else if let Some(leaf) = conn.client_certs.first() {
            let cert = X509::from_der(leaf).map_err(|e| IdentityFailure::new("bad_client_certificate", e.to_string()))?;
            let chain = conn.client_certs[1..].iter().filter_map(|d| X509::from_der(d).ok()).collect();
            (cert, chain, IdentitySource::TlsClientCertificate)
        } else if let Some(value) = headers.get(&self.header) {
            if !self.trusted_proxy(conn.peer.map(|p| p.ip())) {
                return Err(IdentityFailure::new(
                    "untrusted_proxy_header",
                    format!("{} header from {:?}, which is not a trusted proxy", self.header, conn.peer.map(|p| p.ip())),
                ));
            }
            let value = value.to_str().map_err(|_| IdentityFailure::new("bad_certificate_header", "header is not ASCII"))?;
            let cert = if self.rfc9440 {
                mdm_certs::header::parse_client_cert(value)?
            } else {
                mdm_certs::header::parse_nginx_escaped_pem(value)?
            };
            (cert, Vec::new(), IdentitySource::ProxyHeader)
        } else {
            return Err(IdentityFailure::new(
                "no_identity",
                "no Mdm-Signature header, no TLS client certificate and no proxy certificate header",
            ));
        };
        mdm_certs::verify_device_certificate(&cert, &chain, &self.anchors, now)?;
        let fingerprint = mdm_certs::fingerprint_sha256(&cert);
        Ok(DeviceIdentity { cert, fingerprint, source })
    }
}
