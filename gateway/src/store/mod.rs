//! Durable state: enrollments, per-device command queues, the event log and sink cursors.
//!
//! Every method that changes state takes the events describing the change and writes both in
//! one transaction: the event log *is* the outbox. Sinks keep a cursor into it, so an event is
//! never lost when a backend is down, and is delivered at least once, in order.
//!
//! [`Store`] is the seam for other databases; [`suite`] is the behaviour any implementation must
//! pass. This module does not decide protocol rules (which command is next, what is bound to
//! what): callers do, with the protocol crates.

mod postgres;
mod sqlite;
#[cfg(any(test, feature = "store-suite"))]
pub mod suite;

use async_trait::async_trait;
use mdm_core::{CommandStatus, DeviceId, Event, Inventory, Platform};
use serde::Serialize;

pub use postgres::{PoolSettings, PostgresStore};
pub use sqlite::{Durability, SqliteStore};

/// Store failures. Callers map them to "try again later" answers; details go to the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL error: the server refused a statement, a connection was lost, or none could
    /// be had in time (`store.acquire_timeout_s`).
    #[error("database error: {0}")]
    Postgres(sqlx_core::Error),
    /// A migration could not be applied or does not match the database; the message names it.
    #[error("migration failed: {0}")]
    Migrate(String),
    #[error("invalid database URL: {0}")]
    Url(String),
    /// A database thread could not be started.
    #[error("cannot start a database thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The store was closed, or its database thread is gone.
    #[error("the store is closed")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The transaction this operation ran in (with others, committed together) could not begin
    /// or commit; nothing it wrote is stored.
    #[error("database error: the transaction could not be committed: {0}")]
    Commit(String),
    #[error("idempotency key `{0}` is already used")]
    IdempotencyConflict(String),
    #[error("command `{0}` already exists for this device")]
    DuplicateCommand(String),
    /// A row the write expected (having just read it) is gone; nothing was stored. Retrying
    /// from a fresh read succeeds.
    #[error("changed meanwhile: {0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl From<sqlx_core::Error> for StoreError {
    fn from(e: sqlx_core::Error) -> Self {
        match e {
            sqlx_core::Error::PoolClosed => StoreError::Closed,
            other => StoreError::Postgres(other),
        }
    }
}

/// Enrollment lifecycle of one device or user channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentState {
    /// Identity presented (Apple Authenticate), not yet reachable.
    Authenticated,
    /// Fully enrolled: reachable and manageable.
    Enrolled,
    /// Checked out or removed.
    Unenrolled,
}

impl EnrollmentState {
    pub fn as_str(self) -> &'static str {
        match self {
            EnrollmentState::Authenticated => "authenticated",
            EnrollmentState::Enrolled => "enrolled",
            EnrollmentState::Unenrolled => "unenrolled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "authenticated" => EnrollmentState::Authenticated,
            "enrolled" => EnrollmentState::Enrolled,
            "unenrolled" => EnrollmentState::Unenrolled,
            _ => return None,
        })
    }
}

/// Where to wake a device (Apple: APNs token, PushMagic, topic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushInfo {
    pub token: Vec<u8>,
    pub magic: String,
    pub topic: String,
}

/// One enrollment: a device channel, or a user channel (with `parent` set).
#[derive(Debug, Clone, PartialEq)]
pub struct Enrollment {
    pub device_id: DeviceId,
    pub parent: Option<DeviceId>,
    pub state: EnrollmentState,
    /// SHA-256 (hex) of the identity certificate bound at enrollment.
    pub cert_sha256: Option<String>,
    pub push: Option<PushInfo>,
    pub unlock_token: Option<Vec<u8>>,
    /// The escrowed bootstrap token, **sealed** by the gateway (`crate::sealing`): the store
    /// never holds it in plaintext. Changed on its own with [`Store::set_bootstrap_token`].
    pub bootstrap_token: Option<Vec<u8>>,
    pub inventory: Inventory,
    /// Platform facts that are not inventory (enrollment type, user names, topic...).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// Unix seconds.
    pub enrolled_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub checked_in_event_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Enrollment {
    pub fn new(device_id: DeviceId, now: i64) -> Self {
        Enrollment {
            device_id,
            parent: None,
            state: EnrollmentState::Authenticated,
            cert_sha256: None,
            push: None,
            unlock_token: None,
            bootstrap_token: None,
            inventory: Inventory::default(),
            attributes: serde_json::Map::new(),
            enrolled_at: None,
            last_seen: None,
            checked_in_event_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn platform(&self) -> Platform {
        self.device_id.platform()
    }
}

/// A command to put on a device's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCommand {
    pub command_id: String,
    pub device_id: DeviceId,
    /// Platform command name (Apple RequestType).
    pub request_type: String,
    /// The normalised command as the backend sent it, when there was one.
    pub normalised: Option<serde_json::Value>,
    /// The exact wire payload to deliver.
    pub payload: Vec<u8>,
    pub priority: i32,
    pub expires_at: Option<i64>,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
}

/// A command as stored, with its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRecord {
    pub command_id: String,
    pub device_id: DeviceId,
    pub request_type: String,
    pub normalised: Option<serde_json::Value>,
    pub payload: Vec<u8>,
    pub priority: i32,
    /// Insertion order; smaller is older.
    pub seq: i64,
    pub status: CommandStatus,
    pub expires_at: Option<i64>,
    pub idempotency_key: Option<String>,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub created_at: i64,
    pub updated_at: i64,
    /// How many times the command was handed to the device.
    pub sent_count: i64,
}

/// A change of a command's status, applied only if the command is currently in one of `from`.
#[derive(Debug, Clone)]
pub struct CommandUpdate<'a> {
    pub device_id: &'a DeviceId,
    pub command_id: &'a str,
    pub from: &'a [CommandStatus],
    pub to: CommandStatus,
    pub result: Option<serde_json::Value>,
    pub error: Option<serde_json::Value>,
    pub now: i64,
}

