//! Android Management API (AMAPI) as data, no IO.
//!
//! Google delivers AMAPI notifications through Cloud Pub/Sub push: an HTTPS POST whose JSON body
//! wraps a base64 message. This crate turns such a body into typed data and then into the
//! gateway's vocabulary:
//!
//! - [`pubsub`]: the push envelope ([`PushMessage::decode`]): message id, publish time,
//!   attributes, the decoded `data` bytes.
//! - [`amapi`]: the AMAPI resources a notification carries ([`Device`], [`Operation`], …), only the
//!   fields the gateway needs; unknown fields are ignored.
//! - [`notification`]: [`Notification::decode`] by `attributes.notificationType`.
//! - [`normalise`]: [`Notification::emissions`]: which events (and inventory) the gateway emits.
//! - [`command`]: normalised commands → the AMAPI call that carries them ([`AmapiCall`]), and the
//!   enrollment-token request body.
//! - [`policy`]: `set_settings`, `install_app`, `app_config` as changes to the device's own
//!   policy, and how a device report answers them.
//!
//! Nothing here reads the clock, a socket or a file; the caller passes everything in.

pub mod amapi;
pub mod command;
mod error;
pub mod normalise;
pub mod notification;
pub mod policy;
pub mod pubsub;

pub use amapi::{Device, Operation};
pub use command::{AmapiCall, CallKind, EnrollmentMode};
pub use error::DecodeError;
pub use normalise::{DeviceReport, Emission, device_id_from_name, device_report, enterprise_id_from_name};
pub use notification::{Notification, NotificationType};
pub use pubsub::PushMessage;
