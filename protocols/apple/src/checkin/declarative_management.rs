//! `DeclarativeManagement`: the device's declarative-management channel, tunnelled through
//! check-in. This crate only unwraps it; the `Endpoint` (`tokens`, `declaration-items`,
//! `status`, `declaration/…`) and the JSON in `Data` are for a DDM engine to interpret.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::{opt_data, req_string};
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct DeclarativeManagement {
    pub endpoint: String,
    /// JSON bytes for `status` reports; absent for plain fetches such as `tokens`.
    pub data: Option<Vec<u8>>,
    pub ids: EnrollmentIds,
    pub dict: Dictionary,
}

impl DeclarativeManagement {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        Ok(DeclarativeManagement {
            endpoint: req_string(&dict, "Endpoint")?,
            data: opt_data(&dict, "Data")?,
            ids,
            dict,
        })
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        m.insert("endpoint".into(), self.endpoint.clone().into());
        // Status reports are JSON; show them as JSON when they parse, otherwise only the size.
        if let Some(d) = &self.data {
            match serde_json::from_slice::<Json>(d) {
                Ok(j) => m.insert("data".into(), j),
                Err(_) => m.insert("data_bytes".into(), d.len().into()),
            };
        }
    }
}
