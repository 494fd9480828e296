//! Windows enrollment (MS-MDE2): discovery (`GET`/`POST /EnrollmentServer/Discovery.svc`, any
//! Host: operators point `EnterpriseEnrollment.<domain>` at the gateway), the MS-XCEP policy
//! service (`POST /EnrollmentServer/Policy.svc`) and the MS-WSTEP enrollment service (`POST
//! /EnrollmentServer/Enrollment.svc`, Issue and Renew).
//!
//! Order of checks: path and method, body size (413), decoding (`MessageFormat`,
//! `InvalidSecurity`), service state (disabled: `NotSupported`; maintenance: `InMaintenance`),
//! credentials, the certificate request, then the store. Every refusal is a SOAP fault with a
//! `DeviceEnrollmentServiceError` detail, logged and counted; nothing is stored before the one
//! transaction that records the certificate, the enrollment and its event.
//!
//! Devices are stored as enrollments `windows:<DeviceID>`, bound (`cert_sha256`) to the issued
//! certificate, which the management endpoint then recognises as the TLS client certificate.

mod auth;
mod enroll;
mod reply;
mod service;

pub use reply::SOAP_CONTENT_TYPE;
pub use service::{DISCOVERY_PATH, ENROLLMENT_PATH, MANAGEMENT_PATH, POLICY_PATH, WindowsEnrollment};

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use mdm_windows::enroll::{
    DiscoverRequest, DiscoverResponse, ErrorType, GetPoliciesRequest, GetPoliciesResponse, RequestSecurityToken,
    RequestType, Subcode, ns,
};

use crate::AppState;
use crate::http_util::{BodyError, Reply, read_body, text};
use crate::server::ConnInfo;
use crate::telemetry;
use reply::Refusal;

/// Largest enrollment request read (real ones are a few kilobytes); also bounded by
/// `device.max_body_bytes`.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The version answered in `DiscoverResponse`: the protocol this service speaks, whatever later
/// version the client offers (Windows 11 25H2 sends 9.0).
pub const ENROLLMENT_VERSION: &str = "4.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Discovery,
    Policy,
    Enrollment,
}

impl Endpoint {
    /// The endpoint at `path`, compared without regard to case (Microsoft's examples write
    /// these paths in upper case).
    pub fn at(path: &str) -> Option<Endpoint> {
        [
            (DISCOVERY_PATH, Endpoint::Discovery),
            (POLICY_PATH, Endpoint::Policy),
            (ENROLLMENT_PATH, Endpoint::Enrollment),
        ]
        .into_iter()
        .find(|(p, _)| p.eq_ignore_ascii_case(path))
        .map(|(_, e)| e)
    }

    /// The action of the reply (faults included).
    fn response_action(self) -> &'static str {
        match self {
            Endpoint::Discovery => ns::ACTION_DISCOVER_RESPONSE,
            Endpoint::Policy => ns::ACTION_GET_POLICIES_RESPONSE,
            Endpoint::Enrollment => ns::ACTION_RSTRC,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discover",
            Endpoint::Policy => "policy",
            Endpoint::Enrollment => "enroll",
        }
    }
}

/// A refusal with what the fault needs to point back at the request (boxed: the error path
/// is the rare one).
struct Failed {
    refusal: Box<Refusal>,
    relates_to: Option<String>,
}

impl From<Refusal> for Failed {
    fn from(refusal: Refusal) -> Self {
        Failed { refusal: Box::new(refusal), relates_to: None }
    }
}

fn relating(relates_to: &Option<String>) -> impl Fn(Refusal) -> Failed + '_ {
    move |refusal| Failed { refusal: Box::new(refusal), relates_to: relates_to.clone() }
}

pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>, conn: &ConnInfo, endpoint: Endpoint) -> Reply {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let enabled = state.windows_enroll.config.enabled;
    match (endpoint, &parts.method) {
        (Endpoint::Discovery, &Method::GET) if enabled => {
            // Windows first checks that the discovery service exists with a plain GET.
            metrics::counter!(telemetry::DEVICE_REQUESTS, "platform" => "windows", "kind" => "discover_get", "code" => "200")
                .increment(1);
            return reply::empty_ok();
        }
        (Endpoint::Discovery, &Method::GET) => return text(StatusCode::NOT_FOUND, "Windows enrollment is disabled\n"),
        (_, &Method::POST) => {}
        _ => {
            let allow = if endpoint == Endpoint::Discovery { "GET, POST" } else { "POST" };
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow}\n"));
            r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            return r;
        }
    }
    let trace_id = crate::events::new_id();
    let mut kind = endpoint.kind();
    let limit = MAX_BODY_BYTES.min(state.config.device.max_body_bytes);
    let outcome = async {
        let body = read_body(&parts.headers, body, limit).await.map_err(|e| match e {
            BodyError::TooLarge { .. } => Refusal::generic(Subcode::MESSAGE_FORMAT, "body_too_large", e.to_string())
                .status(StatusCode::PAYLOAD_TOO_LARGE),
            BodyError::Read(_) => Refusal::generic(Subcode::MESSAGE_FORMAT, "body_unreadable", e.to_string()),
        })?;
        let now = state.clock.unix();
        match endpoint {
            Endpoint::Discovery => discover(state, &body, &trace_id),
            Endpoint::Policy => policy(state, &body, now, &trace_id).await,
            Endpoint::Enrollment => {
                let rst = RequestSecurityToken::decode(&body).map_err(Refusal::from)?;
                let relates_to = rst.message_id.clone();
                service_open(state).map_err(relating(&relates_to))?;
                match rst.request_type {
                    RequestType::Issue => enroll::issue_request(state, &rst, now, &trace_id).await,
                    RequestType::Renew => {
                        kind = "renew";
                        enroll::renew_request(state, &rst, &parts.headers, &body, conn, now, &trace_id).await
                    }
                }
                .map_err(relating(&relates_to))
            }
        }
    }
    .await;
    let reply = match outcome {
        Ok(bytes) => {
            metrics::counter!(telemetry::DEVICE_REQUESTS, "platform" => "windows", "kind" => kind, "code" => "200")
                .increment(1);
            reply::soap(StatusCode::OK, bytes)
        }
        Err(Failed { refusal: r, relates_to }) => {
            if r.subcode == Subcode::INTERNAL_SERVICE_FAULT {
                tracing::error!(platform = "windows", kind, reason = r.reason, detail = %r.detail, trace_id, client = ?conn.client_ip(), "Windows enrollment request failed");
            } else {
                tracing::warn!(
                    platform = "windows", kind, reason = r.reason, subcode = %r.subcode, error_type = %r.error_type,
                    detail = %r.detail, trace_id, client = ?conn.client_ip(), "Windows enrollment request refused"
                );
            }
            metrics::counter!(telemetry::DEVICE_REJECTS, "platform" => "windows", "reason" => r.reason).increment(1);
            let body = r.fault(&trace_id).encode(endpoint.response_action(), relates_to.as_deref());
            reply::soap(r.status, body)
        }
    };
    metrics::histogram!(telemetry::DEVICE_REQUEST_SECONDS, "platform" => "windows")
        .record(started.elapsed().as_secs_f64());
    reply
}

/// Disabled or in maintenance: the fault to answer every policy and enrollment request with.
fn service_open(state: &AppState) -> Result<(), Refusal> {
    let c = &state.windows_enroll.config;
    if !c.enabled {
        return Err(Refusal::new(
            Subcode::ENROLLMENT_SERVER,
            ErrorType::NOT_SUPPORTED,
            "enrollment_disabled",
            "this server does not enroll Windows devices",
        ));
    }
    if c.maintenance {
        return Err(Refusal::new(
            Subcode::ENROLLMENT_SERVER,
            ErrorType::IN_MAINTENANCE,
            "maintenance",
            "the enrollment service is in maintenance; try again later",
        ));
    }
    Ok(())
}

fn discover(state: &AppState, body: &[u8], trace_id: &str) -> Result<Vec<u8>, Failed> {
    let req = DiscoverRequest::decode(body).map_err(Refusal::from)?;
    let relates_to = req.message_id.clone();
    let svc = &state.windows_enroll;
    if !svc.config.enabled {
        return Err(relating(&relates_to)(Refusal::new(
            Subcode::ENROLLMENT_SERVER,
            ErrorType::NOT_SUPPORTED,
            "enrollment_disabled",
            "this server does not enroll Windows devices",
        )));
    }
    let offered = auth::offered(svc);
    if !req.auth_policies.is_empty() && !req.auth_policies.contains(&offered) {
        let theirs: Vec<&str> = req.auth_policies.iter().map(|p| p.as_str()).collect();
        return Err(relating(&relates_to)(Refusal::new(
            Subcode::AUTHENTICATION,
            ErrorType::NOT_SUPPORTED,
            "auth_policy_not_supported",
            format!("this server authenticates with {offered}; the device offers {}", theirs.join(", ")),
        )));
    }
    let federated = offered == mdm_windows::enroll::AuthPolicy::Federated;
    let response = DiscoverResponse {
        auth_policy: offered,
        enrollment_version: Some(ENROLLMENT_VERSION.into()),
        enrollment_policy_service_url: Some(svc.url(POLICY_PATH)),
        enrollment_service_url: svc.url(ENROLLMENT_PATH),
        authentication_service_url: if federated { svc.config.federated.authentication_url.clone() } else { None },
    };
    tracing::debug!(platform = "windows", email = ?req.email_address, version = %req.request_version.text, trace_id, "discovery answered");
    Ok(response.encode(relates_to.as_deref(), trace_id))
}

async fn policy(state: &AppState, body: &[u8], now: i64, trace_id: &str) -> Result<Vec<u8>, Failed> {
    let req = GetPoliciesRequest::decode(body).map_err(Refusal::from)?;
    let relates_to = req.message_id.clone();
    let fail = relating(&relates_to);
    service_open(state).map_err(&fail)?;
    let device = req.context.get("DeviceID");
    auth::authenticate(&state.windows_enroll, req.security.as_ref(), "policy", device, now).await.map_err(&fail)?;
    Ok(GetPoliciesResponse::windows_default().encode(relates_to.as_deref(), trace_id))
}
