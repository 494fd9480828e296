//! `GetBootstrapToken`: a Mac asks for its escrowed bootstrap token. The reply is
//! [`crate::encode_bootstrap_token_response`]; looking the token up is the gateway's job.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::opt_bool;
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct GetBootstrapToken {
    pub awaiting_configuration: bool,
    pub ids: EnrollmentIds,
    pub dict: Dictionary,
}

impl GetBootstrapToken {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        Ok(GetBootstrapToken {
            awaiting_configuration: opt_bool(&dict, "AwaitingConfiguration")?.unwrap_or(false),
            ids,
            dict,
        })
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        m.insert("awaiting_configuration".into(), self.awaiting_configuration.into());
    }
}
