//! Windows enrollment as data: MS-MDE2 discovery, MS-XCEP `GetPolicies`, MS-WSTEP
//! `RequestSecurityToken` (enroll and renew), the SOAP faults with `DeviceEnrollmentServiceError`,
//! and the `wap-provisioningdoc` the enrollment answers with.
//!
//! Server side: `DiscoverRequest::decode`, `GetPoliciesRequest::decode`,
//! `RequestSecurityToken::decode` read requests (a refused one is an [`EnrollError`] that names
//! its [`Fault`]); `DiscoverResponse`, `GetPoliciesResponse`, `RequestSecurityTokenResponse`,
//! [`EnrollmentProvisioning`] and [`Fault`] write the replies. Client side: the typed steps in
//! [`client`].
//!
//! What this module does not do: no IO, no clock (times come in as unix seconds), no
//! randomness (message ids, trace ids and secrets come from the caller), no cryptography (the
//! certificate request is bytes here; `mdm-certs` reads and signs it; thumbprints come in
//! computed). Whom to trust (credentials, tokens) is the caller's decision.
//!
//! XML is read into a bounded tree ([`xml`]): a DTD or an unknown entity is refused, never
//! expanded; nesting and element counts are capped.

pub mod client;
pub mod context;
pub mod discovery;
mod error;
pub mod fault;
pub mod ns;
pub mod policy;
pub mod provisioning;
pub mod soap;
pub mod wstep;
pub mod xml;

pub use context::AdditionalContext;
pub use discovery::{AuthPolicy, DiscoverRequest, DiscoverResponse, RequestVersion};
pub use error::{EnrollError, ReplyError};
pub use fault::{ErrorType, Fault, Subcode};
pub use policy::{GetPoliciesRequest, GetPoliciesResponse};
pub use provisioning::{
    AppAuth, CertStore, CertificateEntry, EnrollmentProvisioning, ManagementAccount, PollSchedule, ProvisionedIdentity,
    ProvisioningDoc, RenewSettings,
};
pub use soap::{BinarySecurityToken, ClientCredential, Envelope, Security, UsernameToken};
pub use wstep::{CsrFormat, RequestSecurityToken, RequestSecurityTokenResponse, RequestType};

#[cfg(test)]
mod pair_tests;
