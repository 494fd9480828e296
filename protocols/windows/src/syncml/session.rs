//! The server side of an OMA-DM session, as data: one client message and the stored state in,
//! the reply, the next state and what happened ([`Effect`]s) out. No IO, no clock reads.
//!
//! A session is the messages sharing a `SessionID`. The client's first message (MsgID 1) opens
//! it with Alert 1200/1201 (or carries the 1226 unenrollment alert); each later message must
//! carry the next MsgID. The reply to every message starts with the Status for its SyncHdr,
//! then a Status for each client command (in order, none for Status or for `NoResp`), then the
//! server's commands. Server CmdIDs are unique across the whole session, so a Status or Results
//! is matched back by `CmdRef` (and `MsgRef`) alone. The session ends after a reply that carries
//! no command, after Alert 1223 (abort), or after unenrollment.
//!
//! Large objects ([`State::NextChunk`], [`State::ChunkRequest`]): an item whose data does not
//! fit the receiver's `MaxMsgSize` travels in chunks, each but the last marked `MoreData`, the
//! first with `Meta/Size`; the sender leaves `Final` off while chunks remain, the receiver
//! answers each chunk with Status 213 and asks for the next with Alert 1222.
//!
//! [`Session`] is serialisable: the gateway stores it between messages so that any instance can
//! serve the next message of a session.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::codes::{AlertCode, StatusCode};
use super::message::{
    Alert, Command, Item, Meta, Results, Status, SyncBody, SyncHdr, SyncMl, decode_commands, encode_commands,
    encode_prefix,
};
use super::xml::escaped_len;

/// The Meta type of the generic alert (1226) Windows sends when the user unenrolls.
pub const UNENROLL_ALERT_TYPE: &str = "com.microsoft:mdm.unenrollment.userrequest";
/// The Meta type of the client event (1224) carrying the sign-in state.
pub const LOGIN_STATUS_TYPE: &str = "com.microsoft/MDM/LoginStatus";

/// What the server is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Written as `Source/LocURI` of every reply (the management URL).
    pub server_uri: String,
    /// Largest message the server accepts, advertised as `MaxMsgSize`.
    pub max_msg_size: usize,
    /// Largest object the server assembles from chunks, advertised as `MaxObjSize`.
    pub max_obj_size: usize,
    /// `MaxMsgSize` assumed for a client that does not state one.
    pub default_client_max_msg_size: usize,
}

/// A queued command offered for sending (the device's pending commands, best first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued<'a> {
    pub command_id: &'a str,
    pub request_type: &'a str,
    /// The SyncML fragment written by [`super::translate`] (or the raw command).
    pub payload: &'a [u8],
}

/// What the server expects next from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Statuses and Results for the commands we sent (or a new package of the client's).
    Responses,
    /// The next chunk of a large object the client is sending (we answered 213 + Alert 1222).
    NextChunk { incoming: Incoming },
    /// Alert 1222 for the next chunk of a large object we are sending.
    ChunkRequest { outgoing: Outgoing },
    /// Nothing: the session is over.
    Ended { reason: EndReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// We answered with no command.
    Completed,
    /// The client sent Alert 1223.
    Aborted,
    /// The client unenrolled (Alert 1226).
    Unenrolled,
}

/// A large object arriving in chunks (Results from the client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incoming {
    /// The `CmdRef` of the Results (our Get).
    pub cmd_ref: String,
    pub uri: Option<String>,
    pub declared_size: Option<u64>,
    pub format: Option<String>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub data: String,
    pub chunks: u32,
}

/// A large object we are sending in chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub command_id: String,
    /// The whole command, written as SyncML (its one item holds the whole data).
    pub command_xml: String,
    /// Bytes of the data already sent.
    pub offset: usize,
    /// CmdID of the chunk sent last.
    pub last_cmd_id: String,
    pub chunks: u32,
}

