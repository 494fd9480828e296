//! The APNs payload that wakes an MDM device: `{"mdm":"<PushMagic>"}`.
//!
//! Only the bytes. Sending it (topic header, priority, the certificate) is the gateway's job.

/// The JSON body for an MDM push to a channel whose TokenUpdate carried `push_magic`.
pub fn push_payload(push_magic: &str) -> Vec<u8> {
    // serde_json escapes anything a device might put in PushMagic.
    serde_json::to_vec(&serde_json::json!({ "mdm": push_magic })).unwrap_or_default()
}
