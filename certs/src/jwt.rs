//! Bearer JSON Web Tokens (RFC 7519) from an identity provider, verified against keys the
//! operator configured: the federated authentication of Windows enrollment.
//!
//! Accepted: JWS compact serialisation signed with RS256/384/512, PS256/384/512 or
//! ES256/384/512. Refused: `none`, HMAC (no shared secrets here), anything else. The claims
//! `iss` (exact), `aud` (one of the accepted audiences; string or array), `exp` (required) and
//! `nbf` (when present) are checked at `now`, with a leeway.
//!
//! What it does not do: fetch keys (the caller reads PEM or JWKS files), read the clock.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Verifier};
use openssl::x509::X509;
use serde_json::{Map, Value};

/// A verification key, optionally named (`kid`).
#[derive(Clone)]
pub struct JwtKey {
    pub kid: Option<String>,
    pub key: PKey<Public>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).field("type", &self.key.id()).finish()
    }
}

/// Why a token (or a key file) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("no configured key can verify this token")]
    NoKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token expired at {0}")]
    Expired(i64),
    #[error("the token is not valid before {0}")]
    NotYetValid(i64),
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("issuer {0:?} is not the configured one")]
    WrongIssuer(String),
    #[error("audience {0} is not an accepted one")]
    WrongAudience(String),
    #[error("key file: {0}")]
    Keys(String),
}

impl JwtError {
    /// A stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "jwt_malformed",
            JwtError::UnsupportedAlgorithm(_) => "jwt_algorithm",
            JwtError::NoKey => "jwt_no_key",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::Expired(_) => "jwt_expired",
            JwtError::NotYetValid(_) => "jwt_not_yet_valid",
            JwtError::MissingClaim(_) => "jwt_missing_claim",
            JwtError::WrongIssuer(_) => "jwt_wrong_issuer",
            JwtError::WrongAudience(_) => "jwt_wrong_audience",
            JwtError::Keys(_) => "jwt_keys",
        }
    }
}

fn keys_err(e: impl std::fmt::Display) -> JwtError {
    JwtError::Keys(e.to_string())
}

/// Keys from PEM text: any number of `PUBLIC KEY` and `CERTIFICATE` blocks.
pub fn keys_from_pem(pem: &[u8]) -> Result<Vec<JwtKey>, JwtError> {
    let text = std::str::from_utf8(pem).map_err(|_| keys_err("not UTF-8"))?;
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block[11..].find("-----").ok_or_else(|| keys_err("unterminated PEM header"))? + 11;
        let label = &block[11..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block.find(&end_marker).ok_or_else(|| keys_err(format!("no END line for {label}")))?;
        let one = &block[..end + end_marker.len()];
        let key = match label {
            "CERTIFICATE" => X509::from_pem(one.as_bytes()).and_then(|c| c.public_key()).map_err(keys_err)?,
            "PUBLIC KEY" | "RSA PUBLIC KEY" => PKey::public_key_from_pem(one.as_bytes()).map_err(keys_err)?,
            other => return Err(keys_err(format!("unexpected PEM block {other}"))),
        };
        keys.push(JwtKey { kid: None, key });
        rest = &block[end + end_marker.len()..];
    }
    if keys.is_empty() {
        return Err(keys_err("no PUBLIC KEY or CERTIFICATE block"));
    }
    Ok(keys)
}

fn b64url(v: &Value, what: &'static str) -> Result<Vec<u8>, JwtError> {
    let s = v.as_str().ok_or_else(|| keys_err(format!("{what} is not a string")))?;
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| keys_err(format!("{what} is not base64url")))
}

