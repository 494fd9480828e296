//! `GET /v1/events?after=&limit=&wait=`: the embedded event log, with long polling.

use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

use super::store_error;
use crate::AppState;
use crate::http_util::{Reply, json_error, with_type};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    after: Option<String>,
    limit: Option<u32>,
    wait: Option<u64>,
}

const DEFAULT_LIMIT: u32 = 100;

pub(super) async fn list(state: &AppState, query: &str) -> Reply {
    let q: Query = match serde_urlencoded::from_str(query) {
        Ok(q) => q,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_query", &e.to_string()),
    };
    // The cursor is the log position, opaque to clients.
    let after = match q.after.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    "`after` must be a cursor returned as `next`",
                );
            }
        },
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, state.config.events.max_page);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(state.config.api.max_wait_s));
    let deadline = tokio::time::Instant::now() + wait;
    let mut shutdown = state.shutdown.clone();
    let batch = loop {
        // Register before reading so an append in between is not missed.
        let notified = state.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let batch = match state.store.events_after(after, limit).await {
            Ok(b) => b,
            Err(e) => return store_error(e),
        };
        if !batch.is_empty() || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            break batch;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    };
    let next = batch.last().map(|e| e.seq).unwrap_or(after);
    // Stored events are already JSON: splice them in instead of re-encoding.
    let mut body = String::with_capacity(batch.iter().map(|e| e.json.len() + 1).sum::<usize>() + 32);
    body.push_str("{\"events\":[");
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.json);
    }
    body.push_str("],\"next\":\"");
    body.push_str(&next.to_string());
    body.push_str("\"}");
    with_type(StatusCode::OK, "application/json", body)
}
