//! Who is this device? The certificate behind an Apple request, from (in this order) the
//! `Mdm-Signature` header, the TLS client certificate, or a trusted load balancer's header; for
//! Windows management, the last two only.
//!
//! This module only establishes a verified certificate and its fingerprint; whether that
//! certificate is the one bound to the enrollment is the source's decision.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use mdm_certs::{IdentityError, TrustAnchors, X509};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use sha2::{Digest, Sha256};

use crate::forwarded::TrustedProxies;
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
    /// The leaf's SHA-256 alone when it came without a chain; otherwise a SHA-256 over the
    /// SHA-256 of every certificate, leaf first (a distinct input length, so the two forms
    /// cannot meet short of a SHA-256 collision).
    fn key(leaf: &[u8; 32], chain: &[[u8; 32]]) -> [u8; 32] {
        if chain.is_empty() {
            return *leaf;
        }
        let mut h = Sha256::new();
        h.update(leaf);
        for d in chain {
            h.update(d);
        }
        h.finalize().into()
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
    /// The certificate and the SHA-256 of `der` (its fingerprint).
    fn decode(&self, der: &[u8]) -> Result<(X509, [u8; 32]), openssl::error::ErrorStack> {
        let key: [u8; 32] = Sha256::digest(der).into();
        if let Some(c) = self.certs.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok((c.clone(), key));
        }
        let cert = X509::from_der(der)?;
        Ok((self.share(key, cert), key))
    }

    /// The instance already held for the certificate whose DER hashes to `key`, or `cert`,
    /// which is kept from now on (so repeated senders share one decoded copy).
    fn share(&self, key: [u8; 32], cert: X509) -> X509 {
        let mut certs = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = certs.get(&key) {
            return c.clone();
        }
        if certs.len() >= VERIFIED_CACHE_MAX {
            certs.clear();
        }
        certs.insert(key, cert.clone());
        cert
    }
}

/// A `Mdm-Signature` that verified over a body: who signed, with the SHA-256 of each
/// certificate's DER.
#[derive(Debug)]
struct Signed {
    signer: X509,
    signer_sha256: [u8; 32],
    chain: Vec<X509>,
    chain_sha256: Vec<[u8; 32]>,
}

/// Successful `Mdm-Signature` verifications, keyed by a SHA-256 over the exact header value and
/// the exact body. The verification ([`mdm_certs::verify_mdm_signature`]) is a pure function of
/// those bytes: the same bytes give the same signer and chain, and any other body or header
/// (a different signature, or the same signature over other bytes) is another key and is
/// verified in full. Devices whose signatures are deterministic (RSA PKCS#1 v1.5, the key type
/// of Apple's SCEP enrollment profiles) send byte-identical Idle check-ins, so the expensive
/// part (OpenSSL's PKCS#7 decoder and the public-key operation) runs once per distinct message.
/// Failures are never remembered; the chain, validity and usage checks are not part of this and
/// still run on every request ([`VerifiedChains`] with its validity window). At most
/// [`VERIFIED_CACHE_MAX`] entries, cleared when full; the certificates are shared with
/// [`DecodedCerts`], so an entry costs a key and a pointer.
#[derive(Debug, Default)]
struct VerifiedSignatures {
    entries: Mutex<HashMap<[u8; 32], Arc<Signed>>>,
}

