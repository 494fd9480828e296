//! Who is enrolling: the credential in the `wsse:Security` header of `GetPolicies` and
//! `RequestSecurityToken`, checked as `windows.auth_policy` says.
//!
//! - OnPremise: `UsernameToken` with the UPN and the enrollment secret, or whatever the
//!   credential hook accepts when one is configured.
//! - Federated: a bearer JWT as `DeviceEnrollmentUserToken` (raw or base64), verified against
//!   the configured keys, issuer, audiences and expiry; the UPN comes from its claims.
//!
//! Then, for both, the UPN's domain must be allowed (`windows.allowed_domains`).

use mdm_certs::jwt::{JwtRules, verify_jwt};
use mdm_windows::enroll::{AuthPolicy, ErrorType, Security, Subcode};

use super::reply::Refusal;
use super::service::{HookAnswer, WindowsEnrollment};
use crate::config::WindowsAuthPolicy;

/// A user that may enroll.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    /// Lower case.
    pub upn: String,
    pub policy: AuthPolicy,
}

/// The policy offered in discovery.
pub(crate) fn offered(svc: &WindowsEnrollment) -> AuthPolicy {
    match svc.config.auth_policy {
        WindowsAuthPolicy::Onpremise => AuthPolicy::OnPremise,
        WindowsAuthPolicy::Federated => AuthPolicy::Federated,
    }
}

fn authentication(reason: &'static str, message: &str) -> Refusal {
    Refusal::generic(Subcode::AUTHENTICATION, reason, message)
}

pub(crate) async fn authenticate(
    svc: &WindowsEnrollment,
    security: Option<&Security>,
    operation: &str,
    device_id: Option<&str>,
    now: i64,
) -> Result<Authenticated, Refusal> {
    let security = security.ok_or_else(|| {
        Refusal::generic(Subcode::INVALID_SECURITY, "no_security_header", "the request has no wsse:Security header")
    })?;
    let user = match svc.config.auth_policy {
        WindowsAuthPolicy::Onpremise => on_premise(svc, security, operation, device_id).await?,
        WindowsAuthPolicy::Federated => federated(svc, security, now)?,
    };
    check_domain(svc, &user.upn)?;
    Ok(user)
}

async fn on_premise(
    svc: &WindowsEnrollment,
    security: &Security,
    operation: &str,
    device_id: Option<&str>,
) -> Result<Authenticated, Refusal> {
    let token = security
        .username_token
        .as_ref()
        .ok_or_else(|| authentication("no_username_token", "OnPremise authentication needs a wsse:UsernameToken"))?;
    let upn = token.username.trim().to_lowercase();
    if upn.is_empty() {
        return Err(authentication("empty_username", "the user name is empty"));
    }
    if svc.has_hook() {
        match svc.ask_hook(&upn, &token.password, operation, device_id).await {
            Ok(HookAnswer::Allowed) => {}
            Ok(HookAnswer::WrongCredentials) => {
                return Err(authentication("wrong_credentials", "the user name or password is not accepted")
                    .detail(format!("the credential hook refused the credentials of {upn}")));
            }
            Ok(HookAnswer::Denied { error_type, message }) => {
                // Only types the client knows; anything else becomes the generic one.
                let error_type = error_type
                    .filter(|t| t.hresult().is_some())
                    .unwrap_or_else(|| ErrorType::of_subcode(&Subcode::AUTHORIZATION));
                let message = message.unwrap_or_else(|| format!("{upn} may not enroll a device"));
                return Err(Refusal::new(Subcode::AUTHORIZATION, error_type, "hook_denied", message)
                    .detail(format!("the credential hook denied {upn}")));
            }
            Err(e) => {
                return Err(Refusal::generic(
                    Subcode::ENROLLMENT_SERVER,
                    "credential_hook_failed",
                    "the credentials could not be checked; try again later",
                )
                .detail(e.to_string()));
            }
        }
    } else if !svc.secret_matches(&token.password) {
        return Err(authentication("wrong_credentials", "the user name or password is not accepted")
            .detail(format!("wrong enrollment secret for {upn}")));
    }
    Ok(Authenticated { upn, policy: AuthPolicy::OnPremise })
}

/// The JWT in a `DeviceEnrollmentUserToken`: the token text itself, or base64 of it.
fn jwt_text(value: &str) -> Option<String> {
    let v = value.trim();
    if v.split('.').count() == 3 {
        return Some(v.to_owned());
    }
    let bytes = mdm_windows::enroll::soap::decode_base64(v)?;
    let text = String::from_utf8(bytes).ok()?;
    (text.trim().split('.').count() == 3).then(|| text.trim().to_owned())
}

fn federated(svc: &WindowsEnrollment, security: &Security, now: i64) -> Result<Authenticated, Refusal> {
    let token = security
        .user_token()
        .ok_or_else(|| authentication("no_user_token", "Federated authentication needs a DeviceEnrollmentUserToken"))?;
    let jwt =
        jwt_text(&token.value).ok_or_else(|| authentication("bad_user_token", "the security token is not a JWT"))?;
    let f = &svc.config.federated;
    let rules = JwtRules {
        issuer: f.issuer.as_deref().unwrap_or_default(),
        audiences: &f.audiences,
        now,
        leeway_s: i64::try_from(f.leeway_s).unwrap_or(0),
    };
    let claims = verify_jwt(&jwt, &svc.jwt_keys, &rules)
        .map_err(|e| authentication(e.reason(), "the security token is not accepted").detail(e.to_string()))?;
    let upn = [f.upn_claim.as_str(), "preferred_username", "unique_name", "email"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(|v| v.as_str()))
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| authentication("jwt_no_upn", "the security token names no user"))?;
    Ok(Authenticated { upn, policy: AuthPolicy::Federated })
}

fn check_domain(svc: &WindowsEnrollment, upn: &str) -> Result<(), Refusal> {
    let allowed = &svc.config.allowed_domains;
    if allowed.is_empty() {
        return Ok(());
    }
    let domain = upn.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    if allowed.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
        Ok(())
    } else {
        Err(Refusal::generic(
            Subcode::AUTHORIZATION,
            "domain_not_allowed",
            format!("{upn} may not enroll devices here"),
        ))
    }
}
