//! Running flows: over the wire against a gateway, or in process through the protocol crates.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mdm_certs::{PKey, Private, X509};
use serde_json::Value;

use super::check::{self, Body};
use super::format::{BodyFormat, Exchange, Expect, Listener, LoadedFlow, Setup, SkipList};
use super::report::{Outcome, Report, Verdict};

/// A gateway to replay against, and the credentials flows may need.
#[derive(Debug, Clone, Default)]
pub struct WireTarget {
    /// The device listener, e.g. `https://mdm.example.com:8443`.
    pub gateway: String,
    /// The backend API, e.g. `http://127.0.0.1:8080`.
    pub api: Option<String>,
    pub api_key: Option<String>,
    /// The roots the devices trust for the gateway (its `ca.pem`).
    pub ca_pem: Vec<u8>,
    /// The Windows OnPremise enrollment secret.
    pub enroll_secret: Option<String>,
    /// The Pub/Sub push `?token=`.
    pub pubsub_token: Option<String>,
}

/// A reply as the checks see it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// Replaces every `{{name}}` whose name is in `vars`; unknown names are left as they are.
pub fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) if vars.contains_key(after[..end].trim()) => {
                out.push_str(&vars[after[..end].trim()]);
                rest = &after[end + 2..];
            }
            _ => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A request body with `{{name}}` replaced, after `{{base64_file:NAME}}` became the base64 of that
/// file (beside `flow.json`, itself substituted): readable JSON for Pub/Sub `data`.
fn expand_body(flow: &LoadedFlow, raw: Vec<u8>, vars: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let Ok(mut text) = String::from_utf8(raw.clone()) else {
        return Ok(raw);
    };
    while let Some(start) = text.find("{{base64_file:") {
        let end = text[start..].find("}}").ok_or("unclosed {{base64_file:")? + start;
        let name = text[start + "{{base64_file:".len()..end].trim().to_owned();
        let path = flow.dir.join(&name);
        let content = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.replace_range(start..end + 2, &STANDARD.encode(substitute(&content, vars)));
    }
    Ok(substitute(&text, vars).into_bytes())
}

fn substitute_expect(expect: &Expect, vars: &BTreeMap<String, String>) -> Result<Expect, String> {
    fn walk(v: &mut Value, vars: &BTreeMap<String, String>) {
        match v {
            Value::String(s) => *s = substitute(s, vars),
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, vars)),
            Value::Object(m) => m.values_mut().for_each(|x| walk(x, vars)),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(expect).map_err(|e| e.to_string())?;
    walk(&mut v, vars);
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn base_vars(flow: &LoadedFlow) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let udid = uuid::Uuid::now_v7().to_string().to_uppercase();
    v.insert("udid".into(), udid.clone());
    v.insert("device_id".into(), format!("apple:{udid}"));
    v.insert("uuid".into(), uuid::Uuid::now_v7().to_string());
    v.insert("uuid2".into(), uuid::Uuid::now_v7().to_string());
    v.insert("message_id".into(), format!("{}", rand::random::<u64>() % 9_000_000_000_000 + 1_000_000_000_000));
    v.insert("now".into(), now_rfc3339());
    v.insert("checkin_path".into(), "/mdm".into());
    v.insert("server_path".into(), "/mdm".into());
    v.insert("topic".into(), "com.apple.mgmt.External.conformance".into());
    let native = format!("CONF{}", &uuid::Uuid::now_v7().simple().to_string()[20..].to_uppercase());
    v.insert("upn".into(), format!("{}@example.com", native.to_lowercase()));
    v.insert("windows_device_id".into(), native);
    v.insert("management_path".into(), "/ManagementServer/MDM.svc".into());
    v.insert("android_device".into(), format!("conf{}", &uuid::Uuid::now_v7().simple().to_string()[16..]));
    v.insert("message_id2".into(), format!("{}", rand::random::<u64>() % 9_000_000_000_000 + 1_000_000_000_000));
    v.insert("message_id3".into(), format!("{}", rand::random::<u64>() % 9_000_000_000_000 + 1_000_000_000_000));
    v.insert("session_id".into(), format!("{:X}", rand::random::<u16>() | 0x100));
    for (k, val) in &flow.flow.vars {
        v.insert(k.clone(), val.clone());
    }
    v
}

