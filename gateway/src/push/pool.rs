//! HTTP/2 connections to APNs for one push certificate (topic).
//!
//! A pool has a fixed number of slots, each holding at most one connection. Pushes go to the slots
//! round-robin and share a slot's connection as concurrent HTTP/2 streams. A connection that
//! failed, was closed by the server (GOAWAY) or timed out is dropped from its slot; the next push
//! that lands there connects again. Nothing here retries: that is the caller's loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use super::apns::{Attempt, Failure, classify};
use crate::telemetry;

/// APNs error bodies are tiny JSON objects; anything bigger is not APNs talking.
const MAX_REPLY_BYTES: usize = 16 * 1024;

/// Where APNs is: parsed once from `apple.apns_url`.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `https://host:port`, for request URIs (`:scheme` and `:authority`).
    pub(super) base: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    roots: Arc<RootCertStore>,
}

impl Endpoint {
    /// `url` was validated by the configuration (https, host, no path); `roots` verify the server.
    pub(super) fn new(url: &str, roots: Arc<RootCertStore>) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("apple.apns_url: {e}"))?;
        let host = uri.host().ok_or("apple.apns_url has no host")?.trim_matches(|c| c == '[' || c == ']').to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| format!("apple.apns_url host {host:?}: {e}"))?;
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Endpoint { base: format!("https://{authority}"), host, port, server_name, roots })
    }
}

/// The roots that verify APNs: the PEM bundle in `apple.apns_ca`, or the Mozilla set.
pub(super) fn roots(ca_pem: Option<&[u8]>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<_, _>>()
                .map_err(|e| format!("cannot read PEM: {e}"))?;
            if certs.is_empty() {
                return Err("no PEM certificate in the file".into());
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("unusable CA certificate: {e}"))?;
            }
        }
    }
    Ok(roots)
}

/// TLS client configuration presenting the push certificate; ALPN `h2` only (APNs speaks
/// nothing else).
fn client_tls(endpoint: &Endpoint, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("push certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("push certificate PEM has no certificate".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("push key PEM: {e}"))?
        .ok_or("push key PEM has no private key")?;
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(endpoint.roots.clone())
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("push certificate and key not usable for TLS: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    sender: SendRequest<Full<Bytes>>,
}

/// The connections of one topic.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) topic: String,
    /// `updated_at` of the stored certificate this pool was built from.
    pub(super) cert_updated_at: i64,
    endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
    ids: AtomicU64,
}

impl Pool {
    pub(super) fn new(
        endpoint: &Endpoint,
        topic: &str,
        cert_pem: &str,
        key_pem: &str,
        cert_updated_at: i64,
        connections: usize,
    ) -> Result<Pool, String> {
        Ok(Pool {
            topic: topic.to_owned(),
            cert_updated_at,
            endpoint: endpoint.clone(),
            tls: client_tls(endpoint, cert_pem, key_pem)?,
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            ids: AtomicU64::new(1),
        })
    }

    /// One attempt within `timeout`: a connection from `slot` (made if needed), the request, the
    /// answer. A connection that fails or times out is dropped from its slot.
    pub(super) async fn send(&self, slot: usize, req: Request<Full<Bytes>>, timeout: Duration) -> Attempt {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = match tokio::time::timeout_at(deadline, self.conn(slot)).await {
            Ok(Ok(c)) => c,
            Ok(Err(detail)) => return Err(Failure::NoAnswer { reason: "connection", detail }),
            Err(_) => {
                return Err(Failure::NoAnswer {
                    reason: "timeout",
                    detail: format!("no connection within {timeout:?}"),
                });
            }
        };
        let mut sender = conn.sender.clone();
        let exchange = async move {
            let resp = sender.send_request(req).await.map_err(|e| error_chain(&e))?;
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>(classify(&http::Response::from_parts(head, ()), &body))
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(attempt)) => attempt,
            Ok(Err(detail)) => {
                // Refused stream after GOAWAY, reset, lost connection: this connection is done.
                self.forget(slot, conn.id).await;
                Err(Failure::NoAnswer { reason: "connection", detail })
            }
            Err(_) => {
                // A connection that stops answering may be dead without a FIN; start afresh.
                self.forget(slot, conn.id).await;
                Err(Failure::NoAnswer { reason: "timeout", detail: format!("no answer within {timeout:?}") })
            }
        }
    }

    /// The slot a new push should use (round-robin).
    pub(super) fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// Drops the slot's connection if it is still `id` (a fresh replacement survives). Streams
    /// already on it finish; the connection closes when the last sender is gone.
    async fn forget(&self, slot: usize, id: u64) {
        let mut guard = self.slots[slot].lock().await;
        if guard.as_ref().map(|c| c.id) == Some(id) {
            *guard = None;
        }
    }

    async fn conn(&self, slot: usize) -> Result<Conn, String> {
        // Held while connecting: concurrent pushes to this slot wait for the one handshake
        // instead of each opening a connection.
        let mut guard = self.slots[slot].lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.sender.is_closed() {
                return Ok(c.clone());
            }
            *guard = None;
        }
        let c = self.connect().await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn connect(&self) -> Result<Conn, String> {
        let ep = &self.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", ep.base))?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(self.tls.clone())
            .connect(ep.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", ep.base))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(format!("{} did not agree to HTTP/2 (ALPN h2)", ep.base));
        }
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Pings find a connection that died silently (no FIN/RST) before a push waits on it.
            .keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {}: {}", ep.base, error_chain(&e)))?;
        let gauge = metrics::gauge!(telemetry::APNS_CONNECTIONS, "topic" => self.topic.clone());
        gauge.increment(1.0);
        let topic = self.topic.clone();
        tokio::spawn(async move {
            // Ends on GOAWAY + drained streams, on connection loss, or when every sender is dropped.
            if let Err(e) = connection.await {
                tracing::debug!(%topic, error = %e, "APNs connection ended");
            }
            gauge.decrement(1.0);
        });
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(topic = %self.topic, id, "APNs connection open");
        Ok(Conn { id, sender })
    }
}

/// An error with its causes: hyper's own text ("http2 error") says little without them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
