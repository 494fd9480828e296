//! Who is this device? The certificate behind an Apple request, from (in this order) the
//! `Mdm-Signature` header, the TLS client certificate, or a trusted load balancer's header.
//!
//! This module only establishes a verified certificate and its fingerprint; whether that
//! certificate is the one bound to the enrollment is the source's decision.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use mdm_certs::{IdentityError, TrustAnchors, X509};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use sha2::{Digest, Sha256};

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

/// Most certificate chains remembered as verified; the memory is cleared when full.
const VERIFIED_CACHE_MAX: usize = 65_536;

/// Certificates (each with the chain it came with) that passed
/// [`mdm_certs::verify_device_certificate`], keyed by a SHA-256 over their DER, with the time
/// window in which that result stays true: the intersection of the validity periods of the
/// leaf, its chain and every anchor. The check depends only on those certificates, the anchors
/// (fixed for the life of the verifier) and the time, so inside the window the answer cannot
/// change; outside it, or for anything never verified, the full check runs. Failures are never
/// remembered. Saves a signature verification and an X509_STORE per request for devices that
/// check in repeatedly.
#[derive(Debug, Default)]
struct VerifiedChains {
    windows: Mutex<HashMap<[u8; 32], (i64, i64)>>,
}

fn unix_of(t: &Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

impl VerifiedChains {
    fn key(cert: &X509, chain: &[X509]) -> Option<[u8; 32]> {
        let mut h = Sha256::new();
        for c in std::iter::once(cert).chain(chain) {
            let der = c.to_der().ok()?;
            h.update((der.len() as u64).to_be_bytes());
            h.update(&der);
        }
        Some(h.finalize().into())
    }

    fn window<'a>(certs: impl Iterator<Item = &'a X509>) -> Option<(i64, i64)> {
        let mut w = (i64::MIN, i64::MAX);
        for c in certs {
            w.0 = w.0.max(unix_of(c.not_before())?);
            w.1 = w.1.min(unix_of(c.not_after())?);
        }
        Some(w)
    }

    fn holds(&self, key: &[u8; 32], now: i64) -> bool {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.get(key).is_some_and(|&(from, to)| from <= now && now <= to)
    }

    fn remember(&self, key: [u8; 32], window: (i64, i64)) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= VERIFIED_CACHE_MAX {
            windows.clear();
        }
        windows.insert(key, window);
    }
}

/// TLS client certificates already decoded, by SHA-256 of their DER. A device sends every
/// request of a connection with the same certificate, and decoding one costs more than the rest
/// of an Idle check-in (openssl 3.0 decodes the public key through its provider machinery).
/// Decoding is a pure function of the bytes, so reusing the result is exact. Cleared when full.
#[derive(Debug, Default)]
struct DecodedCerts {
    certs: Mutex<HashMap<[u8; 32], X509>>,
}

impl DecodedCerts {
    fn decode(&self, der: &[u8]) -> Result<X509, openssl::error::ErrorStack> {
        let key: [u8; 32] = Sha256::digest(der).into();
        if let Some(c) = self.certs.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let cert = X509::from_der(der)?;
        let mut certs = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        if certs.len() >= VERIFIED_CACHE_MAX {
            certs.clear();
        }
        certs.insert(key, cert.clone());
        Ok(cert)
    }
}

#[derive(Debug)]
pub struct IdentityVerifier {
    anchors: TrustAnchors,
    trusted_proxies: Vec<IpNet>,
    header: HeaderName,
    rfc9440: bool,
    verified: VerifiedChains,
    decoded: DecodedCerts,
}

impl IdentityVerifier {
    pub fn new(anchors: TrustAnchors, trusted_proxies: Vec<IpNet>, header: HeaderName) -> Self {
        let rfc9440 = header.as_str().eq_ignore_ascii_case("client-cert");
        IdentityVerifier { anchors, trusted_proxies, header, rfc9440, verified: VerifiedChains::default(), decoded: DecodedCerts::default() }
    }

    /// [`mdm_certs::verify_device_certificate`], skipped when this exact certificate and chain
    /// passed it before and `now` is inside the window where that result holds.
    fn verify_chain(&self, cert: &X509, chain: &[X509], now: i64) -> Result<(), IdentityError> {
        let key = VerifiedChains::key(cert, chain);
        if let Some(k) = &key
            && self.verified.holds(k, now)
        {
            return Ok(());
        }
        mdm_certs::verify_device_certificate(cert, chain, &self.anchors, now)?;
        if let Some(k) = key
            && let Some(w) = VerifiedChains::window(std::iter::once(cert).chain(chain).chain(self.anchors.roots()))
        {
            self.verified.remember(k, w);
        }
        Ok(())
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
            let cert = self.decoded.decode(leaf).map_err(|e| IdentityFailure::new("bad_client_certificate", e.to_string()))?;
            let chain = conn.client_certs[1..].iter().filter_map(|d| self.decoded.decode(d).ok()).collect();
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
        self.verify_chain(&cert, &chain, now)?;
        let fingerprint = mdm_certs::fingerprint_sha256(&cert);
        Ok(DeviceIdentity { cert, fingerprint, source })
    }
}
