//! A local APNs emulator for MDM pushes, for tests and the load tool.
//!
//! It speaks what the gateway's push client speaks to Apple: HTTP/2 over TLS, the push
//! certificate as *required* TLS client certificate (chained to a fake Apple push CA this module
//! makes, see [`PushCa`]), `POST /3/device/<hex token>` with the `apns-*` headers, and APNs'
//! status codes and JSON `reason` bodies (see `check.rs` for the order of checks). Accepted pushes
//! are handed to whoever runs the emulated devices as [`PushDelivery`] values on a channel.
//!
//! Failures are injected through [`ApnsControl`]: the next N answers 429/500/503, a GOAWAY after
//! N streams per connection, slow answers, and per-token `Unregistered` / `BadDeviceToken` /
//! `DeviceTokenNotForTopic`.
//!
//! Not emulated: token-based (JWT) authentication, the sandbox/production split, storing pushes
//! for offline devices, per-device throttling by itself (only when told), notification payloads
//! other than MDM's.

mod ca;
mod check;
mod control;
pub mod delivery;
mod server;

pub use ca::PushCa;
pub use check::MAX_PAYLOAD;
pub use control::{ApnsControl, ApnsStats, SeenRequest, TokenMark};
pub use delivery::PushDelivery;
pub use server::ApnsEmulator;

/// Why the emulator could not start or make a certificate.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("certificate: {0}")]
    Pki(#[from] mdm_certs::devpki::DevPkiError),
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("IO: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rustls::Error> for ApnsError {
    fn from(e: rustls::Error) -> Self {
        ApnsError::Tls(e.to_string())
    }
}
