//! Windows load for `mdm-bench windows`, in two parts measured separately.
//!
//! **Enrollment**: MS-WSTEP `RequestSecurityToken` (Issue) requests, each the full request a
//! Windows client sends (WS-Security `UsernameToken` with its UPN and the enrollment secret, an
//! RSA 2048 PKCS#10 made by openssl, the context items Windows sends, its `DeviceID`), made before
//! the run ([`enrollment_requests`]) and sent by [`super::load`]: `C` keep-alive TLS connections,
//! one request in flight each. The gateway checks the credential and the CSR, signs a
//! certificate, stores the enrollment, the certificate record and the event, and answers the
//! provisioning document.
//!
//! **Sessions** ([`run_sessions`]): pre-enrolled devices, each with its own client certificate,
//! each running one OMA-DM session of three messages on a new TLS connection presenting that
//! certificate (a full handshake: every device has its own TLS client configuration, so nothing
//! is resumed), HTTP/1.1, the two requests on the same connection:
//!
//! 1. device → gateway, MsgID 1: Alert 1201 (client-initiated), Alert 1224 with the sign-in
//!    state, Replace of five `./DevInfo` nodes ([`crate::windows::package1`]);
//! 2. gateway → device: the Statuses for those, and the command queued for the device before the
//!    run (one per device: `lock`, an Exec; or `device_info`, fifteen Gets);
//! 3. device → gateway, MsgID 2: the Status for the SyncHdr and one per command (and the Results
//!    of the Gets); the gateway records the command as acknowledged and closes the session with
//!    a message of Statuses only (the answer to this request).
//!
//! Against the gateway each reply is decoded and checked (the command arrived, the session
//! ended); message 3 is built from reply 2. The ceiling server answers empty 200s, so it gets the
//! same message 3 built from the reply the gateway would send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mdm_certs::{PKey, Private};
use mdm_windows::enroll::{CsrFormat, RequestSecurityToken, RequestType};
use mdm_windows::syncml::{self, Command, Item, Meta, Results, Status, StatusCode, SyncBody, SyncMl};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::load::Prepared;
use super::proc::{self, ProcSample};
use crate::apple::fleet::Latency;
use crate::windows::{WindowsEnroller, WindowsEnrollerConfig, client_header, default_tree, package1};

/// Where enrollment requests go.
pub const ENROLLMENT_PATH: &str = "/EnrollmentServer/Enrollment.svc";
/// Where OMA-DM sessions go.
pub const MANAGEMENT_PATH: &str = "/ManagementServer/MDM.svc";
/// The SOAP content type Windows sends.
pub const SOAP_CONTENT_TYPE: &str = "application/soap+xml; charset=utf-8";

/// The DeviceID of enrollment request `i`.
pub fn enroll_device_id(i: usize) -> String {
    format!("BENCH-E-{i:07}")
}

/// The DeviceID of session device `i`.
pub fn session_device_id(i: usize) -> String {
    format!("BENCH-S-{i:07}")
}

/// The UPN of device `i`.
pub fn bench_upn(i: usize) -> String {
    format!("bench{i:07}@example.com")
}

