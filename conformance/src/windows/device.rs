//! One emulated Windows device: its identity, its management tree, and OMA-DM sessions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mdm_certs::{PKey, Private, X509};
use mdm_windows::syncml::{
    self, Alert, AlertCode, Command, Item, ItemCommand, Meta, Results, Status, StatusCode, SyncBody, SyncHdr, SyncMl,
};

use super::tree::{default_tree, executable, install_result};

/// What the device proves itself with: the client certificate and key from enrollment, and the
/// DeviceID it was enrolled as.
#[derive(Debug, Clone)]
pub struct DmIdentity {
    pub device_id: String,
    pub key: PKey<Private>,
    pub cert: X509,
}

#[derive(Debug, thiserror::Error)]
pub enum WindowsDeviceError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("TLS identity: {0}")]
    Identity(String),
    #[error("gateway answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("gateway reply is not SyncML: {0}")]
    BadReply(String),
    #[error("session did not end after {0} messages")]
    Endless(u32),
}

/// A server command the device carried out, with the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub cmd: String,
    pub uri: Option<String>,
    pub code: u16,
}

/// What one session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionReport {
    pub session_id: String,
    /// Messages the device sent.
    pub messages: u32,
    pub handled: Vec<Handled>,
    /// Statuses the server gave to the device's commands (not the SyncHdr's), by `Cmd`.
    pub server_statuses: Vec<(String, u16)>,
    /// Chunks of large objects sent and received.
    pub chunks_sent: u32,
    pub chunks_received: u32,
    /// The largest gateway reply, in bytes (never above [`WindowsDevice::max_msg_size`]).
    pub largest_reply: usize,
}

/// A gateway reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// A large value arriving from the server in chunks.
#[derive(Debug)]
struct Assembly {
    uri: String,
    size: Option<u64>,
    data: String,
}

#[derive(Debug)]
pub struct WindowsDevice {
    pub identity: DmIdentity,
    /// `MaxMsgSize` the device states; the gateway's replies must not exceed it.
    pub max_msg_size: usize,
    /// The sign-in state sent in package 1 (`user`, `others`, `none`).
    pub login_status: String,
    management_url: String,
    client: reqwest::Client,
    tree: Mutex<BTreeMap<String, String>>,
    executed: Mutex<Vec<String>>,
    /// The data of each Exec carried out (the install job XML…), in order.
    exec_data: Mutex<Vec<(String, String)>>,
    sessions: AtomicU32,
    /// Capture mode ([`WindowsDevice::record_to`], or `MDM_CAPTURE_DIR`).
    recorder: Option<crate::suite::Recorder>,
}

