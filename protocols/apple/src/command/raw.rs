//! `raw` commands for Apple: the backend's own Command dictionary, passed through.
//!
//! Two payload shapes: a JSON string holding an XML plist (either the whole command
//! `{CommandUUID, Command: {…}}` or just the `Command` dictionary), or a JSON object that is the
//! Command dictionary (or the whole command). The gateway's command id always becomes the
//! `CommandUUID`, replacing any in the payload, because reports are matched by it. Nothing is
//! checked beyond a non-empty `RequestType`: the device is the authority on its commands.

use mdm_core::CommandError;
use plist::{Dictionary, Value};
use serde_json::Value as Json;

use crate::fields;
use crate::json::object_to_dict;

fn invalid(reason: impl Into<String>) -> CommandError {
    CommandError::Invalid { field: "payload", reason: reason.into() }
}

/// The `Command` dictionary and its `RequestType`.
pub(super) fn command_dict(payload: &Json) -> Result<(String, Dictionary), CommandError> {
    let top = match payload {
        Json::String(xml) => {
            fields::parse_dict(xml.as_bytes()).map_err(|e| invalid(format!("not a plist dictionary: {e}")))?
        }
        Json::Object(m) => object_to_dict(m, "").map_err(|e| invalid(e.to_string()))?,
        _ => return Err(invalid("expected a plist XML string or a JSON object")),
    };
    // The whole-command shape nests the dictionary under `Command` and has no RequestType of
    // its own.
    let dict = match (top.get("RequestType"), top.get("Command")) {
        (None, Some(Value::Dictionary(c))) => c.clone(),
        _ => top,
    };
    match dict.get("RequestType") {
        Some(Value::String(r)) if !r.is_empty() => Ok((r.clone(), dict)),
        Some(Value::String(_)) => Err(invalid("RequestType is empty")),
        Some(v) => Err(invalid(format!("RequestType is {}, expected string", fields::kind(v)))),
        None => Err(invalid("RequestType is missing")),
    }
}
