//! Logs and metrics. Metric names live here, in one place, with low-cardinality labels only.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Apple requests refused because the device's identity did not check out, by `reason`.
pub const IDENTITY_FAILURES: &str = "mdm_identity_failures_total";
/// Device requests refused before any state change, by `platform` and `reason`.
pub const DEVICE_REJECTS: &str = "mdm_device_requests_rejected_total";
/// Device requests handled, by `platform`, `kind` (message type or report status) and `code`.
pub const DEVICE_REQUESTS: &str = "mdm_device_requests_total";
/// Device request latency in seconds, by `platform`.
pub const DEVICE_REQUEST_SECONDS: &str = "mdm_device_request_duration_seconds";
/// SCEP PKIOperations, by `message_type` (`PKCSReq`, `RenewalReq`, `other`, `unknown` when
/// unreadable), `result` (`success`, a failInfo name such as `badRequest`, `malformed` for HTTP
/// 400, `error` for 500) and `reason` (a stable label such as `challenge_used`).
pub const SCEP_REQUESTS: &str = "mdm_scep_requests_total";
/// Commands queued, by `platform`.
pub const COMMANDS_QUEUED: &str = "mdm_commands_queued_total";
/// Command results, by `platform` and `status`.
pub const COMMAND_RESULTS: &str = "mdm_command_results_total";
/// Events deleted from the log by the retention sweep (`events.retention_days`).
pub const EVENTS_PRUNED: &str = "mdm_events_pruned_total";
/// Events delivered to a sink, by `sink`.
pub const SINK_DELIVERED: &str = "mdm_sink_delivered_total";
/// Failed delivery attempts to a sink, by `sink`.
pub const SINK_FAILURES: &str = "mdm_sink_failures_total";
/// Events the sink has not yet delivered, by `sink`.
pub const SINK_LAG: &str = "mdm_sink_lag_events";
/// Commands taken from NATS (`mdm.commands`), by `outcome`: `stored`, `rejected` (terminated with
/// a `command.rejected` event) or `retry` (NAKed after a store failure).
pub const NATS_COMMANDS: &str = "mdm_nats_commands_total";
/// API requests, by `route` and `code`.
pub const API_REQUESTS: &str = "mdm_api_requests_total";
/// AMAPI calls finished (retries included), by `outcome` (`ok` or an `amapi_*` error code).
pub const AMAPI_CALLS: &str = "mdm_amapi_calls_total";
/// AMAPI attempts retried, by `reason` (`rate_limited`, `unavailable`).
pub const AMAPI_RETRIES: &str = "mdm_amapi_retries_total";
/// Seconds until a push certificate expires, by `topic`.
pub const PUSH_CERT_EXPIRY: &str = "mdm_push_certificate_expiry_seconds";
/// Pushes, by `result` (`delivered`, `refused` by APNs, `failed` after retries, `not_sent`) and
/// `reason` (an APNs reason such as `Unregistered`, or a local code such as `no_token`).
pub const PUSHES: &str = "mdm_pushes_total";
/// Time from the push request to APNs' final answer (retries included), by `result`.
pub const PUSH_SECONDS: &str = "mdm_push_duration_seconds";
/// Push attempts that are retried, by `reason` (`TooManyRequests`, `connection`, `timeout`...).
pub const PUSH_RETRIES: &str = "mdm_push_retries_total";
/// Wake-ups after enqueue merged into a push already sent or due (see `apple.push_coalesce_ms`).
pub const PUSHES_COALESCED: &str = "mdm_pushes_coalesced_total";
/// Open HTTP/2 connections to APNs, by `topic`.
pub const APNS_CONNECTIONS: &str = "mdm_apns_connections";
/// Enrollments refused by the enrollment gate, by `platform` and `reason`.
pub const ENROLLMENTS_DENIED: &str = "mdm_enrollments_denied_total";
/// Enrollment hook calls that gave no decision (timeout, error, bad answer).
pub const ENROLLMENT_HOOK_FAILURES: &str = "mdm_enrollment_hook_failures_total";

/// Android Pub/Sub pushes handled (answered 2xx), by `type` (AMAPI notification type, `other`,
/// `unknown` when unreadable) and `outcome` (`applied`, `duplicate`, `stale`, `dead_letter`).
pub const ANDROID_PUBSUB_MESSAGES: &str = "mdm_android_pubsub_messages_total";
/// Android Pub/Sub messages that can never be applied, by `reason` (`mdm_android::DecodeError::reason`).
pub const ANDROID_PUBSUB_DEAD_LETTERS: &str = "mdm_android_pubsub_dead_letters_total";
/// Handled Pub/Sub message ids forgotten by the retention sweep (`android.dedupe_days`).
pub const ANDROID_PUBSUB_PRUNED: &str = "mdm_android_pubsub_ids_pruned_total";

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MDM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs the process-wide Prometheus recorder once; later calls reuse it (tests start many
/// gateways in one process).
pub fn metrics_handle() -> PrometheusHandle {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then our
            // handle renders only what it sees, which is still a valid exposition.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
