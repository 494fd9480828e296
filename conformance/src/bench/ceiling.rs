//! The ceiling: a bare hyper + rustls server with the gateway device listener's TLS setup (same
//! certificate and key, ring provider, TLS 1.2/1.3 defaults, client certificates requested but
//! optional, ALPN h2 + http/1.1, hyper-util's auto HTTP/1.1 + HTTP/2 builder, TCP_NODELAY) that
//! reads each request body and answers 200 with an empty body. Whatever the gateway does on
//! top of this is its own cost.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The gateway's device-listener TLS configuration, built by the gateway's own code from its
/// PEM files, so the ceiling and the gateway differ only in what happens after TLS.
pub fn server_config(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, String> {
    mdm_gateway::tls::device_server_config(chain_pem, key_pem).map_err(|e| e.to_string())
}

/// Serves forever on `listener`.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                // Read the body as the gateway does, then answer the canned reply.
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            });
            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
        });
    }
}
