//! The `DeclarativeManagement` command: the server's way to turn on the device's declarative
//! management (the first time) and to make it synchronise its declarations.

use plist::{Dictionary, Value};

use super::AppleCommand;
use super::request_type::DECLARATIVE_MANAGEMENT;
use crate::ddm::{SyncTokens, tokens_response};

/// Builds the command. With `tokens`, its `Data` is the `TokensResponse` JSON
/// (`{"SyncTokens": …}`) and the device compares the `DeclarationsToken` with its own; without,
/// the device first asks for them with a `tokens` check-in, so it always sees the current value
/// however long the command waited in the queue.
pub fn declarative_management_command(command_uuid: &str, tokens: Option<&SyncTokens>) -> AppleCommand {
    let mut command = Dictionary::new();
    command.insert("RequestType".into(), Value::String(DECLARATIVE_MANAGEMENT.into()));
    if let Some(t) = tokens {
        command.insert("Data".into(), Value::Data(tokens_response(t)));
    }
    AppleCommand::build(command_uuid, DECLARATIVE_MANAGEMENT, command)
}
