//! API authentication: `Authorization: Bearer <api-key>` or Basic `nanomdm:<api-key>`.

use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::AppState;
use crate::http_util::{Reply, json_error};

/// Compares without an early exit, so timing does not reveal how much of the key matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn check(state: &AppState, headers: &HeaderMap) -> Result<(), &'static str> {
    let presented = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            Some(rest.trim().to_owned())
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (user, pass) = decoded.split_once(':')?;
            (user == "nanomdm").then(|| pass.to_owned())
        } else {
            None
        }
    });
    match presented {
        Some(key) if same(key.as_bytes(), state.api_key.as_bytes()) => Ok(()),
        Some(_) => Err("the API key is wrong"),
        None => Err("missing credentials: use `Authorization: Bearer <api-key>` or Basic with user `nanomdm`"),
    }
}

pub(super) fn unauthorized(message: &str) -> Reply {
    tracing::info!(reason = message, "API request refused");
    let mut r = json_error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut()
        .insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer, Basic realm=\"mdm-gateway\""));
    r
}