/// `n` enrollment requests to `enrollment_url`, device `i` with its own DeviceID, UPN and CSR,
/// the CSR's key being `keys[i % keys.len()]` (RSA keys take long to make; the gateway sees only
/// the requests). Made on all cores.
pub fn enrollment_requests(
    n: usize,
    base_url: &str,
    server_ca_pem: &[u8],
    secret: &str,
    keys: &[PKey<Private>],
) -> Result<Vec<Prepared>, String> {
    if keys.is_empty() {
        return Err("no keys".into());
    }
    let url = format!("{}{ENROLLMENT_PATH}", base_url.trim_end_matches('/'));
    let template =
        WindowsEnroller::new(WindowsEnrollerConfig::on_premise("X", "x@example.com", secret), base_url, server_ca_pem)
            .map_err(|e| e.to_string())?;
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let indexes: Vec<usize> = (0..n).collect();
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Prepared>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = indexes
            .chunks(chunk)
            .map(|part| {
                let (template, url) = (&template, &url);
                s.spawn(move || {
                    let mut out = Vec::with_capacity(part.len());
                    for &i in part {
                        let mut e = template.clone();
                        let upn = bench_upn(i);
                        e.config = WindowsEnrollerConfig::on_premise(&enroll_device_id(i), &upn, secret);
                        let (csr, format) =
                            e.certificate_request_for(&keys[i % keys.len()]).map_err(|e| e.to_string())?;
                        let rst = RequestSecurityToken {
                            message_id: None,
                            security: None,
                            request_type: RequestType::Issue,
                            csr_format: format,
                            csr,
                            context: e.context(),
                        };
                        debug_assert_eq!(format, CsrFormat::Pkcs10);
                        let body = rst.encode(&format!("urn:uuid:{}", uuid::Uuid::now_v7()), url, &e.credential());
                        out.push(Prepared { body: Bytes::from(body), signature: None });
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("CSR thread panicked".into()))).collect()
    });
    let mut all = Vec::with_capacity(n);
    for p in parts {
        all.extend(p?);
    }
    Ok(all)
}

/// The command each session delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SessionCommand {
    /// `lock`: one Exec of `./Device/Vendor/MSFT/RemoteLock/Lock`, answered with one Status.
    Lock,
    /// `device_info`: fifteen Gets (DevInfo, DevDetail), answered with Statuses and Results.
    DeviceInfo,
}

impl SessionCommand {
    /// The `POST /v1/commands` command.
    pub fn normalised(self) -> serde_json::Value {
        match self {
            SessionCommand::Lock => serde_json::json!({ "type": "lock" }),
            SessionCommand::DeviceInfo => serde_json::json!({ "type": "device_info" }),
        }
    }

    /// How many top-level SyncML commands the gateway sends for it.
    pub fn syncml_commands(self) -> usize {
        match self {
            SessionCommand::Lock => 1,
            SessionCommand::DeviceInfo => syncml::translate::DEFAULT_DEVICE_INFO_NODES.len(),
        }
    }
}

/// One device of the session load.
#[derive(Debug)]
pub struct SessionDevice {
    pub device_id: String,
    /// Presents the device's certificate; its own, so no session is resumed across devices.
    pub tls: Arc<rustls::ClientConfig>,
    /// Message 1.
    pub first: Bytes,
    /// Message 3 for the ceiling (against the gateway it is built from reply 2).
    pub canned_third: Bytes,
}

