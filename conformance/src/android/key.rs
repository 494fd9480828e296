//! Service-account keys like the JSON files Google Cloud hands out, and RS256 JWTs (RFC 7515/
//! 7519) signed and checked with them.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private, Public};
use openssl::sign::{Signer, Verifier};
use serde_json::{Value, json};

use super::AndroidEmuError;
use super::util::{HEX, random_string};

/// The OAuth scope of the Android Management API.
pub const ANDROID_MANAGEMENT_SCOPE: &str = "https://www.googleapis.com/auth/androidmanagement";

/// `grant_type` of the JWT bearer grant (RFC 7523 section 2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A service account's key: what `gcloud iam service-accounts keys create` writes, with
/// `token_uri` pointing wherever the token endpoint is (the emulator's `/token`).
#[derive(Clone)]
pub struct ServiceAccountKey {
    pub project_id: String,
    /// 40 hex digits; the `kid` of the JWTs signed with the key.
    pub private_key_id: String,
    /// `<name>@<project>.iam.gserviceaccount.com`; the `iss` of the grant JWT.
    pub client_email: String,
    pub client_id: String,
    pub token_uri: String,
    key: PKey<Private>,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("project_id", &self.project_id)
            .field("private_key_id", &self.private_key_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// A new RSA 2048 key for `mdm-gateway@<project_id>.iam.gserviceaccount.com`.
    pub fn generate(project_id: &str, token_uri: &str) -> Result<ServiceAccountKey, AndroidEmuError> {
        let key = mdm_certs::devpki::generate_rsa_key(2048)?;
        let client_id: String = {
            let digits = random_string(21, b"0123456789");
            format!("1{}", &digits[1..])
        };
        Ok(ServiceAccountKey {
            project_id: project_id.to_owned(),
            private_key_id: random_string(40, HEX),
            client_email: format!("mdm-gateway@{project_id}.iam.gserviceaccount.com"),
            client_id,
            token_uri: token_uri.to_owned(),
            key,
        })
    }

    /// Reads a key file written by [`ServiceAccountKey::write_to`] (or by Google).
    pub fn from_json(text: &str) -> Result<ServiceAccountKey, AndroidEmuError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| AndroidEmuError::NotFound(format!("key file is not JSON: {e}")))?;
        let field = |k: &str| {
            v[k].as_str().map(str::to_owned).ok_or_else(|| AndroidEmuError::NotFound(format!("key file has no {k}")))
        };
        let key = PKey::private_key_from_pem(field("private_key")?.as_bytes())?;
        Ok(ServiceAccountKey {
            project_id: field("project_id")?,
            private_key_id: field("private_key_id")?,
            client_email: field("client_email")?,
            client_id: field("client_id").unwrap_or_default(),
            token_uri: field("token_uri")?,
            key,
        })
    }

    /// The same key with another `token_uri` (e.g. the emulator's plain-HTTP address).
    pub fn with_token_uri(&self, token_uri: &str) -> ServiceAccountKey {
        ServiceAccountKey { token_uri: token_uri.to_owned(), ..self.clone() }
    }

    /// The key file's JSON, with the fields Google writes.
    pub fn to_json(&self) -> Value {
        let pem = String::from_utf8(self.key.private_key_to_pem_pkcs8().unwrap_or_default()).unwrap_or_default();
        let email_path = self.client_email.replace('@', "%40");
        json!({
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": format!("https://www.googleapis.com/robot/v1/metadata/x509/{email_path}"),
            "universe_domain": "googleapis.com",
        })
    }

    /// Writes the key file (mode 0600, like a downloaded key should be).
    pub fn write_to(&self, path: &Path) -> Result<(), AndroidEmuError> {
        let text = serde_json::to_string_pretty(&self.to_json()).unwrap_or_default();
        std::fs::write(path, text)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }

    /// The public half, for checking signatures.
    pub fn public_key(&self) -> Result<PKey<Public>, AndroidEmuError> {
        Ok(PKey::public_key_from_pem(&self.key.public_key_to_pem()?)?)
    }

    /// PEM of the public key (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> String {
        String::from_utf8(self.key.public_key_to_pem().unwrap_or_default()).unwrap_or_default()
    }

    /// A compact RS256 JWS over `claims`, with `kid` = `private_key_id`.
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, AndroidEmuError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.private_key_id});
        sign_rs256(&self.key, &header, claims)
    }

    /// The grant assertion a client sends to `token_uri` (RFC 7523 section 3): `iss` the
    /// account, `aud` the token URI, `scope`, `iat`, `exp = iat + lifetime`.
    pub fn assertion(&self, scope: &str, iat: i64, lifetime: i64) -> Result<String, AndroidEmuError> {
        self.sign_jwt(&json!({
            "iss": self.client_email,
            "scope": scope,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + lifetime,
        }))
    }

    /// A token shaped like the OIDC ID token Pub/Sub attaches to pushes with
    /// `pushConfig.oidcToken` (`iss` `https://accounts.google.com`, `aud`, `email` of this
    /// account, `email_verified`, `sub`/`azp` its client id), signed with this key. Google signs
    /// real ones with its own keys; a gateway under test is configured with
    /// [`Self::public_key_pem`] instead. Change claims with [`Self::sign_jwt`] for forgeries.
    pub fn oidc_token(&self, audience: &str, iat: i64, lifetime: i64) -> Result<String, AndroidEmuError> {
        self.sign_jwt(&self.oidc_claims(audience, iat, lifetime))
    }

    /// The claims of [`Self::oidc_token`].
    pub fn oidc_claims(&self, audience: &str, iat: i64, lifetime: i64) -> Value {
        json!({
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": self.client_id,
            "sub": self.client_id,
            "email": self.client_email,
            "email_verified": true,
            "iat": iat,
            "exp": iat + lifetime,
        })
    }
}