/// One SyncML command we sent for a queued command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub msg_id: u32,
    pub cmd_id: String,
    pub cmd: String,
    pub uri: Option<String>,
    /// A top-level command (not inside Atomic/Sequence): the queued command is finished when
    /// every top-level part has its Status.
    pub top: bool,
    pub status: Option<u16>,
}

/// A Results item for a queued command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultItem {
    pub cmd_ref: String,
    pub uri: Option<String>,
    pub format: Option<String>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub data: Option<String>,
    /// Why the value is missing or incomplete (a large object that went wrong).
    pub error: Option<String>,
}

/// A queued command sent in this session and not finished yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub command_id: String,
    pub request_type: String,
    pub parts: Vec<Part>,
    pub results: Vec<ResultItem>,
}

/// The state kept between the messages of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub session_id: String,
    /// The client's MsgID handled last.
    pub client_msg_id: u32,
    /// Our MsgID sent last.
    pub server_msg_id: u32,
    /// The next CmdID we hand out (unique in the session).
    pub next_cmd_id: u32,
    pub client_max_msg_size: usize,
    pub state: State,
    pub in_flight: Vec<InFlight>,
    /// Unix seconds.
    pub started_at: i64,
    pub updated_at: i64,
}

impl Session {
    pub fn is_ended(&self) -> bool {
        matches!(self.state, State::Ended { .. })
    }

    fn next_id(&mut self) -> String {
        let id = self.next_cmd_id;
        self.next_cmd_id += 1;
        id.to_string()
    }
}

/// Something the gateway records after a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A new session began (`alert` 1200 or 1201, or 1226 alone for an unenrollment).
    SessionStarted { alert: AlertCode, login_status: Option<String> },
    /// Node values the client sent itself (the DevInfo Replace of package 1).
    DeviceInfo { nodes: Vec<(String, String)> },
    /// A client event (1224) or generic alert (1226) other than sign-in state and unenrollment.
    Alert { code: AlertCode, items: Value },
    /// The user unenrolled the device (1226 `com.microsoft:mdm.unenrollment.userrequest`).
    Unenrolled { items: Value },
    /// The client aborted the session (1223).
    Aborted,
    /// A queued command went out for the first time in this session.
    Sent { command_id: String },
    /// A queued command has all its Statuses (and Results): `ok` when every status is a success.
    Finished { command_id: String, ok: bool, data: Value, nodes: Vec<(String, String)> },
}

/// A message the session cannot take. Nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("VerDTD {ver_dtd:?} / VerProto {ver_proto:?} is not SyncML DM 1.2")]
    UnsupportedVersion { ver_dtd: String, ver_proto: String },
    #[error("session {session_id:?} is not open: a session starts with MsgID 1 and Alert 1200, 1201 or 1226")]
    NotStarted { session_id: String },
    #[error("MsgID {got} out of order (expected {expected})")]
    OutOfOrder { expected: u32, got: u32 },
    #[error("session {session_id:?} has ended")]
    Ended { session_id: String },
}

