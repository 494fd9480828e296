//! A layer-4 (TCP) balancer for tests: each accepted connection goes to the next backend in
//! turn, skipping backends that refuse the connection, and bytes are copied both ways (TLS
//! passes through, so client certificates reach the gateway). Like a real balancer's TCP mode
//! with a connect health check: when an instance dies, its connections break and new ones go to
//! the others.
//!
//! The same proxy stands in for a database restart: [`Balancer::pause`] drops every open
//! connection and closes new ones at once, [`Balancer::resume`] forwards again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Debug, Default)]
struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    paused: AtomicBool,
    /// Connections forwarded, per backend (index in `backends`).
    forwarded: Mutex<Vec<u64>>,
    live: Mutex<Vec<AbortHandle>>,
}

#[derive(Debug)]
pub struct Balancer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port and forwards to `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("balancer listens");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            forwarded: Mutex::new(vec![0; backends.len()]),
            backends: Mutex::new(backends),
            ..Shared::default()
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if s.paused.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let s2 = s.clone();
                let task = tokio::spawn(async move { forward(s2, client).await });
                let mut live = s.live.lock().expect("lock");
                live.retain(|h| !h.is_finished());
                live.push(task.abort_handle());
            }
        });
        Balancer { addr, shared, accept }
    }

    /// Connections forwarded so far, per backend.
    pub fn forwarded(&self) -> Vec<u64> {
        self.shared.forwarded.lock().expect("lock").clone()
    }

    /// Drops every open connection; new ones are closed as soon as accepted.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        for h in self.shared.live.lock().expect("lock").drain(..) {
            h.abort();
        }
    }

    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
        self.pause();
    }
}

async fn forward(s: Arc<Shared>, mut client: TcpStream) {
    let backends = s.backends.lock().expect("lock").clone();
    if backends.is_empty() {
        return;
    }
    let start = s.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..backends.len() {
        let k = (start + i) % backends.len();
        let Ok(Ok(mut upstream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(backends[k])).await
        else {
            continue;
        };
        let _ = upstream.set_nodelay(true);
        let _ = client.set_nodelay(true);
        s.forwarded.lock().expect("lock")[k] += 1;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
}
