//! SCEP over HTTP (RFC 8894 §4): `GET /scep?operation=GetCACaps|GetCACert`,
//! `GET /scep?operation=PKIOperation&message=<base64>` and
//! `POST /scep?operation=PKIOperation` with the DER message as body.
//!
//! Transport-level problems (wrong method or operation, a message that is not base64 or not a
//! PKI message) answer 400 with a short text reason; SCEP-level refusals answer 200 with a FAILURE
//! CertRep (see `crate::scep`). Every refusal is logged and counted in `mdm_scep_requests_total`.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::AppState;
use crate::http_util::{BodyError, Reply, read_body, text, with_type};
use crate::scep::{CA_CAPS, PkiOutcome};
use crate::server::ConnInfo;
use crate::telemetry;

pub const PKI_MESSAGE_TYPE: &str = "application/x-pki-message";
pub const CA_RA_CERT_TYPE: &str = "application/x-x509-ca-ra-cert";

fn refuse(status: StatusCode, reason: &'static str, detail: String, conn: &ConnInfo) -> Reply {
    tracing::warn!(source = "scep", reason, detail = %detail, client = ?conn.client_ip(), "SCEP request refused");
    metrics::counter!(telemetry::SCEP_REQUESTS, "message_type" => "unknown", "result" => "malformed", "reason" => reason)
        .increment(1);
    text(status, format!("{reason}: {detail}\n"))
}

pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>, conn: &ConnInfo) -> Reply {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let query: Vec<(String, String)> = serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let operation = param("operation").unwrap_or("");
    let reply = match (&parts.method, operation) {
        (&Method::GET, "GetCACaps") => with_type(StatusCode::OK, "text/plain", CA_CAPS),
        (&Method::GET, "GetCACert") => with_type(StatusCode::OK, CA_RA_CERT_TYPE, state.scep.ca_certs().to_vec()),
        (&Method::GET, "PKIOperation") => {
            let Some(message) = param("message") else {
                return refuse(StatusCode::BAD_REQUEST, "missing_message", "no message= parameter".into(), conn);
            };
            // Form decoding turns an unescaped '+' into a space; base64 has no spaces, so put it
            // back. Line breaks (some clients wrap base64) are dropped.
            let b64: String =
                message.chars().filter(|c| *c != '\r' && *c != '\n').map(|c| if c == ' ' { '+' } else { c }).collect();
            match base64::engine::general_purpose::STANDARD.decode(b64.trim_end_matches('=').to_owned() + pad(&b64)) {
                Ok(der) => pki_operation(state, &der, conn).await,
                Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_base64", e.to_string(), conn),
            }
        }
        (&Method::POST, "PKIOperation") => {
            match read_body(&parts.headers, body, state.config.device.max_body_bytes).await {
                Ok(der) => pki_operation(state, &der, conn).await,
                Err(e @ BodyError::TooLarge { .. }) => {
                    return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", e.to_string(), conn);
                }
                Err(e) => return refuse(StatusCode::BAD_REQUEST, "body_unreadable", e.to_string(), conn),
            }
        }
        (_, "GetCACaps" | "GetCACert" | "PKIOperation") => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "wrong_method",
                format!("{} is not allowed for operation {operation}", parts.method),
                conn,
            );
        }
        (_, "") => return refuse(StatusCode::BAD_REQUEST, "missing_operation", "no operation= parameter".into(), conn),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported_operation",
                format!("operation {operation:?} is not supported"),
                conn,
            );
        }
    };
    metrics::histogram!(telemetry::DEVICE_REQUEST_SECONDS, "platform" => "scep")
        .record(started.elapsed().as_secs_f64());
    reply
}

/// Padding to add after stripping it, so unpadded and padded base64 both decode.
fn pad(b64: &str) -> &'static str {
    match b64.trim_end_matches('=').len() % 4 {
        2 => "==",
        3 => "=",
        _ => "",
    }
}

async fn pki_operation(state: &AppState, der: &[u8], conn: &ConnInfo) -> Reply {
    match state.scep.pki_operation(der).await {
        PkiOutcome::Malformed { reason, detail } => refuse(StatusCode::BAD_REQUEST, reason, detail, conn),
        PkiOutcome::Reply { der, message_type, fail_info, reason, detail } => {
            let result = fail_info.map(|f| f.label()).unwrap_or("success");
            if let Some(f) = fail_info {
                tracing::warn!(
                    source = "scep", message_type = message_type.label(), fail_info = f.label(), reason,
                    detail = %detail, client = ?conn.client_ip(), "SCEP request refused with a FAILURE CertRep"
                );
            } else {
                tracing::info!(source = "scep", message_type = message_type.label(), detail = %detail, "SCEP certificate issued");
            }
            metrics::counter!(telemetry::SCEP_REQUESTS, "message_type" => message_type.label(), "result" => result, "reason" => reason)
                .increment(1);
            with_type(StatusCode::OK, PKI_MESSAGE_TYPE, der)
        }
        PkiOutcome::Internal { message_type, detail } => {
            let label = message_type.map(|m| m.label()).unwrap_or("unknown");
            tracing::error!(source = "scep", message_type = label, detail = %detail, "SCEP request failed");
            metrics::counter!(telemetry::SCEP_REQUESTS, "message_type" => label, "result" => "error", "reason" => "internal")
                .increment(1);
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal: the request could not be processed; retry\n")
        }
    }
}
