//! Check-in messages (`Content-Type: application/x-apple-aspen-mdm-checkin`), one type per file.
//!
//! Decoding checks structure and the fields each message needs, and keeps the whole dictionary
//! so nothing the device said is lost. It does not decide what to do with a message (accept an
//! enrollment, store a token, answer a bootstrap-token request): the gateway does.

mod authenticate;
mod check_out;
mod declarative_management;
mod get_bootstrap_token;
mod get_token;
mod set_bootstrap_token;
mod token_update;
mod user_authenticate;

pub use authenticate::Authenticate;
pub use check_out::CheckOut;
pub use declarative_management::DeclarativeManagement;
pub use get_bootstrap_token::GetBootstrapToken;
pub use get_token::GetToken;
pub use set_bootstrap_token::SetBootstrapToken;
pub use token_update::TokenUpdate;
pub use user_authenticate::UserAuthenticate;

use plist::{Dictionary, Value};
use serde_json::{Map, Value as Json};

use crate::json::{DataPolicy, dict_to_json};
use crate::{DecodeError, EnrollmentIds, fields};

/// One check-in message.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckinMessage {
    Authenticate(Authenticate),
    TokenUpdate(TokenUpdate),
    CheckOut(CheckOut),
    UserAuthenticate(UserAuthenticate),
    SetBootstrapToken(SetBootstrapToken),
    GetBootstrapToken(GetBootstrapToken),
    DeclarativeManagement(DeclarativeManagement),
    GetToken(GetToken),
    /// A MessageType this build does not know: kept whole, never a decode error.
    Unknown {
        message_type: String,
        ids: EnrollmentIds,
        dict: Dictionary,
    },
}

/// Decodes a check-in body (XML or binary plist).
///
/// Refuses bodies that are not a plist dictionary, have no `MessageType`, name no device
/// (neither `UDID` nor `EnrollmentID`), or lack a field their type needs.
pub fn decode_checkin(body: &[u8]) -> Result<CheckinMessage, DecodeError> {
    let dict = fields::parse_dict(body)?;
    let message_type = match dict.get("MessageType") {
        None => return Err(DecodeError::MissingMessageType),
        Some(Value::String(s)) if s.is_empty() => return Err(DecodeError::MissingMessageType),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(DecodeError::WrongType { field: "MessageType", expected: "string", found: fields::kind(v) });
        }
    };
    let ids = EnrollmentIds::from_dict(&dict)?.require_device()?;
    Ok(match message_type.as_str() {
        "Authenticate" => CheckinMessage::Authenticate(Authenticate::from_dict(dict, ids)?),
        "TokenUpdate" => CheckinMessage::TokenUpdate(TokenUpdate::from_dict(dict, ids)?),
        "CheckOut" => CheckinMessage::CheckOut(CheckOut::from_dict(dict, ids)?),
        "UserAuthenticate" => CheckinMessage::UserAuthenticate(UserAuthenticate::from_dict(dict, ids)?),
        "SetBootstrapToken" => CheckinMessage::SetBootstrapToken(SetBootstrapToken::from_dict(dict, ids)?),
        "GetBootstrapToken" => CheckinMessage::GetBootstrapToken(GetBootstrapToken::from_dict(dict, ids)?),
        "DeclarativeManagement" => CheckinMessage::DeclarativeManagement(DeclarativeManagement::from_dict(dict, ids)?),
        "GetToken" => CheckinMessage::GetToken(GetToken::from_dict(dict, ids)?),
        _ => CheckinMessage::Unknown { message_type, ids, dict },
    })
}