/// Keys from a JWKS document (`{"keys": [...]}`): `x5c` certificates, or RSA (`n`, `e`) and EC
/// (`crv`, `x`, `y`) public keys. Keys whose `use` is not `sig` are skipped.
pub fn keys_from_jwks(json: &[u8]) -> Result<Vec<JwtKey>, JwtError> {
    let doc: Value = serde_json::from_slice(json).map_err(keys_err)?;
    let list = doc.get("keys").and_then(Value::as_array).ok_or_else(|| keys_err("no \"keys\" array"))?;
    let mut keys = Vec::new();
    for k in list {
        if k.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
            continue;
        }
        let kid = k.get("kid").and_then(Value::as_str).map(str::to_owned);
        let key = if let Some(first) = k.get("x5c").and_then(Value::as_array).and_then(|a| a.first()) {
            let der = STANDARD
                .decode(first.as_str().ok_or_else(|| keys_err("x5c entry is not a string"))?)
                .map_err(|_| keys_err("x5c is not base64"))?;
            X509::from_der(&der).and_then(|c| c.public_key()).map_err(keys_err)?
        } else {
            match k.get("kty").and_then(Value::as_str) {
                Some("RSA") => {
                    let n = BigNum::from_slice(&b64url(&k["n"], "n")?).map_err(keys_err)?;
                    let e = BigNum::from_slice(&b64url(&k["e"], "e")?).map_err(keys_err)?;
                    PKey::from_rsa(Rsa::from_public_components(n, e).map_err(keys_err)?).map_err(keys_err)?
                }
                Some("EC") => {
                    let nid = match k.get("crv").and_then(Value::as_str) {
                        Some("P-256") => Nid::X9_62_PRIME256V1,
                        Some("P-384") => Nid::SECP384R1,
                        Some("P-521") => Nid::SECP521R1,
                        other => return Err(keys_err(format!("unsupported curve {other:?}"))),
                    };
                    let group = EcGroup::from_curve_name(nid).map_err(keys_err)?;
                    let x = BigNum::from_slice(&b64url(&k["x"], "x")?).map_err(keys_err)?;
                    let y = BigNum::from_slice(&b64url(&k["y"], "y")?).map_err(keys_err)?;
                    let ec = EcKey::from_public_key_affine_coordinates(&group, &x, &y).map_err(keys_err)?;
                    PKey::from_ec_key(ec).map_err(keys_err)?
                }
                other => return Err(keys_err(format!("unsupported key type {other:?}"))),
            }
        };
        keys.push(JwtKey { kid, key });
    }
    if keys.is_empty() {
        return Err(keys_err("no signing key"));
    }
    Ok(keys)
}

/// What a valid token must say.
#[derive(Debug, Clone, Copy)]
pub struct JwtRules<'a> {
    pub issuer: &'a str,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: &'a [String],
    /// Unix seconds.
    pub now: i64,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: i64,
}

#[derive(Clone, Copy)]
enum Alg {
    Rsa(fn() -> MessageDigest),
    Pss(fn() -> MessageDigest),
    Ec(fn() -> MessageDigest, usize, Nid),
}

fn alg(name: &str) -> Result<Alg, JwtError> {
    Ok(match name {
        "RS256" => Alg::Rsa(MessageDigest::sha256),
        "RS384" => Alg::Rsa(MessageDigest::sha384),
        "RS512" => Alg::Rsa(MessageDigest::sha512),
        "PS256" => Alg::Pss(MessageDigest::sha256),
        "PS384" => Alg::Pss(MessageDigest::sha384),
        "PS512" => Alg::Pss(MessageDigest::sha512),
        "ES256" => Alg::Ec(MessageDigest::sha256, 32, Nid::X9_62_PRIME256V1),
        "ES384" => Alg::Ec(MessageDigest::sha384, 48, Nid::SECP384R1),
        "ES512" => Alg::Ec(MessageDigest::sha512, 66, Nid::SECP521R1),
        other => return Err(JwtError::UnsupportedAlgorithm(other.to_owned())),
    })
}

fn fits(alg: Alg, key: &PKey<Public>) -> bool {
    match alg {
        Alg::Rsa(_) | Alg::Pss(_) => key.id() == Id::RSA,
        Alg::Ec(_, _, nid) => key.ec_key().ok().and_then(|k| k.group().curve_name()) == Some(nid),
    }
}

