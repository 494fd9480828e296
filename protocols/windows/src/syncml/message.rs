//! The SyncML message as typed values: decoding from XML and encoding back.
//!
//! Decoding is strict about structure (a `SyncHdr` with `SessionID`, a numeric `MsgID`, `CmdID`
//! on commands, numeric `Status`/`Alert` codes) and lenient about values (any code number, any
//! `Meta` field, `Data` holding markup). Elements a command does not define are dropped, and
//! unknown commands are kept whole ([`Command::Unknown`]) so the receiver can answer them with
//! a Status. Encoding writes compact XML in the DTD's element order; decoding what it wrote
//! gives the same value back.

use super::codes::{AlertCode, StatusCode};
use super::error::DecodeError;
use super::xml::{self, Element, Limits, Node, escape_into};

/// The SyncML 1.2 namespace, written on the root.
pub const SYNCML_NS: &str = "SYNCML:SYNCML1.2";
/// The namespace of `Meta` children.
pub const METINF_NS: &str = "syncml:metinf";
/// The media type of SyncML DM messages in XML.
pub const CONTENT_TYPE: &str = "application/vnd.syncml.dm+xml";

/// One SyncML message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMl {
    pub hdr: SyncHdr,
    pub body: SyncBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncHdr {
    pub ver_dtd: String,
    pub ver_proto: String,
    pub session_id: String,
    pub msg_id: u32,
    /// `Target/LocURI`: the recipient (the server URL for a device's message).
    pub target: String,
    /// `Source/LocURI`: the sender (the device id for a device's message). Never proof of
    /// identity: the client certificate is.
    pub source: String,
    pub no_resp: bool,
    pub meta: Option<Meta>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncBody {
    pub commands: Vec<Command>,
    /// `<Final/>`: the last message of the sender's package.
    pub final_: bool,
}

/// `Meta` (or the `syncml:metinf` fields of one): kept as ordered name/value pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub fields: Vec<(String, String)>,
}

impl Meta {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(f) => f.1 = value,
            None => self.fields.push((name.to_owned(), value)),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|(n, _)| n != name);
    }

    pub fn format(&self) -> Option<&str> {
        self.get("Format")
    }

    pub fn type_(&self) -> Option<&str> {
        self.get("Type")
    }

    pub fn size(&self) -> Option<u64> {
        self.get("Size").and_then(|s| s.trim().parse().ok())
    }

    pub fn max_msg_size(&self) -> Option<u64> {
        self.get("MaxMsgSize").and_then(|s| s.trim().parse().ok())
    }

    pub fn max_obj_size(&self) -> Option<u64> {
        self.get("MaxObjSize").and_then(|s| s.trim().parse().ok())
    }
}

/// `Item`: a node address and its value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Item {
    pub target: Option<String>,
    pub source: Option<String>,
    pub meta: Option<Meta>,
    pub data: Option<String>,
    /// `<MoreData/>`: this item's data continues in the next message (large objects).
    pub more_data: bool,
}

impl Item {
    pub fn target(uri: &str) -> Self {
        Item { target: Some(uri.to_owned()), ..Item::default() }
    }

    /// The node this item names: `Target` for server commands, `Source` for results.
    pub fn uri(&self) -> Option<&str> {
        self.target.as_deref().or(self.source.as_deref())
    }
}

/// Add, Replace, Delete, Get, Exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemCommand {
    pub cmd_id: String,
    pub no_resp: bool,
    pub meta: Option<Meta>,
    pub correlator: Option<String>,
    pub items: Vec<Item>,
}

/// Atomic, Sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub cmd_id: String,
    pub no_resp: bool,
    pub meta: Option<Meta>,
    pub commands: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub cmd_id: String,
    pub no_resp: bool,
    pub code: AlertCode,
    pub correlator: Option<String>,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub cmd_id: String,
    pub msg_ref: String,
    pub cmd_ref: String,
    /// The referenced command's name (`SyncHdr`, `Get`, ...).
    pub cmd: String,
    pub target_ref: Vec<String>,
    pub source_ref: Vec<String>,
    pub code: StatusCode,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    pub cmd_id: String,
    pub msg_ref: Option<String>,
    pub cmd_ref: String,
    pub meta: Option<Meta>,
    pub target_ref: Option<String>,
    pub source_ref: Option<String>,
    pub items: Vec<Item>,
}

