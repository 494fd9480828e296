//! A CA and TLS server certificate per emulator (for `127.0.0.1`, `::1`, `localhost`), and a
//! small HTTP/1.1 server loop shared by the AMAPI emulator and the test push endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mdm_certs::devpki::{self, SubjectAltName};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::AndroidEmuError;
use super::util::now_secs;

/// Largest request body read.
const MAX_BODY: usize = 4 << 20;

/// A CA and a server certificate it signed.
#[derive(Debug)]
pub(super) struct ServerIdentity {
    pub(super) ca_pem: String,
    pub(super) tls: Arc<ServerConfig>,
}

impl ServerIdentity {
    pub(super) fn generate(ca_name: &str) -> Result<ServerIdentity, AndroidEmuError> {
        let mut serial = [0u8; 16];
        openssl::rand::rand_bytes(&mut serial)?;
        let ca_key = devpki::generate_key()?;
        let ca = devpki::create_ca(&ca_key, ca_name, now_secs(), 3650, &serial)?;
        let key = devpki::generate_key()?;
        let names = [
            SubjectAltName::Ip([127, 0, 0, 1].into()),
            SubjectAltName::Ip(std::net::Ipv6Addr::LOCALHOST.into()),
            SubjectAltName::Dns("localhost".into()),
        ];
        openssl::rand::rand_bytes(&mut serial)?;
        let cert = devpki::issue_server_certificate(&ca, &ca_key, &key, &names, now_secs(), 365, &serial)?;
        let chain = vec![CertificateDer::from(cert.to_der()?), CertificateDer::from(ca.to_der()?)];
        let key =
            PrivateKeyDer::try_from(key.private_key_to_pkcs8()?).map_err(|e| AndroidEmuError::Tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServerIdentity { ca_pem: devpki::to_pem(&ca), tls: Arc::new(config) })
    }
}

/// A request with its body read.
pub(super) type FullRequest = Request<Bytes>;

/// Serves HTTP/1.1 on `listener` (TLS when `tls` is set) until `stop` turns true.
pub(super) async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(FullRequest) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
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
        let (tls, handler, mut stop) = (tls.clone(), handler.clone(), stop.clone());
        conns.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let resp = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => handler(Request::from_parts(parts, b.to_bytes())).await,
                        Err(_) => {
                            let mut r = Response::new(Full::new(Bytes::from_static(b"request body too large or broken")));
                            *r.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
                            r
                        }
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                    }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
                    }
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

/// A JSON response.
pub(super) fn json_response(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json; charset=UTF-8"));
    r
}
