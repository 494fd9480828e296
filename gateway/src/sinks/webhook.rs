//! Webhook sink: POSTs each event as JSON, optionally signed with HMAC-SHA256.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use sha2::Sha256;

use super::Sink;
use crate::config::{WebhookConfig, WebhookFormat};
use crate::http_util::{OutboundClient, outbound_client};
use crate::store::LoggedEvent;

/// Header carrying the base64 HMAC-SHA256 of the body (the name NanoMDM's webhook uses).
pub const SIGNATURE_HEADER: &str = "X-Hmac-Signature";

#[derive(Debug)]
pub struct WebhookSink {
    config: WebhookConfig,
    secret: Option<String>,
    client: OutboundClient,
}

impl WebhookSink {
    pub fn new(config: WebhookConfig, secret: Option<String>) -> Result<Self, String> {
        let client = outbound_client().map_err(|e| format!("webhook {e}"))?;
        Ok(WebhookSink { config, secret, client })
    }

    fn body(&self, event: &LoggedEvent) -> Result<Option<Vec<u8>>, String> {
        match self.config.format {
            WebhookFormat::Event => Ok(Some(event.json.clone().into_bytes())),
            WebhookFormat::Micromdm => {
                let parsed: mdm_core::Event =
                    serde_json::from_str(&event.json).map_err(|e| format!("stored event is not valid: {e}"))?;
                Ok(super::micromdm::convert(&parsed).map(|v| serde_json::to_vec(&v).unwrap_or_default()))
            }
        }
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.config.max_backoff_ms)
    }

    async fn deliver(&self, event: &LoggedEvent) -> Result<(), String> {
        let Some(body) = self.body(event)? else {
            // No equivalent in the chosen format (e.g. `command.queued` for MicroMDM): skip.
            return Ok(());
        };
        let mut req = http::Request::post(&self.config.url).header(http::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
            mac.update(&body);
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            req = req.header(SIGNATURE_HEADER, sig);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        // Drain the body so the connection can be reused.
        let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
        if status.is_success() { Ok(()) } else { Err(format!("webhook answered {status}")) }
    }
}