/// A SyncBody command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Alert(Alert),
    Status(Status),
    Results(Results),
    Add(ItemCommand),
    Replace(ItemCommand),
    Delete(ItemCommand),
    Get(ItemCommand),
    Exec(ItemCommand),
    Atomic(Container),
    Sequence(Container),
    /// An element that is not a command this crate knows, kept as it came.
    Unknown(Element),
}

impl Command {
    /// The element name (what a Status's `Cmd` names).
    pub fn name(&self) -> &str {
        match self {
            Command::Alert(_) => "Alert",
            Command::Status(_) => "Status",
            Command::Results(_) => "Results",
            Command::Add(_) => "Add",
            Command::Replace(_) => "Replace",
            Command::Delete(_) => "Delete",
            Command::Get(_) => "Get",
            Command::Exec(_) => "Exec",
            Command::Atomic(_) => "Atomic",
            Command::Sequence(_) => "Sequence",
            Command::Unknown(e) => &e.name,
        }
    }

    /// The `CmdID` (empty when an unknown element has none).
    pub fn cmd_id(&self) -> &str {
        match self {
            Command::Alert(a) => &a.cmd_id,
            Command::Status(s) => &s.cmd_id,
            Command::Results(r) => &r.cmd_id,
            Command::Add(c) | Command::Replace(c) | Command::Delete(c) | Command::Get(c) | Command::Exec(c) => {
                &c.cmd_id
            }
            Command::Atomic(c) | Command::Sequence(c) => &c.cmd_id,
            Command::Unknown(_) => "",
        }
    }

    pub fn set_cmd_id(&mut self, id: String) {
        match self {
            Command::Alert(a) => a.cmd_id = id,
            Command::Status(s) => s.cmd_id = id,
            Command::Results(r) => r.cmd_id = id,
            Command::Add(c) | Command::Replace(c) | Command::Delete(c) | Command::Get(c) | Command::Exec(c) => {
                c.cmd_id = id
            }
            Command::Atomic(c) | Command::Sequence(c) => c.cmd_id = id,
            Command::Unknown(_) => {}
        }
    }

    /// `NoResp`: the sender wants no Status for this command.
    pub fn no_resp(&self) -> bool {
        match self {
            Command::Alert(a) => a.no_resp,
            Command::Add(c) | Command::Replace(c) | Command::Delete(c) | Command::Get(c) | Command::Exec(c) => {
                c.no_resp
            }
            Command::Atomic(c) | Command::Sequence(c) => c.no_resp,
            Command::Status(_) | Command::Results(_) | Command::Unknown(_) => false,
        }
    }

    /// The item-carrying command inside, if this is one.
    pub fn items(&self) -> Option<&ItemCommand> {
        match self {
            Command::Add(c) | Command::Replace(c) | Command::Delete(c) | Command::Get(c) | Command::Exec(c) => Some(c),
            _ => None,
        }
    }

    pub fn items_mut(&mut self) -> Option<&mut ItemCommand> {
        match self {
            Command::Add(c) | Command::Replace(c) | Command::Delete(c) | Command::Get(c) | Command::Exec(c) => Some(c),
            _ => None,
        }
    }

    /// This command and every command nested in it, depth first.
    pub fn walk(&self) -> Vec<&Command> {
        let mut out = vec![self];
        if let Command::Atomic(c) | Command::Sequence(c) = self {
            for inner in &c.commands {
                out.extend(inner.walk());
            }
        }
        out
    }

    /// Encodes the command alone.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        encode_command(&mut out, self);
        out
    }
}

// ---------------------------------------------------------------- decoding

/// Decodes a SyncML message with the default [`Limits`].
pub fn decode(bytes: &[u8]) -> Result<SyncMl, DecodeError> {
    decode_with(bytes, Limits::default())
}

pub fn decode_with(bytes: &[u8], limits: Limits) -> Result<SyncMl, DecodeError> {
    let root = xml::parse(bytes, limits)?;
    if root.name != "SyncML" {
        return Err(DecodeError::NotSyncMl(root.name.chars().take(64).collect()));
    }
    let hdr = root.child("SyncHdr").ok_or(DecodeError::Missing { parent: "SyncML", element: "SyncHdr" })?;
    let body = root.child("SyncBody").ok_or(DecodeError::Missing { parent: "SyncML", element: "SyncBody" })?;
    Ok(SyncMl { hdr: decode_hdr(hdr)?, body: decode_body(body)? })
}