/// A device's TLS client configuration without session resumption: a Windows device polling
/// minutes or hours apart does a full handshake, and a ceiling run that takes the devices in turn
/// again must not resume where the gateway run cannot.
pub fn without_resumption(config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut c = config.clone();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// The messages of device `device_id` for sessions to `management_url`, delivering `command`.
pub fn session_device(
    device_id: &str,
    management_url: &str,
    tls: Arc<rustls::ClientConfig>,
    command: SessionCommand,
) -> Result<SessionDevice, String> {
    let tree = default_tree(device_id);
    let first = package1(client_header(device_id, management_url, 512 * 1024, "1", 1), &tree, "user");
    let reply = expected_reply(device_id, management_url, command)?;
    let third = answer(&reply, device_id, management_url)?;
    Ok(SessionDevice {
        device_id: device_id.to_owned(),
        tls,
        first: Bytes::from(first.encode()),
        canned_third: Bytes::from(third.encode()),
    })
}

/// What the gateway answers message 1 with: Statuses for the SyncHdr and the three commands,
/// then the command (CmdIDs continuing from there).
fn expected_reply(device_id: &str, management_url: &str, command: SessionCommand) -> Result<SyncMl, String> {
    let normalised: mdm_core::Command = serde_json::from_value(command.normalised()).map_err(|e| e.to_string())?;
    let translated = syncml::translate::translate(&normalised).map_err(|e| e.to_string())?;
    let status = |id: u32, cmd_ref: &str, cmd: &str| {
        Command::Status(Status {
            cmd_id: id.to_string(),
            msg_ref: "1".into(),
            cmd_ref: cmd_ref.into(),
            cmd: cmd.into(),
            target_ref: vec![],
            source_ref: vec![],
            code: StatusCode::OK,
            items: vec![],
        })
    };
    let mut commands =
        vec![status(1, "0", "SyncHdr"), status(2, "2", "Alert"), status(3, "3", "Alert"), status(4, "4", "Replace")];
    for (k, mut c) in translated.commands.into_iter().enumerate() {
        c.set_cmd_id((5 + k).to_string());
        commands.push(c);
    }
    Ok(SyncMl {
        hdr: syncml::SyncHdr {
            ver_dtd: "1.2".into(),
            ver_proto: "DM/1.2".into(),
            session_id: "1".into(),
            msg_id: 1,
            target: device_id.into(),
            source: management_url.into(),
            no_resp: false,
            meta: None,
        },
        body: SyncBody { commands, final_: true },
    })
}

/// Message 3: the device's answer to `reply` (MsgID 2): Status 200 for the SyncHdr and for every
/// command, and the Results of Gets from the device's default tree (404 for unknown nodes).
pub fn answer(reply: &SyncMl, device_id: &str, management_url: &str) -> Result<SyncMl, String> {
    let tree = default_tree(device_id);
    let mut next_id = 0u32;
    let mut id = || {
        next_id += 1;
        next_id.to_string()
    };
    let msg_ref = reply.hdr.msg_id.to_string();
    let mut statuses = vec![Command::Status(Status {
        cmd_id: id(),
        msg_ref: msg_ref.clone(),
        cmd_ref: "0".into(),
        cmd: "SyncHdr".into(),
        target_ref: vec![reply.hdr.target.clone()],
        source_ref: vec![reply.hdr.source.clone()],
        code: StatusCode::OK,
        items: vec![],
    })];
    let mut results = Vec::new();
    for c in &reply.body.commands {
        if matches!(c, Command::Status(_) | Command::Results(_)) || c.no_resp() {
            continue;
        }
        let mut code = StatusCode::OK;
        if let Command::Get(g) = c {
            let items: Vec<Item> = g
                .items
                .iter()
                .filter_map(|i| {
                    let uri = i.target.clone()?;
                    let data = tree.get(&uri)?.clone();
                    Some(Item {
                        source: Some(uri),
                        meta: Some(Meta::default().with("Format", "chr")),
                        data: Some(data),
                        ..Item::default()
                    })
                })
                .collect();
            if items.len() == g.items.len() {
                results.push((g.cmd_id.clone(), items));
            } else {
                code = StatusCode::NOT_FOUND;
            }
        }
        statuses.push(Command::Status(Status {
            cmd_id: id(),
            msg_ref: msg_ref.clone(),
            cmd_ref: c.cmd_id().to_owned(),
            cmd: c.name().to_owned(),
            target_ref: vec![],
            source_ref: vec![],
            code,
            items: vec![],
        }));
    }
    if statuses.len() == 1 {
        return Err("the reply to message 1 carried no command".into());
    }
    for (cmd_ref, items) in results {
        statuses.push(Command::Results(Results {
            cmd_id: id(),
            msg_ref: Some(msg_ref.clone()),
            cmd_ref,
            meta: None,
            target_ref: None,
            source_ref: None,
            items,
        }));
    }
    Ok(SyncMl {
        hdr: client_header(device_id, management_url, 512 * 1024, &reply.hdr.session_id, 2),
        body: SyncBody { commands: statuses, final_: true },
    })
}

#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub addr: SocketAddr,
    /// TLS server name and Host.
    pub server_name: String,
    /// Sessions in flight (each on its own connection).
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Against the gateway each device runs one session, and the run ends early when they are
    /// used up; the ceiling keeps no state, so it takes them in turn again (`reuse_devices`).
    pub devices: Arc<Vec<SessionDevice>>,
    pub reuse_devices: bool,
    /// Against the gateway: decode and check every reply, build message 3 from reply 2, and
    /// expect this many commands in it. `None` (the ceiling): send the canned message 3.
    pub expect_commands: Option<usize>,
}

/// What a session run measured; CPU and memory over the measured window only.
#[derive(Debug, Clone, Serialize)]
pub struct SessionResult {
    /// Sessions completed in the measured window.
    pub sessions: u64,
    /// Sessions completed over the whole run, warm-up included (to check against the store).
    pub sessions_total: u64,
    /// Sessions that failed (transport, a non-200 answer, a reply that is not what the session
    /// needs), warm-up included.
    pub failed: u64,
    pub first_error: Option<String>,
    /// Devices used (against the gateway each at most once).
    pub devices_used: u64,
    /// The devices ran out before the end of the window (give more with --devices).
    pub exhausted: bool,
    pub seconds: f64,
    pub sessions_per_second: f64,
    /// HTTP requests per second (two per session).
    pub requests_per_second: f64,
    /// From connecting to the answer of message 3.
    pub latency: Latency,
    pub server_cpu_seconds: Option<f64>,
    /// Server CPU per session, microseconds.
    pub server_cpu_us_per_session: Option<f64>,
    pub server_peak_rss_kib: Option<u64>,
    pub server_rss_kib: Option<u64>,
    pub client_cpu_seconds: f64,
}