fn verify_with(alg: Alg, key: &PKey<Public>, input: &[u8], sig: &[u8]) -> bool {
    let check = || -> Result<bool, openssl::error::ErrorStack> {
        match alg {
            Alg::Rsa(md) => Verifier::new(md(), key)?.verify_oneshot(sig, input),
            Alg::Pss(md) => {
                let mut v = Verifier::new(md(), key)?;
                v.set_rsa_padding(Padding::PKCS1_PSS)?;
                v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                v.verify_oneshot(sig, input)
            }
            Alg::Ec(md, len, _) => {
                if sig.len() != 2 * len {
                    return Ok(false);
                }
                let r = BigNum::from_slice(&sig[..len])?;
                let s = BigNum::from_slice(&sig[len..])?;
                let der = EcdsaSig::from_private_components(r, s)?.to_der()?;
                Verifier::new(md(), key)?.verify_oneshot(&der, input)
            }
        }
    };
    check().unwrap_or(false)
}

fn part(p: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed("a part is not base64url"))
}

/// Verifies `token` and returns its claims.
pub fn verify_jwt(token: &str, keys: &[JwtKey], rules: &JwtRules<'_>) -> Result<Map<String, Value>, JwtError> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header: Value = serde_json::from_slice(&part(h)?).map_err(|_| JwtError::Malformed("the header is not JSON"))?;
    let name = header.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed("the header has no alg"))?;
    let alg = alg(name)?;
    let kid = header.get("kid").and_then(Value::as_str);
    let signature = part(s)?;
    let input = &token.as_bytes()[..h.len() + 1 + p.len()];
    let candidates: Vec<&JwtKey> = keys
        .iter()
        .filter(|k| fits(alg, &k.key))
        .filter(|k| match (kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::NoKey);
    }
    if !candidates.iter().any(|k| verify_with(alg, &k.key, input, &signature)) {
        return Err(JwtError::BadSignature);
    }
    let claims: Value =
        serde_json::from_slice(&part(p)?).map_err(|_| JwtError::Malformed("the claims are not JSON"))?;
    let Value::Object(claims) = claims else {
        return Err(JwtError::Malformed("the claims are not an object"));
    };
    let exp = claims.get("exp").and_then(Value::as_f64).ok_or(JwtError::MissingClaim("exp"))? as i64;
    if rules.now > exp.saturating_add(rules.leeway_s) {
        return Err(JwtError::Expired(exp));
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        let nbf = nbf as i64;
        if rules.now.saturating_add(rules.leeway_s) < nbf {
            return Err(JwtError::NotYetValid(nbf));
        }
    }
    let iss = claims.get("iss").and_then(Value::as_str).ok_or(JwtError::MissingClaim("iss"))?;
    if iss != rules.issuer {
        return Err(JwtError::WrongIssuer(iss.to_owned()));
    }
    let aud = claims.get("aud").ok_or(JwtError::MissingClaim("aud"))?;
    let named: Vec<&str> = match aud {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !named.iter().any(|a| rules.audiences.iter().any(|ok| ok == a)) {
        return Err(JwtError::WrongAudience(aud.to_string()));
    }
    Ok(claims)
}