/// Decodes a list of commands written without a message around them (a queued payload, the
/// `raw` command's SyncML): `<Get>…</Get><Exec>…</Exec>`. `Final` and unknown elements are
/// refused here, as they cannot be sent on.
pub fn decode_commands(fragment: &str) -> Result<Vec<Command>, DecodeError> {
    let wrapped = format!("<SyncBody>{fragment}</SyncBody>");
    let root = xml::parse(wrapped.as_bytes(), Limits::default())?;
    let mut commands = Vec::new();
    for e in root.elements() {
        let c = decode_command(e)?;
        if let Command::Unknown(u) = &c {
            return Err(DecodeError::Invalid { element: "SyncBody", value: format!("<{}> is not a command", u.name) });
        }
        commands.push(c);
    }
    if root.children.iter().any(|n| matches!(n, Node::Text(t) if !t.trim().is_empty())) {
        return Err(DecodeError::Invalid { element: "SyncBody", value: "text between commands".into() });
    }
    Ok(commands)
}

fn trimmed(e: &Element) -> String {
    e.text().trim().to_owned()
}

fn required(parent: &Element, pname: &'static str, name: &'static str) -> Result<String, DecodeError> {
    parent.child(name).map(trimmed).ok_or(DecodeError::Missing { parent: pname, element: name })
}

fn loc_uri(parent: &Element, name: &'static str) -> Result<Option<String>, DecodeError> {
    match parent.child(name) {
        None => Ok(None),
        Some(e) => Ok(Some(required(e, name, "LocURI")?)),
    }
}

fn decode_hdr(h: &Element) -> Result<SyncHdr, DecodeError> {
    let msg_id = required(h, "SyncHdr", "MsgID")?;
    let msg_id = msg_id.parse::<u32>().map_err(|_| DecodeError::Invalid { element: "MsgID", value: msg_id })?;
    let session_id = required(h, "SyncHdr", "SessionID")?;
    if session_id.is_empty() || session_id.len() > 64 {
        return Err(DecodeError::Invalid { element: "SessionID", value: session_id.chars().take(80).collect() });
    }
    Ok(SyncHdr {
        ver_dtd: required(h, "SyncHdr", "VerDTD")?,
        ver_proto: required(h, "SyncHdr", "VerProto")?,
        session_id,
        msg_id,
        target: loc_uri(h, "Target")?.ok_or(DecodeError::Missing { parent: "SyncHdr", element: "Target" })?,
        source: loc_uri(h, "Source")?.ok_or(DecodeError::Missing { parent: "SyncHdr", element: "Source" })?,
        no_resp: h.child("NoResp").is_some(),
        meta: h.child("Meta").map(decode_meta),
    })
}

fn decode_body(b: &Element) -> Result<SyncBody, DecodeError> {
    let mut body = SyncBody::default();
    for e in b.elements() {
        if e.name == "Final" {
            body.final_ = true;
            continue;
        }
        body.commands.push(decode_command(e)?);
    }
    Ok(body)
}

fn decode_meta(m: &Element) -> Meta {
    Meta { fields: m.elements().map(|f| (f.name.clone(), trimmed(f))).collect() }
}

fn decode_item(i: &Element) -> Result<Item, DecodeError> {
    let data = i.child("Data").map(|d| if d.has_elements() { d.inner_xml() } else { d.text() });
    Ok(Item {
        target: loc_uri(i, "Target")?,
        source: loc_uri(i, "Source")?,
        meta: i.child("Meta").map(decode_meta),
        data,
        more_data: i.child("MoreData").is_some(),
    })
}

fn cmd_id(e: &Element, name: &'static str) -> Result<String, DecodeError> {
    let id = required(e, name, "CmdID")?;
    if id.is_empty() || id.len() > 32 {
        return Err(DecodeError::Invalid { element: "CmdID", value: id.chars().take(40).collect() });
    }
    Ok(id)
}

fn items(e: &Element) -> Result<Vec<Item>, DecodeError> {
    e.elements().filter(|c| c.name == "Item").map(decode_item).collect()
}

fn item_command(e: &Element, name: &'static str) -> Result<ItemCommand, DecodeError> {
    Ok(ItemCommand {
        cmd_id: cmd_id(e, name)?,
        no_resp: e.child("NoResp").is_some(),
        meta: e.child("Meta").map(decode_meta),
        correlator: e.child("Correlator").map(trimmed),
        items: items(e)?,
    })
}

