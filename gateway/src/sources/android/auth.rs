//! Who may push: Pub/Sub push requests carry the subscription's `?token=` (the push endpoint
//! URL), Google's OIDC bearer token for the subscription's service account, or both, as
//! `android.pubsub_auth` says.
//!
//! - Token: compared with the current and the previous token (rotation), by SHA-256 digest in
//!   constant time, so neither the value nor its length leaks through timing.
//! - OIDC: `Authorization: Bearer <JWT>`, RS256 only, signed by one of `android.oidc.keys`;
//!   `iss` one of `android.oidc.issuers`, `aud` `android.oidc.audience`, `email` the
//!   subscription's service account with `email_verified` true, `exp` and `iat` with
//!   `android.oidc.leeway_s`.
//!
//! Missing credentials are 401, wrong ones 403 (when one of two required credentials is
//! missing and the other wrong: 403).
//!
//! Pub/Sub sends the same OIDC token with every push until it nears expiry, so a token that
//! passed every check is remembered (by its SHA-256, at most [`VERIFIED_CACHE`] of them) with the
//! span of time its claims allow (`iat`/`nbf` to `exp`, with the leeway): within that span it is
//! accepted again without a signature check. Refused tokens are never remembered.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use mdm_certs::jwt::{self, JwtError, JwtKey, JwtRules};
use sha2::{Digest, Sha256};

use crate::config::{AndroidConfig, ConfigError, PubSubAuth};
use crate::pki;

/// Why a push was not authenticated. `reason` is a stable label for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No credentials of a required kind: 401.
    Missing { reason: &'static str },
    /// Credentials given but not accepted: 403.
    Wrong { reason: &'static str, detail: String },
}

#[cfg(test)]
impl AuthFailure {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing { reason } | AuthFailure::Wrong { reason, .. } => reason,
        }
    }
}

impl AuthFailure {
    fn wrong(reason: &'static str, detail: impl Into<String>) -> Self {
        AuthFailure::Wrong { reason, detail: detail.into() }
    }
}

struct Oidc {
    keys: Vec<JwtKey>,
    audience: String,
    issuers: Vec<String>,
    email: String,
    leeway_s: i64,
}

/// How many verified OIDC tokens are remembered (Pub/Sub uses one per subscription at a time).
const VERIFIED_CACHE: usize = 64;

/// OIDC tokens that passed every check: SHA-256 → (first, last) Unix second they are valid.
#[derive(Default)]
struct Verified(Mutex<HashMap<[u8; 32], (i64, i64)>>);

impl Verified {
    fn valid(&self, digest: &[u8; 32], now: i64) -> bool {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(digest).is_some_and(|(from, until)| (*from..=*until).contains(&now))
    }

    fn remember(&self, digest: [u8; 32], span: (i64, i64), now: i64) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= VERIFIED_CACHE {
            map.retain(|_, (_, until)| *until >= now);
            if map.len() >= VERIFIED_CACHE {
                map.clear();
            }
        }
        map.insert(digest, span);
    }
}

/// The push authenticator, built at start from `[android]`.
pub(crate) struct PushAuth {
    mode: PubSubAuth,
    /// SHA-256 of the accepted tokens: current first, then the previous one.
    tokens: Vec<[u8; 32]>,
    oidc: Option<Oidc>,
    verified: Verified,
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushAuth")
            .field("mode", &self.mode)
            .field("tokens", &self.tokens.len())
            .field("oidc_keys", &self.oidc.as_ref().map(|o| o.keys.len()))
            .finish()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn config_err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), message: message.into() }
}