/// Checks a reply against `expect`, then applies the capture rules. Returns a short summary.
pub fn check_reply(
    expect: &Expect,
    exchange: &Exchange,
    reply: &Reply,
    vars: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    // `{{name}}` in expected values (a captured CommandUUID, the flow's device id).
    let expect = &substitute_expect(expect, vars)?;
    let body_text = || check::shorten(&String::from_utf8_lossy(&reply.body));
    if let Some(want) = &expect.status {
        let ok = match want {
            Value::Array(list) => list.iter().any(|w| w.as_u64() == Some(u64::from(reply.status))),
            w => w.as_u64() == Some(u64::from(reply.status)),
        };
        if !ok {
            return Err(format!("status {} (expected {want}); body: {}", reply.status, body_text()));
        }
    }
    if let Some(m) = &expect.content_type {
        let ct = reply.headers.get("content-type").cloned();
        let media = ct.as_deref().map(|c| c.split(';').next().unwrap_or("").trim().to_owned());
        let full = ct.map(Value::String);
        if check::matches(m, full.as_ref()).is_err() {
            check::matches(m, media.map(Value::String).as_ref()).map_err(|e| format!("content type: {e}"))?;
        }
    }
    for (name, m) in &expect.headers {
        let v = reply.headers.get(&name.to_ascii_lowercase()).cloned().map(Value::String);
        check::matches(m, v.as_ref()).map_err(|e| format!("header {name}: {e}"))?;
    }
    if let Some(empty) = expect.empty
        && empty != reply.body.is_empty()
    {
        return Err(if empty { format!("body not empty: {}", body_text()) } else { "empty body".into() });
    }
    let mut summary = format!("{}", reply.status);
    if let Some(kind) = expect.decodes_as {
        let s = check::decode(kind, &reply.body)
            .map_err(|e| format!("reply is not {kind:?}: {e}; body: {}", body_text()))?;
        summary = format!("{summary} {s}");
    }
    let needs_body = !expect.checks.is_empty() || exchange.capture.values().any(|c| c.path.is_some());
    let format = expect.body.or_else(|| infer_format(reply));
    let body: Option<Body> = match (format, needs_body) {
        (Some(f), true) => Some(check::read_body(f, &reply.body).map_err(|e| format!("{e}; body: {}", body_text()))?),
        (None, true) => return Err("cannot tell how to read the body: set expect.body".into()),
        _ => None,
    };
    for c in &expect.checks {
        let b = body.as_ref().ok_or("no body")?;
        let v = check::lookup(b, &c.path);
        check::matches(&c.is, v.as_ref()).map_err(|e| format!("{}: {e}", c.path))?;
    }
    for (name, rule) in &exchange.capture {
        let raw = if let Some(h) = &rule.header {
            reply.headers.get(&h.to_ascii_lowercase()).cloned()
        } else if let Some(p) = &rule.path {
            body.as_ref().and_then(|b| check::lookup(b, p)).map(|v| check::text(&v))
        } else {
            Some(String::from_utf8_lossy(&reply.body).into_owned())
        };
        let mut val = raw.ok_or_else(|| format!("capture {name}: nothing there"))?;
        if let Some(re) = &rule.regex {
            let re = regex::Regex::new(re).map_err(|e| format!("capture {name}: {e}"))?;
            val = re
                .captures(&val)
                .and_then(|c| c.get(1).or_else(|| c.get(0)))
                .map(|m| m.as_str().to_owned())
                .ok_or_else(|| format!("capture {name}: /{re}/ does not match"))?;
        }
        vars.insert(name.clone(), val);
    }
    Ok(summary)
}

/// The body format from the reply's content type (and, for XML, whether it is a plist).
fn infer_format(reply: &Reply) -> Option<BodyFormat> {
    let ct = reply.headers.get("content-type")?.to_ascii_lowercase();
    if ct.contains("json") {
        Some(BodyFormat::Json)
    } else if ct.contains("xml") {
        let head = String::from_utf8_lossy(&reply.body[..reply.body.len().min(256)]).into_owned();
        Some(if head.contains("<plist") || head.contains("<!DOCTYPE plist") {
            BodyFormat::Plist
        } else {
            BodyFormat::Xml
        })
    } else if ct.starts_with("text/") {
        Some(BodyFormat::Text)
    } else {
        None
    }
}

// ------------------------------------------------------------------ in process

/// Decodes every exchange's request (by `request.kind`) and checks every recorded reply, through
/// the protocol crates. No sockets.
pub fn run_in_process(flows: &[LoadedFlow], skips: &SkipList, report: &mut Report) {
    for flow in flows {
        let id = flow.id();
        if let Some(reason) = skips.reason(&id) {
            report.push(Outcome::new(&flow.section, &flow.name, "*", Verdict::Skipped(reason.to_owned())));
            continue;
        }
        let mut vars = base_vars(flow);
        vars.insert("gateway".into(), "https://gateway.invalid".into());
        for ex in &flow.flow.exchanges {
            let verdict = in_process_exchange(flow, ex, &mut vars);
            report.push(Outcome::new(&flow.section, &flow.name, &ex.name, verdict));
        }
    }
}