fn container(e: &Element, name: &'static str) -> Result<Container, DecodeError> {
    let mut commands = Vec::new();
    for c in e.elements() {
        if matches!(c.name.as_str(), "CmdID" | "NoResp" | "Meta") {
            continue;
        }
        commands.push(decode_command(c)?);
    }
    Ok(Container {
        cmd_id: cmd_id(e, name)?,
        no_resp: e.child("NoResp").is_some(),
        meta: e.child("Meta").map(decode_meta),
        commands,
    })
}

fn code(e: &Element, element: &'static str) -> Result<u16, DecodeError> {
    let v = required(e, element, "Data")?;
    v.parse::<u16>().map_err(|_| DecodeError::Invalid { element, value: v.chars().take(40).collect() })
}

fn decode_command(e: &Element) -> Result<Command, DecodeError> {
    Ok(match e.name.as_str() {
        "Alert" => Command::Alert(Alert {
            cmd_id: cmd_id(e, "Alert")?,
            no_resp: e.child("NoResp").is_some(),
            code: AlertCode(code(e, "Alert")?),
            correlator: e.child("Correlator").map(trimmed),
            items: items(e)?,
        }),
        "Status" => Command::Status(Status {
            cmd_id: cmd_id(e, "Status")?,
            msg_ref: required(e, "Status", "MsgRef")?,
            cmd_ref: required(e, "Status", "CmdRef")?,
            cmd: required(e, "Status", "Cmd")?,
            target_ref: e.elements().filter(|c| c.name == "TargetRef").map(trimmed).collect(),
            source_ref: e.elements().filter(|c| c.name == "SourceRef").map(trimmed).collect(),
            code: StatusCode(code(e, "Status")?),
            items: items(e)?,
        }),
        "Results" => Command::Results(Results {
            cmd_id: cmd_id(e, "Results")?,
            msg_ref: e.child("MsgRef").map(trimmed),
            cmd_ref: required(e, "Results", "CmdRef")?,
            meta: e.child("Meta").map(decode_meta),
            target_ref: e.child("TargetRef").map(trimmed),
            source_ref: e.child("SourceRef").map(trimmed),
            items: items(e)?,
        }),
        "Add" => Command::Add(item_command(e, "Add")?),
        "Replace" => Command::Replace(item_command(e, "Replace")?),
        "Delete" => Command::Delete(item_command(e, "Delete")?),
        "Get" => Command::Get(item_command(e, "Get")?),
        "Exec" => Command::Exec(item_command(e, "Exec")?),
        "Atomic" => Command::Atomic(container(e, "Atomic")?),
        "Sequence" => Command::Sequence(container(e, "Sequence")?),
        _ => Command::Unknown(e.clone()),
    })
}

// ---------------------------------------------------------------- encoding