impl SessionError {
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::UnsupportedVersion { .. } => "unsupported_version",
            SessionError::NotStarted { .. } => "session_not_started",
            SessionError::OutOfOrder { .. } => "msg_id_out_of_order",
            SessionError::Ended { .. } => "session_ended",
        }
    }

    /// The status for the SyncHdr of the refused message.
    pub fn status(&self) -> StatusCode {
        match self {
            SessionError::UnsupportedVersion { .. } => StatusCode(505),
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The outcome of one client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub session: Session,
    pub reply: SyncMl,
    pub effects: Vec<Effect>,
}

/// The header of a reply to `msg`.
fn reply_header(msg: &SyncMl, server_uri: &str, msg_id: u32, meta: Option<Meta>) -> SyncHdr {
    SyncHdr {
        ver_dtd: "1.2".into(),
        ver_proto: "DM/1.2".into(),
        session_id: msg.hdr.session_id.clone(),
        msg_id,
        target: msg.hdr.source.clone(),
        source: server_uri.to_owned(),
        no_resp: false,
        meta,
    }
}

fn header_status(msg: &SyncMl, cmd_id: String, code: StatusCode) -> Command {
    Command::Status(Status {
        cmd_id,
        msg_ref: msg.hdr.msg_id.to_string(),
        cmd_ref: "0".into(),
        cmd: "SyncHdr".into(),
        target_ref: vec![msg.hdr.target.clone()],
        source_ref: vec![msg.hdr.source.clone()],
        code,
        items: Vec::new(),
    })
}

/// The answer to a message that is refused as a whole: the SyncHdr's Status carries `code`
/// and, as its item, the reason; nothing else is executed.
pub fn refusal(msg: &SyncMl, server_uri: &str, code: StatusCode, detail: &str) -> SyncMl {
    let mut status = header_status(msg, "1".into(), code);
    if let Command::Status(s) = &mut status {
        s.items.push(Item { data: Some(detail.to_owned()), ..Item::default() });
    }
    SyncMl {
        hdr: reply_header(msg, server_uri, msg.hdr.msg_id, None),
        body: SyncBody { commands: vec![status], final_: true },
    }
}

fn items_json(items: &[Item]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|i| {
                json!({
                    "source": i.source, "target": i.target,
                    "type": i.meta.as_ref().and_then(|m| m.type_()),
                    "format": i.meta.as_ref().and_then(|m| m.format()),
                    "data": i.data,
                })
            })
            .collect(),
    )
}

fn is_type(item: &Item, t: &str) -> bool {
    item.meta.as_ref().and_then(|m| m.type_()).is_some_and(|v| v.trim() == t)
}