/// See [`Store::request_snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSnapshot {
    /// The device channel's enrollment.
    pub channel: Option<Enrollment>,
    /// The requesting user channel's enrollment; `None` when the request came on the device
    /// channel (or the user channel is unknown).
    pub user: Option<Enrollment>,
    /// The requesting channel's pending commands.
    pub pending: Vec<CommandRecord>,
}

/// An event as read back from the log, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    pub seq: i64,
    pub device_id: String,
    /// The event's JSON, exactly as stored.
    pub json: String,
}

/// An uploaded APNs push certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct PushCert {
    pub topic: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
    pub updated_at: i64,
}

/// A one-time SCEP challenge as created: only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewScepChallenge {
    /// SHA-256 (hex) of the challenge text.
    pub challenge_sha256: String,
    pub ticket: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A stored SCEP challenge with its use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScepChallenge {
    pub challenge_sha256: String,
    pub ticket: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub issued_cert_sha256: Option<String>,
}

/// A certificate issued through SCEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScepCertificate {
    /// SHA-256 (hex) of the certificate's DER: the value enrollments are bound to.
    pub cert_sha256: String,
    /// Serial number, hex.
    pub serial: String,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    /// `PKCSReq` or `RenewalReq`.
    pub message_type: String,
    pub transaction_id: String,
    /// The one-time challenge (hash) it was issued with, if any.
    pub challenge_sha256: Option<String>,
    pub ticket: Option<String>,
    /// For a renewal: the fingerprint of the certificate it renews.
    pub renewal_of: Option<String>,
    pub issued_at: i64,
}

/// What became of the challenges handed out for an enrollment ticket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TicketStatus {
    /// A certificate was issued with one of the ticket's challenges.
    pub challenge_used: bool,
    /// That certificate's SHA-256 (the most recent, if several).
    pub issued_cert_sha256: Option<String>,
}

/// Outcome of [`Store::record_scep_certificate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScepRecord {
    Recorded,
    /// The challenge to consume is unknown, already used or expired at `now`: nothing stored.
    ChallengeUnavailable,
}

/// One declaration (declarative management) assigned to a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeclaration {
    pub device_id: DeviceId,
    pub identifier: String,
    /// The full `Type`, e.g. `com.apple.configuration.passcode.settings`.
    pub declaration_type: String,
    pub server_token: String,
    /// The declaration JSON, exactly as the device gets it.
    pub body: String,
    /// Unix seconds. On replacement, `created_at` keeps the first value.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A channel's `DeclarationsToken` and when its declaration set last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationsToken {
    pub token: String,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A channel's declarations and token, read together (one snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeclarationSet {
    /// `None` when the channel never had a declaration.
    pub token: Option<DeclarationsToken>,
    /// By identifier.
    pub declarations: Vec<StoredDeclaration>,
}

/// What goes with a change of a channel's declaration set, in the same transaction.
#[derive(Debug, Clone, Copy)]
pub struct DeclarationsChange<'a> {
    /// The channel's new `DeclarationsToken`.
    pub token: &'a str,
    pub now: i64,
    /// Commands to queue (the `DeclarativeManagement` command that makes the device sync).
    pub commands: &'a [NewCommand],
    pub events: &'a [Event],
}

/// An enrollment ticket (`POST /enroll/session`): lets the enrollment page follow one enrollment
/// from profile download to enrolled device.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollTicket {
    /// SHA-256 (hex) of the ticket the client holds; the ticket itself is never stored.
    pub id: String,
    pub created_at: i64,
    /// After this, no profile is handed out for the ticket (its status stays readable until purged).
    pub expires_at: i64,
    /// First profile download with this ticket.
    pub profile_downloaded_at: Option<i64>,
    pub downloads: i64,
    /// Variant (`device`, `user`) of the last profile downloaded.
    pub variant: Option<String>,
}