fn leaf(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    escape_into(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn loc(out: &mut String, name: &str, uri: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    leaf(out, "LocURI", uri);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn encode_meta(out: &mut String, m: &Meta) {
    out.push_str("<Meta>");
    for (name, value) in &m.fields {
        out.push('<');
        out.push_str(name);
        out.push_str(" xmlns=\"");
        out.push_str(METINF_NS);
        out.push_str("\">");
        escape_into(out, value);
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
    out.push_str("</Meta>");
}

/// Writes one `Item`.
pub fn encode_item(out: &mut String, i: &Item) {
    out.push_str("<Item>");
    if let Some(t) = &i.target {
        loc(out, "Target", t);
    }
    if let Some(s) = &i.source {
        loc(out, "Source", s);
    }
    if let Some(m) = &i.meta {
        encode_meta(out, m);
    }
    if let Some(d) = &i.data {
        leaf(out, "Data", d);
    }
    if i.more_data {
        out.push_str("<MoreData/>");
    }
    out.push_str("</Item>");
}

fn encode_item_command(out: &mut String, name: &str, c: &ItemCommand) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    leaf(out, "CmdID", &c.cmd_id);
    if c.no_resp {
        out.push_str("<NoResp/>");
    }
    if let Some(m) = &c.meta {
        encode_meta(out, m);
    }
    if let Some(cor) = &c.correlator {
        leaf(out, "Correlator", cor);
    }
    for i in &c.items {
        encode_item(out, i);
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn encode_command(out: &mut String, c: &Command) {
    match c {
        Command::Alert(a) => {
            out.push_str("<Alert>");
            leaf(out, "CmdID", &a.cmd_id);
            if a.no_resp {
                out.push_str("<NoResp/>");
            }
            leaf(out, "Data", &a.code.to_string());
            if let Some(cor) = &a.correlator {
                leaf(out, "Correlator", cor);
            }
            for i in &a.items {
                encode_item(out, i);
            }
            out.push_str("</Alert>");
        }
        Command::Status(s) => {
            out.push_str("<Status>");
            leaf(out, "CmdID", &s.cmd_id);
            leaf(out, "MsgRef", &s.msg_ref);
            leaf(out, "CmdRef", &s.cmd_ref);
            leaf(out, "Cmd", &s.cmd);
            for t in &s.target_ref {
                leaf(out, "TargetRef", t);
            }
            for t in &s.source_ref {
                leaf(out, "SourceRef", t);
            }
            leaf(out, "Data", &s.code.to_string());
            for i in &s.items {
                encode_item(out, i);
            }
            out.push_str("</Status>");
        }
        Command::Results(r) => {
            out.push_str("<Results>");
            leaf(out, "CmdID", &r.cmd_id);
            if let Some(m) = &r.msg_ref {
                leaf(out, "MsgRef", m);
            }
            leaf(out, "CmdRef", &r.cmd_ref);
            if let Some(m) = &r.meta {
                encode_meta(out, m);
            }
            if let Some(t) = &r.target_ref {
                leaf(out, "TargetRef", t);
            }
            if let Some(t) = &r.source_ref {
                leaf(out, "SourceRef", t);
            }
            for i in &r.items {
                encode_item(out, i);
            }
            out.push_str("</Results>");
        }
        Command::Add(i) => encode_item_command(out, "Add", i),
        Command::Replace(i) => encode_item_command(out, "Replace", i),
        Command::Delete(i) => encode_item_command(out, "Delete", i),
        Command::Get(i) => encode_item_command(out, "Get", i),
        Command::Exec(i) => encode_item_command(out, "Exec", i),
        Command::Atomic(c) => encode_container(out, "Atomic", c),
        Command::Sequence(c) => encode_container(out, "Sequence", c),
        Command::Unknown(e) => out.push_str(&e.to_xml()),
    }
}

fn encode_container(out: &mut String, name: &str, c: &Container) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    leaf(out, "CmdID", &c.cmd_id);
    if c.no_resp {
        out.push_str("<NoResp/>");
    }
    if let Some(m) = &c.meta {
        encode_meta(out, m);
    }
    for inner in &c.commands {
        encode_command(out, inner);
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn encode_hdr(out: &mut String, h: &SyncHdr) {
    out.push_str("<SyncHdr>");
    leaf(out, "VerDTD", &h.ver_dtd);
    leaf(out, "VerProto", &h.ver_proto);
    leaf(out, "SessionID", &h.session_id);
    leaf(out, "MsgID", &h.msg_id.to_string());
    loc(out, "Target", &h.target);
    loc(out, "Source", &h.source);
    if h.no_resp {
        out.push_str("<NoResp/>");
    }
    if let Some(m) = &h.meta {
        encode_meta(out, m);
    }
    out.push_str("</SyncHdr>");
}

/// The part of an encoded message before the first command.
pub(crate) fn encode_prefix(out: &mut String, h: &SyncHdr) {
    out.push_str("<SyncML xmlns=\"");
    out.push_str(SYNCML_NS);
    out.push_str("\">");
    encode_hdr(out, h);
    out.push_str("<SyncBody>");
}

/// The part of an encoded message after the last command.
fn encode_suffix(out: &mut String, final_: bool) {
    if final_ {
        out.push_str("<Final/>");
    }
    out.push_str("</SyncBody></SyncML>");
}

impl SyncMl {
    /// Compact XML, elements in DTD order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::new();
        encode_prefix(&mut out, &self.hdr);
        for c in &self.body.commands {
            encode_command(&mut out, c);
        }
        encode_suffix(&mut out, self.body.final_);
        out.into_bytes()
    }

    /// Every command, nested ones included, depth first.
    pub fn all_commands(&self) -> Vec<&Command> {
        self.body.commands.iter().flat_map(Command::walk).collect()
    }
}

/// Encodes commands without a message around them (see [`decode_commands`]).
pub fn encode_commands(commands: &[Command]) -> String {
    let mut out = String::new();
    for c in commands {
        encode_command(&mut out, c);
    }
    out
}
