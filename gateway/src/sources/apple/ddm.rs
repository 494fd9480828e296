//! The `DeclarativeManagement` check-in: declarative device management served from the
//! declarations the backend stored for the channel (`/v1/devices/{id}/declarations`).
//!
//! `tokens`, `declaration-items` and `declaration/<class>/<identifier>` are read-only answers
//! (each recorded as a `device.declarative_management` event); `status` becomes a
//! `device.status_report` event carrying the decoded report.

use http::StatusCode;
use mdm_apple::DeclarativeManagement;
use mdm_apple::ddm::{self, DeclarationClass, Endpoint, ManifestItem, SyncTokens};
use mdm_core::{DeviceId, Event, EventType};

use super::Reject;
use crate::AppState;
use crate::http_util::{Reply, empty, with_type};
use crate::store::DeclarationSet;

/// The token of a channel that never had a declaration. Tokens the gateway makes are UUIDs, so
/// this never equals one of them.
pub const NO_DECLARATIONS_TOKEN: &str = "none";

const JSON: &str = "application/json";

/// Answers one request. `event` builds an event of the given type and data, carrying the
/// device's message.
pub(super) async fn handle(
    state: &AppState,
    id: &DeviceId,
    msg: &DeclarativeManagement,
    data: serde_json::Value,
    event: impl Fn(EventType, serde_json::Value) -> Event,
) -> Result<Reply, Reject> {
    let endpoint = Endpoint::parse(&msg.endpoint).map_err(|e| Reject::bad_request(e.reason(), e.to_string()))?;
    let fetched = event(EventType::DEVICE_DECLARATIVE_MANAGEMENT, data);
    match endpoint {
        Endpoint::Tokens => {
            let set = state.store.declaration_set(id).await?;
            state.store.append_events(&[fetched]).await?;
            Ok(with_type(StatusCode::OK, JSON, ddm::tokens_response(&sync_tokens(&set))))
        }
        Endpoint::DeclarationItems => {
            let set = state.store.declaration_set(id).await?;
            let items: Vec<ManifestItem> = set
                .declarations
                .iter()
                .filter_map(|d| match DeclarationClass::of_type(&d.declaration_type) {
                    Some(class) => Some(ManifestItem {
                        class,
                        identifier: d.identifier.clone(),
                        server_token: d.server_token.clone(),
                    }),
                    None => {
                        // Types are validated when stored; a row that fails now is reported, not sent.
                        tracing::error!(device = %id, identifier = %d.identifier, declaration_type = %d.declaration_type, "stored declaration has an unknown type; left out of the manifest");
                        None
                    }
                })
                .collect();
            state.store.append_events(&[fetched]).await?;
            let token = sync_tokens(&set).declarations_token;
            Ok(with_type(StatusCode::OK, JSON, ddm::declaration_items_response(&token, &items)))
        }
        Endpoint::Declaration { class, identifier } => {
            let found = state
                .store
                .declaration(id, &identifier)
                .await?
                .filter(|d| DeclarationClass::of_type(&d.declaration_type) == Some(class));
            let Some(d) = found else {
                return Err(Reject::not_found(
                    "declaration_not_found",
                    format!("{id} has no {} declaration {identifier:?}", class.path()),
                ));
            };
            state.store.append_events(&[fetched]).await?;
            Ok(with_type(StatusCode::OK, JSON, d.body.into_bytes()))
        }
        Endpoint::Status => {
            let report = ddm::decode_status_report(msg.data.as_deref())
                .map_err(|e| Reject::bad_request(e.reason(), e.to_string()))?;
            state
                .store
                .append_events(&[event(EventType::DEVICE_STATUS_REPORT, serde_json::Value::Object(report))])
                .await?;
            Ok(empty(StatusCode::OK))
        }
    }
}

/// The channel's synchronization tokens; a fixed pair when it never had a declaration.
pub fn sync_tokens(set: &DeclarationSet) -> SyncTokens {
    match &set.token {
        Some(t) => SyncTokens { declarations_token: t.token.clone(), timestamp: timestamp(t.updated_at) },
        None => SyncTokens { declarations_token: NO_DECLARATIONS_TOKEN.into(), timestamp: timestamp(0) },
    }
}

/// RFC 3339 in UTC, whole seconds (`2024-05-01T10:00:00Z`).
fn timestamp(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