/// Handles one client message. `prev` is the device's stored session, if any; `queue` its
/// pending commands, best first (commands already in flight in this session are skipped).
pub fn handle(
    prev: Option<Session>,
    msg: &SyncMl,
    queue: &[Queued<'_>],
    cfg: &ServerConfig,
    now: i64,
) -> Result<Step, SessionError> {
    let (dtd, proto) = (msg.hdr.ver_dtd.as_str(), msg.hdr.ver_proto.as_str());
    if !matches!(dtd, "1.2" | "1.1") || !matches!(proto, "DM/1.2" | "DM/1.1") {
        return Err(SessionError::UnsupportedVersion { ver_dtd: dtd.into(), ver_proto: proto.into() });
    }
    let mut effects = Vec::new();
    let continuing = prev.filter(|s| s.session_id == msg.hdr.session_id);
    let mut s = match continuing {
        Some(s) => {
            if s.is_ended() {
                return Err(SessionError::Ended { session_id: s.session_id });
            }
            if msg.hdr.msg_id != s.client_msg_id + 1 {
                return Err(SessionError::OutOfOrder { expected: s.client_msg_id + 1, got: msg.hdr.msg_id });
            }
            s
        }
        None => {
            let alerts = || {
                msg.body.commands.iter().filter_map(|c| match c {
                    Command::Alert(a) => Some(a),
                    _ => None,
                })
            };
            let start = alerts().find(|a| a.code.starts_session()).or_else(|| {
                alerts()
                    .find(|a| a.code == AlertCode::GENERIC && a.items.iter().any(|i| is_type(i, UNENROLL_ALERT_TYPE)))
            });
            let Some(start) = start.filter(|_| msg.hdr.msg_id == 1) else {
                return Err(SessionError::NotStarted { session_id: msg.hdr.session_id.clone() });
            };
            let login_status = alerts()
                .filter(|a| a.code == AlertCode::CLIENT_EVENT)
                .flat_map(|a| &a.items)
                .find(|i| is_type(i, LOGIN_STATUS_TYPE))
                .and_then(|i| i.data.as_ref().map(|d| d.trim().to_owned()));
            effects.push(Effect::SessionStarted { alert: start.code, login_status });
            Session {
                session_id: msg.hdr.session_id.clone(),
                client_msg_id: 0,
                server_msg_id: 0,
                next_cmd_id: 1,
                client_max_msg_size: cfg.default_client_max_msg_size,
                state: State::Responses,
                in_flight: Vec::new(),
                started_at: now,
                updated_at: now,
            }
        }
    };
    s.client_msg_id = msg.hdr.msg_id;
    s.server_msg_id += 1;
    s.updated_at = now;
    if let Some(max) = msg.hdr.meta.as_ref().and_then(Meta::max_msg_size) {
        s.client_max_msg_size = usize::try_from(max).unwrap_or(usize::MAX).max(MIN_CLIENT_MSG_SIZE);
    }

    let mut reply: Vec<Command> = Vec::new();
    let id = s.next_id();
    reply.push(header_status(msg, id, StatusCode::OK));
    let mut end: Option<EndReason> = None;
    for c in &msg.body.commands {
        let code = match c {
            Command::Status(st) => {
                on_status(&mut s, st, &mut effects);
                continue;
            }
            Command::Results(r) => on_results(&mut s, r, cfg),
            Command::Alert(a) => on_alert(&mut s, a, &mut effects, &mut end),
            Command::Replace(i) | Command::Add(i) => {
                let nodes: Vec<(String, String)> = i
                    .items
                    .iter()
                    .filter_map(|it| Some((it.uri()?.to_owned(), it.data.clone().unwrap_or_default())))
                    .collect();
                if !nodes.is_empty() {
                    effects.push(Effect::DeviceInfo { nodes });
                }
                StatusCode::OK
            }
            // The server has no management tree for the client to act on.
            Command::Get(_) | Command::Delete(_) | Command::Exec(_) | Command::Atomic(_) | Command::Sequence(_) => {
                StatusCode::COMMAND_NOT_ALLOWED
            }
            Command::Unknown(_) => StatusCode::BAD_REQUEST,
        };
        if c.no_resp() {
            continue;
        }
        let id = s.next_id();
        reply.push(Command::Status(Status {
            cmd_id: id,
            msg_ref: msg.hdr.msg_id.to_string(),
            cmd_ref: c.cmd_id().to_owned(),
            cmd: c.name().to_owned(),
            target_ref: Vec::new(),
            source_ref: Vec::new(),
            code,
            items: Vec::new(),
        }));
    }

    finish_completed(&mut s, &mut effects);

    let meta = Some(
        Meta::default()
            .with("MaxMsgSize", cfg.max_msg_size.to_string())
            .with("MaxObjSize", cfg.max_obj_size.to_string()),
    );
    let hdr = reply_header(msg, &cfg.server_uri, s.server_msg_id, meta);

    if let Some(reason) = end {
        s.state = State::Ended { reason };
        return Ok(Step {
            session: s,
            reply: SyncMl { hdr, body: SyncBody { commands: reply, final_: true } },
            effects,
        });
    }

    // The client's package goes on (more of its messages, or the rest of a large object):
    // ask for the next message, send nothing new.
    if !msg.body.final_ || matches!(s.state, State::NextChunk { .. }) {
        let id = s.next_id();
        reply.push(Command::Alert(Alert {
            cmd_id: id,
            no_resp: false,
            code: AlertCode::NEXT_MESSAGE,
            correlator: None,
            items: Vec::new(),
        }));
        return Ok(Step {
            session: s,
            reply: SyncMl { hdr, body: SyncBody { commands: reply, final_: false } },
            effects,
        });
    }

    let mut out = String::new();
    encode_prefix(&mut out, &hdr);
    let base = out.len() + encode_commands(&reply).len() + "<Final/></SyncBody></SyncML>".len();
    let mut budget = Budget { limit: s.client_max_msg_size, used: base };
    let mut final_ = true;
    let mut sent_any = false;

    if let State::ChunkRequest { outgoing } = s.state.clone() {
        match next_chunk(&mut s, outgoing, &mut budget) {
            Ok((command, more)) => {
                reply.push(command);
                sent_any = true;
                final_ = !more;
            }
            Err(error) => fail_outgoing(&mut s, &error, &mut effects),
        }
    } else {
        // The queue was read before this message's results were recorded: what finished just
        // now is still listed, and must not go out again.
        let finished: Vec<String> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Finished { command_id, .. } => Some(command_id.clone()),
                _ => None,
            })
            .collect();
        for q in queue {
            if s.in_flight.iter().any(|f| f.command_id == q.command_id) || finished.iter().any(|f| f == q.command_id) {
                continue;
            }
            match offer(&mut s, q, &mut budget, sent_any) {
                Offer::Sent(commands) => {
                    reply.extend(commands);
                    effects.push(Effect::Sent { command_id: q.command_id.to_owned() });
                    sent_any = true;
                }
                Offer::Chunked(command) => {
                    reply.push(command);
                    effects.push(Effect::Sent { command_id: q.command_id.to_owned() });
                    sent_any = true;
                    final_ = false;
                    break;
                }
                Offer::NoRoom => break,
                Offer::Refused(data) => effects.push(Effect::Finished {
                    command_id: q.command_id.to_owned(),
                    ok: false,
                    data,
                    nodes: Vec::new(),
                }),
            }
        }
        // Commands sent with NoResp only are finished as soon as they are sent.
        finish_completed(&mut s, &mut effects);
    }

    if !sent_any {
        s.state = State::Ended { reason: EndReason::Completed };
    }
    Ok(Step { session: s, reply: SyncMl { hdr, body: SyncBody { commands: reply, final_ } }, effects })
}