/// The stored state of a device's OMA-DM session (see migration 0006).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmaDmSession {
    pub device_id: DeviceId,
    pub session_id: String,
    /// The client's MsgID handled last.
    pub client_msg_id: i64,
    /// Incremented by every save; saves are compare-and-set on it.
    pub version: i64,
    /// JSON of `mdm_windows::syncml::Session`.
    pub state: String,
    /// SHA-256 (hex) of the last client message handled.
    pub request_sha256: String,
    /// The reply sent to it.
    pub reply: Vec<u8>,
    pub updated_at: i64,
}

/// A device certificate issued by the Windows enrollment service (MS-WSTEP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsCertificate {
    /// SHA-256 (hex) of the certificate's DER: the value the enrollment is bound to.
    pub cert_sha256: String,
    pub device_id: DeviceId,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-1 of the DER, upper-case hex (the provisioning document's node name).
    pub thumbprint: String,
    pub not_before: i64,
    pub not_after: i64,
    /// `enroll` or `renew`.
    pub kind: String,
    /// The user (UPN, lower case) it was issued to; renewals keep the enrolling user.
    pub upn: Option<String>,
    /// `OnPremise` or `Federated`.
    pub auth_policy: String,
    /// For a renewal: the fingerprint of the certificate it replaces.
    pub renewal_of: Option<String>,
    pub issued_at: i64,
}

/// Outcome of [`Store::record_windows_enrollment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowsRecord {
    Recorded,
    /// A renewal whose enrollment is no longer bound to the certificate being renewed (renewed
    /// meanwhile, re-enrolled or unenrolled): nothing stored.
    BindingChanged,
}

/// One Pub/Sub message to apply ([`Store::apply_pubsub`]): deduplication by message id, per-device
/// ordering by publish time, and the state and events it brings, in one transaction.
#[derive(Debug, Clone)]
pub struct PubSubDelivery<'a> {
    pub message_id: &'a str,
    /// Unix seconds.
    pub received_at: i64,
    /// The device and the message's publish time (Unix milliseconds). When set, the message is
    /// applied only if its publish time is not older than the newest one applied for that
    /// device, and it then becomes the newest. `None`: no ordering (enterprise-level messages).
    pub ordering: Option<(&'a DeviceId, i64)>,
    /// Enrollment to write when applied.
    pub enrollment: Option<EnrollmentWrite<'a>>,
    /// Conditional command changes (as [`Store::update_command`]) when applied.
    pub command_updates: &'a [CommandUpdate<'a>],
    /// Appended when applied, and only if every command update applied (a command resolved
    /// meanwhile gets no second result event; the message still counts as applied).
    pub events: &'a [Event],
}

/// How [`PubSubDelivery::enrollment`] is written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EnrollmentWrite<'a> {
    /// Insert or replace the whole row.
    Full(&'a Enrollment),
    /// The row exists and only `attributes`, `last_seen` and `updated_at` changed (a routine
    /// status report): only those columns are written, so the row's indexes are left alone. If
    /// the row is gone meanwhile, nothing is applied and the store answers
    /// [`StoreError::Conflict`].
    Report(&'a Enrollment),
}

impl<'a> EnrollmentWrite<'a> {
    /// The write that turns `before` (as read) into `after`; `None` when they differ at most in
    /// `updated_at` (nothing to write).
    pub fn diff(before: Option<&Enrollment>, after: &'a Enrollment) -> Option<EnrollmentWrite<'a>> {
        let Some(b) = before else {
            return Some(EnrollmentWrite::Full(after));
        };
        let same_columns = b.device_id == after.device_id
            && b.parent == after.parent
            && b.state == after.state
            && b.cert_sha256 == after.cert_sha256
            && b.push == after.push
            && b.unlock_token == after.unlock_token
            && b.bootstrap_token == after.bootstrap_token
            && b.inventory == after.inventory
            && b.enrolled_at == after.enrolled_at
            && b.checked_in_event_at == after.checked_in_event_at
            && b.created_at == after.created_at;
        if !same_columns {
            Some(EnrollmentWrite::Full(after))
        } else if b.attributes != after.attributes || b.last_seen != after.last_seen {
            Some(EnrollmentWrite::Report(after))
        } else {
            None
        }
    }

    pub fn enrollment(&self) -> &'a Enrollment {
        match self {
            EnrollmentWrite::Full(e) | EnrollmentWrite::Report(e) => e,
        }
    }
}

/// What [`Store::pubsub_view`] read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PubSubView {
    /// The message id was handled before (applied, stale or dead-lettered).
    pub seen: bool,
    /// The publish time (Unix milliseconds) of the newest message applied for the device.
    pub watermark_ms: Option<i64>,
    pub enrollment: Option<Enrollment>,
    /// The device has policy commands waiting for a status report
    /// ([`Store::pending_android_policy_commands`] would return some).
    pub policy_commands_pending: bool,
}

