//! Loading test vectors: the crate's own (tests/vectors) and the shared Apple material
//! (`MDM_VECTORS`, default `../../../shared/vectors` from the crate), which may be absent.
#![allow(dead_code)]

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value as Json};

pub(crate) fn own_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors").join(rel)
}

pub(crate) fn own(rel: &str) -> Vec<u8> {
    let p = own_path(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub(crate) fn own_json(rel: &str) -> Json {
    serde_json::from_slice(&own(rel)).unwrap_or_else(|e| panic!("parsing {rel}: {e}"))
}

/// The shared vectors directory, or `None` (with a message) when it is not there.
pub(crate) fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("MDM_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"));
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipping: shared vectors not found at {} (set MDM_VECTORS)", dir.display());
        None
    }
}

pub(crate) fn shared(rel: &str) -> Option<Vec<u8>> {
    let p = shared_dir()?.join(rel);
    match std::fs::read(&p) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("skipping: {}: {e}", p.display());
            None
        }
    }
}

/// A plist value as JSON with data as `{"$data": base64}` and dates as `{"$date": …}`, so
/// expected command dictionaries can be written in JSON files.
pub(crate) fn tagged_json(v: &plist::Value) -> Json {
    match v {
        plist::Value::Array(a) => Json::Array(a.iter().map(tagged_json).collect()),
        plist::Value::Dictionary(d) => {
            Json::Object(d.iter().map(|(k, v)| (k.clone(), tagged_json(v))).collect::<Map<_, _>>())
        }
        plist::Value::Boolean(b) => Json::Bool(*b),
        plist::Value::Data(b) => serde_json::json!({ "$data": B64.encode(b) }),
        plist::Value::Date(d) => serde_json::json!({ "$date": d.to_xml_format() }),
        plist::Value::Real(f) => serde_json::json!(f),
        plist::Value::Integer(i) => serde_json::json!(i.as_signed()),
        plist::Value::String(s) => Json::String(s.clone()),
        other => panic!("unexpected plist value {other:?}"),
    }
}

pub(crate) fn parse_plist(bytes: &[u8]) -> plist::Value {
    plist::Value::from_reader(std::io::Cursor::new(bytes)).expect("valid plist")
}

pub(crate) fn to_binary(xml: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    parse_plist(xml).to_writer_binary(&mut out).unwrap();
    out
}
