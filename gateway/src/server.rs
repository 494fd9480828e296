//! Accept loops for both listeners: TCP, optional TLS, HTTP/1.1 and HTTP/2, graceful drain.
//!
//! The handler sees a [`ConnInfo`] with the peer address and the client certificate chain the
//! TLS layer received (unverified: see [`crate::tls`]). The client address behind a load
//! balancer is the handler's to add ([`ConnInfo::for_client`], [`crate::forwarded`]): it comes
//! from request headers, not from the connection.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::http_util::Reply;

/// What the handler knows about the connection a request came on.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The TCP peer: the device, or the load balancer in front of it.
    pub peer: Option<SocketAddr>,
    /// DER certificates the client presented in the TLS handshake, leaf first.
    pub client_certs: Vec<Vec<u8>>,
    /// Whether the connection is TLS (false on the API listener and on the plain-HTTP device
    /// listener behind a TLS-terminating load balancer).
    pub tls: bool,
    /// The client's address when a trusted proxy forwarded the request for another address
    /// (`X-Forwarded-For`, `Forwarded`); `None` means the peer is the client.
    pub forwarded_for: Option<IpAddr>,
}

impl ConnInfo {
    /// The client's address: forwarded by a trusted proxy, else the TCP peer's.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.forwarded_for.or(self.peer.map(|p| p.ip()))
    }

    /// This connection's information for one request whose client is `client`; shares `self`
    /// when that is the peer already.
    pub fn for_client(self: &Arc<Self>, client: IpAddr) -> Arc<ConnInfo> {
        if self.client_ip() == Some(client) {
            return self.clone();
        }
        Arc::new(ConnInfo { forwarded_for: Some(client), ..(**self).clone() })
    }
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>, Arc<ConnInfo>) -> HandlerFuture + Send + Sync>;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` turns true, then waits for open connections to finish
/// their in-flight requests, for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    handler: Handler,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    name: &'static str,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let client_certs = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
                        .unwrap_or_default();
                    let info = Arc::new(ConnInfo { peer: Some(peer), client_certs, tls: true, forwarded_for: None });
                    let svc = service_fn(move |req| {
                        let fut = handler(req, info.clone());
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with error");
                    }
                }
                None => {
                    let info = Arc::new(ConnInfo {
                        peer: Some(peer),
                        client_certs: Vec::new(),
                        tls: false,
                        forwarded_for: None,
                    });
                    let svc = service_fn(move |req| {
                        let fut = handler(req, info.clone());
                        async move { Ok::<_, std::convert::Infallible>(fut.await) }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(listener = name, %peer, error = %e, "connection ended with error");
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!(listener = name, "stopped accepting; draining connections");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = name, "grace period over with connections still open");
    }
}
