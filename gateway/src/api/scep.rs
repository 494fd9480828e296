//! `POST /v1/scep/challenges`: a one-time SCEP challenge for an enrollment profile, optionally
//! tied to an opaque ticket (`{"ticket": "..."}`; an empty body is allowed).

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{rfc3339, store_error};
use crate::AppState;
use crate::http_util::{Reply, json, json_error};

/// Longest ticket accepted (an opaque id of the caller's, not a document).
const MAX_TICKET: usize = 256;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChallengeRequest {
    ticket: Option<String>,
}

pub(super) async fn create_challenge(state: &AppState, body: &[u8]) -> Reply {
    let req: ChallengeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ChallengeRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_json", &e.to_string()),
        }
    };
    if let Some(t) = &req.ticket
        && (t.is_empty() || t.len() > MAX_TICKET)
    {
        return json_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "ticket must be 1 to 256 bytes");
    }
    match state.scep.issue_challenge_expiring(req.ticket.as_deref()).await {
        Ok((challenge, expires_at)) => json(
            StatusCode::CREATED,
            &json!({ "challenge": challenge, "expires_at": rfc3339(expires_at), "ticket": req.ticket }),
        ),
        Err(e) => store_error(e),
    }
}
