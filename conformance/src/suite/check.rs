//! Reading bodies (plist, XML, JSON, text), paths into them, matchers, and decoding protocol
//! messages through the protocol crates.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mdm_windows::enroll::xml::{self, Element};
use serde_json::Value;

use super::format::{BodyFormat, Matcher, MessageKind, Rule};

/// A body read for path lookups.
#[derive(Debug, Clone)]
pub enum Body {
    /// Plists and JSON as a JSON tree (plist data as base64, dates as RFC 3339 text).
    Tree(Value),
    Xml(Element),
    Text(String),
}

pub fn read_body(format: BodyFormat, bytes: &[u8]) -> Result<Body, String> {
    match format {
        BodyFormat::Plist => {
            let v: plist::Value = plist::from_bytes(bytes).map_err(|e| format!("not a plist: {e}"))?;
            Ok(Body::Tree(plist_to_json(&v)))
        }
        BodyFormat::Json => serde_json::from_slice(bytes).map(Body::Tree).map_err(|e| format!("not JSON: {e}")),
        BodyFormat::Xml => xml::parse(bytes).map(Body::Xml).map_err(|e| format!("not XML: {e}")),
        BodyFormat::Text => Ok(Body::Text(String::from_utf8_lossy(bytes).into_owned())),
    }
}

pub fn plist_to_json(v: &plist::Value) -> Value {
    match v {
        plist::Value::Dictionary(d) => Value::Object(d.iter().map(|(k, v)| (k.clone(), plist_to_json(v))).collect()),
        plist::Value::Array(a) => Value::Array(a.iter().map(plist_to_json).collect()),
        plist::Value::Boolean(b) => Value::Bool(*b),
        plist::Value::Data(d) => Value::String(STANDARD.encode(d)),
        plist::Value::Date(d) => Value::String(d.to_xml_format()),
        plist::Value::Real(r) => serde_json::Number::from_f64(*r).map(Value::Number).unwrap_or(Value::Null),
        plist::Value::Integer(i) => {
            i.as_signed().map(Value::from).or_else(|| i.as_unsigned().map(Value::from)).unwrap_or(Value::Null)
        }
        plist::Value::String(s) => Value::String(s.clone()),
        plist::Value::Uid(u) => Value::from(u.get()),
        _ => Value::Null,
    }
}

/// The value at `path`:
/// - trees: `/`-separated keys and array indexes (`Command/RequestType`, `/message/data` as a JSON
///   pointer; the leading `/` is optional);
/// - XML: local names from the root (`Envelope/Body/Fault/Code/Value`), `Name[2]` (1-based),
///   `Name[Child=text]` (the first `Name` whose `Child` has that text), `//Name` (first descendant),
///   `@attr` last; the value is the trimmed text;
/// - text: `.` is the whole body.
pub fn lookup(body: &Body, path: &str) -> Option<Value> {
    match body {
        Body::Tree(v) => {
            let mut cur = v;
            for seg in path.trim_start_matches('/').split('/').filter(|s| !s.is_empty()) {
                let seg = seg.replace("~1", "/").replace("~0", "~");
                cur = match cur {
                    Value::Object(m) => m.get(&seg)?,
                    Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(cur.clone())
        }
        Body::Text(t) => (path == ".").then(|| Value::String(t.clone())),
        Body::Xml(root) => xml_lookup(root, path).map(Value::String),
    }
}

fn xml_lookup(root: &Element, path: &str) -> Option<String> {
    let mut cur: &Element;
    let mut segs: Vec<&str> = Vec::new();
    if let Some(rest) = path.strip_prefix("//") {
        let mut it = rest.splitn(2, '/');
        let (name, pred) = split_pred(it.next()?);
        let mut found = Vec::new();
        root.descendants_local(name, &mut found);
        if root.name == name {
            found.insert(0, root);
        }
        cur = pick(found, pred)?;
        if let Some(r) = it.next() {
            segs.extend(r.split('/'));
        }
    } else {
        let mut it = path.trim_start_matches('/').split('/');
        let (first, _) = split_pred(it.next()?);
        if root.name != first {
            return None;
        }
        cur = root;
        segs.extend(it);
    }
    for seg in segs {
        if let Some(attr) = seg.strip_prefix('@') {
            return cur.attr(attr).map(str::to_owned);
        }
        let (name, pred) = split_pred(seg);
        cur = pick(cur.children_local(name).collect(), pred)?;
    }
    Some(cur.text_trimmed().to_owned())
}

fn split_pred(seg: &str) -> (&str, Option<&str>) {
    match seg.split_once('[') {
        Some((n, p)) => (n, p.strip_suffix(']')),
        None => (seg, None),
    }
}

fn pick<'a>(found: Vec<&'a Element>, pred: Option<&str>) -> Option<&'a Element> {
    match pred {
        None => found.into_iter().next(),
        Some(p) => match p.split_once('=') {
            Some((child, text)) => {
                found.into_iter().find(|e| e.children_local(child).any(|c| c.text_trimmed() == text))
            }
            None => found.into_iter().nth(p.parse::<usize>().ok()?.checked_sub(1)?),
        },
    }
}

