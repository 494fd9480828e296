//! OMA-DM 1.2 SyncML as MS-MDM uses it, as data.
//!
//! - [`message`]: the message as typed values, decoded from XML (strict and bounded: no DOCTYPE,
//!   no entity expansion, limited depth and size, see [`xml`]) and encoded back.
//! - [`codes`]: status and alert codes, open newtypes.
//! - [`session`]: the server's session state machine: a client message in, the reply, the next
//!   state and the effects (commands finished, inventory, unenrollment) out.
//! - [`translate`]: normalised commands → SyncML commands; [`inventory`]: DevInfo/DevDetail →
//!   normalised inventory.
//!
//! This module does no IO: it neither stores sessions nor reads the clock; it does not decide
//! which device a message comes from (the client certificate does, in the gateway).

pub mod codes;
pub mod error;
pub mod inventory;
pub mod message;
pub mod session;
pub mod settings;
pub mod translate;
pub mod xml;

pub use codes::{AlertCode, StatusCode};
pub use error::DecodeError;
pub use inventory::inventory_from_nodes;
pub use message::{
    Alert, CONTENT_TYPE, Command, Container, Item, ItemCommand, Meta, Results, Status, SyncBody, SyncHdr, SyncMl,
    decode, decode_commands, encode_commands,
};
pub use session::{Effect, Queued, ServerConfig, Session, SessionError, State, Step, handle, refusal};
pub use translate::{WindowsCommand, translate};

use mdm_core::EventType;

/// A client event (1224) or generic alert (1226) the gateway has no more specific event for.
pub const DEVICE_ALERT: EventType = EventType::named("device.alert");