impl CheckinMessage {
    /// The wire `MessageType`, exactly as sent.
    pub fn message_type(&self) -> &str {
        match self {
            CheckinMessage::Authenticate(_) => "Authenticate",
            CheckinMessage::TokenUpdate(_) => "TokenUpdate",
            CheckinMessage::CheckOut(_) => "CheckOut",
            CheckinMessage::UserAuthenticate(_) => "UserAuthenticate",
            CheckinMessage::SetBootstrapToken(_) => "SetBootstrapToken",
            CheckinMessage::GetBootstrapToken(_) => "GetBootstrapToken",
            CheckinMessage::DeclarativeManagement(_) => "DeclarativeManagement",
            CheckinMessage::GetToken(_) => "GetToken",
            CheckinMessage::Unknown { message_type, .. } => message_type,
        }
    }

    pub fn ids(&self) -> &EnrollmentIds {
        match self {
            CheckinMessage::Authenticate(m) => &m.ids,
            CheckinMessage::TokenUpdate(m) => &m.ids,
            CheckinMessage::CheckOut(m) => &m.ids,
            CheckinMessage::UserAuthenticate(m) => &m.ids,
            CheckinMessage::SetBootstrapToken(m) => &m.ids,
            CheckinMessage::GetBootstrapToken(m) => &m.ids,
            CheckinMessage::DeclarativeManagement(m) => &m.ids,
            CheckinMessage::GetToken(m) => &m.ids,
            CheckinMessage::Unknown { ids, .. } => ids,
        }
    }

    /// The whole message as decoded.
    pub fn dict(&self) -> &Dictionary {
        match self {
            CheckinMessage::Authenticate(m) => &m.dict,
            CheckinMessage::TokenUpdate(m) => &m.dict,
            CheckinMessage::CheckOut(m) => &m.dict,
            CheckinMessage::UserAuthenticate(m) => &m.dict,
            CheckinMessage::SetBootstrapToken(m) => &m.dict,
            CheckinMessage::GetBootstrapToken(m) => &m.dict,
            CheckinMessage::DeclarativeManagement(m) => &m.dict,
            CheckinMessage::GetToken(m) => &m.dict,
            CheckinMessage::Unknown { dict, .. } => dict,
        }
    }

    /// A JSON summary for the event `data`: `message_type`, `enrollment` (the ids), and the
    /// message's own fields in snake_case. Secrets (push, unlock and bootstrap tokens, push
    /// magic, digest responses) appear only as `*_present` flags. Unknown messages show their
    /// keys as sent, with every `data` value reduced to its length.
    pub fn event_data(&self) -> Json {
        let mut m = Map::new();
        m.insert("message_type".into(), self.message_type().into());
        m.insert("enrollment".into(), self.ids().to_json());
        match self {
            CheckinMessage::Authenticate(x) => x.event_fields(&mut m),
            CheckinMessage::TokenUpdate(x) => x.event_fields(&mut m),
            CheckinMessage::CheckOut(x) => x.event_fields(&mut m),
            CheckinMessage::UserAuthenticate(x) => x.event_fields(&mut m),
            CheckinMessage::SetBootstrapToken(x) => x.event_fields(&mut m),
            CheckinMessage::GetBootstrapToken(x) => x.event_fields(&mut m),
            CheckinMessage::DeclarativeManagement(x) => x.event_fields(&mut m),
            CheckinMessage::GetToken(x) => x.event_fields(&mut m),
            CheckinMessage::Unknown { dict, .. } => {
                m.insert("fields".into(), Json::Object(dict_to_json(dict, &ID_KEYS, DataPolicy::Redact)));
            }
        }
        Json::Object(m)
    }

    /// Inventory the message carries: only `Authenticate` has any.
    pub fn inventory(&self) -> Option<mdm_core::Inventory> {
        match self {
            CheckinMessage::Authenticate(a) => Some(a.inventory()).filter(|i| !i.is_empty()),
            _ => None,
        }
    }
}

/// Keys already shown under `enrollment` (and the type), left out of an unknown message's fields.
const ID_KEYS: [&str; 7] =
    ["MessageType", "UDID", "EnrollmentID", "UserID", "EnrollmentUserID", "UserShortName", "UserLongName"];
