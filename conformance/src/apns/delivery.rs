//! What the APNs emulator hands to emulated devices: one accepted push.
//!
//! This is the seam between the APNs emulator (which accepts pushes from the gateway) and the
//! device fleet (which wakes the device that owns the token). The emulator sends these on a
//! `tokio::sync::mpsc` channel; the fleet owns the receiver.

use std::time::Instant;

/// One push the emulator accepted (HTTP 200 to the gateway).
#[derive(Debug, Clone)]
pub struct PushDelivery {
    /// Device token, lower-case hex, as in the `/3/device/<token>` path.
    pub token_hex: String,
    /// The `apns-topic` header.
    pub topic: String,
    /// `mdm` from the `{"mdm": "<PushMagic>"}` body.
    pub push_magic: String,
    /// The `apns-id` the emulator answered with.
    pub apns_id: String,
    /// When the emulator accepted it (for round-trip latency).
    pub accepted_at: Instant,
}