/// The smallest `MaxMsgSize` taken from a client (smaller values would leave no room at all).
const MIN_CLIENT_MSG_SIZE: usize = 1024;
/// The smallest data chunk sent, whatever the room left.
const MIN_CHUNK: usize = 64;

#[derive(Debug)]
struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }
}

enum Offer {
    Sent(Vec<Command>),
    Chunked(Command),
    NoRoom,
    Refused(Value),
}

fn renumber(s: &mut Session, c: &mut Command) {
    c.set_cmd_id(s.next_id());
    if let Command::Atomic(inner) | Command::Sequence(inner) = c {
        for i in &mut inner.commands {
            renumber(s, i);
        }
    }
}

fn parts_of(msg_id: u32, commands: &[Command]) -> Vec<Part> {
    let mut parts = Vec::new();
    for top in commands {
        for (n, c) in top.walk().into_iter().enumerate() {
            if c.no_resp() {
                continue;
            }
            parts.push(Part {
                msg_id,
                cmd_id: c.cmd_id().to_owned(),
                cmd: c.name().to_owned(),
                uri: c.items().and_then(|i| i.items.first()).and_then(|i| i.uri().map(str::to_owned)),
                top: n == 0,
                status: None,
            });
        }
    }
    parts
}

fn offer(s: &mut Session, q: &Queued<'_>, budget: &mut Budget, sent_any: bool) -> Offer {
    let parsed = std::str::from_utf8(q.payload).ok().and_then(|t| decode_commands(t).ok()).filter(|c| !c.is_empty());
    let Some(mut commands) = parsed else {
        return Offer::Refused(json!({ "request_type": q.request_type, "reason": "payload_unreadable" }));
    };
    let saved = s.next_cmd_id;
    for c in &mut commands {
        renumber(s, c);
    }
    let size = encode_commands(&commands).len();
    if size <= budget.room() {
        budget.used += size;
        s.in_flight.push(InFlight {
            command_id: q.command_id.to_owned(),
            request_type: q.request_type.to_owned(),
            parts: parts_of(s.server_msg_id, &commands),
            results: Vec::new(),
        });
        return Offer::Sent(commands);
    }
    s.next_cmd_id = saved;
    if sent_any {
        return Offer::NoRoom;
    }
    // Alone in the message and still too large: a single item command can go in chunks.
    let chunkable = commands.len() == 1
        && matches!(commands[0], Command::Replace(_) | Command::Add(_) | Command::Exec(_))
        && commands[0].items().is_some_and(|i| i.items.len() == 1 && i.items[0].data.is_some());
    if !chunkable {
        return Offer::Refused(json!({
            "request_type": q.request_type,
            "reason": "too_large",
            "detail": format!("{size} bytes of commands do not fit the device's MaxMsgSize {}", s.client_max_msg_size),
        }));
    }
    let outgoing = Outgoing {
        command_id: q.command_id.to_owned(),
        command_xml: encode_commands(&commands),
        offset: 0,
        last_cmd_id: String::new(),
        chunks: 0,
    };
    let mut parts = parts_of(s.server_msg_id, &commands);
    for p in &mut parts {
        // The part's CmdID becomes the last chunk's; until then no Status can finish it.
        p.cmd_id.clear();
    }
    s.in_flight.push(InFlight {
        command_id: q.command_id.to_owned(),
        request_type: q.request_type.to_owned(),
        parts,
        results: Vec::new(),
    });
    match next_chunk(s, outgoing, budget) {
        Ok((command, _more)) => Offer::Chunked(command),
        Err(e) => {
            s.in_flight.retain(|f| f.command_id != q.command_id);
            Offer::Refused(json!({ "request_type": q.request_type, "reason": "too_large", "detail": e }))
        }
    }
}

