//! `GetToken`: the device asks the server for a token for an Apple service
//! (`com.apple.maid` for Managed Apple Account sign-in, `com.apple.watch.pairing`). The reply is
//! [`crate::encode_get_token_response`]; minting the token is not this crate's job.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::{opt_dict, opt_string, req_string};
use crate::json::{DataPolicy, dict_to_json};
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct GetToken {
    /// Open: service types newer than this build pass through.
    pub token_service_type: String,
    pub token_parameters: Option<Dictionary>,
    pub ids: EnrollmentIds,
    pub dict: Dictionary,
}

impl GetToken {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        Ok(GetToken {
            token_service_type: req_string(&dict, "TokenServiceType")?,
            token_parameters: opt_dict(&dict, "TokenParameters")?,
            ids,
            dict,
        })
    }

    fn param(&self, key: &'static str) -> Result<Option<String>, DecodeError> {
        self.token_parameters.as_ref().map_or(Ok(None), |p| opt_string(p, key))
    }

    /// `TokenParameters.PhoneUDID` (watch pairing).
    pub fn phone_udid(&self) -> Result<Option<String>, DecodeError> {
        self.param("PhoneUDID")
    }

    /// `TokenParameters.WatchUDID` (watch pairing).
    pub fn watch_udid(&self) -> Result<Option<String>, DecodeError> {
        self.param("WatchUDID")
    }

    /// `TokenParameters.SecurityToken` (watch pairing). A secret.
    pub fn security_token(&self) -> Result<Option<String>, DecodeError> {
        self.param("SecurityToken")
    }

    /// `TokenParameters` as JSON (data values as base64), secrets included: for the service
    /// that mints the token, never for events. An empty object when absent.
    pub fn parameters_json(&self) -> Json {
        Json::Object(self.token_parameters.as_ref().map_or_else(Map::new, |p| dict_to_json(p, &[], DataPolicy::Base64)))
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        m.insert("token_service_type".into(), self.token_service_type.clone().into());
        if let Some(p) = &self.token_parameters {
            // SecurityToken is a credential: keep it out of events.
            let mut params = dict_to_json(p, &["SecurityToken"], DataPolicy::Redact);
            if p.contains_key("SecurityToken") {
                params.insert("security_token_present".into(), true.into());
            }
            m.insert("token_parameters".into(), Json::Object(params));
        }
    }
}
