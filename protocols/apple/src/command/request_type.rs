//! The `RequestType`s this crate emits. The vocabulary is open: raw commands and API plists may
//! carry any other `RequestType`, which passes through untouched.

pub const DEVICE_INFORMATION: &str = "DeviceInformation";
pub const DEVICE_LOCK: &str = "DeviceLock";
pub const RESTART_DEVICE: &str = "RestartDevice";
pub const ERASE_DEVICE: &str = "EraseDevice";
pub const CLEAR_PASSCODE: &str = "ClearPasscode";

/// Every request type [`crate::translate`] can produce (checked against Apple's schemas in tests).
pub const EMITTED: [&str; 5] = [DEVICE_INFORMATION, DEVICE_LOCK, RESTART_DEVICE, ERASE_DEVICE, CLEAR_PASSCODE];
