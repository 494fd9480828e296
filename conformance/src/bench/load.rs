//! The Idle check-in load (and any other one-request-at-a-time load, e.g. Windows enrollment
//! requests): `C` connections, HTTP/1.1 keep-alive over TLS (ALPN `http/1.1`), each
//! sending one request at a time (closed loop). Bodies and their `Mdm-Signature` values are
//! made once per device before the run (signing is the device's cost, not the server's) and
//! reused; connection `k` cycles through devices `k, k + C, k + 2C, …`. Devices identified by
//! a TLS client certificate instead send unsigned bodies, one device per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::proc::{self, ProcSample};
use crate::apple::fleet::Latency;

/// One ready-to-send request.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub body: Bytes,
    /// `Mdm-Signature`; `None` for devices identified by their TLS client certificate.
    pub signature: Option<HeaderValue>,
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Servers to load; connection `k` goes to `addrs[k % len]` (several instances of one
    /// service behind an ideal round-robin balancer).
    pub addrs: Vec<SocketAddr>,
    /// TLS server name (and Host header).
    pub server_name: String,
    /// One config shared by all connections, or one per device (`tls[k % len]` for connection
    /// `k`, which then sends only device `k % len`'s requests: a client certificate is a
    /// device's identity for the whole connection).
    pub tls: Vec<Arc<rustls::ClientConfig>>,
    pub connections: usize,
    /// Load before measuring starts (connections opened, caches warm); not counted.
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop after this many measured requests (or at `duration`, whichever comes first).
    pub max_requests: Option<u64>,
    pub requests: Arc<Vec<Prepared>>,
    /// `PUT` for Apple check-ins, `POST` for SOAP.
    pub method: http::Method,
    pub path: String,
    pub content_type: HeaderValue,
}

/// What a load run measured. CPU and memory are over the measured window only.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub requests: u64,
    /// 2xx answers over the whole run, warm-up included (to check against what the server
    /// stored).
    pub ok_total: u64,
    /// Answers other than 2xx.
    pub non_200: u64,
    /// Transport failures (connect, TLS, HTTP).
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub latency: Latency,
    /// Server process CPU seconds during the window, when a pid was given.
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU per request, microseconds.
    pub server_cpu_us_per_request: Option<f64>,
    pub server_peak_rss_kib: Option<u64>,
    pub server_rss_kib: Option<u64>,
    /// This process (the load generator) CPU seconds during the window.
    pub client_cpu_seconds: f64,
}

#[derive(Default)]
struct TaskOut {
    latencies: Vec<u32>,
    requests: u64,
    ok_total: u64,
    non_200: u64,
    errors: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
}

