//! Typed reads from a decoded plist dictionary.
//!
//! Strict about types (a `Token` that is a string is an error), lenient about presence (the
//! callers decide what is required) and about extra keys (they stay in the dictionary). Does not
//! coerce: a boolean sent as the string "true" is a type error, not a guess.

use std::io::Cursor;

use plist::{Dictionary, Value};

use crate::DecodeError;

/// Parses an XML or binary plist whose top level must be a dictionary.
///
/// ASCII (OpenStep) plists are refused on purpose: no Apple device sends them, and accepting
/// them would turn arbitrary text into a "string plist".
pub(crate) fn parse_dict(body: &[u8]) -> Result<Dictionary, DecodeError> {
    let value = if body.starts_with(b"bplist00") {
        Value::from_reader(Cursor::new(body))
    } else {
        Value::from_reader_xml(body)
    }
    .map_err(DecodeError::NotPlist)?;
    match value {
        Value::Dictionary(d) => Ok(d),
        other => Err(DecodeError::NotDictionary { found: kind(&other) }),
    }
}

/// The plist type name, as Apple's schemas spell it.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::Dictionary(_) => "dictionary",
        Value::Boolean(_) => "boolean",
        Value::Data(_) => "data",
        Value::Date(_) => "date",
        Value::Real(_) => "real",
        Value::Integer(_) => "integer",
        Value::String(_) => "string",
        Value::Uid(_) => "uid",
        // `Value` is non_exhaustive; a future variant is still "some other type".
        _ => "unknown",
    }
}

fn wrong(field: &'static str, expected: &'static str, v: &Value) -> DecodeError {
    DecodeError::WrongType { field, expected, found: kind(v) }
}

pub(crate) fn opt_string(d: &Dictionary, key: &'static str) -> Result<Option<String>, DecodeError> {
    match d.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(wrong(key, "string", v)),
    }
}

pub(crate) fn req_string(d: &Dictionary, key: &'static str) -> Result<String, DecodeError> {
    opt_string(d, key)?.ok_or(DecodeError::MissingField { field: key })
}

/// A required string that must also be non-empty (identifiers, endpoints).
pub(crate) fn req_nonempty_string(d: &Dictionary, key: &'static str) -> Result<String, DecodeError> {
    let s = req_string(d, key)?;
    if s.is_empty() {
        return Err(DecodeError::EmptyField { field: key });
    }
    Ok(s)
}

pub(crate) fn opt_bool(d: &Dictionary, key: &'static str) -> Result<Option<bool>, DecodeError> {
    match d.get(key) {
        None => Ok(None),
        Some(Value::Boolean(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong(key, "boolean", v)),
    }
}

pub(crate) fn opt_data(d: &Dictionary, key: &'static str) -> Result<Option<Vec<u8>>, DecodeError> {
    match d.get(key) {
        None => Ok(None),
        Some(Value::Data(b)) => Ok(Some(b.clone())),
        Some(v) => Err(wrong(key, "data", v)),
    }
}

pub(crate) fn req_data(d: &Dictionary, key: &'static str) -> Result<Vec<u8>, DecodeError> {
    opt_data(d, key)?.ok_or(DecodeError::MissingField { field: key })
}

pub(crate) fn opt_dict(d: &Dictionary, key: &'static str) -> Result<Option<Dictionary>, DecodeError> {
    match d.get(key) {
        None => Ok(None),
        Some(Value::Dictionary(x)) => Ok(Some(x.clone())),
        Some(v) => Err(wrong(key, "dictionary", v)),
    }
}

pub(crate) fn opt_array<'a>(d: &'a Dictionary, key: &'static str) -> Result<Option<&'a [Value]>, DecodeError> {
    match d.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => Err(wrong(key, "array", v)),
    }
}

pub(crate) fn req_integer(d: &Dictionary, key: &'static str) -> Result<i64, DecodeError> {
    match d.get(key) {
        None => Err(DecodeError::MissingField { field: key }),
        Some(Value::Integer(i)) => i.as_signed().ok_or(DecodeError::WrongType {
            field: key,
            expected: "integer in i64 range",
            found: "integer",
        }),
        Some(v) => Err(wrong(key, "integer", v)),
    }
}

/// Serialises a value as an XML plist document.
pub(crate) fn to_xml(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing an in-memory `Value` into a `Vec` cannot fail: no IO, and every `Value` this crate
    // builds is representable (dates come from parsed plists, integers are in range).
    value.to_writer_xml(&mut out).expect("plist value serialises to XML in memory");
    out
}
