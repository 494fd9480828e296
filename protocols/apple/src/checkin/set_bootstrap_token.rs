//! `SetBootstrapToken`: a Mac escrows (or, without the key, clears) its bootstrap token.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::{opt_bool, opt_data};
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct SetBootstrapToken {
    /// `None` asks the server to forget the stored token. A secret.
    pub bootstrap_token: Option<Vec<u8>>,
    pub awaiting_configuration: bool,
    pub ids: EnrollmentIds,
    pub dict: Dictionary,
}

impl SetBootstrapToken {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        Ok(SetBootstrapToken {
            bootstrap_token: opt_data(&dict, "BootstrapToken")?,
            awaiting_configuration: opt_bool(&dict, "AwaitingConfiguration")?.unwrap_or(false),
            ids,
            dict,
        })
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        m.insert("bootstrap_token_present".into(), self.bootstrap_token.is_some().into());
        m.insert("awaiting_configuration".into(), self.awaiting_configuration.into());
    }
}