fn in_process_exchange(flow: &LoadedFlow, ex: &Exchange, vars: &mut BTreeMap<String, String>) -> Verdict {
    let mut done = Vec::new();
    if let Some(kind) = ex.request.kind {
        let raw = match flow.body(&ex.request.body, &ex.request.body_file) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => return Verdict::Failed(e),
        };
        if !vars.contains_key("csr") && String::from_utf8_lossy(&raw).contains("{{csr}}") {
            match new_csr(&vars["windows_device_id"]) {
                Ok(csr) => vars.insert("csr".into(), csr),
                Err(e) => return Verdict::Failed(format!("making a certificate request: {e}")),
            };
        }
        let body = match expand_body(flow, raw, vars) {
            Ok(b) => b,
            Err(e) => return Verdict::Failed(e),
        };
        match (check::decode(kind, &body), ex.request.decodes) {
            (Ok(s), true) => done.push(format!("request {s}")),
            (Err(e), false) => done.push(format!("request refused ({})", check::shorten(&e))),
            (Ok(s), false) => return Verdict::Failed(format!("request decodes ({s}) but is marked bad")),
            (Err(e), true) => return Verdict::Failed(format!("request is not {kind:?}: {e}")),
        }
    }
    if let Some(rec) = &ex.recorded {
        let body = match flow.body(&rec.body, &rec.body_file) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => return Verdict::Failed(e),
        };
        let mut headers = BTreeMap::new();
        if let Some(ct) = &rec.content_type {
            headers.insert("content-type".into(), ct.clone());
        }
        let reply = Reply { status: rec.status, headers, body };
        match check_reply(&ex.expect, ex, &reply, vars) {
            Ok(s) => done.push(format!("recorded reply {s}")),
            Err(e) => return Verdict::Failed(format!("recorded reply: {e}")),
        }
    }
    if done.is_empty() {
        return Verdict::Skipped(
            "in process: no request kind and no recorded reply (checked over the wire only)".into(),
        );
    }
    Verdict::Passed(done.join("; "))
}

// ------------------------------------------------------------------ over the wire

/// The device identity a flow's setup produced.
#[derive(Debug, Clone)]
struct DeviceIdentity {
    key: PKey<Private>,
    cert: X509,
    /// Apple: the profile asked for `Mdm-Signature` (else the TLS client certificate).
    signs: bool,
}

struct WireFlow<'a> {
    target: &'a WireTarget,
    plain: reqwest::Client,
    api: reqwest::Client,
    identity: Option<DeviceIdentity>,
    tls: Option<reqwest::Client>,
    stranger: Option<(PKey<Private>, X509)>,
}

fn https_client(ca_pem: &[u8], identity: Option<(&PKey<Private>, &X509)>) -> Result<reqwest::Client, String> {
    let mut b =
        reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).timeout(Duration::from_secs(30));
    for cert in X509::stack_from_pem(ca_pem).map_err(|e| format!("CA: {e}"))? {
        let pem = cert.to_pem().map_err(|e| e.to_string())?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?);
    }
    if let Some((key, cert)) = identity {
        let mut pem = cert.to_pem().map_err(|e| e.to_string())?;
        pem.extend(key.private_key_to_pem_pkcs8().map_err(|e| e.to_string())?);
        b = b.identity(reqwest::Identity::from_pem(&pem).map_err(|e| e.to_string())?);
    }
    b.build().map_err(|e| e.to_string())
}

fn path_of(url: &str) -> String {
    reqwest::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_else(|_| url.to_owned())
}

/// A certificate-signing request (PKCS#10, DER, base64) for a new RSA key, as MS-WSTEP carries.
fn new_csr(common_name: &str) -> Result<String, String> {
    use openssl::hash::MessageDigest;
    use openssl::x509::{X509NameBuilder, X509ReqBuilder};
    let key = mdm_certs::devpki::generate_rsa_key(2048).map_err(|e| e.to_string())?;
    let mut name = X509NameBuilder::new().map_err(|e| e.to_string())?;
    name.append_entry_by_text("CN", common_name).map_err(|e| e.to_string())?;
    let mut req = X509ReqBuilder::new().map_err(|e| e.to_string())?;
    req.set_subject_name(&name.build()).map_err(|e| e.to_string())?;
    req.set_pubkey(&key).map_err(|e| e.to_string())?;
    req.sign(&key, MessageDigest::sha256()).map_err(|e| e.to_string())?;
    Ok(STANDARD.encode(req.build().to_der().map_err(|e| e.to_string())?))
}

