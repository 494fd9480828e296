//! Capture mode: the emulators' traffic written as transcripts (`flow.json` plus body files), so
//! new vectors come from running them. A [`Recorder`] is one flow directory; every exchange is
//! appended and `flow.json` rewritten, so a crash loses nothing already sent.
//!
//! Emulators take one when `MDM_CAPTURE_DIR` is set ([`Recorder::from_env`]): flows land in
//! `$MDM_CAPTURE_DIR/<section>/<flow>/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::format::{BodyFormat, Exchange, Expect, Flow, Matcher, MessageKind, Recorded, Request, Setup};

#[derive(Debug)]
struct State {
    flow: Flow,
    n: usize,
    /// (value, replacement) applied to recorded paths and requests (longest value first).
    templates: Vec<(String, String)>,
}

/// One flow being recorded. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Recorder {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
}

/// What was sent and answered, as the emulator saw it.
#[derive(Debug, Clone)]
pub struct Traffic<'a> {
    pub name: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub identity: &'a str,
    pub body: &'a [u8],
    pub kind: Option<MessageKind>,
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub reply: &'a [u8],
    pub reply_kind: Option<MessageKind>,
    /// Values to save from the reply (`name`, path in the reply body, the value seen): recorded
    /// as capture rules, and the value becomes `{{name}}` in later requests.
    pub captures: Vec<(String, String, String)>,
}

impl Recorder {
    /// A recorder writing `<root>/<section>/<flow>/`.
    pub fn new(root: impl Into<PathBuf>, section: &str, flow: &str, description: &str, setup: Setup) -> Recorder {
        let dir = root.into().join(section).join(flow);
        let flow = Flow {
            description: description.to_owned(),
            spec: None,
            setup,
            vars: BTreeMap::new(),
            exchanges: Vec::new(),
        };
        Recorder { dir, state: Arc::new(Mutex::new(State { flow, n: 0, templates: Vec::new() })) }
    }

    /// From now on `value` is written as `replacement` (e.g. `{{udid}}`) in recorded paths and
    /// request bodies (the device's UDID, an enrollment secret), so the transcript replays with
    /// the runner's values and keeps no secret.
    pub fn template(&self, value: &str, replacement: &str) {
        if value.is_empty() {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.templates.push((value.to_owned(), replacement.to_owned()));
        st.templates.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
    }

    /// A recorder under `$MDM_CAPTURE_DIR`, when it is set.
    pub fn from_env(section: &str, flow: &str, description: &str, setup: Setup) -> Option<Recorder> {
        let root = std::env::var_os("MDM_CAPTURE_DIR")?;
        Some(Recorder::new(PathBuf::from(root), section, flow, description, setup))
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Appends one exchange (bodies as files beside `flow.json`) and rewrites `flow.json`. The
    /// expectation recorded is the status, the content type and (when known) the message kind of
    /// the reply; edit it into rules before using the transcript as a vector.
    pub fn record(&self, t: &Traffic<'_>) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.n += 1;
        let n = st.n;
        std::fs::create_dir_all(&self.dir)?;
        let ext = |kind: Option<MessageKind>, ct: Option<&str>| match (kind, ct.unwrap_or("")) {
            (Some(MessageKind::AppleCheckin | MessageKind::AppleReport | MessageKind::AppleCommand), _) => "plist",
            (Some(MessageKind::PubsubPush | MessageKind::Json), _) => "json",
            (Some(_), _) => "xml",
            (None, c) if c.contains("json") => "json",
            (None, c) if c.contains("xml") => "xml",
            _ => "bin",
        };
        let templated = |bytes: &[u8]| -> Vec<u8> {
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    let mut text = text.to_owned();
                    for (value, replacement) in &st.templates {
                        text = text.replace(value.as_str(), replacement);
                    }
                    text.into_bytes()
                }
                Err(_) => bytes.to_vec(),
            }
        };
        let path = String::from_utf8(templated(t.path.as_bytes())).unwrap_or_else(|_| t.path.to_owned());
        let body_file = if t.body.is_empty() {
            None
        } else {
            let f = format!("{n:02}-request.{}", ext(t.kind, None));
            std::fs::write(self.dir.join(&f), templated(t.body))?;
            Some(f)
        };
        let reply_file = if t.reply.is_empty() {
            None
        } else {
            let f = format!("{n:02}-reply.{}", ext(t.reply_kind, t.content_type));
            std::fs::write(self.dir.join(&f), t.reply)?;
            Some(f)
        };
        let body_format = match t.reply_kind {
            Some(MessageKind::AppleCommand) => Some(BodyFormat::Plist),
            Some(MessageKind::Syncml) => Some(BodyFormat::Xml),
            _ => None,
        };
        let exchange = Exchange {
            name: format!("{n:02} {}", t.name),
            to: Default::default(),
            request: Request {
                method: t.method.to_owned(),
                path,
                headers: t.headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                body: None,
                body_file,
                kind: t.kind,
                decodes: true,
            },
            identity: t.identity.to_owned(),
            expect: Expect {
                status: Some(t.status.into()),
                content_type: t
                    .content_type
                    .map(|c| Matcher::Literal(c.split(';').next().unwrap_or("").trim().to_owned().into())),
                empty: t.reply.is_empty().then_some(true),
                decodes_as: if t.reply.is_empty() { None } else { t.reply_kind },
                body: body_format,
                ..Expect::default()
            },
            capture: t
                .captures
                .iter()
                .map(|(name, path, _)| {
                    (name.clone(), super::format::CaptureRule { path: Some(path.clone()), header: None, regex: None })
                })
                .collect(),
            recorded: Some(Recorded {
                status: t.status,
                content_type: t.content_type.map(str::to_owned),
                body: None,
                body_file: reply_file,
            }),
        };
        st.flow.exchanges.push(exchange);
        for (name, _, value) in &t.captures {
            if !value.is_empty() {
                st.templates.push((value.clone(), format!("{{{{{name}}}}}")));
            }
        }
        st.templates.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        let json = serde_json::to_vec_pretty(&st.flow).map_err(std::io::Error::other)?;
        std::fs::write(self.dir.join("flow.json"), json)
    }
}
