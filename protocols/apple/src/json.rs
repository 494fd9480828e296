//! Conversion between plist values and JSON, for event `data` and for raw commands given as JSON.
//!
//! Plist → JSON is total: data becomes base64 (or a byte count when redacting), dates RFC 3339,
//! UIDs integers, non-finite reals `null`. JSON → plist refuses `null` (plist has no null) and
//! reads two tagged objects, `{"$data": "<base64>"}` and `{"$date": "<RFC 3339>"}`, because JSON
//! cannot otherwise express the plist `data` and `date` types that commands such as
//! InstallProfile need. Neither direction touches field names.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use plist::{Dictionary, Value};
use serde_json::{Map, Number, Value as Json};

/// What to do with `data` values when turning a plist into JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataPolicy {
    /// Base64 text: for command results, which the backend asked for.
    Base64,
    /// `{"redacted_bytes": n}`: for check-ins this build does not know, which may carry tokens.
    Redact,
}

pub(crate) fn to_json(v: &Value, data: DataPolicy) -> Json {
    match v {
        Value::Array(a) => Json::Array(a.iter().map(|x| to_json(x, data)).collect()),
        Value::Dictionary(d) => Json::Object(dict_to_json(d, &[], data)),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Data(bytes) => match data {
            DataPolicy::Base64 => Json::String(B64.encode(bytes)),
            DataPolicy::Redact => serde_json::json!({ "redacted_bytes": bytes.len() }),
        },
        Value::Date(d) => Json::String(d.to_xml_format()),
        Value::Real(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Integer(i) => match (i.as_signed(), i.as_unsigned()) {
            (Some(s), _) => Json::from(s),
            (None, Some(u)) => Json::from(u),
            (None, None) => Json::Null,
        },
        Value::String(s) => Json::String(s.clone()),
        Value::Uid(u) => Json::from(u.get()),
        // `Value` is non_exhaustive; a type this build cannot name has no JSON form.
        _ => Json::Null,
    }
}

/// Converts a dictionary, leaving out the keys in `skip` (already shown elsewhere).
pub(crate) fn dict_to_json(d: &Dictionary, skip: &[&str], data: DataPolicy) -> Map<String, Json> {
    d.iter().filter(|(k, _)| !skip.contains(&k.as_str())).map(|(k, v)| (k.clone(), to_json(v, data))).collect()
}

/// Why a JSON value has no plist form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FromJsonError {
    Null { path: String },
    BadBase64 { path: String },
    BadDate { path: String },
}

impl std::fmt::Display for FromJsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FromJsonError::Null { path } => write!(f, "{path}: null has no plist form"),
            FromJsonError::BadBase64 { path } => write!(f, "{path}: $data is not base64 text"),
            FromJsonError::BadDate { path } => write!(f, "{path}: $date is not an RFC 3339 date"),
        }
    }
}

pub(crate) fn from_json(v: &Json, path: &str) -> Result<Value, FromJsonError> {
    Ok(match v {
        Json::Null => {
            return Err(FromJsonError::Null { path: path.to_owned() });
        }
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Integer(u.into())
            } else {
                // serde_json numbers are finite, so the f64 is always there.
                Value::Real(n.as_f64().unwrap_or_default())
            }
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(
            a.iter().enumerate().map(|(i, x)| from_json(x, &format!("{path}[{i}]"))).collect::<Result<_, _>>()?,
        ),
        Json::Object(m) => {
            if let Some(tagged) = tagged(m, path)? {
                return Ok(tagged);
            }
            Value::Dictionary(object_to_dict(m, path)?)
        }
    })
}

pub(crate) fn object_to_dict(m: &Map<String, Json>, path: &str) -> Result<Dictionary, FromJsonError> {
    let mut d = Dictionary::new();
    for (k, x) in m {
        let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
        d.insert(k.clone(), from_json(x, &sub)?);
    }
    Ok(d)
}

fn tagged(m: &Map<String, Json>, path: &str) -> Result<Option<Value>, FromJsonError> {
    if m.len() != 1 {
        return Ok(None);
    }
    match m.iter().next() {
        Some((k, Json::String(s))) if k == "$data" => {
            B64.decode(s).map(|b| Some(Value::Data(b))).map_err(|_| FromJsonError::BadBase64 { path: path.to_owned() })
        }
        Some((k, Json::String(s))) if k == "$date" => plist::Date::from_xml_format(s)
            .map(|d| Some(Value::Date(d)))
            .map_err(|_| FromJsonError::BadDate { path: path.to_owned() }),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_plist() {
        let j = json!({"a": 1, "b": [true, "x", 2.5], "c": {"$data": "AAE="}, "d": {"$date": "2024-01-02T03:04:05Z"}});
        let p = from_json(&j, "").unwrap();
        let d = p.as_dictionary().unwrap();
        assert_eq!(d.get("c").unwrap().as_data(), Some(&[0u8, 1][..]));
        assert!(d.get("d").unwrap().as_date().is_some());
        let back = to_json(&p, DataPolicy::Base64);
        assert_eq!(back, json!({"a": 1, "b": [true, "x", 2.5], "c": "AAE=", "d": "2024-01-02T03:04:05Z"}));
        assert_eq!(to_json(&p, DataPolicy::Redact)["c"], json!({"redacted_bytes": 2}));
    }

    #[test]
    fn refuses_what_plist_cannot_hold() {
        let e = from_json(&json!({"a": [1, null]}), "").unwrap_err();
        assert_eq!(e.to_string(), "a[1]: null has no plist form");
        assert!(matches!(from_json(&json!({"$data": "!!"}), "x"), Err(FromJsonError::BadBase64 { .. })));
        assert!(matches!(from_json(&json!({"$date": "soon"}), "x"), Err(FromJsonError::BadDate { .. })));
    }
}
