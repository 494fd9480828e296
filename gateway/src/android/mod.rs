//! The outbound Android side: the AMAPI client and what the gateway does with it.
//!
//! - [`auth`]: service-account JWT grant, cached access token (single flight).
//! - [`client`]: HTTPS calls with the error classes, retries and the per-enterprise 403 record.
//! - [`budget`]: the Google project's request budget, with priorities.
//! - [`policy`]: repeated `policies.patch` of one policy merged into one.
//! - [`dispatch`]: sends queued Android commands, and reconciles operations with
//!   `operations.get` when no COMMAND notification came.
//! - [`device_policy`]: `set_settings`, `install_app`, `app_config` as patches of the device's
//!   own policy, resolved by its status reports.
//! - this module: [`Android`], the service the API routes call (signup, enrollment tokens,
//!   policies, devices) and that owns the dispatcher.
//!
//! The Pub/Sub intake (`POST /android/pubsub`) is elsewhere; this module only calls Google.

pub mod auth;
pub mod budget;
pub mod client;
pub mod device_policy;
pub mod dispatch;
pub mod key;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use mdm_android::command::{EnrollmentMode, Method, enrollment_link, enrollment_token_body};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use self::budget::{Budget, Priority};
use self::client::{AmapiClient, AmapiError, RetrySettings};
use self::key::ServiceAccountKey;
use self::policy::PolicyMerger;
use crate::clock::Clock;
use crate::config::{AndroidConfig, ConfigError};
use crate::events::EventFactory;
use crate::store::{AndroidEnterprise, AndroidSignup, Store, StoreError};

/// Every notification type an enterprise is created with.
pub const NOTIFICATION_TYPES: [&str; 5] =
    ["ENROLLMENT", "STATUS_REPORT", "COMMAND", "USAGE_LOGS", "ENTERPRISE_UPGRADE"];