/// Builds the next chunk of `outgoing` into the room left; returns it and whether more remain.
fn next_chunk(s: &mut Session, mut outgoing: Outgoing, budget: &mut Budget) -> Result<(Command, bool), String> {
    let mut commands = decode_commands(&outgoing.command_xml).map_err(|e| e.to_string())?;
    let mut command = commands.pop().ok_or("no command")?;
    let id = s.next_id();
    command.set_cmd_id(id.clone());
    let ic = command.items_mut().ok_or("not an item command")?;
    let item = ic.items.first_mut().ok_or("no item")?;
    let data = item.data.take().unwrap_or_default();
    let total = data.len();
    let rest = data.get(outgoing.offset..).ok_or("chunk offset is not on a character boundary")?;
    let mut meta = item.meta.take().unwrap_or_default();
    if outgoing.chunks == 0 {
        meta.set("Size", total.to_string());
    } else {
        meta.remove("Size");
    }
    item.meta = if meta.fields.is_empty() { None } else { Some(meta) };
    // Room for the data: what is left after the command written with an empty chunk.
    item.data = Some(String::new());
    item.more_data = true;
    let overhead = command.to_xml().len();
    let room = budget.room().saturating_sub(overhead).max(MIN_CHUNK);
    let mut take = 0usize;
    let mut escaped = 0usize;
    for (i, c) in rest.char_indices() {
        if escaped + escaped_len(c) > room {
            break;
        }
        escaped += escaped_len(c);
        take = i + c.len_utf8();
    }
    if take == 0 && !rest.is_empty() {
        take = rest.chars().next().map_or(0, char::len_utf8);
    }
    let more = take < rest.len();
    let ic = command.items_mut().ok_or("not an item command")?;
    ic.items[0].data = Some(rest[..take].to_owned());
    ic.items[0].more_data = more;
    budget.used += command.to_xml().len();
    outgoing.offset += take;
    outgoing.chunks += 1;
    outgoing.last_cmd_id = id.clone();
    let msg_id = s.server_msg_id;
    if let Some(f) = s.in_flight.iter_mut().find(|f| f.command_id == outgoing.command_id) {
        for p in f.parts.iter_mut().filter(|p| p.top) {
            p.msg_id = msg_id;
            if !more {
                p.cmd_id = id.clone();
            }
        }
    }
    s.state = if more { State::ChunkRequest { outgoing } } else { State::Responses };
    Ok((command, more))
}

fn fail_outgoing(s: &mut Session, error: &str, effects: &mut Vec<Effect>) {
    if let State::ChunkRequest { outgoing } = std::mem::replace(&mut s.state, State::Responses)
        && let Some(pos) = s.in_flight.iter().position(|f| f.command_id == outgoing.command_id)
    {
        let f = s.in_flight.remove(pos);
        effects.push(Effect::Finished {
            command_id: f.command_id,
            ok: false,
            data: json!({ "request_type": f.request_type, "reason": "large_object_failed", "detail": error }),
            nodes: Vec::new(),
        });
    }
}

