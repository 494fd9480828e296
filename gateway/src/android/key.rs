//! The service account's JSON key file, in Google's format. Only the fields the JWT grant needs
//! are read; the rest (`private_key_id`, `client_id`, …) is ignored.

use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    #[serde(rename = "type", default)]
    pub key_type: Option<String>,
    pub client_email: String,
    /// PEM (PKCS#8) RSA private key.
    pub private_key: String,
    /// The OAuth token endpoint the grant goes to (a local emulator in tests).
    pub token_uri: String,
    #[serde(default)]
    pub project_id: Option<String>,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    pub fn parse(text: &[u8]) -> Result<ServiceAccountKey, String> {
        let key: ServiceAccountKey =
            serde_json::from_slice(text).map_err(|e| format!("not a service-account key: {e}"))?;
        if let Some(t) = &key.key_type
            && t != "service_account"
        {
            return Err(format!("key type is `{t}`, not `service_account`"));
        }
        if !key.private_key.contains("PRIVATE KEY-----") {
            return Err("private_key is not a PEM private key".into());
        }
        let uri: http::Uri = key.token_uri.parse().map_err(|e| format!("token_uri is not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
            return Err("token_uri must be an http(s) URL".into());
        }
        // Fail now, not at the first command, when the key cannot sign.
        mdm_certs::jwt::service_account_assertion(key.private_key.as_bytes(), &key.client_email, "x", "x", 0, 1)
            .map_err(|e| format!("private_key: {e}"))?;
        Ok(key)
    }

    pub fn read(path: &Path) -> Result<ServiceAccountKey, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        ServiceAccountKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}