impl PushAuth {
    /// `data_token` is `<data_dir>/pubsub-token`, used unless `android.pubsub_token_file` is set.
    pub(crate) fn new(config: &AndroidConfig, data_token: &str) -> Result<PushAuth, ConfigError> {
        let current = match &config.pubsub_token_file {
            Some(p) => pki::read_secret(p).map_err(|e| config_err("android.pubsub_token_file", e.to_string()))?,
            None => data_token.to_owned(),
        };
        let mut tokens = vec![digest(&current)];
        if let Some(p) = &config.pubsub_previous_token_file {
            let previous =
                pki::read_secret(p).map_err(|e| config_err("android.pubsub_previous_token_file", e.to_string()))?;
            tokens.push(digest(&previous));
        }
        let oidc = if config.pubsub_auth == PubSubAuth::Token {
            None
        } else {
            let o = &config.oidc;
            let mut keys = Vec::new();
            for (i, path) in o.keys.iter().enumerate() {
                let key = format!("android.oidc.keys[{i}]");
                let bytes = std::fs::read(path).map_err(|e| config_err(&key, format!("{}: {e}", path.display())))?;
                let parsed = if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                    jwt::keys_from_jwks(&bytes)
                } else {
                    jwt::keys_from_pem(&bytes)
                }
                .map_err(|e| config_err(&key, format!("{}: {e}", path.display())))?;
                keys.extend(parsed);
            }
            Some(Oidc {
                keys,
                audience: o.audience.clone().unwrap_or_default(),
                issuers: o.issuers.clone(),
                email: o.service_account_email.clone().unwrap_or_default(),
                leeway_s: i64::try_from(o.leeway_s).unwrap_or(i64::MAX),
            })
        };
        Ok(PushAuth { mode: config.pubsub_auth, tokens, oidc, verified: Verified::default() })
    }

    /// Checks a push request's credentials at `now` (Unix seconds).
    pub(crate) fn check(&self, headers: &HeaderMap, query: Option<&str>, now: i64) -> Result<(), AuthFailure> {
        let token = || self.check_token(query);
        let bearer = || self.check_bearer(headers, now);
        match self.mode {
            PubSubAuth::Token => token(),
            PubSubAuth::Oidc => bearer(),
            PubSubAuth::TokenAndOidc => match (token(), bearer()) {
                (Ok(()), Ok(())) => Ok(()),
                // A wrong credential outweighs a missing one.
                (Err(e @ AuthFailure::Wrong { .. }), _) | (_, Err(e @ AuthFailure::Wrong { .. })) => Err(e),
                (Err(e), _) | (_, Err(e)) => Err(e),
            },
        }
    }

    fn check_token(&self, query: Option<&str>) -> Result<(), AuthFailure> {
        let given = query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned());
        let Some(given) = given.filter(|g| !g.is_empty()) else {
            return Err(AuthFailure::Missing { reason: "no_token" });
        };
        let given = digest(&given);
        // Every candidate is compared, each in constant time.
        let matched = self
            .tokens
            .iter()
            .fold(0u8, |found, t| found | u8::from(t.iter().zip(&given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0));
        if matched == 1 { Ok(()) } else { Err(AuthFailure::wrong("wrong_token", "the push token is not accepted")) }
    }

    fn check_bearer(&self, headers: &HeaderMap, now: i64) -> Result<(), AuthFailure> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(AuthFailure::Missing { reason: "no_bearer" });
        };
        let value = value.to_str().map_err(|_| AuthFailure::wrong("bad_authorization", "not ASCII"))?;
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => t.trim(),
            _ => return Err(AuthFailure::wrong("bad_authorization", "the Authorization header is not a Bearer token")),
        };
        let Some(oidc) = &self.oidc else {
            return Err(AuthFailure::wrong("oidc_not_configured", "OIDC is not configured"));
        };
        let key = digest(token);
        if self.verified.valid(&key, now) {
            return Ok(());
        }
        let span = verify_oidc(oidc, token, now)?;
        self.verified.remember(key, span, now);
        Ok(())
    }
}

fn jwt_failure(e: JwtError) -> AuthFailure {
    AuthFailure::wrong(e.reason(), e.to_string())
}