#[derive(Default)]
struct Out {
    latencies: Vec<u32>,
    sessions: u64,
    total: u64,
    failed: u64,
    first_error: Option<String>,
    exhausted: bool,
    last_done: Option<Instant>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn post(sender: &mut Sender, host: &HeaderValue, body: Bytes) -> Result<(u16, Bytes), String> {
    let req = http::Request::post(MANAGEMENT_PATH)
        .header(http::header::HOST, host.clone())
        .header(http::header::CONTENT_TYPE, syncml::CONTENT_TYPE)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| format!("connection: {e}"))?;
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| format!("reply body: {e}"))?.to_bytes();
    Ok((status, body))
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// One session of `d`: connect with its certificate, messages 1 and 3, close.
async fn session(spec: &SessionSpec, d: &SessionDevice, host: &HeaderValue) -> Result<(), String> {
    let tcp = TcpStream::connect(spec.addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(spec.server_name.clone()).map_err(|e| format!("server name: {e}"))?;
    let tls = TlsConnector::from(d.tls.clone()).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let (status, body) = post(&mut sender, host, d.first.clone()).await?;
        if status != 200 {
            return Err(format!("message 1 answered {status}: {}", snippet(&body)));
        }
        let third = match spec.expect_commands {
            None => d.canned_third.clone(),
            Some(n) => {
                let reply = syncml::decode(&body).map_err(|e| format!("reply 2 is not SyncML: {e}"))?;
                let commands = reply.body.commands.iter().filter(|c| !matches!(c, Command::Status(_))).count();
                if commands != n {
                    return Err(format!("reply 2 carried {commands} commands, expected {n}: {}", snippet(&body)));
                }
                let mgmt = reply.hdr.source.clone();
                Bytes::from(answer(&reply, &d.device_id, &mgmt)?.encode())
            }
        };
        let (status, body) = post(&mut sender, host, third).await?;
        if status != 200 {
            return Err(format!("message 3 answered {status}: {}", snippet(&body)));
        }
        if spec.expect_commands.is_some() {
            let closing = syncml::decode(&body).map_err(|e| format!("closing reply is not SyncML: {e}"))?;
            let hdr_ok = closing
                .body
                .commands
                .iter()
                .any(|c| matches!(c, Command::Status(s) if s.cmd == "SyncHdr" && s.code == StatusCode::OK));
            let only_statuses = closing.body.commands.iter().all(|c| matches!(c, Command::Status(_)));
            if !hdr_ok || !only_statuses {
                return Err(format!("the session did not end: {}", snippet(&body)));
            }
        }
        Ok(())
    }
    .await;
    drop(sender);
    conn.abort();
    result
}

async fn worker(spec: Arc<SessionSpec>, next: Arc<AtomicUsize>, measure_from: Instant, end: Instant) -> Out {
    let mut out = Out { latencies: Vec::with_capacity(4096), ..Out::default() };
    let host = HeaderValue::from_str(&format!("{}:{}", spec.server_name, spec.addr.port())).expect("ASCII host");
    while Instant::now() < end {
        let mut i = next.fetch_add(1, Ordering::Relaxed);
        if spec.reuse_devices && !spec.devices.is_empty() {
            i %= spec.devices.len();
        }
        let Some(d) = spec.devices.get(i) else {
            out.exhausted = true;
            break;
        };
        let started = Instant::now();
        let measured = started >= measure_from;
        match session(&spec, d, &host).await {
            Ok(()) => {
                let done = Instant::now();
                out.total += 1;
                if measured && done <= end {
                    out.sessions += 1;
                    out.latencies.push(u32::try_from((done - started).as_micros()).unwrap_or(u32::MAX));
                    out.last_done = Some(done);
                }
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert(format!("{}: {e}", d.device_id));
            }
        }
    }
    out
}

