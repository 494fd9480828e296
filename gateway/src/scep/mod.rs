//! SCEP challenges, as the enrollment profile needs them.
//!
//! placeholder until the SCEP branch lands; replaced at merge.
//!
//! Only the interface the enrollment profile and ticket status use, backed by an in-memory map so
//! the profile code compiles and its tests run. It serves no `/scep` endpoint, checks no challenge
//! and issues no certificate; the SCEP branch provides all of that behind the same two methods.

// placeholder until the SCEP branch lands; replaced at merge

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::StoreError;

/// What the SCEP side knows about the challenges issued for one enrollment ticket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TicketStatus {
    /// A challenge issued for the ticket was presented in a SCEP request and accepted.
    pub challenge_used: bool,
    /// SHA-256 (hex) of the certificate SCEP issued with that challenge.
    pub issued_cert_sha256: Option<String>,
}

// placeholder until the SCEP branch lands; replaced at merge
#[derive(Debug, Default)]
pub struct Scep {
    /// challenge → ticket it was issued for.
    challenges: Mutex<HashMap<String, Option<String>>>,
    /// ticket → status.
    tickets: Mutex<HashMap<String, TicketStatus>>,
}

impl Scep {
    pub fn new() -> Self {
        Scep::default()
    }

    /// A new one-time challenge, optionally tied to an opaque enrollment ticket.
    pub async fn issue_challenge(&self, ticket: Option<&str>) -> Result<String, StoreError> {
        use base64::Engine as _;
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        self.challenges.lock().unwrap_or_else(|e| e.into_inner()).insert(challenge.clone(), ticket.map(str::to_owned));
        if let Some(t) = ticket {
            self.tickets.lock().unwrap_or_else(|e| e.into_inner()).entry(t.to_owned()).or_default();
        }
        Ok(challenge)
    }

    /// What happened to the challenges issued for `ticket`; `None` when none was issued.
    pub async fn ticket_status(&self, ticket: &str) -> Result<Option<TicketStatus>, StoreError> {
        Ok(self.tickets.lock().unwrap_or_else(|e| e.into_inner()).get(ticket).cloned())
    }
}