impl VerifiedSignatures {
    fn key(header: &[u8], body: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((header.len() as u64).to_be_bytes());
        h.update(header);
        h.update((body.len() as u64).to_be_bytes());
        h.update(body);
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<Signed>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn remember(&self, key: [u8; 32], signed: Arc<Signed>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_CACHE_MAX {
            entries.clear();
        }
        entries.insert(key, signed);
    }
}

fn der_sha256(cert: &X509) -> Result<[u8; 32], IdentityFailure> {
    let der = cert.to_der().map_err(|e| IdentityFailure::new("bad_certificate", e.to_string()))?;
    Ok(Sha256::digest(&der).into())
}

/// A certificate as presented, with its SHA-256, its chain (and theirs) and where it came from.
type Presented = (X509, [u8; 32], Vec<X509>, Vec<[u8; 32]>, IdentitySource);

#[derive(Debug)]
pub struct IdentityVerifier {
    anchors: TrustAnchors,
    trusted_proxies: TrustedProxies,
    header: HeaderName,
    rfc9440: bool,
    verified: VerifiedChains,
    decoded: DecodedCerts,
    signatures: VerifiedSignatures,
}

impl IdentityVerifier {
    pub fn new(anchors: TrustAnchors, trusted_proxies: Vec<IpNet>, header: HeaderName) -> Self {
        let rfc9440 = header.as_str().eq_ignore_ascii_case("client-cert");
        IdentityVerifier {
            anchors,
            trusted_proxies: TrustedProxies::new(trusted_proxies),
            header,
            rfc9440,
            verified: VerifiedChains::default(),
            decoded: DecodedCerts::default(),
            signatures: VerifiedSignatures::default(),
        }
    }

    /// [`mdm_certs::verify_device_certificate`], skipped when this exact certificate and chain
    /// passed it before and `now` is inside the window where that result holds.
    fn verify_chain(
        &self,
        cert: &X509,
        cert_sha256: &[u8; 32],
        chain: &[X509],
        chain_sha256: &[[u8; 32]],
        now: i64,
    ) -> Result<(), IdentityError> {
        let key = VerifiedChains::key(cert_sha256, chain_sha256);
        if self.verified.holds(&key, now) {
            return Ok(());
        }
        mdm_certs::verify_device_certificate(cert, chain, &self.anchors, now)?;
        if let Some(w) = VerifiedChains::window(std::iter::once(cert).chain(chain).chain(self.anchors.roots())) {
            self.verified.remember(key, w);
        }
        Ok(())
    }

    /// [`mdm_certs::verify_mdm_signature`], or its remembered success for these exact bytes.
    fn verify_signature(&self, header: &str, body: &[u8]) -> Result<Arc<Signed>, IdentityFailure> {
        let key = VerifiedSignatures::key(header.as_bytes(), body);
        if let Some(s) = self.signatures.get(&key) {
            return Ok(s);
        }
        if let Some(signed) = self.verify_signature_directly(header, body) {
            let signed = Arc::new(signed);
            self.signatures.remember(key, signed.clone());
            return Ok(signed);
        }
        // Not the common shape, or it did not verify: OpenSSL's PKCS#7 code decides, and names
        // the error.
        let signed = mdm_certs::verify_mdm_signature(header, body)?;
        let signer_sha256 = der_sha256(&signed.signer)?;
        let chain_sha256 = signed.chain.iter().map(der_sha256).collect::<Result<Vec<_>, _>>()?;
        let signer = self.decoded.share(signer_sha256, signed.signer);
        let chain = signed.chain.into_iter().zip(&chain_sha256).map(|(c, d)| self.decoded.share(*d, c)).collect();
        let signed = Arc::new(Signed { signer, signer_sha256, chain, chain_sha256 });
        self.signatures.remember(key, signed.clone());
        Ok(signed)
    }

    /// The signature read with [`mdm_certs::SignatureParts`], its certificates decoded once per
    /// distinct DER ([`DecodedCerts`]) and checked with the signer's already-decoded public key:
    /// no PKCS#7 decoding, and no certificate decoding for a device seen before. `None` when
    /// the signature is not of that shape or does not verify.
    fn verify_signature_directly(&self, header: &str, body: &[u8]) -> Option<Signed> {
        let der = mdm_certs::decode_signature_header(header).ok()?;
        let parts = mdm_certs::SignatureParts::parse(&der)?;
        let (signer, signer_sha256) = self.decoded.decode(parts.signer_der()).ok()?;
        parts.verify(&*signer.public_key().ok()?, body).ok()?;
        let (chain, chain_sha256) = parts
            .chain_der()
            .iter()
            .map(|d| self.decoded.decode(d))
            .collect::<Result<Vec<_>, _>>()
            .ok()?
            .into_iter()
            .unzip();
        Some(Signed { signer, signer_sha256, chain, chain_sha256 })
    }

