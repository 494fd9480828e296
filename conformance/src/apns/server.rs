//! The emulator's listener: TLS that requires a push certificate from the fake Apple push CA,
//! HTTP/2 only, one task per connection, GOAWAY on request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::ca::{PushCa, topic_of, unix_now};
use super::check::{MAX_PAYLOAD, Verdict, check};
use super::control::{ApnsControl, SeenRequest};
use super::{ApnsError, PushDelivery};

/// APNs' advertised stream limit per connection.
const MAX_STREAMS: u32 = 1000;

/// A running APNs emulator.
#[derive(Debug)]
pub struct ApnsEmulator {
    addr: SocketAddr,
    control: Arc<ApnsControl>,
    push_ca: PushCa,
    server_ca_pem: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ApnsEmulator {
    /// Starts on `listen` (e.g. `127.0.0.1:0`) with a new push CA. Accepted pushes arrive on the
    /// returned receiver; dropping it only stops the forwarding.
    pub async fn start(listen: SocketAddr) -> Result<(ApnsEmulator, mpsc::UnboundedReceiver<PushDelivery>), ApnsError> {
        ApnsEmulator::start_with(listen, PushCa::generate("Emulated Apple Push CA")?).await
    }

    /// Starts with a given push CA, so certificates issued earlier stay valid.
    pub async fn start_with(
        listen: SocketAddr,
        push_ca: PushCa,
    ) -> Result<(ApnsEmulator, mpsc::UnboundedReceiver<PushDelivery>), ApnsError> {
        ApnsEmulator::start_with_cas(listen, push_ca, PushCa::generate("Emulated APNs Server CA")?).await
    }

    /// Starts with a given push CA and server CA (a standalone emulator that keeps both across
    /// restarts, so the gateway's `apple.apns_ca` file stays valid). The server certificate is
    /// issued anew from `server_ca`.
    pub async fn start_with_cas(
        listen: SocketAddr,
        push_ca: PushCa,
        server_ca: PushCa,
    ) -> Result<(ApnsEmulator, mpsc::UnboundedReceiver<PushDelivery>), ApnsError> {
        let (chain_pem, key_pem) = server_ca.issue_server_certificate()?;
        let tls = server_tls(&push_ca, &chain_pem, &key_pem)?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(ApnsControl::default());
        let (deliveries, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls), control.clone(), deliveries, stop_rx));
        Ok((ApnsEmulator { addr, control, push_ca, server_ca_pem: server_ca.cert_pem(), stop, task }, rx))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`: the value for the gateway's `apple.apns_url`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// PEM of the CA that signed the emulator's server certificate: the gateway's `apple.apns_ca`.
    pub fn server_ca_pem(&self) -> &str {
        &self.server_ca_pem
    }

    pub fn push_ca(&self) -> &PushCa {
        &self.push_ca
    }

    /// See [`PushCa::issue_push_certificate`].
    pub fn issue_push_certificate(&self, topic: &str, not_after: i64) -> Result<(String, String), ApnsError> {
        self.push_ca.issue_push_certificate(topic, not_after)
    }

    pub fn control(&self) -> &Arc<ApnsControl> {
        &self.control
    }

    /// Stops accepting and closes open connections gracefully.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn server_tls(push_ca: &PushCa, chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, ApnsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(push_ca.cert().to_der()?))?;
    // Client certificate required and chained to the push CA, within its validity: what APNs
    // enforces during the handshake.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ApnsError::Tls(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut chain_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut key_pem.as_bytes())?.ok_or_else(|| ApnsError::Tls("no server key".into()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    control: Arc<ApnsControl>,
    deliveries: mpsc::UnboundedSender<PushDelivery>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, control, deliveries, stop) =
            (acceptor.clone(), control.clone(), deliveries.clone(), stop.clone());
        conns.spawn(async move {
            // A failed handshake (no certificate, wrong CA, expired) is APNs closing the socket.
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                return;
            };
            let topic = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| topic_of(c))
                .unwrap_or_default();
            serve(tls, topic, control, deliveries, stop).await;
        });
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

async fn serve(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    topic: String,
    control: Arc<ApnsControl>,
    deliveries: mpsc::UnboundedSender<PushDelivery>,
    mut stop: watch::Receiver<bool>,
) {
    let connection = control.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let streams = Arc::new(AtomicU64::new(0));
    let goaway = Arc::new(Notify::new());
    let ctx =
        Arc::new(Ctx { connection, topic, control: control.clone(), deliveries, streams, goaway: goaway.clone() });
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(ctx.answer(req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = goaway.notified(), if !closing => {
                closing = true;
                control.goaways.fetch_add(1, Ordering::SeqCst);
                conn.as_mut().graceful_shutdown();
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// One connection's view.
#[derive(Debug)]
struct Ctx {
    connection: u64,
    /// UID of the client certificate.
    topic: String,
    control: Arc<ApnsControl>,
    deliveries: mpsc::UnboundedSender<PushDelivery>,
    streams: Arc<AtomicU64>,
    goaway: Arc<Notify>,
}

impl Ctx {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let n = self.streams.fetch_add(1, Ordering::SeqCst) + 1;
        if self.control.goaway_limit() == Some(n) {
            // This request is still answered; the GOAWAY names it as the last one processed.
            self.goaway.notify_one();
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_PAYLOAD).collect().await {
            Ok(b) => Some(b.to_bytes()),
            Err(_) => None,
        };
        let verdict = check(
            &self.control,
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            body.as_deref(),
            &self.topic,
            unix_now() * 1000,
        );
        let delay = self.control.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // APNs echoes a valid `apns-id` from the request and makes one up otherwise.
        let apns_id = parts
            .headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::try_parse(v).ok())
            .unwrap_or_else(uuid::Uuid::now_v7)
            .hyphenated()
            .to_string()
            .to_ascii_uppercase();
        let (status, reason, reply_body) = match &verdict {
            Verdict::Accept { .. } => (200, None, Bytes::new()),
            Verdict::Refuse { status, reason, timestamp } => {
                let mut v = serde_json::json!({ "reason": reason });
                if let Some(t) = timestamp {
                    v["timestamp"] = (*t).into();
                }
                (*status, Some((*reason).to_owned()), Bytes::from(v.to_string()))
            }
        };
        self.control.record(SeenRequest {
            connection: self.connection,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body: body.map(|b| b.to_vec()).unwrap_or_default(),
            client_topic: self.topic.clone(),
            status,
            reason,
            apns_id: apns_id.clone(),
        });
        // Recorded first, so whoever receives the delivery already finds the request in `recent`.
        if let Verdict::Accept { token_hex, push_magic } = verdict {
            let _ = self.deliveries.send(PushDelivery {
                token_hex,
                topic: self.topic.clone(),
                push_magic,
                apns_id: apns_id.clone(),
                accepted_at: Instant::now(),
            });
        }
        let mut resp = Response::new(Full::new(reply_body.clone()));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Ok(v) = apns_id.parse() {
            resp.headers_mut().insert("apns-id", v);
        }
        if !reply_body.is_empty() {
            resp.headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json; charset=utf-8"));
        }
        resp
    }
}
