//! Bodies the server sends back to check-in messages that expect an answer.
//!
//! Only the encoding: whether to answer, and with what token, is the gateway's decision.

use plist::{Dictionary, Value};

use crate::fields::to_xml;

/// The reply to `GetBootstrapToken`: `{BootstrapToken: <data>}`, or an empty dictionary when no
/// token is escrowed (Apple's documented "no token" answer; the key is optional).
pub fn encode_bootstrap_token_response(token: Option<&[u8]>) -> Vec<u8> {
    let mut d = Dictionary::new();
    if let Some(t) = token {
        d.insert("BootstrapToken".into(), Value::Data(t.to_vec()));
    }
    to_xml(&Value::Dictionary(d))
}

/// The reply to `GetToken`: `{TokenData: <data>}`; string tokens go in as their UTF-8 bytes.
pub fn encode_get_token_response(token_data: &[u8]) -> Vec<u8> {
    let mut d = Dictionary::new();
    d.insert("TokenData".into(), Value::Data(token_data.to_vec()));
    to_xml(&Value::Dictionary(d))
}

/// The reply to the first `UserAuthenticate`: `{DigestChallenge: <challenge>}`. An empty
/// challenge accepts the user without authentication (what NanoMDM can be configured to do).
pub fn encode_digest_challenge(challenge: &str) -> Vec<u8> {
    let mut d = Dictionary::new();
    d.insert("DigestChallenge".into(), Value::String(challenge.to_owned()));
    to_xml(&Value::Dictionary(d))
}
