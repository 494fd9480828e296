//! Windows MDM as data, no IO.
//!
//! - [`enroll`]: enrollment: MS-MDE2 discovery, MS-XCEP `GetPolicies`, MS-WSTEP
//!   `RequestSecurityToken` (enroll and renew), SOAP faults, the provisioning document.
//! - [`syncml`]: management: OMA-DM 1.2 SyncML as MS-MDM uses it: codec, status codes, session
//!   states, normalised commands → SyncML.

pub mod enroll;
pub mod syncml;