impl WindowsDevice {
    /// A device presenting `identity` as its TLS client certificate to `management_url`
    /// (`https://host:port/ManagementServer/MDM.svc`), trusting `gateway_ca_pem` for the server.
    pub fn new(identity: DmIdentity, management_url: &str, gateway_ca_pem: &[u8]) -> Result<Self, WindowsDeviceError> {
        let mut pem = identity.cert.to_pem().map_err(|e| WindowsDeviceError::Identity(e.to_string()))?;
        pem.extend(identity.key.private_key_to_pem_pkcs8().map_err(|e| WindowsDeviceError::Identity(e.to_string()))?);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(gateway_ca_pem)?)
            .identity(reqwest::Identity::from_pem(&pem)?)
            .timeout(Duration::from_secs(30))
            .build()?;
        let tree = default_tree(&identity.device_id);
        Ok(WindowsDevice {
            identity,
            max_msg_size: 512 * 1024,
            login_status: "user".into(),
            management_url: management_url.to_owned(),
            client,
            tree: Mutex::new(tree),
            executed: Mutex::new(Vec::new()),
            exec_data: Mutex::new(Vec::new()),
            sessions: AtomicU32::new(0),
            recorder: None,
        }
        .record_to_env())
    }

    /// Capture mode: this device's OMA-DM traffic is written as a transcript under `root`
    /// (`<root>/captured/windows-omadm/<device id>/`), its DeviceID as `{{windows_device_id}}`.
    pub fn record_to(mut self, root: impl Into<std::path::PathBuf>) -> Self {
        let r = crate::suite::Recorder::new(
            root,
            "captured/windows-omadm",
            &self.identity.device_id,
            "Recorded from the emulated Windows device (mdm-conformance capture mode).",
            crate::suite::format::Setup::WindowsEnrolled,
        );
        r.template(&self.management_url, "{{gateway}}{{management_path}}");
        r.template(&self.identity.device_id, "{{windows_device_id}}");
        self.recorder = Some(r);
        self
    }

    fn record_to_env(self) -> Self {
        match std::env::var_os("MDM_CAPTURE_DIR") {
            Some(root) => self.record_to(std::path::PathBuf::from(root)),
            None => self,
        }
    }

    /// The device id as the gateway names it.
    pub fn gateway_id(&self) -> String {
        format!("windows:{}", self.identity.device_id)
    }

    pub fn set_node(&self, uri: &str, value: impl Into<String>) {
        self.tree.lock().unwrap_or_else(|p| p.into_inner()).insert(uri.to_owned(), value.into());
    }

    pub fn node(&self, uri: &str) -> Option<String> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner()).get(uri).cloned()
    }

    /// Exec URIs carried out, in order.
    pub fn executed(&self) -> Vec<String> {
        self.executed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Exec URIs carried out with the data they came with (an install's job XML), in order.
    pub fn executed_with_data(&self) -> Vec<(String, String)> {
        self.exec_data.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// POSTs `body` as SyncML to the management URL.
    pub async fn post(&self, body: Vec<u8>) -> Result<Reply, WindowsDeviceError> {
        let sent = self.recorder.is_some().then(|| body.clone());
        let resp = self
            .client
            .post(&self.management_url)
            .header("Content-Type", syncml::CONTENT_TYPE)
            .header("User-Agent", "MSFT OMA DM Client/1.2.0.1 (emulated)")
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let reply_type =
            resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let reply = Reply { status, body: resp.bytes().await? };
        if let (Some(r), Some(body)) = (&self.recorder, sent) {
            use crate::suite::format::MessageKind;
            let syncml_reply = reply_type.as_deref().is_some_and(|t| t.contains("syncml"));
            let traffic = crate::suite::record::Traffic {
                name: "SyncML message",
                method: "POST",
                path: "{{management_path}}",
                headers: &[("Content-Type", syncml::CONTENT_TYPE)],
                identity: "device",
                body: &body,
                kind: Some(MessageKind::Syncml),
                status,
                content_type: reply_type.as_deref(),
                reply: &reply.body,
                reply_kind: syncml_reply.then_some(MessageKind::Syncml),
                captures: Vec::new(),
            };
            if let Err(e) = r.record(&traffic) {
                eprintln!("capture mode: {}: {e}", r.dir().display());
            }
        }
        Ok(reply)
    }

    fn header(&self, session_id: &str, msg_id: u32) -> SyncHdr {
        client_header(&self.identity.device_id, &self.management_url, self.max_msg_size, session_id, msg_id)
    }

    fn next_session_id(&self) -> String {
        format!("{:X}", self.sessions.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Package 1 of a client-initiated session: Alert 1201, the sign-in state, DevInfo.
    pub fn package1(&self, session_id: &str) -> SyncMl {
        let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner()).clone();
        package1(self.header(session_id, 1), &tree, &self.login_status)
    }

    /// The unenrollment package: Alert 1226 of type `com.microsoft:mdm.unenrollment.userrequest`.
    pub fn unenroll_package(&self, session_id: &str) -> SyncMl {
        let item = Item {
            meta: Some(Meta::default().with("Type", syncml::session::UNENROLL_ALERT_TYPE).with("Format", "int")),
            data: Some("1".into()),
            ..Item::default()
        };
        SyncMl {
            hdr: self.header(session_id, 1),
            body: SyncBody { commands: vec![alert("2", AlertCode::GENERIC, vec![item])], final_: true },
        }
    }

    /// Tells the gateway the user unenrolled the device; returns the gateway's reply.
    pub async fn unenroll(&self) -> Result<SyncMl, WindowsDeviceError> {
        let sid = self.next_session_id();
        let reply = expect_syncml(self.post(self.unenroll_package(&sid).encode()).await?)?;
        Ok(reply)
    }

    /// One client-initiated management session, until the gateway has nothing more.
    pub async fn session(&self) -> Result<SessionReport, WindowsDeviceError> {
        let sid = self.next_session_id();
        self.session_from(self.package1(&sid)).await
    }

    /// Sessions on a schedule: `count` sessions, `interval` apart (the DM client's poll).
    pub async fn poll(&self, count: u32, interval: Duration) -> Result<Vec<SessionReport>, WindowsDeviceError> {
        let mut reports = Vec::new();
        for n in 0..count {
            if n > 0 {
                tokio::time::sleep(interval).await;
            }
            reports.push(self.session().await?);
        }
        Ok(reports)
    }

    /// Runs a session starting with `first` (package 1, already built).
    pub async fn session_from(&self, first: SyncMl) -> Result<SessionReport, WindowsDeviceError> {
        let sid = first.hdr.session_id.clone();
        let mut report = SessionReport { session_id: sid.clone(), ..SessionReport::default() };
        let mut msg = first;
        let mut server_max = 512 * 1024usize;
        // Results not sent yet (they did not fit), the first possibly a continuation chunk.
        let mut outbox: VecDeque<Results> = VecDeque::new();
        let mut chunk_offset = 0usize;
        let mut assembly: Option<Assembly> = None;
        for msg_id in 1..=500u32 {
            report.messages += 1;
            let raw = self.post(msg.encode()).await?;
            report.largest_reply = report.largest_reply.max(raw.body.len());
            let reply = expect_syncml(raw)?;
            if let Some(m) = reply.hdr.meta.as_ref().and_then(Meta::max_msg_size) {
                server_max = m as usize;
            }
            let mut ids = Ids(0);
            let mut statuses = vec![Command::Status(Status {
                cmd_id: ids.next(),
                msg_ref: reply.hdr.msg_id.to_string(),
                cmd_ref: "0".into(),
                cmd: "SyncHdr".into(),
                target_ref: vec![reply.hdr.target.clone()],
                source_ref: vec![reply.hdr.source.clone()],
                code: StatusCode::OK,
                items: vec![],
            })];
            let mut results = Vec::new();
            let mut asked_next = false;
            let mut server_commands = 0;
            for c in &reply.body.commands {
                match c {
                    Command::Status(s) => {
                        if s.cmd != "SyncHdr" {
                            report.server_statuses.push((s.cmd.clone(), s.code.0));
                        }
                    }
                    Command::Alert(a) if a.code == AlertCode::NEXT_MESSAGE => {
                        asked_next = true;
                        statuses.push(status(&mut ids, &reply, c, StatusCode::OK));
                    }
                    other => {
                        server_commands += 1;
                        self.execute(other, &reply, &mut ids, &mut statuses, &mut results, &mut report, &mut assembly);
                    }
                }
            }
            let _ = asked_next;
            if server_commands > 0 && !reply.body.final_ {
                // The server's package goes on (a large object in chunks): ask for the rest.
                let id = ids.next();
                statuses.push(alert(&id, AlertCode::NEXT_MESSAGE, vec![]));
            }
            outbox.extend(results);
            // Nothing asked of us and nothing left to send: the session is over.
            if server_commands == 0 && reply.body.final_ && outbox.is_empty() {
                return Ok(report);
            }
            let (next, offset, chunked) =
                self.next_message(&sid, msg_id + 1, statuses, &mut outbox, chunk_offset, server_max);
            chunk_offset = offset;
            if chunked {
                report.chunks_sent += 1;
            }
            msg = next;
        }
        Err(WindowsDeviceError::Endless(500))
    }

    /// Builds the next message: all statuses, then as many Results as fit the server's
    /// `MaxMsgSize`; a Results too large alone is sent in chunks. Not `Final` while Results
    /// remain.
    fn next_message(
        &self,
        sid: &str,
        msg_id: u32,
        mut commands: Vec<Command>,
        outbox: &mut VecDeque<Results>,
        mut offset: usize,
        server_max: usize,
    ) -> (SyncMl, usize, bool) {
        let hdr = self.header(sid, msg_id);
        let mut ids = Ids(commands.len() as u32);
        let size_of = |cmds: &[Command], final_: bool| {
            SyncMl { hdr: hdr.clone(), body: SyncBody { commands: cmds.to_vec(), final_ } }.encode().len()
        };
        let mut chunked = false;
        while let Some(mut r) = outbox.pop_front() {
            r.cmd_id = ids.next();
            let mut whole = r.clone();
            if offset > 0 {
                // A continuation: the rest of the first item's data, no Size.
                let data = whole.items[0].data.clone().unwrap_or_default();
                whole.items[0].data = Some(data[offset..].to_owned());
                if let Some(m) = &mut whole.items[0].meta {
                    m.remove("Size");
                }
            }
            let mut trial = commands.clone();
            trial.push(Command::Results(whole.clone()));
            if size_of(&trial, outbox.is_empty()) <= server_max {
                commands = trial;
                offset = 0;
                continue;
            }
            let alone = commands.iter().all(|c| matches!(c, Command::Status(_)));
            if !alone || whole.items.len() != 1 || whole.items[0].data.is_none() {
                outbox.push_front(r);
                break;
            }
            // Chunk the item: as much data as fits, MoreData, Size on the first chunk.
            let data = r.items[0].data.clone().unwrap_or_default();
            let rest = &data[offset..];
            let mut piece = whole.clone();
            piece.items[0].more_data = true;
            if offset == 0 {
                let meta = piece.items[0].meta.take().unwrap_or_default().with("Size", data.len().to_string());
                piece.items[0].meta = Some(meta);
            }
            piece.items[0].data = Some(String::new());
            let mut base = commands.clone();
            base.push(Command::Results(piece.clone()));
            let room = server_max.saturating_sub(size_of(&base, false)).max(64);
            let mut take = 0;
            let mut escaped = 0;
            for (i, ch) in rest.char_indices() {
                let l = syncml::xml::escaped_len(ch);
                if escaped + l > room {
                    break;
                }
                escaped += l;
                take = i + ch.len_utf8();
            }
            piece.items[0].data = Some(rest[..take].to_owned());
            if take >= rest.len() {
                // It fitted after all (the first guess counted the Size element).
                piece.items[0].more_data = false;
                commands.push(Command::Results(piece));
                offset = 0;
                continue;
            }
            commands.push(Command::Results(piece));
            offset += take;
            outbox.push_front(r);
            chunked = true;
            break;
        }
        let final_ = outbox.is_empty();
        (SyncMl { hdr, body: SyncBody { commands, final_ } }, offset, chunked)
    }

    /// Carries out one server command, appending its Status (and Results).
    #[allow(clippy::too_many_arguments)]
    fn execute(
        &self,
        c: &Command,
        reply: &SyncMl,
        ids: &mut Ids,
        statuses: &mut Vec<Command>,
        results: &mut Vec<Results>,
        report: &mut SessionReport,
        assembly: &mut Option<Assembly>,
    ) {
        match c {
            Command::Atomic(a) => {
                let snapshot = self.tree.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let at = statuses.len();
                statuses.push(status(ids, reply, c, StatusCode::OK));
                let mut inner_statuses = Vec::new();
                for inner in &a.commands {
                    self.execute(inner, reply, ids, &mut inner_statuses, results, report, assembly);
                }
                let failed = inner_statuses.iter().any(|s| matches!(s, Command::Status(s) if !s.code.is_success()));
                if failed {
                    *self.tree.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
                    for s in &mut inner_statuses {
                        if let Command::Status(s) = s
                            && s.code.is_success()
                        {
                            s.code = StatusCode::ATOMIC_ROLLBACK_OK;
                        }
                    }
                    if let Command::Status(s) = &mut statuses[at] {
                        s.code = StatusCode::ATOMIC_FAILED;
                    }
                }
                report.handled.push(Handled { cmd: "Atomic".into(), uri: None, code: if failed { 507 } else { 200 } });
                statuses.extend(inner_statuses);
            }
            Command::Sequence(sq) => {
                statuses.push(status(ids, reply, c, StatusCode::OK));
                report.handled.push(Handled { cmd: "Sequence".into(), uri: None, code: 200 });
                for inner in &sq.commands {
                    self.execute(inner, reply, ids, statuses, results, report, assembly);
                }
            }
            Command::Alert(_) => statuses.push(status(ids, reply, c, StatusCode::OK)),
            Command::Get(g) => {
                let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let found: Vec<Item> = g
                    .items
                    .iter()
                    .filter_map(|i| {
                        let uri = i.target.clone()?;
                        let value = tree.get(&uri)?.clone();
                        Some(Item {
                            source: Some(uri),
                            meta: Some(Meta::default().with("Format", "chr")),
                            data: Some(value),
                            ..Item::default()
                        })
                    })
                    .collect();
                let code = if found.len() == g.items.len() { StatusCode::OK } else { StatusCode::NOT_FOUND };
                let uri = g.items.first().and_then(|i| i.target.clone());
                report.handled.push(Handled { cmd: "Get".into(), uri, code: code.0 });
                statuses.push(status(ids, reply, c, code));
                if code == StatusCode::OK {
                    results.push(Results {
                        cmd_id: String::new(),
                        msg_ref: Some(reply.hdr.msg_id.to_string()),
                        cmd_ref: g.cmd_id.clone(),
                        meta: None,
                        target_ref: None,
                        source_ref: None,
                        items: found,
                    });
                }
            }
            Command::Replace(i) | Command::Add(i) => {
                let add = matches!(c, Command::Add(_));
                let mut code = StatusCode::OK;
                for item in &i.items {
                    let Some(uri) = item.target.clone() else {
                        code = StatusCode::BAD_REQUEST;
                        continue;
                    };
                    let data = item.data.clone().unwrap_or_default();
                    // Large objects: collect chunks until the last.
                    if item.more_data || assembly.as_ref().is_some_and(|a| a.uri == uri) {
                        report.chunks_received += 1;
                        let a = assembly.get_or_insert_with(|| Assembly {
                            uri: uri.clone(),
                            size: item.meta.as_ref().and_then(Meta::size),
                            data: String::new(),
                        });
                        a.data.push_str(&data);
                        if item.more_data {
                            code = StatusCode::CHUNKED_ITEM_ACCEPTED;
                            continue;
                        }
                        let Some(done) = assembly.take() else { continue };
                        if done.size.is_some_and(|s| s != done.data.len() as u64) {
                            code = StatusCode::SIZE_MISMATCH;
                            continue;
                        }
                        self.set_node(&done.uri, done.data);
                        continue;
                    }
                    let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
                    if add && tree.contains_key(&uri) {
                        code = StatusCode::ALREADY_EXISTS;
                        continue;
                    }
                    tree.insert(uri, data);
                }
                if code != StatusCode::CHUNKED_ITEM_ACCEPTED {
                    let uri = i.items.first().and_then(|i| i.target.clone());
                    report.handled.push(Handled { cmd: c.name().into(), uri, code: code.0 });
                }
                statuses.push(status(ids, reply, c, code));
            }
            Command::Delete(i) => {
                let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
                let mut code = StatusCode::OK;
                for item in &i.items {
                    if item.target.as_ref().and_then(|u| tree.remove(u)).is_none() {
                        code = StatusCode::NOT_FOUND;
                    }
                }
                drop(tree);
                report.handled.push(Handled {
                    cmd: "Delete".into(),
                    uri: i.items.first().and_then(|i| i.target.clone()),
                    code: code.0,
                });
                statuses.push(status(ids, reply, c, code));
            }
            Command::Exec(i) => {
                let uri = i.items.first().and_then(|i| i.target.clone());
                let code = match &uri {
                    Some(u) if executable(u) => {
                        self.executed.lock().unwrap_or_else(|p| p.into_inner()).push(u.clone());
                        let data = i.items.first().and_then(|i| i.data.clone()).unwrap_or_default();
                        self.exec_data.lock().unwrap_or_else(|p| p.into_inner()).push((u.clone(), data));
                        // An app install completes at once and reports itself in the tree.
                        for (node, value) in install_result(u).into_iter().flatten() {
                            self.set_node(&node, value);
                        }
                        StatusCode::OK
                    }
                    _ => StatusCode::NOT_FOUND,
                };
                report.handled.push(Handled { cmd: "Exec".into(), uri, code: code.0 });
                statuses.push(status(ids, reply, c, code));
            }
            Command::Status(_) | Command::Results(_) => {}
            Command::Unknown(_) => statuses.push(status(ids, reply, c, StatusCode::BAD_REQUEST)),
        }
    }
}

/// The SyncHdr of a device message: from `device_id` to `management_url`, stating
/// `max_msg_size`.
pub fn client_header(
    device_id: &str,
    management_url: &str,
    max_msg_size: usize,
    session_id: &str,
    msg_id: u32,
) -> SyncHdr {
    SyncHdr {
        ver_dtd: "1.2".into(),
        ver_proto: "DM/1.2".into(),
        session_id: session_id.to_owned(),
        msg_id,
        target: management_url.to_owned(),
        source: device_id.to_owned(),
        no_resp: false,
        meta: Some(Meta::default().with("MaxMsgSize", max_msg_size.to_string())),
    }
}

/// Package 1 of a client-initiated session under `hdr`: Alert 1201, Alert 1224 with the sign-in
/// state `login_status`, and a Replace of `./DevInfo/{DevId,Man,Mod,DmV,Lang}` from `tree`.
pub fn package1(hdr: SyncHdr, tree: &BTreeMap<String, String>, login_status: &str) -> SyncMl {
    let devinfo: Vec<Item> = ["DevId", "Man", "Mod", "DmV", "Lang"]
        .iter()
        .filter_map(|n| {
            let uri = format!("./DevInfo/{n}");
            let value = tree.get(&uri)?.clone();
            Some(Item { source: Some(uri), data: Some(value), ..Item::default() })
        })
        .collect();
    let login = Item {
        meta: Some(Meta::default().with("Type", syncml::session::LOGIN_STATUS_TYPE).with("Format", "chr")),
        data: Some(login_status.to_owned()),
        ..Item::default()
    };
    SyncMl {
        hdr,
        body: SyncBody {
            commands: vec![
                alert("2", AlertCode::CLIENT_INITIATED_MGMT, vec![]),
                alert("3", AlertCode::CLIENT_EVENT, vec![login]),
                Command::Replace(ItemCommand { cmd_id: "4".into(), items: devinfo, ..ItemCommand::default() }),
            ],
            final_: true,
        },
    }
}

#[derive(Debug)]
struct Ids(u32);

impl Ids {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

fn alert(id: &str, code: AlertCode, items: Vec<Item>) -> Command {
    Command::Alert(Alert { cmd_id: id.into(), no_resp: false, code, correlator: None, items })
}

fn status(ids: &mut Ids, reply: &SyncMl, c: &Command, code: StatusCode) -> Command {
    Command::Status(Status {
        cmd_id: ids.next(),
        msg_ref: reply.hdr.msg_id.to_string(),
        cmd_ref: c.cmd_id().to_owned(),
        cmd: c.name().to_owned(),
        target_ref: vec![],
        source_ref: vec![],
        code,
        items: vec![],
    })
}

/// The reply decoded, or the HTTP failure.
pub(crate) fn expect_syncml(reply: Reply) -> Result<SyncMl, WindowsDeviceError> {
    if reply.status != 200 {
        return Err(WindowsDeviceError::Status {
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
        });
    }
    syncml::decode(&reply.body).map_err(|e| WindowsDeviceError::BadReply(e.to_string()))
}