fn on_status(s: &mut Session, st: &Status, effects: &mut Vec<Effect>) {
    if st.cmd == "SyncHdr" {
        return;
    }
    if let State::ChunkRequest { outgoing } = &s.state
        && outgoing.last_cmd_id == st.cmd_ref
    {
        if st.code != StatusCode::CHUNKED_ITEM_ACCEPTED && !st.code.is_success() {
            let detail = format!("the device answered {} to chunk {}", st.code, outgoing.chunks);
            fail_outgoing(s, &detail, effects);
        }
        return;
    }
    let msg_ok = |p: &Part| st.msg_ref.is_empty() || st.msg_ref == p.msg_id.to_string();
    for f in &mut s.in_flight {
        if let Some(p) = f.parts.iter_mut().find(|p| !p.cmd_id.is_empty() && p.cmd_id == st.cmd_ref && msg_ok(p)) {
            p.status = Some(st.code.0);
            return;
        }
    }
}

fn on_results(s: &mut Session, r: &Results, cfg: &ServerConfig) -> StatusCode {
    let Some(f) =
        s.in_flight.iter().position(|f| f.parts.iter().any(|p| !p.cmd_id.is_empty() && p.cmd_id == r.cmd_ref))
    else {
        // Results for nothing we sent in this session: taken, not recorded.
        return StatusCode::OK;
    };
    let mut code = StatusCode::OK;
    for item in &r.items {
        let meta = item.meta.as_ref().or(r.meta.as_ref());
        let uri = item.uri().map(str::to_owned);
        let continues =
            matches!(&s.state, State::NextChunk { incoming } if incoming.cmd_ref == r.cmd_ref && incoming.uri == uri);
        if item.more_data || continues {
            let mut incoming = match std::mem::replace(&mut s.state, State::Responses) {
                State::NextChunk { incoming } if continues => incoming,
                other => {
                    if matches!(other, State::ChunkRequest { .. }) {
                        // One large object at a time: ours is still being sent.
                        s.state = other;
                        code = StatusCode::OPTIONAL_FEATURE_NOT_SUPPORTED;
                        continue;
                    }
                    Incoming {
                        cmd_ref: r.cmd_ref.clone(),
                        uri: uri.clone(),
                        declared_size: meta.and_then(Meta::size),
                        format: meta.and_then(|m| m.format().map(str::to_owned)),
                        type_: meta.and_then(|m| m.type_().map(str::to_owned)),
                        data: String::new(),
                        chunks: 0,
                    }
                }
            };
            incoming.data.push_str(item.data.as_deref().unwrap_or_default());
            incoming.chunks += 1;
            let limit = cfg.max_obj_size as u64;
            if incoming.data.len() as u64 > limit || incoming.declared_size.is_some_and(|d| d > limit) {
                s.in_flight[f].results.push(ResultItem {
                    cmd_ref: r.cmd_ref.clone(),
                    uri,
                    format: incoming.format,
                    type_: incoming.type_,
                    data: None,
                    error: Some(format!("large object larger than {limit} bytes")),
                });
                code = StatusCode::REQUEST_ENTITY_TOO_LARGE;
                continue;
            }
            if item.more_data {
                s.state = State::NextChunk { incoming };
                code = StatusCode::CHUNKED_ITEM_ACCEPTED;
                continue;
            }
            // The last chunk.
            let error = match incoming.declared_size {
                Some(d) if d != incoming.data.len() as u64 => {
                    code = StatusCode::SIZE_MISMATCH;
                    Some(format!("declared {d} bytes, received {}", incoming.data.len()))
                }
                _ => None,
            };
            s.in_flight[f].results.push(ResultItem {
                cmd_ref: r.cmd_ref.clone(),
                uri,
                format: incoming.format,
                type_: incoming.type_,
                data: if error.is_none() { Some(incoming.data) } else { None },
                error,
            });
            continue;
        }
        s.in_flight[f].results.push(ResultItem {
            cmd_ref: r.cmd_ref.clone(),
            uri,
            format: meta.and_then(|m| m.format().map(str::to_owned)),
            type_: meta.and_then(|m| m.type_().map(str::to_owned)),
            data: item.data.clone(),
            error: None,
        });
    }
    code
}

