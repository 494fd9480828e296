//! NanoMDM-compatible `/v1/enqueue` bodies: a full command plist from an API caller.
//!
//! Only the envelope is checked (a non-empty `CommandUUID`, a `Command` dictionary with a
//! non-empty `RequestType`), as NanoMDM does; the command's own keys are the device's to judge.
//! XML bodies are kept byte for byte so the device gets exactly what the caller wrote.

use plist::Value;

use super::AppleCommand;
use crate::DecodeError;
use crate::fields::{self, to_xml};

pub fn parse_command_plist(body: &[u8]) -> Result<AppleCommand, DecodeError> {
    let top = fields::parse_dict(body)?;
    let command_uuid = fields::req_nonempty_string(&top, "CommandUUID")?;
    let command = match top.get("Command") {
        None => return Err(DecodeError::MissingField { field: "Command" }),
        Some(Value::Dictionary(c)) => c,
        Some(v) => {
            return Err(DecodeError::WrongType { field: "Command", expected: "dictionary", found: fields::kind(v) });
        }
    };
    let request_type = match command.get("RequestType") {
        None => {
            return Err(DecodeError::MissingField { field: "Command.RequestType" });
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(DecodeError::EmptyField { field: "Command.RequestType" });
        }
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(DecodeError::WrongType {
                field: "Command.RequestType",
                expected: "string",
                found: fields::kind(v),
            });
        }
    };
    // Devices are sent XML; a binary body is re-encoded, an XML one passed through untouched.
    let plist = if body.starts_with(b"bplist00") { to_xml(&Value::Dictionary(top)) } else { body.to_vec() };
    Ok(AppleCommand { command_uuid, request_type, plist })
}
