//! The gateway's normalised vocabulary, shared by every protocol crate and the runtime.
//!
//! This crate defines *what* the backend sees and says: device identifiers, the normalised
//! [`Command`] language, [`Event`]s and [`Inventory`]. It knows nothing about any wire protocol and
//! does no IO: it never reads the clock or generates ids. Callers pass ids and times in.

mod command;
mod device;
mod event;
mod inventory;
pub mod placeholder;

pub use command::{Command, CommandError, CommandStatus, Settings};
pub use device::{DeviceId, DeviceIdError, Platform};
pub use event::{Event, EventType, RawMessage};
pub use inventory::Inventory;
