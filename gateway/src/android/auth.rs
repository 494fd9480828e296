//! Service-account authentication: an RS256 JWT bearer grant (RFC 7523) against the key's
//! `token_uri`, the access token cached until shortly before it expires, and refreshed by one
//! request at a time (callers arriving during a refresh wait for its result).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::client::HttpClient;
use super::key::ServiceAccountKey;
use crate::clock::Clock;

/// The OAuth scope of the Android Management API.
pub const SCOPE: &str = "https://www.googleapis.com/auth/androidmanagement";
/// `grant_type` of the JWT bearer grant.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked for in the assertion (Google's maximum).
const ASSERTION_LIFETIME_S: i64 = 3600;
/// Refresh this long before expiry (or at half the lifetime, for short-lived tokens).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Why no access token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint refused the grant (4xx): retrying does not help.
    #[error("the token endpoint refused the grant ({status}): {message}")]
    Refused { status: u16, message: String },
    /// No answer, a 5xx, or an unreadable one: worth retrying.
    #[error("token endpoint: {0}")]
    Unavailable(String),
    #[error("cannot sign the grant: {0}")]
    Sign(String),
}

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    refresh_at: Instant,
}

#[derive(Debug)]
pub struct TokenSource {
    key: ServiceAccountKey,
    http: HttpClient,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    cached: tokio::sync::Mutex<Option<Cached>>,
    grants: AtomicU64,
}

impl TokenSource {
    pub fn new(key: ServiceAccountKey, http: HttpClient, timeout: Duration, clock: Arc<dyn Clock>) -> TokenSource {
        TokenSource { key, http, timeout, clock, cached: tokio::sync::Mutex::new(None), grants: AtomicU64::new(0) }
    }

    /// Grants obtained since start (metrics, tests).
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::Relaxed)
    }

    /// A valid access token: the cached one, or a new one. The lock is held across the grant, so
    /// concurrent callers share one refresh.
    pub async fn token(&self) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let fresh = self.grant().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached token (AMAPI answered 401 with it).
    pub async fn invalidate(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == token) {
            *cached = None;
        }
    }

    async fn grant(&self) -> Result<Cached, TokenError> {
        let now = self.clock.unix();
        let assertion = mdm_certs::jwt::service_account_assertion(
            self.key.private_key.as_bytes(),
            &self.key.client_email,
            SCOPE,
            &self.key.token_uri,
            now,
            ASSERTION_LIFETIME_S,
        )
        .map_err(|e| TokenError::Sign(e.to_string()))?;
        let form = serde_urlencoded::to_string([("grant_type", JWT_BEARER), ("assertion", assertion.as_str())])
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        let req = http::Request::post(&self.key.token_uri)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| TokenError::Unavailable(e.to_string()))?;
        let started = Instant::now();
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| TokenError::Unavailable(e.to_string()))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| TokenError::Unavailable(e.to_string()))?;
            Ok::<_, TokenError>((status, body.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| TokenError::Unavailable(format!("no answer within {:?}", self.timeout)))??;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let message = json
                .get("error_description")
                .or_else(|| json.get("error"))
                .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            tracing::warn!(status = status.as_u16(), %message, "service-account token grant refused");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                TokenError::Unavailable(format!("{status}: {message}"))
            } else {
                TokenError::Refused { status: status.as_u16(), message }
            });
        }
        let token = json
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TokenError::Unavailable("the grant reply has no access_token".into()))?;
        let lifetime = Duration::from_secs(json.get("expires_in").and_then(|v| v.as_u64()).unwrap_or(3600));
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        self.grants.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(lifetime_s = lifetime.as_secs(), "service-account access token granted");
        Ok(Cached { token: token.to_owned(), refresh_at: started + lifetime - margin })
    }
}
