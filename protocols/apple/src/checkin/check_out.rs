//! `CheckOut`: the device says it removed the MDM profile. Best effort: devices that are wiped
//! or lose the network never send it, so its absence means nothing.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::opt_string;
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct CheckOut {
    /// Apple marks it required; it is optional here because nothing depends on it.
    pub topic: Option<String>,
    pub ids: EnrollmentIds,
    pub dict: Dictionary,
}

impl CheckOut {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        Ok(CheckOut { topic: opt_string(&dict, "Topic")?, ids, dict })
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        if let Some(t) = &self.topic {
            m.insert("topic".into(), t.clone().into());
        }
    }
}
