//! An emulated Windows device, enrollment half: MS-MDE2 discovery → MS-XCEP policy →
//! MS-WSTEP enrollment with a real certificate request (openssl), the provisioning document
//! read back, and renewal (PKCS#7 signed with the current certificate, over TLS with it).
//!
//! The result is a [`WindowsIdentity`]: the issued certificate and its key, the device id and
//! the management URL from the provisioning document, ready for OMA-DM sessions over mTLS
//! ([`WindowsIdentity::https_client`]).

mod device;
mod identity;

pub use device::{CsrStyle, EnrollCredential, HttpReply, WindowsDevice, WindowsDeviceConfig, WindowsEnrollError};
pub use identity::WindowsIdentity;
