//! Conformance tooling: emulated devices that speak the real wire protocols to a running
//! gateway, and (later) transcript replay. Unlike the protocol crates this crate does IO: it is
//! a client of the gateway, the way real devices are.
//!
//! - [`android`]: a local Android Management API (AMAPI) emulator with a token endpoint,
//!   simulated devices and notifications through Google's Pub/Sub emulator or direct pushes.
//! - [`apple`]: emulated Apple devices, one at a time or as a fleet.
//! - [`apns`]: a local APNs emulator (HTTP/2 + TLS, client certificates, failure injection) and
//!   what it hands to the fleet.
//! - [`bench`]: the `mdm-bench` load tool.
//! - [`windows`]: emulated Windows devices: enrollment (discovery, policy, enrollment, renewal)
//!   and OMA-DM management sessions.

pub mod android;
pub mod apns;
pub mod apple;
pub mod bench;
pub mod cli;
pub mod stats;
pub mod windows;