/// Signs `claims` as a JWT with `key` (RS256 for RSA keys, ES256 for P-256): for identity
/// provider emulators and tests.
pub fn sign_jwt(
    claims: &Value,
    key: &PKey<openssl::pkey::Private>,
    kid: Option<&str>,
) -> Result<String, openssl::error::ErrorStack> {
    let ec = key.id() == Id::EC;
    let mut header = serde_json::json!({ "alg": if ec { "ES256" } else { "RS256" }, "typ": "JWT" });
    if let Some(k) = kid {
        header["kid"] = Value::String(k.to_owned());
    }
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), key)?;
    let mut sig = signer.sign_oneshot_to_vec(input.as_bytes())?;
    if ec {
        let parsed = EcdsaSig::from_der(&sig)?;
        let mut raw = parsed.r().to_vec_padded(32)?;
        raw.extend(parsed.s().to_vec_padded(32)?);
        sig = raw;
    }
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The signed assertion of an OAuth 2.0 JWT bearer grant (RFC 7523) for a Google service
/// account: RS256 over `iss` = `client_email`, `scope`, `aud` = the key's `token_uri`, `iat` =
/// `now` and `exp` = `now + lifetime_s` (Google accepts at most 3600). `key_pem` is the key
/// file's `private_key` (PKCS#8 or PKCS#1 PEM); it must be RSA.
pub fn service_account_assertion(
    key_pem: &[u8],
    client_email: &str,
    scope: &str,
    audience: &str,
    now: i64,
    lifetime_s: i64,
) -> Result<String, JwtError> {
    let key = PKey::private_key_from_pem(key_pem).map_err(keys_err)?;
    if key.id() != Id::RSA {
        return Err(JwtError::Keys("a service-account key must be RSA (RS256)".into()));
    }
    let claims = serde_json::json!({
        "iss": client_email,
        "scope": scope,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_s,
    });
    sign_jwt(&claims, &key, None).map_err(keys_err)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::devpki;

    fn public(key: &PKey<openssl::pkey::Private>) -> JwtKey {
        JwtKey {
            kid: Some("k1".into()),
            key: PKey::public_key_from_der(&key.public_key_to_der().expect("der")).expect("pub"),
        }
    }

    fn claims(exp: i64) -> Value {
        json!({"iss": "https://idp.example.com", "aud": ["mdm", "other"], "exp": exp, "nbf": 100, "upn": "u@example.com"})
    }

    fn rules(now: i64, aud: &[String]) -> JwtRules<'_> {
        JwtRules { issuer: "https://idp.example.com", audiences: aud, now, leeway_s: 60 }
    }

    #[test]
    fn rs256_and_es256_verify() {
        let aud = vec!["mdm".to_owned()];
        for key in [devpki::generate_rsa_key(2048).expect("rsa"), devpki::generate_key().expect("ec")] {
            let token = sign_jwt(&claims(1000), &key, Some("k1")).expect("signs");
            let c = verify_jwt(&token, &[public(&key)], &rules(500, &aud)).expect("valid");
            assert_eq!(c["upn"], "u@example.com");
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let key = devpki::generate_key().expect("ec");
        let other = devpki::generate_key().expect("ec2");
        let aud = vec!["mdm".to_owned()];
        let token = sign_jwt(&claims(1000), &key, None).expect("signs");
        assert_eq!(verify_jwt(&token, &[public(&other)], &rules(500, &aud)), Err(JwtError::BadSignature));
        assert_eq!(verify_jwt(&token, &[public(&key)], &rules(1061, &aud)), Err(JwtError::Expired(1000)));
        assert!(verify_jwt(&token, &[public(&key)], &rules(1060, &aud)).is_ok());
        assert_eq!(verify_jwt(&token, &[public(&key)], &rules(39, &aud)), Err(JwtError::NotYetValid(100)));
        let wrong_aud = vec!["else".to_owned()];
        assert!(matches!(
            verify_jwt(&token, &[public(&key)], &rules(500, &wrong_aud)),
            Err(JwtError::WrongAudience(_))
        ));
        let mut c = claims(1000);
        c["iss"] = json!("https://evil.example.com");
        let t = sign_jwt(&c, &key, None).expect("signs");
        assert!(matches!(verify_jwt(&t, &[public(&key)], &rules(500, &aud)), Err(JwtError::WrongIssuer(_))));
        let rsa = devpki::generate_rsa_key(2048).expect("rsa");
        assert_eq!(verify_jwt(&token, &[public(&rsa)], &rules(500, &aud)), Err(JwtError::NoKey));
        // alg none and HMAC are refused before any key is looked at.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode("{}"));
        assert_eq!(
            verify_jwt(&none, &[public(&key)], &rules(500, &aud)),
            Err(JwtError::UnsupportedAlgorithm("none".into()))
        );
        assert!(matches!(verify_jwt("a.b", &[public(&key)], &rules(500, &aud)), Err(JwtError::Malformed(_))));
        // A tampered payload.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(claims(9999).to_string());
        parts[1] = &forged;
        assert_eq!(verify_jwt(&parts.join("."), &[public(&key)], &rules(500, &aud)), Err(JwtError::BadSignature));
    }

    #[test]
    fn key_files() {
        let ec = devpki::generate_key().expect("ec");
        let ca = devpki::create_ca(&ec, "IdP", 1_700_000_000, 10, &[1]).expect("cert");
        let mut pem = ec.public_key_to_pem().expect("pem");
        pem.extend(ca.to_pem().expect("pem"));
        assert_eq!(keys_from_pem(&pem).expect("keys").len(), 2);
        assert!(keys_from_pem(b"nothing").is_err());

        let rsa = devpki::generate_rsa_key(2048).expect("rsa");
        let r = rsa.rsa().expect("rsa");
        let ecp = ec.ec_key().expect("ec");
        let mut ctx = openssl::bn::BigNumContext::new().expect("ctx");
        let (mut x, mut y) = (BigNum::new().expect("x"), BigNum::new().expect("y"));
        ecp.public_key().affine_coordinates(ecp.group(), &mut x, &mut y, &mut ctx).expect("coords");
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "r", "use": "sig", "n": URL_SAFE_NO_PAD.encode(r.n().to_vec()), "e": URL_SAFE_NO_PAD.encode(r.e().to_vec())},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x.to_vec_padded(32).expect("x")), "y": URL_SAFE_NO_PAD.encode(y.to_vec_padded(32).expect("y"))},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"x5c": [STANDARD.encode(ca.to_der().expect("der"))], "kid": "c"}
        ]});
        let keys = keys_from_jwks(jwks.to_string().as_bytes()).expect("jwks");
        assert_eq!(keys.iter().map(|k| k.kid.clone().unwrap_or_default()).collect::<Vec<_>>(), ["r", "e", "c"]);
        let aud = vec!["mdm".to_owned()];
        let token = sign_jwt(&claims(1000), &rsa, Some("r")).expect("signs");
        assert!(verify_jwt(&token, &keys, &rules(500, &aud)).is_ok());
        let token = sign_jwt(&claims(1000), &ec, Some("e")).expect("signs");
        assert!(verify_jwt(&token, &keys, &rules(500, &aud)).is_ok());
    }

    #[test]
    fn service_account_assertions_are_rs256_with_the_grant_claims() {
        let key = devpki::generate_rsa_key(2048).expect("rsa");
        let pem = key.private_key_to_pem_pkcs8().expect("pem");
        let token =
            service_account_assertion(&pem, "sa@p.iam.gserviceaccount.com", "scope-x", "https://t/token", 1000, 3600)
                .expect("signs");
        let header: Value = serde_json::from_slice(&part(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        let aud = vec!["https://t/token".to_owned()];
        let rules = JwtRules { issuer: "sa@p.iam.gserviceaccount.com", audiences: &aud, now: 1500, leeway_s: 0 };
        let c = verify_jwt(&token, &[public(&key)], &rules).expect("valid");
        assert_eq!((c["iat"].as_i64(), c["exp"].as_i64()), (Some(1000), Some(4600)));
        assert_eq!(c["scope"], "scope-x");
        // EC keys and garbage are refused.
        let ec = devpki::generate_key().expect("ec").private_key_to_pem_pkcs8().expect("pem");
        assert!(matches!(service_account_assertion(&ec, "a", "s", "t", 0, 60), Err(JwtError::Keys(_))));
        assert!(matches!(service_account_assertion(b"nope", "a", "s", "t", 0, 60), Err(JwtError::Keys(_))));
    }
}