/// Verifies `token` at `now`; on success, the span of Unix seconds in which its claims pass
/// these same checks.
fn verify_oidc(oidc: &Oidc, token: &str, now: i64) -> Result<(i64, i64), AuthFailure> {
    // Google signs push tokens with RS256; nothing else is accepted here.
    let header = token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .ok_or_else(|| jwt_failure(JwtError::Malformed("the header is not base64url JSON")))?;
    match header.get("alg").and_then(|a| a.as_str()) {
        Some("RS256") => {}
        other => return Err(jwt_failure(JwtError::UnsupportedAlgorithm(format!("{other:?}")))),
    }
    let audiences = [oidc.audience.clone()];
    let mut last = JwtError::WrongIssuer(String::new());
    let mut claims = None;
    for issuer in &oidc.issuers {
        let rules = JwtRules { issuer, audiences: &audiences, now, leeway_s: oidc.leeway_s };
        match jwt::verify_jwt(token, &oidc.keys, &rules) {
            Ok(c) => {
                claims = Some(c);
                break;
            }
            Err(e @ JwtError::WrongIssuer(_)) => last = e,
            Err(e) => return Err(jwt_failure(e)),
        }
    }
    let claims = claims.ok_or_else(|| jwt_failure(last))?;
    let iat = claims
        .get("iat")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| jwt_failure(JwtError::MissingClaim("iat")))? as i64;
    if iat > now.saturating_add(oidc.leeway_s) {
        return Err(AuthFailure::wrong("jwt_issued_in_future", format!("iat {iat} is after now ({now})")));
    }
    let email = claims.get("email").and_then(serde_json::Value::as_str).unwrap_or_default();
    if email.is_empty() || !email.eq_ignore_ascii_case(&oidc.email) {
        return Err(AuthFailure::wrong("jwt_wrong_email", format!("email {email:?} is not the push service account")));
    }
    let verified = match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    };
    if !verified {
        return Err(AuthFailure::wrong("jwt_email_not_verified", "email_verified is not true"));
    }
    // `verify_jwt` checked `exp` (required) and `nbf` (when present) with the leeway.
    let exp = claims.get("exp").and_then(serde_json::Value::as_f64).map_or(now, |e| e as i64);
    let nbf = claims.get("nbf").and_then(serde_json::Value::as_f64).map_or(i64::MIN, |n| n as i64);
    let from = iat.max(nbf).saturating_sub(oidc.leeway_s).min(now);
    Ok((from, exp.saturating_add(oidc.leeway_s).max(now)))
}

#[cfg(test)]
mod tests {
    use mdm_certs::{PKey, Private};
    use serde_json::json;

    use super::*;

    fn rsa() -> PKey<Private> {
        PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("pkey")
    }

    fn auth(mode: PubSubAuth, key: &PKey<Private>) -> PushAuth {
        let public = PKey::public_key_from_der(&key.public_key_to_der().expect("der")).expect("public");
        PushAuth {
            mode,
            tokens: vec![digest("current"), digest("previous")],
            oidc: Some(Oidc {
                keys: vec![JwtKey { kid: None, key: public }],
                audience: "https://gw.example/android/pubsub".into(),
                issuers: vec!["https://accounts.google.com".into(), "accounts.google.com".into()],
                email: "push@p.iam.gserviceaccount.com".into(),
                leeway_s: 60,
            }),
            verified: Verified::default(),
        }
    }

    fn claims(now: i64) -> serde_json::Value {
        json!({"iss": "accounts.google.com", "aud": "https://gw.example/android/pubsub",
               "email": "push@p.iam.gserviceaccount.com", "email_verified": true, "iat": now, "exp": now + 3600})
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        h
    }

    #[test]
    fn tokens_current_and_previous() {
        let a = auth(PubSubAuth::Token, &rsa());
        let none = HeaderMap::new();
        assert_eq!(a.check(&none, Some("token=current"), 0), Ok(()));
        assert_eq!(a.check(&none, Some("a=b&token=previous"), 0), Ok(()));
        assert_eq!(a.check(&none, Some("token=%63urrent"), 0), Ok(()), "percent-decoded");
        assert_eq!(a.check(&none, Some("token=other"), 0).unwrap_err().reason(), "wrong_token");
        assert_eq!(a.check(&none, Some("token=curren"), 0).unwrap_err().reason(), "wrong_token");
        assert!(matches!(a.check(&none, None, 0), Err(AuthFailure::Missing { .. })));
        assert!(matches!(a.check(&none, Some("token="), 0), Err(AuthFailure::Missing { .. })));
    }