/// What [`Store::apply_pubsub`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubSubOutcome {
    /// Stored: state, command changes and events.
    Applied,
    /// The message id was handled before; nothing changed.
    Duplicate,
    /// Older than the newest message applied for the device; only the id was recorded.
    Stale,
}

/// A Pub/Sub message that can never be applied, kept for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id, when the envelope had one.
    pub message_id: Option<String>,
    pub received_at: i64,
    /// A short machine label (`invalid_base64`, `invalid_json`, …).
    pub reason: String,
    /// The human-readable error.
    pub detail: String,
    /// The push body as received.
    pub body: Vec<u8>,
}

/// An AMAPI operation the gateway started for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidOperation {
    /// `enterprises/…/devices/…/operations/…`.
    pub operation: String,
    pub device_id: DeviceId,
    pub command_id: String,
    pub created_at: i64,
}

/// An Android `set_settings` / `install_app` / `app_config` sent as a patch of the device's own
/// policy: what the command waits for (the device reporting `policy_version` of `policy` applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidPolicyCommand {
    pub device_id: DeviceId,
    pub command_id: String,
    /// `enterprises/<e>/policies/<p>`.
    pub policy: String,
    pub policy_version: i64,
    /// Top-level Policy fields the command touched (non-compliance with them fails it).
    pub settings: Vec<String>,
    /// The app of `install_app` / `app_config`.
    pub package: Option<String>,
    pub created_at: i64,
}

/// What a corporate identifier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierKind {
    Imei,
    Serial,
}

impl IdentifierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentifierKind::Imei => "imei",
            IdentifierKind::Serial => "serial",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "imei" => Some(IdentifierKind::Imei),
            "serial" => Some(IdentifierKind::Serial),
            _ => None,
        }
    }

    /// The stored form: serial numbers trimmed and upper case, IMEIs/MEIDs without spaces or
    /// dashes, upper case. `None` when nothing is left.
    pub fn normalise(self, raw: &str) -> Option<String> {
        let s: String = match self {
            IdentifierKind::Serial => raw.trim().to_ascii_uppercase(),
            IdentifierKind::Imei => {
                raw.chars().filter(|c| !c.is_whitespace() && *c != '-').collect::<String>().to_ascii_uppercase()
            }
        };
        (!s.is_empty()).then_some(s)
    }
}

/// One imported corporate identifier and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorporateIdentifier {
    pub kind: IdentifierKind,
    pub identifier: String,
    pub details: String,
    pub created_at: i64,
    /// The device that enrolled with this identifier (the newest one).
    pub enrolled_device: Option<DeviceId>,
    pub enrolled_at: Option<i64>,
}

/// A `signupUrls.create` the gateway made (enterprise signup, docs/android.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidSignup {
    /// `signupUrls/<id>`.
    pub name: String,
    /// SHA-256 (hex) of the one-time `state` in the callback URL.
    pub state_sha256: String,
    /// Where the admin signs up.
    pub url: String,
    pub callback_url: String,
    pub project_id: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    /// `enterprises/<id>` once completed.
    pub enterprise: Option<String>,
}

/// An enterprise created by `enterprises.create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidEnterprise {
    /// `enterprises/<id>`.
    pub name: String,
    pub project_id: String,
    pub signup_name: Option<String>,
    pub pubsub_topic: Option<String>,
    pub created_at: i64,
}

/// The heartbeat lease every running instance keeps (`instance:<id>`): its claims of queued
/// Android commands are abandoned once it is no longer held.
pub fn instance_lease(instance: &str) -> String {
    format!("{INSTANCE_LEASE_PREFIX}{instance}")
}

/// Prefix of the heartbeat leases ([`instance_lease`]).
pub const INSTANCE_LEASE_PREFIX: &str = "instance:";

/// A lease as stored (see [`Store::acquire_lease`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// Unix milliseconds (the holder's clock) when the current holder took it.
    pub acquired_at_ms: i64,
    /// Unix milliseconds after which another holder may take it, unless renewed.
    pub expires_at_ms: i64,
}

/// A queued Android command claimed by an instance that is gone (see
/// [`Store::abandoned_android_claims`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AbandonedClaim {
    pub command: CommandRecord,
    /// The instance id that claimed it.
    pub holder: String,
    /// Unix seconds.
    pub claimed_at: i64,
}

/// What [`Store::take_budget`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetTake {
    /// A request may be sent now; it is counted.
    pub granted: bool,
    /// Grants inside the window after this call (this one included when granted).
    pub in_window: u32,
    /// When refused: the Unix millisecond at which the oldest grant leaves the window.
    pub next_free_ms: Option<i64>,
}

