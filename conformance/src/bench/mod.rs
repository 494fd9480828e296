//! `mdm-bench`: load against a real `mdm-gateway` child process, compared in the same run with
//! a bare hyper + rustls server (the ceiling of the machine).
//!
//! - [`proc`]: CPU seconds and peak RSS of a process from `/proc`.
//! - [`child`]: the gateway (and the ceiling server) as child processes on loopback ports.
//! - [`ceiling`]: the bare server: same TLS setup as the gateway's device listener, canned 200.
//! - [`load`]: the Idle check-in load generator (HTTP/1.1 keep-alive over TLS, pre-signed bodies).
//! - [`seed`]: enrolled devices written straight into the gateway's SQLite file.
//! - [`roundtrip`]: `POST /v1/commands` → device session → event on `/v1/events`.
//! - [`push`]: an in-process APNs emulator for the gateway child, and `GET /v1/push` batches
//!   through the gateway's APNs pool.
//! - [`android`]: Pub/Sub push deliveries of AMAPI notifications.
//! - [`cluster`]: the Apple load on SQLite, on PostgreSQL, and on several instances sharing
//!   one PostgreSQL.
//! - [`windows`]: Windows enrollment requests (MS-WSTEP) and three-message OMA-DM sessions over
//!   mutual TLS.

pub mod android;
pub mod ceiling;
pub mod child;
pub mod cluster;
pub mod load;
pub mod proc;
pub mod push;
pub mod roundtrip;
pub mod seed;
pub mod windows;

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The rustls provider used by the bench (ring, as the gateway).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client config trusting only `ca_pem`, offering `alpn`.
pub fn client_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, String> {
    client_config_with(ca_pem, alpn, None)
}

/// Like [`client_config`], presenting `identity` (certificate chain, key) as client certificate.
pub fn client_config_with(
    ca_pem: &[u8],
    alpn: &[&[u8]],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.map_err(|e| format!("CA PEM: {e}"))?).map_err(|e| format!("CA certificate: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => {
            config.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))?
        }
        None => config.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
