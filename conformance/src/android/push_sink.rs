//! A small HTTPS push endpoint that records what it receives: the stand-in for the gateway in
//! the emulator's own tests, and a way to watch what Pub/Sub delivers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::AndroidEmuError;
use super::tls::{ServerIdentity, json_response, serve};

/// One push request received.
#[derive(Debug, Clone)]
pub struct ReceivedPush {
    /// Path and query (`/android/pubsub?token=abc`).
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when it was not JSON).
    pub body: Value,
    /// The status answered.
    pub status: u16,
}

impl ReceivedPush {
    /// `message.data`, base64-decoded, parsed as JSON.
    pub fn data_json(&self) -> Option<Value> {
        let d = STANDARD.decode(self.body["message"]["data"].as_str()?).ok()?;
        serde_json::from_slice(&d).ok()
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.body["message"]["attributes"][name].as_str()
    }

    pub fn message_id(&self) -> Option<&str> {
        self.body["message"]["messageId"].as_str()
    }

    pub fn publish_time(&self) -> Option<&str> {
        self.body["message"]["publishTime"].as_str()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Shared {
    received: Mutex<Vec<ReceivedPush>>,
    status: AtomicU16,
    arrived: Notify,
}

/// A running push endpoint over TLS with its own CA.
#[derive(Debug)]
pub struct PushSink {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PushSink {
    /// Listens on `127.0.0.1:0`, answering 200 until told otherwise.
    pub async fn start() -> Result<PushSink, AndroidEmuError> {
        let id = ServerIdentity::generate("Emulated Push Endpoint CA")?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { status: AtomicU16::new(200), ..Shared::default() });
        let (stop, stop_rx) = watch::channel(false);
        let s = shared.clone();
        let handler = move |req: super::tls::FullRequest| {
            let s = s.clone();
            async move {
                let status = s.status.load(Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let push = ReceivedPush {
                    target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                        .collect(),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    status,
                };
                s.received.lock().expect("lock").push(push);
                s.arrived.notify_waiters();
                json_response(status, &serde_json::json!({}))
            }
        };
        let task = tokio::spawn(serve(listener, Some(TlsAcceptor::from(id.tls)), handler, stop_rx));
        Ok(PushSink { addr, ca_pem: id.ca_pem, shared, stop, task })
    }

    /// `https://localhost:<port><path>` (localhost, so Java's host name check passes too).
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The status answered from now on (e.g. 503 to make Pub/Sub retry).
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<ReceivedPush> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Waits until at least `n` pushes arrived (or `timeout`); returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedPush> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            let got = self.received();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
