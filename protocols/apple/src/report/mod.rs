//! Command reports (`Content-Type: application/x-apple-aspen-mdm`): the device's answer to the
//! last command, or `Idle` when it asks for the first one.
//!
//! Decoding checks the envelope (`Status`, identifiers, `ErrorChain` shape) and keeps the rest
//! of the dictionary untouched; it does not know which command a `CommandUUID` belongs to, so
//! payload-specific reading (inventory) takes the request type from the caller.

mod error_chain;
mod inventory;
mod status;

pub use error_chain::ErrorChainItem;
pub use status::ReportStatus;

use plist::{Dictionary, Value};
use serde_json::{Map, Value as Json};

use crate::fields::{self, opt_array};
use crate::json::{DataPolicy, dict_to_json};
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct CommandReport {
    pub status: ReportStatus,
    /// Absent on `Idle`.
    pub command_uuid: Option<String>,
    pub ids: EnrollmentIds,
    pub error_chain: Vec<ErrorChainItem>,
    /// The whole report, result payload included.
    pub dict: Dictionary,
}

/// Decodes a command report body (XML or binary plist).
pub fn decode_report(body: &[u8]) -> Result<CommandReport, DecodeError> {
    let dict = fields::parse_dict(body)?;
    let status = match dict.get("Status") {
        None => return Err(DecodeError::MissingStatus),
        Some(Value::String(s)) => ReportStatus::parse(s),
        Some(v) => {
            return Err(DecodeError::WrongType { field: "Status", expected: "string", found: fields::kind(v) });
        }
    };
    let ids = EnrollmentIds::from_dict(&dict)?.require_device()?;
    let command_uuid = fields::opt_string(&dict, "CommandUUID")?.filter(|s| !s.is_empty());
    let error_chain = match opt_array(&dict, "ErrorChain")? {
        Some(items) => ErrorChainItem::decode_chain(items)?,
        None => Vec::new(),
    };
    Ok(CommandReport { status, command_uuid, ids, error_chain, dict })
}

/// Envelope keys, shown at the top of the event rather than in `payload`.
const ENVELOPE_KEYS: [&str; 9] = [
    "Status",
    "CommandUUID",
    "ErrorChain",
    "UDID",
    "EnrollmentID",
    "UserID",
    "EnrollmentUserID",
    "UserShortName",
    "UserLongName",
];

impl CommandReport {
    /// `RequestType` when the device echoes it (some results do, most do not).
    pub fn request_type(&self) -> Option<&str> {
        self.dict.get("RequestType").and_then(Value::as_string)
    }

    /// JSON for the event `data`: `status`, `command_uuid`, `enrollment`, `error_chain`, and
    /// `payload` holding every other key converted plist → JSON (data as base64, dates RFC 3339).
    pub fn event_data(&self) -> Json {
        let mut m = Map::new();
        m.insert("status".into(), self.status.as_str().into());
        if let Some(u) = &self.command_uuid {
            m.insert("command_uuid".into(), u.clone().into());
        }
        m.insert("enrollment".into(), self.ids.to_json());
        if !self.error_chain.is_empty() {
            m.insert("error_chain".into(), serde_json::to_value(&self.error_chain).unwrap_or(Json::Null));
        }
        m.insert("payload".into(), Json::Object(dict_to_json(&self.dict, &ENVELOPE_KEYS, DataPolicy::Base64)));
        Json::Object(m)
    }

    /// Inventory from the result of a `request_type` command (the gateway knows which command
    /// the `CommandUUID` was). Only `DeviceInformation` carries inventory today; `None` for
    /// other types, for non-Acknowledged reports and for results with nothing usable.
    pub fn inventory(&self, request_type: &str) -> Option<mdm_core::Inventory> {
        if self.status != ReportStatus::Acknowledged {
            return None;
        }
        inventory::from_report(&self.dict, request_type)
    }
}