/// A failure of an Android API operation, for the API layer.
#[derive(Debug, thiserror::Error)]
pub enum AndroidError {
    #[error(transparent)]
    Amapi(#[from] AmapiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request cannot be served as configured or in the current state (code, message).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The request itself is wrong (code, message).
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("{1}")]
    NotFound(&'static str, String),
}

/// The running AMAPI side of the gateway (absent when `android.service_account_key` is unset).
#[derive(Debug)]
pub struct Android {
    pub client: Arc<AmapiClient>,
    config: AndroidConfig,
    project_id: Option<String>,
    store: Arc<dyn Store>,
    events: EventFactory,
    clock: Arc<dyn Clock>,
    wake: Notify,
    policies: Arc<PolicyMerger>,
    reconcile: dispatch::ReconcileState,
    /// This instance's id, once the dispatcher runs (its own claims are never abandoned).
    instance: std::sync::OnceLock<String>,
}

impl Android {
    /// Reads the key and builds the client; `Ok(None)` when the client is not configured.
    /// Errors name the configuration key (exit 64 before any port binds).
    pub fn new(
        config: &AndroidConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Arc<Android>>, ConfigError> {
        let Some(key_path) = &config.service_account_key else {
            return Ok(None);
        };
        let key = ServiceAccountKey::read(key_path).map_err(|m| cfg_err("android.service_account_key", m))?;
        let ca = match &config.api_ca {
            Some(p) => Some(std::fs::read(p).map_err(|e| cfg_err("android.api_ca", format!("{}: {e}", p.display())))?),
            None => None,
        };
        let http = client::http_client(ca.as_deref()).map_err(|m| cfg_err("android.api_ca", m))?;
        let retry = RetrySettings::from_config(config);
        let project_id = config.project_id.clone().or_else(|| key.project_id.clone());
        let token = auth::TokenSource::new(key, http.clone(), retry.request_timeout, clock.clone());
        // One budget per Google project, shared by every instance on the store.
        let bucket = format!("amapi:{}", project_id.as_deref().unwrap_or("default"));
        let budget = Budget::shared(
            config.budget_requests,
            Duration::from_secs(config.budget_window_s),
            store.clone(),
            bucket,
            clock.clone(),
        );
        let client = Arc::new(AmapiClient::new(&config.api_base_url, http, token, budget, retry, clock.clone()));
        Ok(Some(Arc::new(Android {
            client,
            config: config.clone(),
            project_id,
            store,
            events: EventFactory::new(clock.clone()),
            clock,
            wake: Notify::new(),
            policies: Arc::new(PolicyMerger::new(Duration::from_millis(config.policy_merge_ms))),
            reconcile: dispatch::ReconcileState::default(),
            instance: std::sync::OnceLock::new(),
        })))
    }

    /// Tells the dispatcher that Android commands were queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The managed enterprise: `android.enterprise`, else the newest one created through signup.
    pub async fn enterprise(&self) -> Result<Option<String>, StoreError> {
        if let Some(e) = &self.config.enterprise {
            return Ok(Some(e.clone()));
        }
        Ok(self.store.android_enterprises().await?.into_iter().next().map(|e| e.name))
    }

    async fn require_enterprise(&self) -> Result<String, AndroidError> {
        self.enterprise().await?.ok_or_else(|| {
            AndroidError::Conflict(
                "android_enterprise_unset",
                "no enterprise: complete the signup or set android.enterprise".into(),
            )
        })
    }

    /// `GET /v1/android/status`.
    pub async fn status(&self) -> Json {
        let (used, limit) = self.client.budget().usage();
        let enterprise = self.enterprise().await.ok().flatten();
        json!({
            "enabled": true,
            "enterprise": enterprise,
            "project_id": self.project_id,
            "failing_enterprises": self.client.failing_enterprises(),
            "token_grants": self.client.token_grants(),
            "budget": {"used": used, "limit": limit, "window_s": self.config.budget_window_s},
        })
    }

    /// `signupUrls.create`: returns the URL the admin opens. The callback URL carries a one-time
    /// `state` the admin's browser brings back to [`Android::complete_signup`].
    pub async fn create_signup_url(&self, callback_url: Option<&str>) -> Result<Json, AndroidError> {
        let project = self.project_id.clone().ok_or_else(|| {
            AndroidError::Conflict(
                "android_project_unknown",
                "no Google Cloud project: set android.project_id or use a key file with project_id".into(),
            )
        })?;
        let base =
            callback_url.map(str::to_owned).or_else(|| self.config.signup_callback_url.clone()).ok_or_else(|| {
                AndroidError::Invalid(
                    "callback_url_required",
                    "give callback_url, or set android.signup_callback_url".into(),
                )
            })?;
        let uri: http::Uri = base
            .parse()
            .map_err(|e| AndroidError::Invalid("invalid_callback_url", format!("callback_url is not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("https" | "http")) || uri.host().is_none() {
            return Err(AndroidError::Invalid("invalid_callback_url", "callback_url must be an http(s) URL".into()));
        }
        let state = hex::encode(rand::random::<[u8; 24]>());
        let sep = if base.contains('?') { '&' } else { '?' };
        let callback = format!("{base}{sep}state={state}");
        let reply = self
            .client
            .call(
                Method::Post,
                "signupUrls",
                &[("projectId".into(), project.clone()), ("callbackUrl".into(), callback.clone())],
                None,
                Priority::Interactive,
            )
            .await?;
        let (Some(name), Some(url)) = (reply["name"].as_str(), reply["url"].as_str()) else {
            return Err(AmapiError::BadReply("signupUrls.create reply has no name or url".into()).into());
        };
        let signup = AndroidSignup {
            name: name.to_owned(),
            state_sha256: sha256_hex(&state),
            url: url.to_owned(),
            callback_url: callback.clone(),
            project_id: project,
            created_at: self.clock.unix(),
            completed_at: None,
            enterprise: None,
        };
        self.store.save_android_signup(&signup).await?;
        tracing::info!(signup = %signup.name, "Android enterprise signup URL created");
        Ok(json!({"name": signup.name, "url": signup.url, "callback_url": callback}))
    }

    /// The admin came back: `enterprises.create` with the Pub/Sub topic and every notification
    /// type, once (never retried: a second enterprise is worse than an error).
    pub async fn complete_signup(&self, state: &str, enterprise_token: &str) -> Result<Json, AndroidError> {
        if state.is_empty() || enterprise_token.is_empty() {
            return Err(AndroidError::Invalid("invalid_callback", "state and enterpriseToken are required".into()));
        }
        let signup =
            self.store.android_signup_by_state(&sha256_hex(state)).await?.ok_or_else(|| {
                AndroidError::NotFound("signup_not_found", "no signup started with this state".into())
            })?;
        if let Some(e) = &signup.enterprise {
            return Err(AndroidError::Conflict("signup_completed", format!("this signup already created {e}")));
        }
        let mut body = json!({ "enabledNotificationTypes": NOTIFICATION_TYPES });
        if let Some(t) = &self.config.pubsub_topic {
            body["pubsubTopic"] = t.clone().into();
        }
        let reply = self
            .client
            .call_once(
                Method::Post,
                "enterprises",
                &[
                    ("projectId".into(), signup.project_id.clone()),
                    ("signupUrlName".into(), signup.name.clone()),
                    ("enterpriseToken".into(), enterprise_token.to_owned()),
                ],
                Some(&body),
                Priority::Interactive,
            )
            .await?;
        let name = reply["name"]
            .as_str()
            .filter(|n| n.starts_with("enterprises/"))
            .ok_or_else(|| AmapiError::BadReply("enterprises.create reply has no name".into()))?;
        let enterprise = AndroidEnterprise {
            name: name.to_owned(),
            project_id: signup.project_id.clone(),
            signup_name: Some(signup.name.clone()),
            pubsub_topic: self.config.pubsub_topic.clone(),
            created_at: self.clock.unix(),
        };
        if !self.store.complete_android_signup(&signup.name, &enterprise, &[]).await? {
            return Err(AndroidError::Conflict("signup_completed", "this signup was completed meanwhile".into()));
        }
        tracing::info!(enterprise = %enterprise.name, "Android enterprise created");
        Ok(json!({"enterprise": enterprise.name, "signup": signup.name, "enterprise_resource": reply}))
    }

    /// `enrollmentTokens.create`.
    pub async fn create_enrollment_token(
        &self,
        mode: EnrollmentMode,
        policy: &str,
        user: Option<&str>,
        duration_s: Option<u64>,
        one_time: bool,
    ) -> Result<Json, AndroidError> {
        let enterprise = self.require_enterprise().await?;
        let policy_name = self.policy_name(&enterprise, policy)?;
        let body = enrollment_token_body(mode, &policy_name, user, duration_s, one_time);
        let reply = self
            .client
            .call(Method::Post, &format!("{enterprise}/enrollmentTokens"), &[], Some(&body), Priority::Interactive)
            .await?;
        let value = reply["value"]
            .as_str()
            .ok_or_else(|| AmapiError::BadReply("enrollmentTokens.create reply has no value".into()))?;
        // Google gives the QR payload as a JSON document in a string.
        let qr = match reply.get("qrCode") {
            Some(Json::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Json::String(s.clone())),
            Some(other) => other.clone(),
            None => Json::Null,
        };
        Ok(json!({
            "name": reply["name"],
            "value": value,
            "qr_code": qr,
            "enrollment_link": enrollment_link(value),
            "expiration_timestamp": reply["expirationTimestamp"],
            "policy_name": policy_name,
            "mode": mode,
        }))
    }

    fn policy_name(&self, enterprise: &str, policy: &str) -> Result<String, AndroidError> {
        let id = policy.strip_prefix(&format!("{enterprise}/policies/")).unwrap_or(policy);
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(AndroidError::Invalid(
                "invalid_policy",
                format!("policy must be a policy id or {enterprise}/policies/<id>"),
            ));
        }
        Ok(format!("{enterprise}/policies/{id}"))
    }

    /// `policies.patch`, merged with other patches of the same policy within `policy_merge_ms`.
    pub async fn patch_policy(
        &self,
        policy: &str,
        body: serde_json::Map<String, Json>,
        mask: Option<Vec<String>>,
    ) -> Result<Json, AndroidError> {
        let enterprise = self.require_enterprise().await?;
        let name = self.policy_name(&enterprise, policy)?;
        Ok(self.policies.patch(self.client.clone(), name, body, mask).await?)
    }

    /// `devices.list`, one page.
    pub async fn list_devices(&self, page_size: Option<u32>, page_token: Option<&str>) -> Result<Json, AndroidError> {
        let enterprise = self.require_enterprise().await?;
        let mut query = Vec::new();
        if let Some(s) = page_size {
            query.push(("pageSize".to_owned(), s.to_string()));
        }
        if let Some(t) = page_token {
            query.push(("pageToken".to_owned(), t.to_owned()));
        }
        let reply =
            self.client.call(Method::Get, &format!("{enterprise}/devices"), &query, None, Priority::Background).await?;
        Ok(json!({
            "devices": reply.get("devices").cloned().unwrap_or_else(|| json!([])),
            "next_page_token": reply.get("nextPageToken").cloned().unwrap_or(Json::Null),
        }))
    }

    /// `devices.delete` of a device that enrolled against the enrollment rules, with the reason
    /// shown on it. `name` is the AMAPI device name.
    pub async fn remove_device(&self, name: &str, reason: &str) -> Result<(), AndroidError> {
        let query = [("wipeReasonMessage".to_owned(), reason.chars().take(200).collect::<String>())];
        self.client.call(Method::Delete, name, &query, None, Priority::Command).await?;
        Ok(())
    }

    /// `devices.get`.
    pub async fn get_device(&self, id: &str) -> Result<Json, AndroidError> {
        let enterprise = self.require_enterprise().await?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(AndroidError::Invalid("invalid_device_id", "not an AMAPI device id".into()));
        }
        Ok(self
            .client
            .call(Method::Get, &format!("{enterprise}/devices/{id}"), &[], None, Priority::Interactive)
            .await?)
    }
}

fn cfg_err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}
