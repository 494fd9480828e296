//! One entry of a report's `ErrorChain`: the device's error, outermost first.
//!
//! Codes and domains are open vocabularies (`MCMDMErrorDomain` 12013 …); this crate does not
//! interpret them.

use plist::{Dictionary, Value};
use serde::Serialize;

use crate::DecodeError;
use crate::fields::{kind, opt_string, req_integer, req_string};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorChainItem {
    pub error_code: i64,
    pub error_domain: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub localized_description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub us_english_description: Option<String>,
}

impl ErrorChainItem {
    fn from_dict(d: &Dictionary) -> Result<Self, DecodeError> {
        Ok(ErrorChainItem {
            error_code: req_integer(d, "ErrorCode")?,
            error_domain: req_string(d, "ErrorDomain")?,
            localized_description: opt_string(d, "LocalizedDescription")?,
            us_english_description: opt_string(d, "USEnglishDescription")?,
        })
    }

    pub(crate) fn decode_chain(items: &[Value]) -> Result<Vec<Self>, DecodeError> {
        items
            .iter()
            .map(|v| match v {
                Value::Dictionary(d) => Self::from_dict(d),
                other => Err(DecodeError::WrongType {
                    field: "ErrorChain",
                    expected: "array of dictionaries",
                    found: kind(other),
                }),
            })
            .collect()
    }
}
