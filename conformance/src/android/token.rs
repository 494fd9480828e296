//! The OAuth 2.0 token endpoint's checks for the JWT bearer grant (RFC 7523), answered the way
//! `oauth2.googleapis.com/token` answers: `invalid_grant` and friends with a description.

use openssl::pkey::{PKey, Public};

use super::key::{ANDROID_MANAGEMENT_SCOPE, JWT_BEARER_GRANT, JwtError, verify_rs256};

/// Google accepts assertions valid for at most an hour.
const MAX_LIFETIME: i64 = 3600;
/// Clock skew tolerated on `iat`.
const SKEW: i64 = 300;

/// An OAuth error reply (RFC 6749 section 5.2): HTTP 400 with `error` and `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OauthError {
    pub(super) error: &'static str,
    pub(super) description: String,
}

fn refuse(error: &'static str, description: &str) -> OauthError {
    OauthError { error, description: description.to_owned() }
}

/// What the token endpoint checks against.
#[derive(Debug)]
pub(super) struct GrantCheck<'a> {
    pub(super) client_email: &'a str,
    pub(super) private_key_id: &'a str,
    pub(super) public_key: &'a PKey<Public>,
    /// Every URL the endpoint is reachable at (`aud` must be one of them).
    pub(super) audiences: &'a [String],
    pub(super) now: i64,
}

/// Checks a form-encoded token request; `Ok` means an access token is due.
pub(super) fn check_grant(form: &[u8], check: &GrantCheck<'_>) -> Result<(), OauthError> {
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_bytes(form).map_err(|_| refuse("invalid_request", "Malformed request body."))?;
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match get("grant_type") {
        None => return Err(refuse("unsupported_grant_type", "Invalid grant_type: ")),
        Some(JWT_BEARER_GRANT) => {}
        Some(other) => return Err(refuse("unsupported_grant_type", &format!("Invalid grant_type: {other}"))),
    }
    let Some(assertion) = get("assertion") else {
        return Err(refuse("invalid_request", "Missing required parameter: assertion"));
    };
    let (header, claims) = verify_rs256(assertion, check.public_key).map_err(|e| match e {
        JwtError::Malformed => refuse("invalid_grant", "Invalid JWT: malformed."),
        JwtError::Algorithm => refuse("invalid_grant", "Invalid JWT: unsupported algorithm."),
        JwtError::Signature => refuse("invalid_grant", "Invalid JWT Signature."),
    })?;
    if let Some(kid) = header["kid"].as_str()
        && kid != check.private_key_id
    {
        return Err(refuse("invalid_grant", "Invalid JWT Signature."));
    }
    if claims["iss"].as_str() != Some(check.client_email) {
        return Err(refuse("invalid_grant", "Invalid grant: account not found"));
    }
    let aud_ok = claims["aud"].as_str().is_some_and(|a| check.audiences.iter().any(|x| x == a));
    if !aud_ok {
        return Err(refuse("invalid_grant", "Invalid JWT: Failed audience check."));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(refuse("invalid_grant", "Invalid JWT: iat and exp are required."));
    };
    if exp <= iat || exp - iat > MAX_LIFETIME || iat > check.now + SKEW || exp <= check.now {
        return Err(refuse(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let scopes = claims["scope"].as_str().unwrap_or_default();
    if scopes.is_empty() {
        return Err(refuse("invalid_scope", "Invalid OAuth scope or ID token audience provided."));
    }
    if !scopes.split(' ').any(|s| s == ANDROID_MANAGEMENT_SCOPE) {
        return Err(refuse(
            "invalid_scope",
            &format!(
                "The scope {scopes:?} does not include {ANDROID_MANAGEMENT_SCOPE} (the emulator only serves AMAPI)."
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ServiceAccountKey;
    use super::*;

    fn form(assertion: &str) -> Vec<u8> {
        serde_urlencoded::to_string([("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)]).unwrap().into_bytes()
    }

    #[test]
    fn grant_rules() {
        let key = ServiceAccountKey::generate("p-emu", "https://h/token").unwrap();
        let public = key.public_key().unwrap();
        let auds = vec!["https://h/token".to_owned()];
        let check = GrantCheck {
            client_email: &key.client_email,
            private_key_id: &key.private_key_id,
            public_key: &public,
            audiences: &auds,
            now: 10_000,
        };
        let good = key.assertion(ANDROID_MANAGEMENT_SCOPE, 10_000, 3600).unwrap();
        assert_eq!(check_grant(&form(&good), &check), Ok(()));
        let expired = key.assertion(ANDROID_MANAGEMENT_SCOPE, 5_000, 3600).unwrap();
        assert_eq!(check_grant(&form(&expired), &check).unwrap_err().error, "invalid_grant");
        let too_long = key.assertion(ANDROID_MANAGEMENT_SCOPE, 10_000, 7200).unwrap();
        assert_eq!(check_grant(&form(&too_long), &check).unwrap_err().error, "invalid_grant");
        let wrong_scope = key.assertion("https://www.googleapis.com/auth/cloud-platform", 10_000, 60).unwrap();
        assert_eq!(check_grant(&form(&wrong_scope), &check).unwrap_err().error, "invalid_scope");
        let wrong_aud = key.with_token_uri("https://other/token").assertion(ANDROID_MANAGEMENT_SCOPE, 10_000, 60);
        let e = check_grant(&form(&wrong_aud.unwrap()), &check).unwrap_err();
        assert_eq!(e.description, "Invalid JWT: Failed audience check.");
        let e = check_grant(b"grant_type=password&assertion=x", &check).unwrap_err();
        assert_eq!(e.error, "unsupported_grant_type");
    }
}
