//! Device-facing sources, routed by path. Each platform family is a folder. Apple: check-ins and
//! reports (`/mdm`, `/checkin`), enrollment (`/mdm/enroll`, `/enroll`, `/enroll/session…`).
//! Windows enrollment: `/EnrollmentServer/{Discovery,Policy,Enrollment}.svc`; Windows management: OMA-DM
//! SyncML (`/ManagementServer/MDM.svc`, [`omadm`]). Android: Pub/Sub push of AMAPI notifications
//! (`/android/pubsub`, [`android`]).

pub mod android;
pub mod apple;
pub mod omadm;
pub mod scep;
pub mod windows_enroll;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, StatusCode};

use crate::AppState;
use crate::http_util::{Reply, text};
use crate::server::{ConnInfo, Handler};

/// The device listeners' router (TLS, and plain HTTP behind a TLS-terminating balancer).
/// Layer order: the plain listener refuses peers that are not trusted proxies (only the balancer
/// may speak plain HTTP to it); the client address is resolved from forwarding headers of
/// trusted proxies (for logs: [`crate::forwarded`]); then route by path, then each source checks
/// method, content type, size and identity, in that order, so the cheapest refusals come first.
/// While draining, replies ask HTTP/1.1 clients to close the connection, so that their next
/// request goes through the balancer to another instance.
pub fn device_handler(state: Arc<AppState>) -> Handler {
    Arc::new(move |req, conn| {
        let state = state.clone();
        Box::pin(async move {
            let proxies = state.identity.trusted_proxies();
            let peer = conn.peer.map(|p| p.ip());
            if !conn.tls && !peer.is_some_and(|ip| proxies.contains(ip)) {
                tracing::warn!(peer = ?peer, path = %req.uri().path(),
                    "plain-HTTP device request from a peer that is not a trusted proxy; refused");
                return text(StatusCode::FORBIDDEN, "this listener serves the load balancer only\n");
            }
            let conn = match peer {
                Some(ip) => conn.for_client(proxies.client_address(ip, req.headers())),
                None => conn,
            };
            let mut reply = route(&state, req, &conn).await;
            if state.draining.load(Ordering::SeqCst) {
                reply.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            reply
        })
    })
}

async fn route(state: &Arc<AppState>, req: hyper::Request<hyper::body::Incoming>, conn: &Arc<ConnInfo>) -> Reply {
    let path = req.uri().path().to_owned();
    if let Some(endpoint) = windows_enroll::Endpoint::at(&path) {
        return windows_enroll::handle(state, req, conn, endpoint).await;
    }
    match path.as_str() {
        "/mdm" | "/checkin" => {
            if req.method() != Method::PUT {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use PUT\n");
                r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("PUT"));
                return r;
            }
            let endpoint = if path == "/mdm" { apple::Endpoint::Mdm } else { apple::Endpoint::CheckIn };
            apple::handle(state, req, conn, endpoint).await
        }
        // SCEP answers wrong methods itself (400, as RFC 8894 clients expect a reason).
        "/scep" => scep::handle(state, req, conn).await,
        omadm::PATH => omadm::handle(state, req, conn).await,
        android::PATH => android::handle(state, req, conn).await,
        _ => match apple::enroll::handle(state, req).await {
            Some(reply) => reply,
            None => text(StatusCode::NOT_FOUND, "no such endpoint\n"),
        },
    }
}
