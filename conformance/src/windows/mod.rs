//! Emulated Windows devices. Management only for now: [`WindowsDevice`] speaks OMA-DM SyncML
//! over mutual TLS to `/ManagementServer/MDM.svc` the way the Windows DM client does (package 1
//! with Alert 1201, the sign-in state and DevInfo; Status and Results for every server command;
//! large objects in chunks both ways; unenrollment with Alert 1226), and answers from a small
//! management tree (DevInfo, DevDetail, RemoteLock, Reboot, RemoteWipe).

mod device;
mod tree;

pub use device::{Handled, SessionReport, WindowsDevice, WindowsDeviceError, WindowsIdentity};
pub use tree::default_tree;
