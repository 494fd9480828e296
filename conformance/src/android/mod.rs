//! A local stand-in for Google's side of the Android Management API (AMAPI), for tests, the
//! load tool and `mdm-emulate android`.
//!
//! What it emulates, from the AMAPI discovery document (`androidmanagement.v1.json`):
//! - a **service-account key** file like Google's ([`ServiceAccountKey`]) and the **OAuth token
//!   endpoint** `POST /token` (RFC 7523 JWT bearer grant, RS256 checked against the key);
//! - the **REST surface** the gateway calls, over HTTP/1.1 with TLS (its own CA, see
//!   [`AmapiEmulator::ca_pem`]) and optionally plain HTTP: `signupUrls.create`,
//!   `enterprises.create`, `enrollmentTokens.create`, `policies.patch`/`get`, `devices.get`/
//!   `list`/`patch`/`delete`, `devices.issueCommand`, `devices.operations.get`, each behind
//!   `Authorization: Bearer` with a token the endpoint issued, errors in Google's JSON shape;
//! - **simulated devices** that enroll with an enrollment token and publish ENROLLMENT,
//!   STATUS_REPORT and COMMAND notifications, and the final STATUS_REPORT with state `DELETED`
//!   after `devices.delete`; that apply their policy when it is patched or `devices.patch`
//!   gives them another one (`appliedPolicyVersion`, `applicationReports` for the apps they
//!   install, `nonComplianceDetails` for what a [`NonCompliance`] rule says they cannot do);
//! - **fault injection** ([`Fault`]) and a log of every request received ([`RecordedRequest`]).
//!
//! Notifications go out through a [`Publisher`]: Google's own Pub/Sub emulator
//! ([`PubSubEmulator`], a Java process this module starts or finds through
//! `PUBSUB_EMULATOR_HOST`), which pushes them to a push subscription; or a
//! [`DirectPublisher`] that posts the push envelope straight to a URL (fast, and with chosen
//! message ids and publish times).
//!
//! Not emulated: the web signup page (see [`AmapiEmulator::complete_signup`]), IAM, quotas by
//! themselves (only injected 429s), policy validation beyond JSON shape, web
//! apps, web tokens, migration tokens, usage logs and ENTERPRISE_UPGRADE (those can be sent
//! with [`AmapiEmulator::publish_raw`]).

mod commands;
mod device;
mod errors;
mod faults;
mod key;
mod policy;
mod pubsub;
mod push_sink;
mod rest;
mod server;
mod state;
mod tls;
mod token;
mod util;

pub use commands::{CommandFailure, CommandSettings};
pub use device::DeviceSpec;
pub use faults::{Fault, FaultRule, RecordedRequest};
pub use key::{ANDROID_MANAGEMENT_SCOPE, JWT_BEARER_GRANT, ServiceAccountKey};
pub use policy::{NonCompliance, PolicySettings};
pub use pubsub::{
    DEFAULT_PUBSUB_EMULATOR, DirectPublisher, PubSubClient, PubSubEmulator, Publisher, PushMessage, push_envelope,
};
pub use push_sink::{PushSink, ReceivedPush};
pub use server::{AmapiEmulator, EmulatorConfig, Published};

/// Why the emulator, a Pub/Sub helper or a simulated device could not do something.
#[derive(Debug, thiserror::Error)]
pub enum AndroidEmuError {
    #[error("certificate: {0}")]
    Pki(#[from] mdm_certs::devpki::DevPkiError),
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("IO: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The Pub/Sub emulator is not installed, did not start, or answered an error.
    #[error("Pub/Sub emulator: {0}")]
    PubSub(String),
    /// A simulated device could not enroll (unknown, expired or used token).
    #[error("enrollment refused: {0}")]
    Enroll(String),
    /// No such device, enterprise, signup URL...
    #[error("not found: {0}")]
    NotFound(String),
}

impl From<rustls::Error> for AndroidEmuError {
    fn from(e: rustls::Error) -> Self {
        AndroidEmuError::Tls(e.to_string())
    }
}