/// A compact JWS signed RS256 (RSASSA-PKCS1-v1_5 with SHA-256) with `key`.
pub(super) fn sign_rs256(key: &PKey<Private>, header: &Value, claims: &Value) -> Result<String, AndroidEmuError> {
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signer = Signer::new(MessageDigest::sha256(), key)?;
    signer.update(input.as_bytes())?;
    let sig = signer.sign_to_vec()?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Why a JWT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JwtError {
    /// Not three base64url parts of JSON objects.
    Malformed,
    /// `alg` is not RS256.
    Algorithm,
    /// The signature does not verify.
    Signature,
}

/// Checks a compact RS256 JWS against `key`; returns `(header, claims)`.
pub(super) fn verify_rs256(token: &str, key: &PKey<Public>) -> Result<(Value, Value), JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed);
    let object = |bytes: Vec<u8>| -> Result<Value, JwtError> {
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
        if v.is_object() { Ok(v) } else { Err(JwtError::Malformed) }
    };
    let header = object(decode(h)?)?;
    let claims = object(decode(c)?)?;
    let sig = decode(s)?;
    if header["alg"] != "RS256" {
        return Err(JwtError::Algorithm);
    }
    let ok = (|| -> Result<bool, openssl::error::ErrorStack> {
        let mut v = Verifier::new(MessageDigest::sha256(), key)?;
        v.update(h.as_bytes())?;
        v.update(b".")?;
        v.update(c.as_bytes())?;
        v.verify(&sig)
    })()
    .unwrap_or(false);
    if ok { Ok((header, claims)) } else { Err(JwtError::Signature) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_and_signs() {
        let key = ServiceAccountKey::generate("emu-project", "https://127.0.0.1:1/token").unwrap();
        let json = key.to_json();
        assert_eq!(json["type"], "service_account");
        assert!(json["private_key"].as_str().unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = ServiceAccountKey::from_json(&json.to_string()).unwrap();
        assert_eq!(back.client_email, "mdm-gateway@emu-project.iam.gserviceaccount.com");
        let jwt = back.assertion(ANDROID_MANAGEMENT_SCOPE, 1000, 3600).unwrap();
        let (header, claims) = verify_rs256(&jwt, &key.public_key().unwrap()).unwrap();
        assert_eq!(header["kid"], key.private_key_id.as_str());
        assert_eq!(claims["exp"], 4600);
        let other = ServiceAccountKey::generate("emu-project", "x").unwrap();
        assert_eq!(verify_rs256(&jwt, &other.public_key().unwrap()), Err(JwtError::Signature));
        assert_eq!(verify_rs256("a.b", &other.public_key().unwrap()), Err(JwtError::Malformed));
        let oidc = key.oidc_token("https://gw/android/pubsub", 1000, 3600).unwrap();
        let (_, claims) = verify_rs256(&oidc, &key.public_key().unwrap()).unwrap();
        assert_eq!(claims["email"], key.client_email.as_str());
        assert_eq!(claims["iss"], "https://accounts.google.com");
    }
}
