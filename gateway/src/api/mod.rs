//! The backend API (CONTRACT §3): normalised commands, devices, the event log, NanoMDM-compatible
//! endpoints, health and metrics. Plain HTTP on its own listener; every `/v1` route needs the
//! API key (Bearer, or Basic with user `nanomdm`).

mod android;
mod auth;
mod commands;
mod declarations;
mod devices;
pub mod enrollment;
mod events;
mod health;
mod nanomdm;
pub mod nats_intake;
mod scep;

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;

use crate::AppState;
use crate::http_util::{BodyError, Reply, json_error, read_body};
use crate::server::Handler;
use crate::telemetry;

pub fn handler(state: Arc<AppState>) -> Handler {
    Arc::new(move |req, _conn| {
        let state = state.clone();
        Box::pin(async move {
            let (route, reply) = route(&state, req).await;
            metrics::counter!(telemetry::API_REQUESTS, "route" => route, "code" => reply.status().as_str().to_owned())
                .increment(1);
            reply
        })
    })
}

fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/').split('/').map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect()
}

async fn route(state: &Arc<AppState>, req: Request<Incoming>) -> (&'static str, Reply) {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let segs = segments(&path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();

    // Unauthenticated operational endpoints.
    match (&method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => return ("healthz", health::healthz()),
        (&Method::GET, ["readyz"]) => return ("readyz", health::readyz(state).await),
        (&Method::GET, ["metrics"]) => return ("metrics", health::metrics(state).await),
        // The admin's browser after enterprise signup: no API key, the one-time state.
        (&Method::GET, ["android", "signup", "callback"]) => {
            return ("android.signup.callback", android::signup_callback(state, &query).await);
        }
        _ => {}
    }
    if segs.first() != Some(&"v1") {
        return ("unknown", json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"));
    }
    if let Err(message) = auth::check(state, req.headers()) {
        return ("unauthorized", auth::unauthorized(message));
    }
    let (parts, body) = req.into_parts();
    let limit = state.config.api.max_body_bytes;
    // Corporate identifier files may be larger than other API bodies (5 MB).
    let limit = if segs[1..] == ["enrollment", "corporate-identifiers"] {
        limit.max(enrollment::MAX_CSV_BYTES + 1)
    } else {
        limit
    };
    let body = || async move {
        read_body(&parts.headers, body, limit).await.map_err(|e| match e {
            BodyError::TooLarge { .. } => json_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &e.to_string()),
            BodyError::Read(_) => json_error(StatusCode::BAD_REQUEST, "body_unreadable", &e.to_string()),
        })
    };
    match (&method, &segs[1..]) {
        (&Method::POST, ["commands"]) => (
            "commands.create",
            match body().await {
                Ok(b) => commands::create(state, &b).await,
                Err(r) => r,
            },
        ),
        (&Method::GET, ["commands", id]) => ("commands.get", commands::get(state, id, &query).await),
        (&Method::GET, ["devices"]) => ("devices.list", devices::list(state, &query).await),
        (&Method::GET, ["devices", id]) => ("devices.get", devices::get(state, id).await),
        (&Method::GET, ["devices", id, "declarations"]) => ("declarations.list", declarations::list(state, id).await),
        (&Method::GET, ["devices", id, "declarations", identifier]) => {
            ("declarations.get", declarations::get(state, id, identifier).await)
        }
        (&Method::PUT, ["devices", id, "declarations", identifier]) => (
            "declarations.put",
            match body().await {
                Ok(b) => declarations::put(state, id, identifier, &b, &query).await,
                Err(r) => r,
            },
        ),
        (&Method::DELETE, ["devices", id, "declarations", identifier]) => {
            ("declarations.delete", declarations::delete(state, id, identifier, &query).await)
        }
        (&Method::GET, ["events"]) => ("events", events::list(state, &query).await),
        (&Method::GET, ["android", "status"]) => ("android.status", android::status(state).await),
        (&Method::POST, ["android", "signup-urls"]) => (
            "android.signup_urls.create",
            match body().await {
                Ok(b) => android::create_signup_url(state, &b).await,
                Err(r) => r,
            },
        ),
        (&Method::POST, ["android", "enrollment-tokens"]) => (
            "android.enrollment_tokens.create",
            match body().await {
                Ok(b) => android::create_enrollment_token(state, &b).await,
                Err(r) => r,
            },
        ),
        (&Method::PUT, ["android", "policies", id]) => (
            "android.policies.put",
            match body().await {
                Ok(b) => android::put_policy(state, id, &b, &query).await,
                Err(r) => r,
            },
        ),
        (&Method::GET, ["android", "devices"]) => ("android.devices.list", android::list_devices(state, &query).await),
        (&Method::GET, ["android", "devices", id]) => ("android.devices.get", android::get_device(state, id).await),
        (&Method::PUT, ["enqueue", ids]) => (
            "nanomdm.enqueue",
            match body().await {
                Ok(b) => nanomdm::enqueue(state, ids, &b, &query).await,
                Err(r) => r,
            },
        ),
        (&Method::GET | &Method::POST, ["push", ids]) => ("nanomdm.push", nanomdm::push(state, ids).await),
        (&Method::PUT, ["pushcert"]) => (
            "nanomdm.pushcert.put",
            match body().await {
                Ok(b) => nanomdm::put_pushcert(state, &b, &query).await,
                Err(r) => r,
            },
        ),
        (&Method::GET, ["pushcert"]) => ("nanomdm.pushcert.get", nanomdm::get_pushcert(state, &query).await),
        (&Method::PUT, ["enrollment", "corporate-identifiers"]) => (
            "enrollment.corporate_identifiers.put",
            match body().await {
                Ok(b) => enrollment::put_corporate_identifiers(state, &query, &b).await,
                Err(r) => r,
            },
        ),
        (&Method::GET, ["enrollment", "corporate-identifiers"]) => {
            ("enrollment.corporate_identifiers.get", enrollment::get_corporate_identifiers(state, &query).await)
        }
        (&Method::POST, ["scep", "challenges"]) => (
            "scep.challenges.create",
            match body().await {
                Ok(b) => scep::create_challenge(state, &b).await,
                Err(r) => r,
            },
        ),
        (
            _,
            ["commands"]
            | ["commands", _]
            | ["devices"]
            | ["devices", _]
            | ["devices", _, "declarations"]
            | ["devices", _, "declarations", _]
            | ["events"]
            | ["enqueue", _]
            | ["push", _]
            | ["pushcert"]
            | ["scep", "challenges"]
            | ["enrollment", "corporate-identifiers"]
            | ["android", "status"]
            | ["android", "signup-urls"]
            | ["android", "enrollment-tokens"]
            | ["android", "policies", _]
            | ["android", "devices"]
            | ["android", "devices", _],
        ) => (
            "method_not_allowed",
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this endpoint"),
        ),
        _ => ("unknown", json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")),
    }
}

/// Store failures seen by the API: 503, so clients retry.
fn store_error(e: crate::store::StoreError) -> Reply {
    tracing::error!(error = %e, "store error in API");
    json_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the store could not complete the request; retry")
}

fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix).ok()?.format(&time::format_description::well_known::Rfc3339).ok()
}