fn on_alert(s: &mut Session, a: &Alert, effects: &mut Vec<Effect>, end: &mut Option<EndReason>) -> StatusCode {
    match a.code {
        c if c.starts_session() => StatusCode::OK,
        AlertCode::NEXT_MESSAGE => StatusCode::OK,
        AlertCode::SESSION_ABORT => {
            effects.push(Effect::Aborted);
            *end = Some(EndReason::Aborted);
            StatusCode::OK
        }
        AlertCode::NO_END_OF_DATA => {
            if matches!(s.state, State::NextChunk { .. }) {
                s.state = State::Responses;
            }
            StatusCode::OK
        }
        AlertCode::CLIENT_EVENT => {
            let others: Vec<Item> = a.items.iter().filter(|i| !is_type(i, LOGIN_STATUS_TYPE)).cloned().collect();
            if !others.is_empty() {
                effects.push(Effect::Alert { code: a.code, items: items_json(&others) });
            }
            StatusCode::OK
        }
        AlertCode::GENERIC => {
            let (unenroll, others): (Vec<Item>, Vec<Item>) =
                a.items.iter().cloned().partition(|i| is_type(i, UNENROLL_ALERT_TYPE));
            if !unenroll.is_empty() {
                effects.push(Effect::Unenrolled { items: items_json(&unenroll) });
                *end = Some(EndReason::Unenrolled);
            }
            if !others.is_empty() {
                effects.push(Effect::Alert { code: a.code, items: items_json(&others) });
            }
            StatusCode::OK
        }
        _ => StatusCode::OPTIONAL_FEATURE_NOT_SUPPORTED,
    }
}

/// Moves every in-flight command whose top-level parts all have a Status (and whose large
/// result, if any, has fully arrived) out as [`Effect::Finished`].
fn finish_completed(s: &mut Session, effects: &mut Vec<Effect>) {
    let assembling = match &s.state {
        State::NextChunk { incoming } => Some(incoming.cmd_ref.clone()),
        _ => None,
    };
    let sending = match &s.state {
        State::ChunkRequest { outgoing } => Some(outgoing.command_id.clone()),
        _ => None,
    };
    let mut i = 0;
    while i < s.in_flight.len() {
        let f = &s.in_flight[i];
        let waiting = f.parts.iter().any(|p| p.top && p.status.is_none())
            || assembling.as_ref().is_some_and(|r| f.parts.iter().any(|p| &p.cmd_id == r))
            || sending.as_deref() == Some(f.command_id.as_str());
        if waiting {
            i += 1;
            continue;
        }
        let f = s.in_flight.remove(i);
        let ok = f.parts.iter().filter_map(|p| p.status).all(|c| StatusCode(c).is_success())
            && f.results.iter().all(|r| r.error.is_none());
        let statuses: Vec<Value> = f
            .parts
            .iter()
            .map(|p| json!({ "cmd": p.cmd, "cmd_ref": p.cmd_id, "uri": p.uri, "code": p.status }))
            .collect();
        let results: Vec<Value> = f
            .results
            .iter()
            .map(|r| {
                let mut v = json!({ "uri": r.uri, "format": r.format, "type": r.type_, "data": r.data });
                if let Some(e) = &r.error {
                    v["error"] = e.clone().into();
                }
                v
            })
            .collect();
        let nodes = f.results.iter().filter_map(|r| Some((r.uri.clone()?, r.data.clone()?))).collect();
        effects.push(Effect::Finished {
            command_id: f.command_id,
            ok,
            data: json!({ "request_type": f.request_type, "statuses": statuses, "results": results }),
            nodes,
        });
    }
}

#[cfg(test)]
mod tests;