/// One step of a shared request budget, on the grant times read under the bucket's lock: drops
/// the grants that left the window, then counts a new one at `now_ms` if fewer than `limit`
/// remain. Both stores run it inside their transaction.
pub(crate) fn budget_step(grants: &mut Vec<i64>, now_ms: i64, window_ms: i64, limit: u32) -> BudgetTake {
    grants.retain(|t| now_ms.saturating_sub(*t) < window_ms);
    grants.sort_unstable();
    let limit = limit.max(1) as usize;
    if grants.len() < limit {
        grants.push(now_ms);
        BudgetTake { granted: true, in_window: grants.len() as u32, next_free_ms: None }
    } else {
        // The grant that must leave the window for a slot to open.
        let freeing = grants[grants.len() - limit];
        BudgetTake { granted: false, in_window: grants.len() as u32, next_free_ms: Some(freeing + window_ms) }
    }
}

/// Durable state behind the gateway. Implementations must pass [`suite`].
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Cheap round trip, for readiness.
    async fn ping(&self) -> Result<()>;

    async fn enrollment(&self, id: &DeviceId) -> Result<Option<Enrollment>>;
    /// The enrollment (not unenrolled) whose bound certificate has this fingerprint.
    async fn enrollment_by_cert(&self, cert_sha256: &str) -> Result<Option<DeviceId>>;
    /// Inserts or replaces an enrollment and appends `events`, atomically.
    async fn save_enrollment(&self, enrollment: &Enrollment, events: &[Event]) -> Result<()>;
    /// Sets the state of every enrollment whose id is `parent` or whose parent is `parent`,
    /// appending `events`, atomically. Returns how many changed.
    async fn set_state_with_children(
        &self,
        parent: &DeviceId,
        state: EnrollmentState,
        now: i64,
        events: &[Event],
    ) -> Result<u64>;
    /// Records that the device was seen. Cheap; may be skipped by callers when recent.
    async fn touch(&self, id: &DeviceId, now: i64) -> Result<()>;
    /// Enrollments ordered by id, after `after`, at most `limit`.
    async fn list_enrollments(
        &self,
        platform: Option<Platform>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Enrollment>>;
    async fn count_enrollments(&self) -> Result<u64>;

    /// Queues commands and appends `events`, atomically. A reused idempotency key or a command id
    /// already queued for the same device fails the whole call.
    async fn enqueue(&self, commands: &[NewCommand], events: &[Event]) -> Result<()>;
    /// All devices' records of one command id.
    async fn command(&self, command_id: &str) -> Result<Vec<CommandRecord>>;
    async fn command_for_device(&self, device: &DeviceId, command_id: &str) -> Result<Option<CommandRecord>>;
    async fn command_by_idempotency_key(&self, key: &str) -> Result<Option<CommandRecord>>;
    /// Commands of `device` not in a final status, by priority (high first) then age, at most `limit`.
    async fn pending(&self, device: &DeviceId, limit: u32) -> Result<Vec<CommandRecord>>;
    /// What a device request starts from, read as one consistent snapshot: the enrollment of
    /// the device channel `channel`, that of the requesting channel `id` when it is another (a
    /// user channel), and `id`'s pending commands as [`Store::pending`] lists them. The default
    /// reads them one by one; a store that can should read them in one transaction.
    async fn request_snapshot(&self, channel: &DeviceId, id: &DeviceId, limit: u32) -> Result<RequestSnapshot> {
        let channel_enrollment = self.enrollment(channel).await?;
        let user = if id == channel { None } else { self.enrollment(id).await? };
        let pending = self.pending(id, limit).await?;
        Ok(RequestSnapshot { channel: channel_enrollment, user, pending })
    }
    /// Applies `update` if the command's status is in `update.from`; appends `events` only then.
    /// Returns whether it applied. `to == Sent` also counts a delivery.
    async fn update_command(&self, update: CommandUpdate<'_>, events: &[Event]) -> Result<bool>;
    /// Non-final commands whose `expires_at` is at or before `now`, oldest first.
    async fn due_for_expiry(&self, now: i64, limit: u32) -> Result<Vec<CommandRecord>>;

    /// Appends events that describe no other state change.
    async fn append_events(&self, events: &[Event]) -> Result<()>;
    /// Events after position `after`, oldest first.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<LoggedEvent>>;
    /// Position of the newest event ever appended (0 when none was); pruning does not lower it.
    async fn last_event_seq(&self) -> Result<i64>;
    async fn sink_cursor(&self, sink: &str) -> Result<i64>;
    async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<()>;
    /// Deletes up to `limit` of the oldest events whose id sorts before `older_than_id` (event
    /// ids are UUIDv7, so that is "created before" its time) and whose position is below
    /// `below_seq` (not yet delivered events are kept). Returns how many were deleted.
    async fn prune_events(&self, older_than_id: &str, below_seq: i64, limit: u32) -> Result<u64>;

    async fn save_push_cert(&self, cert: &PushCert) -> Result<()>;
    async fn push_certs(&self) -> Result<Vec<PushCert>>;

    // --- SCEP ---
    /// Stores a new one-time challenge. A challenge hash that exists already fails.
    async fn create_scep_challenge(&self, challenge: &NewScepChallenge) -> Result<()>;
    async fn scep_challenge(&self, challenge_sha256: &str) -> Result<Option<ScepChallenge>>;
    /// Records an issued certificate and, when `consume` names a challenge, marks that challenge
    /// used by it, atomically: only if the challenge exists, is unused and `expires_at > now`;
    /// otherwise nothing is stored and [`ScepRecord::ChallengeUnavailable`] is returned.
    async fn record_scep_certificate(
        &self,
        cert: &ScepCertificate,
        consume: Option<&str>,
        now: i64,
    ) -> Result<ScepRecord>;
    async fn scep_certificate(&self, cert_sha256: &str) -> Result<Option<ScepCertificate>>;
    /// The newest certificate issued as a renewal (`renewal_of`) of `cert_sha256`, if any.
    async fn scep_renewal_of(&self, cert_sha256: &str) -> Result<Option<ScepCertificate>>;
    /// `None` when no challenge was ever created for `ticket`.
    async fn scep_ticket_status(&self, ticket: &str) -> Result<Option<TicketStatus>>;
    /// Issued certificates, oldest first, at most `limit`.
    async fn scep_certificates(&self, limit: u32) -> Result<Vec<ScepCertificate>>;
    /// Challenges, oldest first, at most `limit`.
    async fn scep_challenges(&self, limit: u32) -> Result<Vec<ScepChallenge>>;
    // --- Declarations and tokens ---

    /// The declarations of a channel, by identifier, and its token, from one snapshot.
    async fn declaration_set(&self, device: &DeviceId) -> Result<DeclarationSet>;
    async fn declaration(&self, device: &DeviceId, identifier: &str) -> Result<Option<StoredDeclaration>>;
    /// Inserts or replaces a declaration. When it differs from the stored one (type, server
    /// token or body), the channel's token becomes `change.token` (at `change.now`), the
    /// commands are queued and the events appended, atomically; returns `true`. An identical
    /// declaration writes nothing and returns `false`. Fails as a whole like [`Store::enqueue`].
    async fn put_declaration(&self, declaration: &StoredDeclaration, change: DeclarationsChange<'_>) -> Result<bool>;
    /// Deletes a declaration; when it existed, applies `change` as [`Store::put_declaration`]
    /// does and returns `true`. Otherwise writes nothing and returns `false`.
    async fn delete_declaration(
        &self,
        device: &DeviceId,
        identifier: &str,
        change: DeclarationsChange<'_>,
    ) -> Result<bool>;
    /// Sets (`Some`) or clears (`None`) an enrollment's sealed bootstrap token, and appends
    /// `events`, atomically; also drops any plaintext value from before migration 0003. Returns
    /// `false`, writing nothing, when there is no such enrollment.
    async fn set_bootstrap_token(
        &self,
        device: &DeviceId,
        sealed: Option<&[u8]>,
        now: i64,
        events: &[Event],
    ) -> Result<bool>;
    /// Up to `limit` enrollments still holding a bootstrap token stored in plaintext by a version
    /// before migration 0003, for the gateway to seal with [`Store::set_bootstrap_token`]. A
    /// store that never had such values returns none.
    async fn plaintext_bootstrap_tokens(&self, limit: u32) -> Result<Vec<(DeviceId, Vec<u8>)>>;

    // --- Enrollment tickets ---
    /// Stores a new ticket and, in the same transaction, deletes tickets whose `expires_at` is
    /// before `purge_expired_before`.
    async fn create_enroll_ticket(&self, ticket: &EnrollTicket, purge_expired_before: i64) -> Result<()>;
    async fn enroll_ticket(&self, id: &str) -> Result<Option<EnrollTicket>>;
    /// Counts a profile download for the ticket (the first sets `profile_downloaded_at`), only
    /// while it has not expired (`expires_at > now`). Returns whether it applied.
    async fn record_profile_download(&self, id: &str, variant: &str, now: i64) -> Result<bool>;

    // --- OMA-DM ---
    /// The device's OMA-DM session, if it ever had one.
    async fn omadm_session(&self, device: &DeviceId) -> Result<Option<OmaDmSession>>;
    /// Saves a device's session and appends `events`, atomically, only if the stored row's
    /// `version` is `expected_version` (`None`: only if the device has no row yet). Returns
    /// whether it applied; when it did not, nothing is written.
    async fn save_omadm_session(
        &self,
        session: &OmaDmSession,
        expected_version: Option<i64>,
        events: &[Event],
    ) -> Result<bool>;
    /// Sessions by device id, at most `limit` (for operators and tests).
    async fn omadm_sessions(&self, limit: u32) -> Result<Vec<OmaDmSession>>;

    // --- Windows enrollment ---
    /// Records `cert` and saves `enrollment` (which binds it) with `events`, atomically. With
    /// `expect_bound` (a renewal), only while the stored enrollment is bound to that certificate
    /// and not unenrolled; otherwise nothing is written and [`WindowsRecord::BindingChanged`] is
    /// returned. A certificate fingerprint recorded twice fails the whole call.
    async fn record_windows_enrollment(
        &self,
        cert: &WindowsCertificate,
        enrollment: &Enrollment,
        expect_bound: Option<&str>,
        events: &[Event],
    ) -> Result<WindowsRecord>;
    async fn windows_certificate(&self, cert_sha256: &str) -> Result<Option<WindowsCertificate>>;
    /// Issued certificates, oldest first, at most `limit`.
    async fn windows_certificates(&self, limit: u32) -> Result<Vec<WindowsCertificate>>;
    /// The Windows devices, not unenrolled, whose bound certificate was issued to `upn`, by id.
    async fn windows_devices_of_user(&self, upn: &str) -> Result<Vec<DeviceId>>;
    // --- Android (Pub/Sub and AMAPI operations) ---
    /// Applies one Pub/Sub message atomically; see [`PubSubDelivery`].
    async fn apply_pubsub(&self, delivery: PubSubDelivery<'_>) -> Result<PubSubOutcome>;
    /// Records a message that can never be applied, and its id as handled (so a redelivery is a
    /// duplicate), with `events`. Returns false, storing nothing, if the id was handled before.
    async fn record_dead_letter(&self, dead: &DeadLetter, events: &[Event]) -> Result<bool>;
    /// Newest first.
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>>;
    /// Forgets handled message ids received before `before` (Unix seconds); at most `limit`.
    async fn prune_pubsub_messages(&self, before: i64, limit: u32) -> Result<u64>;
    /// Binds an AMAPI operation to the command it carries, applying `update` (typically
    /// queued → sent) and appending `events` in the same transaction.
    async fn record_android_operation(
        &self,
        operation: &AndroidOperation,
        update: Option<CommandUpdate<'_>>,
        events: &[Event],
    ) -> Result<()>;
    async fn android_operation(&self, operation: &str) -> Result<Option<AndroidOperation>>;
    /// Operations created at or before `created_before` whose command is still `sent` (no
    /// COMMAND notification came), oldest first: candidates for `operations.get`.
    async fn unresolved_android_operations(&self, created_before: i64, limit: u32) -> Result<Vec<AndroidOperation>>;
    // --- Enrollment gate ---
    /// Device channels (not user channels) not unenrolled whose inventory names `user` as
    /// `enrolled_user` (case-insensitive), leaving out `excluding` (the device enrolling again).
    async fn count_user_devices(&self, user: &str, excluding: Option<&DeviceId>) -> Result<u64>;
    /// Replaces the list of `kind` with `rows` (normalised identifier, details); identifiers kept
    /// keep their enrollment state. Returns how many are listed.
    async fn replace_corporate_identifiers(
        &self,
        kind: IdentifierKind,
        rows: &[(String, String)],
        now: i64,
    ) -> Result<u64>;
    async fn corporate_identifier(&self, kind: IdentifierKind, identifier: &str)
    -> Result<Option<CorporateIdentifier>>;
    /// In identifier order, after `after`.
    async fn corporate_identifiers(
        &self,
        kind: IdentifierKind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CorporateIdentifier>>;
    /// Records that `device` enrolled with a listed identifier; false when it is not listed.
    async fn mark_corporate_identifier_enrolled(
        &self,
        kind: IdentifierKind,
        identifier: &str,
        device: &DeviceId,
        now: i64,
    ) -> Result<bool>;

    // --- Android AMAPI client ---
    /// Android commands in status `queued` (not yet sent to AMAPI), by priority (high first)
    /// then age, at most `limit`: the dispatcher's work list.
    async fn queued_android_commands(&self, limit: u32) -> Result<Vec<CommandRecord>>;
    /// Records a signup URL the gateway created. A second signup with the same name or state
    /// fails.
    async fn save_android_signup(&self, signup: &AndroidSignup) -> Result<()>;
    async fn android_signup_by_state(&self, state_sha256: &str) -> Result<Option<AndroidSignup>>;
    /// Marks the signup completed with `enterprise` and records the enterprise, with `events`,
    /// atomically. Returns false, storing nothing, if the signup was already completed (or does
    /// not exist).
    async fn complete_android_signup(
        &self,
        signup_name: &str,
        enterprise: &AndroidEnterprise,
        events: &[Event],
    ) -> Result<bool>;
    /// Enterprises created through signup, newest first.
    async fn android_enterprises(&self) -> Result<Vec<AndroidEnterprise>>;

    // --- android ingest (s4) ---
    /// What handling a Pub/Sub message starts from, read in one statement: whether
    /// `message_id` was handled before and, for `device`, its publish-time watermark and its
    /// enrollment. A hint for skipping work: [`Store::apply_pubsub`] decides again in its
    /// transaction.
    async fn pubsub_view(&self, message_id: &str, device: Option<&DeviceId>) -> Result<PubSubView>;

    // --- vocabulary (s4) ---
    /// Records what an Android policy command waits for, applying `update` (queued → sent) and
    /// appending `events` in the same transaction. Returns false, storing nothing, when the
    /// update does not apply (the command changed meanwhile).
    async fn record_android_policy_command(
        &self,
        command: &AndroidPolicyCommand,
        update: CommandUpdate<'_>,
        events: &[Event],
    ) -> Result<bool>;
    /// The device's policy commands whose command is still `sent`, oldest first.
    async fn pending_android_policy_commands(&self, device: &DeviceId) -> Result<Vec<AndroidPolicyCommand>>;
    /// Policy commands recorded at or before `created_before` whose command is still `sent`,
    /// oldest first: candidates for `devices.get` during reconcile.
    async fn unresolved_android_policy_commands(
        &self,
        created_before: i64,
        limit: u32,
    ) -> Result<Vec<AndroidPolicyCommand>>;

    // --- cluster (s4) ---
    /// Takes or renews lease `name` for `holder` until `now_ms + ttl_ms`, in one statement: it
    /// succeeds when nobody holds the lease, when it expired (`expires_at_ms <= now_ms`), or when
    /// `holder` holds it already (a renewal). Returns whether `holder` holds it now.
    async fn acquire_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool>;
    /// Gives the lease up at once (others may take it without waiting for it to expire). Returns
    /// false, changing nothing, when `holder` does not hold it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool>;
    /// Every lease row by name, expired ones included (for status pages and tests).
    async fn leases(&self) -> Result<Vec<Lease>>;
    /// [`Store::set_sink_cursor`], fenced: writes only while `holder` is the holder of lease
    /// `lease`, checked in the same statement, so a relay whose lease was taken over cannot move
    /// its successor's cursor. (A lease that expired but was not taken yet still lets its holder
    /// write: harmless, as a successor reads the cursor after taking the lease; and clock jumps
    /// do not stop a sole holder.) Returns whether it wrote.
    async fn set_sink_cursor_leased(&self, sink: &str, seq: i64, lease: &str, holder: &str) -> Result<bool>;
    /// Claims up to `limit` Android commands that are `queued` and not claimed, for `holder` at
    /// `now` (Unix seconds), in delivery order (priority high first, then age). Concurrent
    /// callers never get the same command. A claim ends when the command leaves `queued`, or by
    /// [`Store::release_android_claim`].
    async fn claim_android_commands(&self, holder: &str, now: i64, limit: u32) -> Result<Vec<CommandRecord>>;
    /// Queued Android commands whose claiming instance no longer holds its heartbeat lease
    /// ([`instance_lease`]) at `now_ms`, oldest claim first, at most `limit`.
    async fn abandoned_android_claims(&self, now_ms: i64, limit: u32) -> Result<Vec<AbandonedClaim>>;
    /// Makes a queued command claimed by `holder` claimable again. Returns false, changing
    /// nothing, when it is not queued or not claimed by `holder`.
    async fn release_android_claim(&self, device: &DeviceId, command_id: &str, holder: &str) -> Result<bool>;
    /// Takes one request from the shared budget `bucket`: at most `limit` grants in any
    /// `window_ms` (a sliding log of grant times), atomically across every caller.
    async fn take_budget(&self, bucket: &str, now_ms: i64, window_ms: i64, limit: u32) -> Result<BudgetTake>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_write_is_what_changed() {
        let id: DeviceId = "android:E:D".parse().expect("id");
        let mut before = Enrollment::new(id.clone(), 10);
        before.state = EnrollmentState::Enrolled;
        before.last_seen = Some(10);
        assert_eq!(EnrollmentWrite::diff(None, &before), Some(EnrollmentWrite::Full(&before)));

        let mut same = before.clone();
        same.updated_at = 99;
        assert_eq!(EnrollmentWrite::diff(Some(&before), &same), None, "only updated_at differs");

        let mut report = same.clone();
        report.last_seen = Some(20);
        assert_eq!(EnrollmentWrite::diff(Some(&before), &report), Some(EnrollmentWrite::Report(&report)));
        let mut report = same.clone();
        report.attributes.insert("last_status_report_time".into(), "t".into());
        assert_eq!(EnrollmentWrite::diff(Some(&before), &report), Some(EnrollmentWrite::Report(&report)));

        let mut full = report.clone();
        full.inventory.os_version = Some("15".into());
        assert_eq!(EnrollmentWrite::diff(Some(&before), &full), Some(EnrollmentWrite::Full(&full)));
        let mut full = same.clone();
        full.state = EnrollmentState::Unenrolled;
        assert_eq!(EnrollmentWrite::diff(Some(&before), &full), Some(EnrollmentWrite::Full(&full)));
        let mut full = same;
        full.enrolled_at = Some(5);
        assert_eq!(EnrollmentWrite::diff(Some(&before), &full).map(|w| w.enrollment()), Some(&full));
        assert!(matches!(EnrollmentWrite::diff(Some(&before), &full), Some(EnrollmentWrite::Full(_))));
    }
}