async fn connect(spec: &LoadSpec, k: usize) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(spec.addrs[k % spec.addrs.len()]).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(spec.server_name.clone()).map_err(|e| format!("server name: {e}"))?;
    let config = spec.tls[k % spec.tls.len()].clone();
    let tls = TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn worker(spec: Arc<LoadSpec>, k: usize, measure_from: Instant, end: Instant, issued: Arc<AtomicU64>) -> TaskOut {
    let mut out = TaskOut { latencies: Vec::with_capacity(4096), ..TaskOut::default() };
    let port = spec.addrs[k % spec.addrs.len()].port();
    let host = HeaderValue::from_str(&format!("{}:{port}", spec.server_name)).expect("ASCII host");
    let n = spec.requests.len().max(1);
    let mut next = k % n;
    let mut sender = None;
    let fail = |out: &mut TaskOut, e: String| {
        out.errors += 1;
        out.first_error.get_or_insert(e);
    };
    while Instant::now() < end {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match connect(&spec, k).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    fail(&mut out, e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let measured = Instant::now() >= measure_from;
        if measured
            && let Some(max) = spec.max_requests
            && issued.fetch_add(1, Ordering::Relaxed) >= max
        {
            break;
        }
        let p = &spec.requests[next];
        if spec.tls.len() == 1 {
            next = (next + spec.connections) % n;
        }
        let mut req = http::Request::builder()
            .method(spec.method.clone())
            .uri(spec.path.as_str())
            .header(http::header::HOST, host.clone())
            .header(http::header::CONTENT_TYPE, spec.content_type.clone());
        if let Some(sig) = &p.signature {
            req = req.header("mdm-signature", sig.clone());
        }
        let req = req.body(Full::new(p.body.clone())).expect("valid request");
        let started = Instant::now();
        let result = async {
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            let resp = s.send_request(req).await.map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await.map_err(|e| format!("reply body: {e}"))?;
            Ok::<u16, String>(status)
        }
        .await;
        let done = Instant::now();
        match result {
            Ok(status) => {
                // Any 2xx: Pub/Sub push endpoints answer 204 (or 200) as acknowledgement.
                let ok = (200..300).contains(&status);
                if ok {
                    out.ok_total += 1;
                }
                if measured && done <= end {
                    out.requests += 1;
                    out.latencies.push(u32::try_from((done - started).as_micros()).unwrap_or(u32::MAX));
                    out.last_done = Some(done);
                    if !ok {
                        out.non_200 += 1;
                        out.first_error.get_or_insert_with(|| format!("answered {status}"));
                    }
                }
            }
            Err(e) => {
                fail(&mut out, e);
                sender = None;
            }
        }
    }
    out
}

/// Runs the load; the `server_pids` are sampled at the start and end of the measured window
/// (CPU summed over them, memory the largest of them).
pub async fn run(spec: LoadSpec, server_pids: &[u32]) -> LoadResult {
    assert!(!spec.addrs.is_empty(), "a load needs at least one server address");
    let spec = Arc::new(spec);
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..spec.connections.max(1) {
        tasks.spawn(worker(spec.clone(), k, measure_from, end, issued.clone()));
    }
    tokio::time::sleep_until(measure_from).await;
    let server_before = sample_all(server_pids);
    let client_before = proc::sample_self().unwrap_or_default();
    let mut outs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(o) = r {
            outs.push(o);
        }
    }
    let server_after = sample_all(server_pids);
    let client_after = proc::sample_self().unwrap_or_default();
    let last = outs.iter().filter_map(|o| o.last_done).max().unwrap_or(measure_from);
    let seconds = (last.min(end) - measure_from).as_secs_f64().max(1e-9);
    let mut latencies: Vec<u32> = Vec::with_capacity(outs.iter().map(|o| o.latencies.len()).sum());
    for o in &mut outs {
        latencies.append(&mut o.latencies);
    }
    let requests: u64 = outs.iter().map(|o| o.requests).sum();
    let server_cpu = match (server_before, server_after) {
        (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
        _ => None,
    };
    LoadResult {
        requests,
        ok_total: outs.iter().map(|o| o.ok_total).sum(),
        non_200: outs.iter().map(|o| o.non_200).sum(),
        errors: outs.iter().map(|o| o.errors).sum(),
        first_error: outs.iter().find_map(|o| o.first_error.clone()),
        seconds,
        requests_per_second: requests as f64 / seconds,
        latency: Latency::from_micros(&mut latencies),
        server_cpu_seconds: server_cpu,
        server_cpu_us_per_request: server_cpu.filter(|_| requests > 0).map(|c| c * 1e6 / requests as f64),
        server_peak_rss_kib: server_after.map(|s| s.peak_rss_kib),
        server_rss_kib: server_after.map(|s| s.rss_kib),
        client_cpu_seconds: client_after.cpu_seconds - client_before.cpu_seconds,
    }
}

/// CPU seconds summed over `pids`, peak and current RSS the largest; `None` when any cannot be
/// read (or there are none).
fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    let samples: Option<Vec<ProcSample>> = pids.iter().map(|&p| proc::sample(p)).collect();
    let samples = samples.filter(|s| !s.is_empty())?;
    Some(ProcSample {
        cpu_seconds: samples.iter().map(|s| s.cpu_seconds).sum(),
        rss_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        peak_rss_kib: samples.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0),
    })
}