    #[test]
    fn oidc_claims() {
        let key = rsa();
        let a = auth(PubSubAuth::Oidc, &key);
        let now = 1_800_000_000;
        let sign = |c: &serde_json::Value| jwt::sign_jwt(c, &key, None).expect("sign");
        assert_eq!(a.check(&bearer(&sign(&claims(now))), None, now), Ok(()));
        let reason = |c: serde_json::Value| a.check(&bearer(&sign(&c)), None, now).unwrap_err().reason();
        let mut c = claims(now);
        c["aud"] = json!("https://other");
        assert_eq!(reason(c), "jwt_wrong_audience");
        let mut c = claims(now);
        c["iss"] = json!("https://evil.example");
        assert_eq!(reason(c), "jwt_wrong_issuer");
        let mut c = claims(now);
        c["email"] = json!("someone@else.com");
        assert_eq!(reason(c), "jwt_wrong_email");
        let mut c = claims(now);
        c["email_verified"] = json!(false);
        assert_eq!(reason(c), "jwt_email_not_verified");
        assert_eq!(reason(claims(now - 7200)), "jwt_expired");
        assert_eq!(reason(claims(now + 600)), "jwt_issued_in_future");
        let mut c = claims(now);
        c.as_object_mut().expect("object").remove("iat");
        assert_eq!(reason(c), "jwt_missing_claim");
        let other = rsa();
        let forged = jwt::sign_jwt(&claims(now), &other, None).expect("sign");
        assert_eq!(a.check(&bearer(&forged), None, now).unwrap_err().reason(), "jwt_bad_signature");
        let ec = PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).expect("group"),
            )
            .expect("ec"),
        )
        .expect("pkey");
        let es = jwt::sign_jwt(&claims(now), &ec, None).expect("sign");
        assert_eq!(a.check(&bearer(&es), None, now).unwrap_err().reason(), "jwt_algorithm");
        assert!(matches!(a.check(&HeaderMap::new(), None, now), Err(AuthFailure::Missing { .. })));
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Basic eDp5".parse().expect("header"));
        assert_eq!(a.check(&h, None, now).unwrap_err().reason(), "bad_authorization");
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let key = rsa();
        let a = auth(PubSubAuth::Oidc, &key);
        let now = 1_800_000_000;
        let token = jwt::sign_jwt(&claims(now), &key, None).expect("sign");
        assert_eq!(a.check(&bearer(&token), None, now), Ok(()));
        assert!(a.verified.valid(&digest(&token), now + 10), "remembered");
        // Within its span it passes from memory; past `exp` + leeway it is checked again, and refused.
        assert_eq!(a.check(&bearer(&token), None, now + 3600 + 60), Ok(()));
        assert_eq!(a.check(&bearer(&token), None, now + 3600 + 61).unwrap_err().reason(), "jwt_expired");
        // Before `iat` - leeway: checked again, and refused.
        assert_eq!(a.check(&bearer(&token), None, now - 61).unwrap_err().reason(), "jwt_issued_in_future");
        // A refused token is never remembered; a wrong token is not taken for a remembered one.
        let forged = jwt::sign_jwt(&claims(now), &rsa(), None).expect("sign");
        for _ in 0..2 {
            assert_eq!(a.check(&bearer(&forged), None, now).unwrap_err().reason(), "jwt_bad_signature");
        }
        assert!(!a.verified.valid(&digest(&forged), now));
        // Bounded: old entries make room.
        for i in 0..(VERIFIED_CACHE as i64 + 5) {
            a.verified.remember(digest(&i.to_string()), (0, now + i), now);
        }
        assert!(a.verified.0.lock().unwrap().len() <= VERIFIED_CACHE);
    }

    #[test]
    fn unusable_key_files_are_configuration_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = dir.path().join("certs.json");
        std::fs::write(&garbage, "{\"keys\": []}").expect("write");
        let mut config = AndroidConfig { pubsub_auth: PubSubAuth::Oidc, ..AndroidConfig::default() };
        config.oidc.keys = vec![garbage];
        let e = PushAuth::new(&config, "t").unwrap_err();
        assert_eq!(e.key, "android.oidc.keys[0]");
        let missing = dir.path().join("previous");
        let config = AndroidConfig { pubsub_previous_token_file: Some(missing), ..AndroidConfig::default() };
        assert_eq!(PushAuth::new(&config, "t").unwrap_err().key, "android.pubsub_previous_token_file");
        // Token mode reads no key file.
        let a = PushAuth::new(&AndroidConfig::default(), "t").expect("token only");
        assert!(a.oidc.is_none());
    }

    #[test]
    fn token_and_oidc_needs_both() {
        let key = rsa();
        let a = auth(PubSubAuth::TokenAndOidc, &key);
        let now = 1_800_000_000;
        let good = bearer(&jwt::sign_jwt(&claims(now), &key, None).expect("sign"));
        assert_eq!(a.check(&good, Some("token=current"), now), Ok(()));
        assert!(matches!(a.check(&good, None, now), Err(AuthFailure::Missing { reason: "no_token" })));
        assert!(matches!(a.check(&HeaderMap::new(), Some("token=current"), now), Err(AuthFailure::Missing { .. })));
        assert_eq!(a.check(&HeaderMap::new(), Some("token=bad"), now).unwrap_err().reason(), "wrong_token");
    }
}