    fn trusted_proxy(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted_proxies.contains(ip))
    }

    /// The load balancers whose headers (client certificate, client address) are believed.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.trusted_proxies
    }

    /// Establishes the identity behind a request whose body is `body`. `now` is unix seconds.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        conn: &ConnInfo,
        now: i64,
    ) -> Result<DeviceIdentity, IdentityFailure> {
        let presented = if let Some(sig) = headers.get(MDM_SIGNATURE) {
            let sig =
                sig.to_str().map_err(|_| IdentityFailure::new("bad_signature_header", "Mdm-Signature is not ASCII"))?;
            let s = self.verify_signature(sig, body)?;
            (s.signer.clone(), s.signer_sha256, s.chain.clone(), s.chain_sha256.clone(), IdentitySource::MdmSignature)
        } else if let Some(p) = self.connection_certificate(headers, conn)? {
            p
        } else {
            return Err(IdentityFailure::new(
                "no_identity",
                "no Mdm-Signature header, no TLS client certificate and no proxy certificate header",
            ));
        };
        self.checked(presented, now)
    }

    /// The identity behind a request that can only prove it with a client certificate (TLS, or
    /// a trusted proxy's header): Windows management. An `Mdm-Signature` header is ignored.
    pub fn verify_client_certificate(
        &self,
        headers: &HeaderMap,
        conn: &ConnInfo,
        now: i64,
    ) -> Result<DeviceIdentity, IdentityFailure> {
        let presented = self.connection_certificate(headers, conn)?.ok_or_else(|| {
            IdentityFailure::new("no_identity", "no TLS client certificate and no proxy certificate header")
        })?;
        self.checked(presented, now)
    }

    /// The TLS client certificate, else a trusted proxy's certificate header; `None` when there
    /// is neither.
    fn connection_certificate(
        &self,
        headers: &HeaderMap,
        conn: &ConnInfo,
    ) -> Result<Option<Presented>, IdentityFailure> {
        if let Some(leaf) = conn.client_certs.first() {
            let (cert, digest) =
                self.decoded.decode(leaf).map_err(|e| IdentityFailure::new("bad_client_certificate", e.to_string()))?;
            let (chain, chain_sha256) =
                conn.client_certs[1..].iter().filter_map(|d| self.decoded.decode(d).ok()).unzip();
            return Ok(Some((cert, digest, chain, chain_sha256, IdentitySource::TlsClientCertificate)));
        }
        let Some(value) = headers.get(&self.header) else {
            return Ok(None);
        };
        if !self.trusted_proxy(conn.peer.map(|p| p.ip())) {
            return Err(IdentityFailure::new(
                "untrusted_proxy_header",
                format!("{} header from {:?}, which is not a trusted proxy", self.header, conn.peer.map(|p| p.ip())),
            ));
        }
        let value =
            value.to_str().map_err(|_| IdentityFailure::new("bad_certificate_header", "header is not ASCII"))?;
        let cert = if self.rfc9440 {
            mdm_certs::header::parse_client_cert(value)?
        } else {
            mdm_certs::header::parse_nginx_escaped_pem(value)?
        };
        let digest = der_sha256(&cert)?;
        Ok(Some((cert, digest, Vec::new(), Vec::new(), IdentitySource::ProxyHeader)))
    }

    fn checked(&self, presented: Presented, now: i64) -> Result<DeviceIdentity, IdentityFailure> {
        let (cert, cert_sha256, chain, chain_sha256, source) = presented;
        self.verify_chain(&cert, &cert_sha256, &chain, &chain_sha256, now)?;
        // The SHA-256 of the DER, as `mdm_certs::fingerprint_sha256` computes it.
        let fingerprint = hex::encode(cert_sha256);
        Ok(DeviceIdentity { cert, fingerprint, source })
    }
}
