//! Emulated Windows devices.
//!
//! - Enrollment ([`WindowsEnroller`]): MS-MDE2 discovery → MS-XCEP policy → MS-WSTEP enrollment with
//!   a real certificate request (openssl), the provisioning document read back, and renewal
//!   (PKCS#7 signed with the current certificate, over TLS with it). The result is a
//!   [`WindowsIdentity`]: the issued certificate and its key, the device id and the management URL
//!   from the provisioning document.
//! - Management ([`WindowsDevice`]): OMA-DM SyncML over mutual TLS to `/ManagementServer/MDM.svc`
//!   the way the Windows DM client does (package 1 with Alert 1201, the sign-in state and
//!   DevInfo; Status and Results for every server command; large objects in chunks both ways;
//!   unenrollment with Alert 1226), answering from a small management tree (DevInfo, DevDetail,
//!   RemoteLock, Reboot, RemoteWipe). It runs on a [`DmIdentity`], which an enrolled
//!   [`WindowsIdentity`] converts into.
//! - [`fleet`]: many devices at once (`mdm-emulate windows`): real enrollment each, sessions on a
//!   poll schedule, unenrollment.

mod device;
mod enroll;
pub mod fleet;
mod identity;
mod tree;

pub use device::{DmIdentity, Handled, SessionReport, WindowsDevice, WindowsDeviceError, client_header, package1};
pub use enroll::{CsrStyle, EnrollCredential, HttpReply, WindowsEnrollError, WindowsEnroller, WindowsEnrollerConfig};
pub use identity::WindowsIdentity;
pub use tree::default_tree;

impl From<&WindowsIdentity> for DmIdentity {
    fn from(id: &WindowsIdentity) -> Self {
        DmIdentity { device_id: id.device_id.clone(), key: id.key.clone(), cert: id.cert.clone() }
    }
}
