//! The `RequestType`s this crate emits. The vocabulary is open: raw commands and API plists may
//! carry any other `RequestType`, which passes through untouched.

pub const DEVICE_INFORMATION: &str = "DeviceInformation";
pub const DEVICE_LOCK: &str = "DeviceLock";
pub const RESTART_DEVICE: &str = "RestartDevice";
pub const ERASE_DEVICE: &str = "EraseDevice";
pub const CLEAR_PASSCODE: &str = "ClearPasscode";
pub const INSTALL_PROFILE: &str = "InstallProfile";
pub const INSTALL_APPLICATION: &str = "InstallApplication";
pub const SETTINGS: &str = "Settings";
/// Built by [`crate::declarative_management_command`], not by `translate`.
pub const DECLARATIVE_MANAGEMENT: &str = "DeclarativeManagement";

/// Every request type this crate builds, through [`crate::translate`] or
/// [`crate::declarative_management_command`] (checked against Apple's schemas in tests).
pub const EMITTED: [&str; 9] = [
    DEVICE_INFORMATION,
    DEVICE_LOCK,
    RESTART_DEVICE,
    ERASE_DEVICE,
    CLEAR_PASSCODE,
    INSTALL_PROFILE,
    INSTALL_APPLICATION,
    SETTINGS,
    DECLARATIVE_MANAGEMENT,
];
