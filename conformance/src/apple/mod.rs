//! An emulated Apple device: its own key and identity certificate, every message signed
//! (`Mdm-Signature`) or sent over a TLS client certificate, the check-in flow and command
//! answers with realistic values, and the profiles, managed apps and app configuration the
//! commands leave ([`ManagedState`]).
//!
//! Two ways to get the identity: issued directly from a CA the gateway trusts
//! ([`AppleDevice::new`], the fleet's default; fast, for load), or the real way
//! ([`AppleDevice::enroll_with_profile`]: signed enrollment profile, SCEP, see [`enroll`]).

mod ddm;
mod device;
pub mod enroll;
pub mod fleet;
mod managed;
mod messages;
pub mod profile;
pub mod scep;

pub use ddm::DdmSync;
pub use device::{AppleDevice, DeviceError, IdentityMode, Reply};
pub use enroll::{EnrollError, Enroller, Ticket, TicketState};
pub use managed::{ManagedApp, ManagedState, Refusal};
pub use messages::{UserChannel, answer_for};
