//! `/healthz` (the process runs), `/readyz` (it can serve: store reachable, not draining) and
//! `/metrics` (Prometheus text).

use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::json;

use crate::AppState;
use crate::http_util::{Reply, json, text, with_type};
use crate::telemetry;

pub(super) fn healthz() -> Reply {
    text(StatusCode::OK, "ok\n")
}

/// Ready when the store answers, every sink's last delivery succeeded (CONTRACT §3: store and
/// sinks reachable) and the gateway is not draining. Operators whose devices should keep being
/// served while a backend is down set `events.readiness_ignores_sinks`: events wait in the log.
pub(super) async fn readyz(state: &AppState) -> Reply {
    let store = state.store.ping().await;
    let draining = state.draining.load(Ordering::SeqCst);
    let sinks: Vec<_> =
        state.sinks.iter().map(|s| json!({ "name": s.name, "failing": s.failing(), "cursor": s.cursor() })).collect();
    let sinks_ok = state.config.events.readiness_ignores_sinks || state.sinks.iter().all(|s| !s.failing());
    let ready = store.is_ok() && sinks_ok && !draining;
    let mut body = json!({
        "ready": ready,
        "store": match &store { Ok(()) => "ok".to_owned(), Err(e) => e.to_string() },
        "event_log": if store.is_ok() { "ok" } else { "unavailable" },
        "draining": draining,
        "sinks": sinks,
    });
    // Informational: an enterprise AMAPI denies (403) does not make the gateway unready (other
    // enterprises and platforms carry on), but operators see it here.
    if let Some(a) = &state.android {
        body["android"] = json!({ "failing_enterprises": a.client.failing_enterprises() });
    }
    json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}

pub(super) async fn metrics(state: &AppState) -> Reply {
    let now = state.clock.unix();
    if let Ok(certs) = state.store.push_certs().await {
        for c in certs {
            metrics::gauge!(telemetry::PUSH_CERT_EXPIRY, "topic" => c.topic.clone()).set((c.not_after - now) as f64);
        }
    }
    with_type(StatusCode::OK, "text/plain; version=0.0.4", state.metrics.render())
}