impl<'a> WireFlow<'a> {
    async fn setup(
        target: &'a WireTarget,
        flow: &LoadedFlow,
        vars: &mut BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let plain = https_client(&target.ca_pem, None)?;
        let api = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string())?;
        let mut w = WireFlow { target, plain, api, identity: None, tls: None, stranger: None };
        if let Some(s) = &target.enroll_secret {
            vars.insert("enroll_secret".into(), s.clone());
        }
        if let Some(t) = &target.pubsub_token {
            vars.insert("pubsub_token".into(), t.clone());
        }
        vars.insert("gateway".into(), target.gateway.trim_end_matches('/').to_owned());
        match flow.flow.setup {
            Setup::None => {}
            Setup::AppleIdentity => {
                let enroller = crate::apple::Enroller::new(&target.gateway, &target.ca_pem)
                    .map_err(|e| format!("setup apple-identity: {e}"))?;
                let udid = vars["udid"].clone();
                let device =
                    enroller.identity_device(&udid, None).await.map_err(|e| format!("setup apple-identity: {e}"))?;
                vars.insert("checkin_path".into(), path_of(&device.check_in_url));
                vars.insert("server_path".into(), path_of(&device.server_url));
                vars.insert("topic".into(), device.topic.clone());
                let signs = device.mode == crate::apple::IdentityMode::SignMessages;
                w.identity = Some(DeviceIdentity { key: device.key.clone(), cert: device.cert.clone(), signs });
            }
            Setup::WindowsEnrolled => {
                let secret = target.enroll_secret.clone().ok_or("setup windows-enrolled needs the enroll secret")?;
                let config = crate::windows::WindowsEnrollerConfig::on_premise(
                    &vars["windows_device_id"],
                    &vars["upn"],
                    &secret,
                );
                let enroller = crate::windows::WindowsEnroller::new(config, &target.gateway, &target.ca_pem)
                    .map_err(|e| format!("setup windows-enrolled: {e}"))?;
                let id = enroller.enroll().await.map_err(|e| format!("setup windows-enrolled: {e}"))?;
                vars.insert("windows_device_id".into(), id.device_id.clone());
                vars.insert("device_id".into(), id.gateway_device_id());
                vars.insert("management_path".into(), path_of(&id.management_url));
                w.identity = Some(DeviceIdentity { key: id.key.clone(), cert: id.cert.clone(), signs: false });
            }
        }
        if let Some(id) = &w.identity {
            w.tls = Some(https_client(&target.ca_pem, Some((&id.key, &id.cert)))?);
        }
        Ok(w)
    }

    fn stranger(&mut self) -> Result<(PKey<Private>, X509), String> {
        if self.stranger.is_none() {
            let e = |e: mdm_certs::devpki::DevPkiError| e.to_string();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let ca_key = mdm_certs::devpki::generate_key().map_err(e)?;
            let ca_serial = mdm_certs::devpki::serial_from_random(rand::random());
            let ca = mdm_certs::devpki::create_ca(&ca_key, "Conformance stranger CA", now, 1, &ca_serial).map_err(e)?;
            let key = mdm_certs::devpki::generate_key().map_err(e)?;
            let serial = mdm_certs::devpki::serial_from_random(rand::random());
            let cert = mdm_certs::devpki::issue_device_certificate(
                &ca,
                &ca_key,
                &key,
                "stranger",
                now - 3600,
                now + 86_400,
                &serial,
            )
            .map_err(e)?;
            self.stranger = Some((key, cert));
        }
        self.stranger.clone().ok_or_else(|| "no stranger".into())
    }

    async fn exchange(
        &mut self,
        flow: &LoadedFlow,
        ex: &Exchange,
        vars: &mut BTreeMap<String, String>,
    ) -> Result<String, String> {
        if !vars.contains_key("csr") {
            let raw = serde_json::to_string(&ex.request).unwrap_or_default();
            let file_has = match &ex.request.body_file {
                Some(f) => std::fs::read_to_string(flow.dir.join(f)).unwrap_or_default().contains("{{csr}}"),
                None => false,
            };
            if raw.contains("{{csr}}") || file_has {
                vars.insert("csr".into(), new_csr(&format!("conformance-{}", vars["uuid"]))?);
            }
        }
        let path = substitute(&ex.request.path, vars);
        let body = expand_body(flow, flow.body(&ex.request.body, &ex.request.body_file)?.unwrap_or_default(), vars)?;
        let (base, mut client) = match ex.to {
            Listener::Device => (self.target.gateway.trim_end_matches('/').to_owned(), self.plain.clone()),
            Listener::Api => (
                self.target.api.clone().ok_or("an API exchange needs --api")?.trim_end_matches('/').to_owned(),
                self.api.clone(),
            ),
        };
        let (kind, arg) = match ex.identity.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (ex.identity.as_str(), None),
        };
        let mut url = format!("{base}{path}");
        let mut extra: Vec<(String, String)> = Vec::new();
        let identity = || self.identity.clone().ok_or_else(|| format!("identity {kind} needs a setup"));
        match kind {
            "none" => {}
            "device" => {
                let id = identity()?;
                if id.signs {
                    extra.push((
                        "Mdm-Signature".into(),
                        mdm_certs::sign_detached(&id.cert, &id.key, &body).map_err(|e| e.to_string())?,
                    ));
                } else {
                    client = self.tls.clone().ok_or("no TLS identity")?;
                }
            }
            "tls-client-cert" => client = self.tls.clone().ok_or("identity tls-client-cert needs a setup")?,
            "mdm-signature" => {
                let sig = match arg {
                    None => {
                        let id = identity()?;
                        mdm_certs::sign_detached(&id.cert, &id.key, &body).map_err(|e| e.to_string())?
                    }
                    Some("stranger") => {
                        let (k, c) = self.stranger()?;
                        mdm_certs::sign_detached(&c, &k, &body).map_err(|e| e.to_string())?
                    }
                    Some("garbage") => STANDARD.encode("not a signature"),
                    Some(other) => return Err(format!("unknown test key {other:?}")),
                };
                extra.push(("Mdm-Signature".into(), sig));
            }
            "pubsub-token" => {
                let token = match arg {
                    Some(t) => t.to_owned(),
                    None => self.target.pubsub_token.clone().ok_or("identity pubsub-token needs --pubsub-token")?,
                };
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!(
                    "{url}{sep}token={}",
                    percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC)
                );
            }
            "api-key" => {
                let key = match arg {
                    Some(k) => k.to_owned(),
                    None => self.target.api_key.clone().ok_or("identity api-key needs --api-key")?,
                };
                extra.push(("Authorization".into(), format!("Bearer {key}")));
            }
            other => return Err(format!("unknown identity {other:?}")),
        }
        let method = reqwest::Method::from_bytes(ex.request.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = client.request(method, &url);
        for (k, v) in &ex.request.headers {
            req = req.header(k.as_str(), substitute(v, vars));
        }
        for (k, v) in extra {
            req = req.header(k, v);
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| format!("{} {url}: {e}", ex.request.method))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = resp.bytes().await.map_err(|e| e.to_string())?.to_vec();
        check_reply(&ex.expect, ex, &Reply { status, headers, body }, vars)
    }
}

