//! Commands to the device: normalised → Apple ([`translate`]), and NanoMDM-style command
//! plists from the API ([`parse_command_plist`]).
//!
//! This module builds the plist the device will fetch; it does not queue, push or remember
//! anything. Command ids are chosen by the caller and become the wire `CommandUUID`, so the
//! device's report can be matched to the backend's command.

mod declarative_management;
mod parse;
mod raw;
pub mod request_type;
mod settings;
mod translate;

pub use declarative_management::declarative_management_command;
pub use parse::parse_command_plist;
pub use settings::SETTINGS_PROFILE_IDENTIFIER;
pub use translate::{DEFAULT_DEVICE_INFORMATION_QUERIES, TranslateContext, translate};

use plist::{Dictionary, Value};

use crate::fields::to_xml;

/// A command ready to hand to the device in reply to its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppleCommand {
    pub command_uuid: String,
    pub request_type: String,
    /// XML plist: `{CommandUUID, Command: {RequestType, …}}`.
    pub plist: Vec<u8>,
}

impl AppleCommand {
    /// Wraps a `Command` dictionary (which must hold `RequestType`) with its `CommandUUID`.
    pub(crate) fn build(command_uuid: &str, request_type: &str, command: Dictionary) -> Self {
        let mut top = Dictionary::new();
        top.insert("CommandUUID".into(), Value::String(command_uuid.to_owned()));
        top.insert("Command".into(), Value::Dictionary(command));
        AppleCommand {
            command_uuid: command_uuid.to_owned(),
            request_type: request_type.to_owned(),
            plist: to_xml(&Value::Dictionary(top)),
        }
    }
}
