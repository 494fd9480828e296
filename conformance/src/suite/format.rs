//! The transcript format (`flow.json`), as documented in `docs/conformance.md`: one directory per
//! flow under `<root>/<spec-section>/<flow>/`, a `flow.json` listing exchanges, body files beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One flow: what to prepare, then the exchanges in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub description: String,
    /// The spec and its section, e.g. "Apple MDM: check-in protocol".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    #[serde(default)]
    pub setup: Setup,
    /// Fixed values for `{{name}}` substitution (the runner adds its own, see `docs/conformance.md`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    pub exchanges: Vec<Exchange>,
}

/// What the runner prepares before the first exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    #[default]
    None,
    /// An Apple device identity obtained the real way (profile, SCEP); it has not checked in yet.
    AppleIdentity,
    /// A Windows device enrolled through MS-MDE2/MS-WSTEP; its certificate is the TLS identity.
    WindowsEnrolled,
}

/// Which listener an exchange goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Listener {
    #[default]
    Device,
    Api,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub name: String,
    #[serde(default)]
    pub to: Listener,
    pub request: Request,
    /// `none`, `device`, `tls-client-cert`, `mdm-signature`, `mdm-signature:<test key>`,
    /// `pubsub-token`, `pubsub-token:<literal>`, `api-key`, `api-key:<literal>`.
    #[serde(default = "none_identity")]
    pub identity: String,
    #[serde(default)]
    pub expect: Expect,
    /// Values saved from the reply, for `{{name}}` in later exchanges.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture: BTreeMap<String, CaptureRule>,
    /// The reply as recorded (capture mode), for in-process checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Recorded>,
}

fn none_identity() -> String {
    "none".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<String>,
    /// The protocol message the body is; in-process mode decodes it through the protocol crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MessageKind>,
    /// Whether that decode must succeed (default) or fail (deliberately bad input).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub decodes: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A recorded reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<String>,
}

/// What the reply must satisfy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// One status or a list of accepted ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<Matcher>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Matcher>,
    /// `true`: the body must be empty; `false`: it must not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty: Option<bool>,
    /// How to read the body for `checks` and `capture`: plist, xml, json, text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyFormat>,
    /// The protocol message the reply must decode as (through the protocol crate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decodes_as: Option<MessageKind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyFormat {
    Plist,
    Xml,
    Json,
    Text,
}

/// A path into the decoded body and the rule its value must satisfy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub path: String,
    pub is: Matcher,
}

/// Saves a value: from `path` in the body (read as `expect.body`), or from a `header`; `regex`
/// (one capture group) narrows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A literal (equal, compared as text when types differ) or a rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Matcher {
    Rule(Rule),
    Literal(Value),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// uuid, string, number, integer, bool, base64, date, certificate, array, dict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
}

/// Protocol messages the suite decodes through the protocol crates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageKind {
    AppleCheckin,
    AppleReport,
    AppleCommand,
    Mde2Discover,
    Mde2DiscoverResponse,
    XcepGetPolicies,
    XcepGetPoliciesResponse,
    WstepRequest,
    WstepResponse,
    SoapFault,
    Syncml,
    PubsubPush,
    Json,
}

/// A loaded flow and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedFlow {
    /// `<spec-section>` (the path between the root and the flow directory, `/`-separated).
    pub section: String,
    /// The flow directory's name.
    pub name: String,
    pub dir: PathBuf,
    pub flow: Flow,
}

impl LoadedFlow {
    /// `<section>/<flow>`: what skip lists and reports name.
    pub fn id(&self) -> String {
        format!("{}/{}", self.section, self.name)
    }

    /// The bytes of a body given inline or as a file beside `flow.json`.
    pub fn body(&self, inline: &Option<String>, file: &Option<String>) -> Result<Option<Vec<u8>>, String> {
        match (inline, file) {
            (Some(b), None) => Ok(Some(b.clone().into_bytes())),
            (None, Some(f)) => {
                std::fs::read(self.dir.join(f)).map(Some).map_err(|e| format!("{}: {e}", self.dir.join(f).display()))
            }
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err("both body and body_file".into()),
        }
    }
}

/// Every `flow.json` under `root` (depth-first, sorted), with its section.
pub fn load_flows(root: &Path) -> Result<Vec<LoadedFlow>, String> {
    let mut dirs = Vec::new();
    collect(root, &mut dirs).map_err(|e| format!("{}: {e}", root.display()))?;
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let file = dir.join("flow.json");
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let flow: Flow = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let rel = dir.strip_prefix(root).unwrap_or(&dir);
        let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        let (name, section) = match parts.split_last() {
            Some((n, rest)) if !rest.is_empty() => (n.clone(), rest.join("/")),
            Some((n, _)) => (n.clone(), root.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()),
            None => (root.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), String::new()),
        };
        out.push(LoadedFlow { section, name, dir, flow });
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if dir.join("flow.json").is_file() {
        out.push(dir.to_path_buf());
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        }
    }
    Ok(())
}

/// The skip list (`skip.toml`): `[[skip]] id = "<section>/<flow>" or a capture path (a trailing
/// `/` or `*` matches a prefix), reason = "..."`. An entry without a reason is an error.
#[derive(Debug, Clone, Default)]
pub struct SkipList {
    pub entries: Vec<SkipEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipEntry {
    pub id: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkipFile {
    #[serde(default)]
    skip: Vec<SkipEntry>,
}

impl SkipList {
    pub fn parse(text: &str) -> Result<SkipList, String> {
        let f: SkipFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for e in &f.skip {
            if e.reason.as_deref().map(str::trim).unwrap_or("").is_empty() {
                return Err(format!("skip entry {:?} has no reason", e.id));
            }
        }
        Ok(SkipList { entries: f.skip })
    }

    pub fn load(path: &Path) -> Result<SkipList, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The reason `id` is skipped, if it is.
    pub fn reason(&self, id: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| match e.id.strip_suffix('*') {
                Some(prefix) => id.starts_with(prefix),
                None if e.id.ends_with('/') => id.starts_with(&e.id),
                None => id == e.id,
            })
            .and_then(|e| e.reason.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_entries_need_a_reason() {
        assert!(SkipList::parse("[[skip]]\nid = \"a/b\"\n").unwrap_err().contains("no reason"));
        assert!(SkipList::parse("[[skip]]\nid = \"a/b\"\nreason = \"  \"\n").is_err());
        let s = SkipList::parse("[[skip]]\nid = \"a/\"\nreason = \"schemas\"\n[[skip]]\nid = \"x\"\nreason = \"r\"")
            .unwrap();
        assert_eq!(s.reason("a/b/c"), Some("schemas"));
        assert_eq!(s.reason("x"), Some("r"));
        assert_eq!(s.reason("xy"), None);
    }

    #[test]
    fn matchers_parse_as_rules_or_literals() {
        let m: Matcher = serde_json::from_str(r#"{"any": "uuid"}"#).unwrap();
        assert!(matches!(m, Matcher::Rule(Rule { any: Some(_), .. })));
        let m: Matcher = serde_json::from_str(r#"200"#).unwrap();
        assert!(matches!(m, Matcher::Literal(_)));
    }
}
