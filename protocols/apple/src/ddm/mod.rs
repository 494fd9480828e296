//! Declarative Device Management (DDM) as data: what the device asks for over the
//! `DeclarativeManagement` check-in, the declarations a server hands out, and the JSON bodies of
//! the answers.
//!
//! In: the check-in's `Endpoint` string and `Data` bytes, declaration JSON from an API caller.
//! Out: a typed [`Endpoint`], a validated [`Declaration`], the status report as JSON, and the
//! `tokens` / `declaration-items` reply bodies. Which declarations a device has, and its
//! `DeclarationsToken`, are the gateway's to store; this module only shapes them.

mod declaration;
mod endpoint;
mod replies;
mod status;

pub use declaration::{Declaration, DeclarationClass, DeclarationError, MAX_IDENTIFIER_BYTES, MAX_SERVER_TOKEN_BYTES};
pub use endpoint::{Endpoint, EndpointError};
pub use replies::{ManifestItem, SyncTokens, declaration_items_response, tokens_response};
pub use status::{StatusReportError, decode_status_report};