/// Replays every flow against `target`, in order, each exchange after the previous one.
pub async fn run_wire(flows: &[LoadedFlow], target: &WireTarget, skips: &SkipList, report: &mut Report) {
    for flow in flows {
        if let Some(reason) = skips.reason(&flow.id()) {
            report.push(Outcome::new(&flow.section, &flow.name, "*", Verdict::Skipped(reason.to_owned())));
            continue;
        }
        let mut vars = base_vars(flow);
        let mut w = match WireFlow::setup(target, flow, &mut vars).await {
            Ok(w) => w,
            Err(e) => {
                report.push(Outcome::new(&flow.section, &flow.name, "setup", Verdict::Failed(e)));
                continue;
            }
        };
        let mut broken = false;
        for ex in &flow.flow.exchanges {
            let verdict = if broken {
                Verdict::Failed("not run: an earlier exchange of the flow failed".into())
            } else {
                match w.exchange(flow, ex, &mut vars).await {
                    Ok(s) => Verdict::Passed(s),
                    Err(e) => {
                        broken = true;
                        Verdict::Failed(e)
                    }
                }
            };
            report.push(Outcome::new(&flow.section, &flow.name, &ex.name, verdict));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_leaves_unknown_names() {
        let mut v = BTreeMap::new();
        v.insert("a".to_owned(), "1".to_owned());
        assert_eq!(substitute("x{{a}}y{{ b }}z{{", &v), "x1y{{ b }}z{{");
        assert_eq!(substitute("{{ a }}", &v), "1");
    }
}
