//! `TokenUpdate`: the push token (and, on the device channel, the unlock token) for a channel.
//!
//! The first TokenUpdate after Authenticate completes an enrollment; later ones rotate the token.
//! This type does not decide which case it is: only the gateway's store knows.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::{opt_bool, opt_data, opt_string, req_data, req_string};
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct TokenUpdate {
    pub topic: String,
    /// The APNs device token. A secret: never put it in events or logs.
    pub token: Vec<u8>,
    /// Goes into the push payload; together with the token it is enough to wake the device.
    pub push_magic: String,
    /// Device channel only; needed later for ClearPasscode. A secret.
    pub unlock_token: Option<Vec<u8>>,
    /// Setup Assistant waits for DeviceConfigured (or UserConfigured on a Shared iPad user).
    pub awaiting_configuration: bool,
    /// macOS user channel: the user is not logged in at the console.
    pub not_on_console: Option<bool>,
    pub user_short_name: Option<String>,
    pub user_long_name: Option<String>,
    pub ids: EnrollmentIds,
    pub dict: Dictionary,
}

impl TokenUpdate {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        Ok(TokenUpdate {
            topic: req_string(&dict, "Topic")?,
            token: req_data(&dict, "Token")?,
            push_magic: req_string(&dict, "PushMagic")?,
            unlock_token: opt_data(&dict, "UnlockToken")?,
            // Apple documents `false` as the default when absent.
            awaiting_configuration: opt_bool(&dict, "AwaitingConfiguration")?.unwrap_or(false),
            not_on_console: opt_bool(&dict, "NotOnConsole")?,
            user_short_name: opt_string(&dict, "UserShortName")?,
            user_long_name: opt_string(&dict, "UserLongName")?,
            ids,
            dict,
        })
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        m.insert("topic".into(), self.topic.clone().into());
        m.insert("token_present".into(), (!self.token.is_empty()).into());
        m.insert("push_magic_present".into(), (!self.push_magic.is_empty()).into());
        m.insert("unlock_token_present".into(), self.unlock_token.is_some().into());
        m.insert("awaiting_configuration".into(), self.awaiting_configuration.into());
        if let Some(b) = self.not_on_console {
            m.insert("not_on_console".into(), b.into());
        }
    }
}