/// Runs the sessions; `server_pid` is sampled at the start and end of the measured window.
pub async fn run_sessions(spec: SessionSpec, server_pid: Option<u32>) -> SessionResult {
    let spec = Arc::new(spec);
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        tasks.spawn(worker(spec.clone(), next.clone(), measure_from, end));
    }
    tokio::time::sleep_until(measure_from).await;
    let server_before = server_pid.and_then(proc::sample);
    let client_before = proc::sample_self().unwrap_or_default();
    let mut outs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(o) = r {
            outs.push(o);
        }
    }
    let server_after: Option<ProcSample> = server_pid.and_then(proc::sample);
    let client_after = proc::sample_self().unwrap_or_default();
    let last = outs.iter().filter_map(|o| o.last_done).max().unwrap_or(measure_from);
    let seconds = (last.min(end).max(measure_from) - measure_from).as_secs_f64().max(1e-9);
    let mut latencies: Vec<u32> = Vec::with_capacity(outs.iter().map(|o| o.latencies.len()).sum());
    for o in &mut outs {
        latencies.append(&mut o.latencies);
    }
    let sessions: u64 = outs.iter().map(|o| o.sessions).sum();
    let server_cpu = match (server_before, server_after) {
        (Some(b), Some(a)) => Some(a.cpu_seconds - b.cpu_seconds),
        _ => None,
    };
    SessionResult {
        sessions,
        sessions_total: outs.iter().map(|o| o.total).sum(),
        failed: outs.iter().map(|o| o.failed).sum(),
        first_error: outs.iter().find_map(|o| o.first_error.clone()),
        devices_used: next.load(Ordering::Relaxed).min(spec.devices.len()) as u64,
        exhausted: outs.iter().any(|o| o.exhausted),
        seconds,
        sessions_per_second: sessions as f64 / seconds,
        requests_per_second: 2.0 * sessions as f64 / seconds,
        latency: Latency::from_micros(&mut latencies),
        server_cpu_seconds: server_cpu,
        server_cpu_us_per_session: server_cpu.filter(|_| sessions > 0).map(|c| c * 1e6 / sessions as f64),
        server_peak_rss_kib: server_after.map(|s| s.peak_rss_kib),
        server_rss_kib: server_after.map(|s| s.rss_kib),
        client_cpu_seconds: client_after.cpu_seconds - client_before.cpu_seconds,
    }
}

/// `SELECT COUNT(*)` over the (stopped) gateway's SQLite database.
pub fn count(db: &std::path::Path, sql: &str) -> Result<u64, String> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("open {}: {e}", db.display()))?;
    conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64).map_err(|e| format!("{sql}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_three_answers_the_expected_reply() {
        let url = "https://localhost:8443/ManagementServer/MDM.svc";
        let reply = expected_reply("DEV-1", url, SessionCommand::Lock).expect("reply");
        let third = answer(&reply, "DEV-1", url).expect("answer");
        let statuses: Vec<(String, String, String)> = third
            .body
            .commands
            .iter()
            .map(|c| match c {
                Command::Status(s) => (s.cmd.clone(), s.cmd_ref.clone(), s.code.0.to_string()),
                other => panic!("only statuses for a lock: {other:?}"),
            })
            .collect();
        assert_eq!(statuses, [("SyncHdr".into(), "0".into(), "200".into()), ("Exec".into(), "5".into(), "200".into())]);
        assert_eq!((third.hdr.msg_id, third.hdr.session_id.as_str(), third.hdr.source.as_str()), (2, "1", "DEV-1"));

        let reply = expected_reply("DEV-1", url, SessionCommand::DeviceInfo).expect("reply");
        let third = answer(&reply, "DEV-1", url).expect("answer");
        let results = third.body.commands.iter().filter(|c| matches!(c, Command::Results(_))).count();
        assert_eq!(results, SessionCommand::DeviceInfo.syncml_commands());
        // It decodes as the gateway will read it.
        assert_eq!(syncml::decode(&third.encode()).expect("decodes"), third);
        // A reply without a command is not a session of three messages.
        let mut empty = reply.clone();
        empty.body.commands.retain(|c| matches!(c, Command::Status(_)));
        assert!(answer(&empty, "DEV-1", url).is_err());
    }
}
