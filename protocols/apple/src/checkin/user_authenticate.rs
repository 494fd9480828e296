//! `UserAuthenticate`: a macOS network or mobile user asks to get a user channel.
//!
//! Comes twice: first without `DigestResponse` (answer with a `DigestChallenge`, or HTTP 410 to
//! decline the user), then with it. See [`crate::encode_digest_challenge`] for the reply.

use plist::Dictionary;
use serde_json::{Map, Value as Json};

use crate::fields::{opt_string, req_string};
use crate::{DecodeError, EnrollmentIds};

#[derive(Debug, Clone, PartialEq)]
pub struct UserAuthenticate {
    pub user_id: String,
    /// Absent on the first message of the exchange.
    pub digest_response: Option<String>,
    pub ids: EnrollmentIds,
    pub dict: Dictionary,
}

impl UserAuthenticate {
    pub(crate) fn from_dict(dict: Dictionary, ids: EnrollmentIds) -> Result<Self, DecodeError> {
        Ok(UserAuthenticate {
            user_id: req_string(&dict, "UserID")?,
            digest_response: opt_string(&dict, "DigestResponse")?,
            ids,
            dict,
        })
    }

    /// True on the second message, which answers a challenge.
    pub fn is_response(&self) -> bool {
        self.digest_response.as_deref().is_some_and(|s| !s.is_empty())
    }

    pub(crate) fn event_fields(&self, m: &mut Map<String, Json>) {
        // The digest response is a credential; only say whether it came.
        m.insert("digest_response_present".into(), self.is_response().into());
    }
}