/// The value as text (strings as they are, everything else as JSON).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `Ok` when `value` (None: absent) satisfies `m`; else why not.
pub fn matches(m: &Matcher, value: Option<&Value>) -> Result<(), String> {
    match m {
        Matcher::Literal(want) => match value {
            None => Err(format!("absent, expected {want}")),
            Some(v) if v == want || text(v) == text(want) => Ok(()),
            Some(v) => Err(format!("{v} is not {want}")),
        },
        Matcher::Rule(r) => rule(r, value),
    }
}

fn rule(r: &Rule, value: Option<&Value>) -> Result<(), String> {
    if let Some(p) = r.present {
        match (p, value) {
            (true, None) => return Err("absent".into()),
            (false, Some(v)) => return Err(format!("present ({v})")),
            _ => {}
        }
    }
    let needs_value = r.any.is_some() || r.regex.is_some() || r.contains.is_some() || r.one_of.is_some();
    let Some(v) = value else {
        return if needs_value { Err("absent".into()) } else { Ok(()) };
    };
    let t = text(v);
    if let Some(kind) = &r.any {
        let ok = match kind.as_str() {
            "uuid" => uuid::Uuid::parse_str(&t).is_ok(),
            "string" => v.is_string() && !t.is_empty(),
            "number" => v.is_number() || t.parse::<f64>().is_ok(),
            "integer" => v.is_i64() || v.is_u64() || t.parse::<i64>().is_ok(),
            "bool" => v.is_boolean() || t == "true" || t == "false",
            "base64" => !t.is_empty() && STANDARD.decode(t.split_whitespace().collect::<String>()).is_ok(),
            "date" => time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok(),
            "certificate" => STANDARD
                .decode(t.split_whitespace().collect::<String>())
                .ok()
                .is_some_and(|der| mdm_certs::X509::from_der(&der).is_ok()),
            "array" => v.is_array(),
            "dict" => v.is_object(),
            other => return Err(format!("unknown rule any: {other}")),
        };
        if !ok {
            return Err(format!("{t:?} is not any {kind}"));
        }
    }
    if let Some(re) = &r.regex {
        let re = regex::Regex::new(re).map_err(|e| format!("bad regex: {e}"))?;
        if !re.is_match(&t) {
            return Err(format!("{t:?} does not match /{re}/"));
        }
    }
    if let Some(c) = &r.contains
        && !t.contains(c.as_str())
    {
        return Err(format!("{} does not contain {c:?}", shorten(&t)));
    }
    if let Some(list) = &r.one_of
        && !list.iter().any(|w| w == v || text(w) == t)
    {
        return Err(format!("{t:?} is not one of {list:?}"));
    }
    Ok(())
}

