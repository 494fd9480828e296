//! A webhook receiver on a real socket: records every POST, and can fail the first N.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct WebhookReceiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Requests answered 503 so far.
    pub failed: Arc<AtomicUsize>,
}

impl WebhookReceiver {
    /// Answers 503 to the first `fail_first` requests, then 200.
    pub async fn start(fail_first: usize) -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let (r, f) = (received.clone(), failed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (r, f) = (r.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (r, f) = (r.clone(), f.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            if f.load(Ordering::SeqCst) < fail_first {
                                f.fetch_add(1, Ordering::SeqCst);
                                let mut resp = Response::new(Full::new(Bytes::from_static(b"down")));
                                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                return Ok::<_, Infallible>(resp);
                            }
                            r.lock().expect("lock").push(Received { headers: parts.headers, body });
                            Ok(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        WebhookReceiver { url, received, failed }
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("lock").iter().filter_map(|r| serde_json::from_slice(&r.body).ok()).collect()
    }
}
