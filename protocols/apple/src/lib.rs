//! Apple MDM check-in and command protocol as data.
//!
//! In: check-in and command-report bodies (XML or binary plists), normalised commands, a queue
//! snapshot with `now`, declarations. Out: typed messages, event data, inventory, command
//! plists, check-in replies (declarative management's JSON included, [`ddm`]), the push
//! payload, the enrollment profile, and which command to send next.
//!
//! This crate does no IO: no sockets, no files, no clock, no randomness. It does not verify the
//! device's identity certificate or message signature, store tokens, send pushes, or decide
//! enrollment policy; the gateway does all of that with the values decoded here.

mod checkin;
mod command;
pub mod ddm;
mod error;
mod fields;
mod ids;
mod json;
mod os_name;
pub mod profile;
mod push;
pub mod queue;
mod reply;
mod report;

pub use checkin::{
    Authenticate, CheckOut, CheckinMessage, DeclarativeManagement, GetBootstrapToken, GetToken, SetBootstrapToken,
    TokenUpdate, UserAuthenticate, decode_checkin,
};
pub use command::{
    AppleCommand, DEFAULT_DEVICE_INFORMATION_QUERIES, SETTINGS_PROFILE_IDENTIFIER, TranslateContext,
    declarative_management_command, parse_command_plist, request_type, translate,
};
pub use error::DecodeError;
pub use ids::{EnrollmentIds, EnrollmentType, SHARED_IPAD_USER_ID};
pub use profile::{EnrollmentProfile, PayloadUuids, ProfileError, ProfileVariant};
pub use push::push_payload;
pub use queue::{QueueItem, QueueState, Selection, Trigger, select_next};
pub use reply::{encode_bootstrap_token_response, encode_digest_challenge, encode_get_token_response};
pub use report::{CommandReport, ErrorChainItem, ReportStatus, decode_report};