pub fn shorten(s: &str) -> String {
    if s.len() <= 160 {
        return s.to_owned();
    }
    let mut end = 160;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Decodes `bytes` as `kind` through the protocol crate; a one-line summary or the error.
pub fn decode(kind: MessageKind, bytes: &[u8]) -> Result<String, String> {
    use mdm_windows::enroll as e;
    let s = |x: &dyn std::fmt::Display| x.to_string();
    match kind {
        MessageKind::AppleCheckin => {
            mdm_apple::decode_checkin(bytes).map(|m| m.message_type().to_owned()).map_err(|x| s(&x))
        }
        MessageKind::AppleReport => {
            mdm_apple::decode_report(bytes).map(|r| r.status.as_str().to_owned()).map_err(|x| s(&x))
        }
        MessageKind::AppleCommand => mdm_apple::parse_command_plist(bytes)
            .map(|c| format!("{c:?}").chars().take(60).collect())
            .map_err(|x| s(&x)),
        MessageKind::Mde2Discover => e::DiscoverRequest::decode(bytes).map(|_| "Discover".into()).map_err(|x| s(&x)),
        MessageKind::Mde2DiscoverResponse => {
            e::DiscoverResponse::decode(bytes).map(|r| r.enrollment_service_url).map_err(|x| s(&x))
        }
        MessageKind::XcepGetPolicies => {
            e::GetPoliciesRequest::decode(bytes).map(|_| "GetPolicies".into()).map_err(|x| s(&x))
        }
        MessageKind::XcepGetPoliciesResponse => e::GetPoliciesResponse::decode(bytes)
            .map(|p| format!("minimal key length {}", p.minimal_key_length))
            .map_err(|x| s(&x)),
        MessageKind::WstepRequest => {
            e::RequestSecurityToken::decode(bytes).map(|_| "RequestSecurityToken".into()).map_err(|x| s(&x))
        }
        MessageKind::WstepResponse => e::RequestSecurityTokenResponse::decode(bytes)
            .map(|_| "RequestSecurityTokenResponse".into())
            .map_err(|x| s(&x)),
        MessageKind::SoapFault => match e::Fault::decode(bytes) {
            Ok(Some(f)) => Ok(format!("fault {}", f.subcode.as_str())),
            Ok(None) => Err("not a SOAP fault".into()),
            Err(x) => Err(s(&x)),
        },
        MessageKind::Syncml => {
            let m = mdm_windows::syncml::decode(bytes).map_err(|x| s(&x))?;
            let again = mdm_windows::syncml::decode(&m.encode()).map_err(|x| format!("re-encoded: {x}"))?;
            if again != m {
                return Err("decode(encode(message)) differs".into());
            }
            Ok(format!("SyncML session {} message {}", m.hdr.session_id, m.hdr.msg_id))
        }
        MessageKind::PubsubPush => {
            let m = mdm_android::PushMessage::decode(bytes).map_err(|x| s(&x))?;
            if m.data.is_none() {
                return Ok(format!("push {} (no data)", m.message_id));
            }
            let n = mdm_android::Notification::decode(&m).map_err(|x| s(&x))?;
            Ok(format!("push {} {}", m.message_id, n.notification_type().as_str()))
        }
        MessageKind::Json => serde_json::from_slice::<Value>(bytes).map(|_| "JSON".into()).map_err(|x| s(&x)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::format::Rule;

    #[test]
    fn xml_paths() {
        let doc = br#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault><s:Code><s:Subcode><s:Value>s:Authentication</s:Value></s:Subcode></s:Code></s:Fault></s:Body></s:Envelope>"#;
        let b = read_body(BodyFormat::Xml, doc).unwrap();
        assert_eq!(lookup(&b, "Envelope/Body/Fault/Code/Subcode/Value"), Some(Value::from("s:Authentication")));
        assert_eq!(lookup(&b, "//Subcode/Value"), Some(Value::from("s:Authentication")));
        assert_eq!(lookup(&b, "Envelope/Header"), None);
        let sync = br#"<SyncML xmlns="SYNCML:SYNCML1.2"><SyncBody><Status><CmdID>1</CmdID><Cmd>SyncHdr</Cmd><Data>200</Data></Status><Status><CmdID>2</CmdID><Cmd>Alert</Cmd><Data>406</Data></Status></SyncBody></SyncML>"#;
        let b = read_body(BodyFormat::Xml, sync).unwrap();
        assert_eq!(lookup(&b, "SyncML/SyncBody/Status[Cmd=Alert]/Data"), Some(Value::from("406")));
        assert_eq!(lookup(&b, "SyncML/SyncBody/Status[1]/Data"), Some(Value::from("200")));
    }

    #[test]
    fn rules() {
        let any = |k: &str| Matcher::Rule(Rule { any: Some(k.into()), ..Rule::default() });
        assert!(matches(&any("uuid"), Some(&Value::from("0b0c3a4e-4c4e-4b7a-9a37-2b1f0b8e6a10"))).is_ok());
        assert!(matches(&any("uuid"), Some(&Value::from("nope"))).is_err());
        assert!(matches(&any("uuid"), None).is_err());
        let absent = Matcher::Rule(Rule { present: Some(false), ..Rule::default() });
        assert!(matches(&absent, None).is_ok());
        assert!(matches(&absent, Some(&Value::from(1))).is_err());
        let re = Matcher::Rule(Rule { regex: Some("^4\\d\\d$".into()), ..Rule::default() });
        assert!(matches(&re, Some(&Value::from(404))).is_ok());
        assert!(matches(&re, Some(&Value::from(500))).is_err());
        assert!(matches(&Matcher::Literal(Value::from(200)), Some(&Value::from("200"))).is_ok());
    }

    #[test]
    fn plist_paths() {
        let p = br#"<?xml version="1.0"?><plist version="1.0"><dict><key>Command</key><dict><key>RequestType</key><string>DeviceInformation</string></dict><key>CommandUUID</key><string>x</string></dict></plist>"#;
        let b = read_body(BodyFormat::Plist, p).unwrap();
        assert_eq!(lookup(&b, "Command/RequestType"), Some(Value::from("DeviceInformation")));
        assert_eq!(lookup(&b, "/CommandUUID"), Some(Value::from("x")));
    }
}
