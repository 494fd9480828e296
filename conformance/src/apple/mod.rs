//! An emulated Apple device: its own key and identity certificate, every message signed
//! (`Mdm-Signature`) or sent over a TLS client certificate, the check-in flow and command
//! answers with realistic values.

mod ddm;
mod device;
pub mod fleet;
mod messages;
pub mod scep;

pub use ddm::DdmSync;
pub use device::{AppleDevice, DeviceError, IdentityMode, Reply};
pub use messages::{UserChannel, answer_for};
