//! [`Store`] on SQLite: the embedded deployment's database.
//!
//! Every write and every transaction goes to the single writer thread, which owns the only
//! write connection and runs its jobs in order, so our own writers queue in its channel instead
//! of meeting `SQLITE_BUSY` inside SQLite. A write operation is **one** job sent to that thread:
//! the whole transaction (begin, statements, commit) runs there as a closure, and the async
//! caller awaits its answer on a `oneshot`. One hand-off per operation, however many statements
//! it runs.
//!
//! Plain reads run on the calling thread, on a read-only connection taken from a small pool and
//! put back straight after. In WAL mode a reader never waits for the writer, so a read is a
//! bounded piece of CPU work (an index lookup and a few rows, microseconds when the pages are
//! cached), cheaper to do in place than the thread hand-off it would otherwise need: the
//! hand-off (futex wake, context switch, wake-up of the awaiting task) cost more than the read
//! itself on the Idle check-in path. Statements are prepared once per connection
//! (`prepare_cached`), and the query planner is told not to look at bound values (QPSG), so a
//! cached statement is never re-compiled for a new device id.
//!
//! The SQL stays close to what PostgreSQL accepts (upserts, partial indexes, `RETURNING`) so the
//! PostgreSQL store can share its shape.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mdm_core::{CommandStatus, DeviceId, Event, Inventory, Platform};
use rusqlite::types::FromSql;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha384};
use tokio::sync::{Notify, oneshot};

use super::{
    AbandonedClaim, AndroidEnterprise, AndroidOperation, AndroidPolicyCommand, AndroidSignup, BudgetTake,
    CommandRecord, CommandUpdate, CorporateIdentifier, DeadLetter, DeclarationSet, DeclarationsChange,
    DeclarationsToken, EnrollTicket, Enrollment, EnrollmentState, EnrollmentWrite, IdentifierKind, Lease, LoggedEvent,
    NewCommand, NewScepChallenge, OmaDmSession, PubSubDelivery, PubSubOutcome, PubSubView, PushCert, PushInfo,
    RequestSnapshot, Result, ScepCertificate, ScepChallenge, ScepRecord, Store, StoreError, StoredDeclaration,
    TicketStatus, WindowsCertificate, WindowsRecord,
};

/// Migrations, embedded at build time: `(version, description, sql)`, following the
/// `<version>_<description>.sql` file naming. Applied migrations are recorded in sqlx's
/// `_sqlx_migrations` table with sqlx's columns and checksum (SHA-384 of the file), so databases
/// created by the earlier sqlx-based store open unchanged, and the other way round. A test
/// checks that every file in the directory is listed here.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, "scep", include_str!("../../migrations/sqlite/0002_scep.sql")),
    (3, "ddm_tokens", include_str!("../../migrations/sqlite/0003_ddm_tokens.sql")),
    (4, "enroll_tickets", include_str!("../../migrations/sqlite/0004_enroll_tickets.sql")),
    (5, "scep_renewals", include_str!("../../migrations/sqlite/0005_scep_renewals.sql")),
    (6, "omadm", include_str!("../../migrations/sqlite/0006_omadm.sql")),
    (7, "windows_enroll", include_str!("../../migrations/sqlite/0007_windows_enroll.sql")),
    (8, "android", include_str!("../../migrations/sqlite/0008_android.sql")),
    (9, "android_client", include_str!("../../migrations/sqlite/0009_android_client.sql")),
    (10, "enrollment_gate", include_str!("../../migrations/sqlite/0010_enrollment_gate.sql")),
    (11, "cluster", include_str!("../../migrations/sqlite/0011_cluster.sql")),
    (12, "android_policy_commands", include_str!("../../migrations/sqlite/0012_android_policy_commands.sql")),
];

/// The bookkeeping table, exactly as sqlx creates it.
const MIGRATIONS_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
);";

/// How long a connection waits on a lock held by another process (an operator's `sqlite3`
/// shell, a backup) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection; more than the store has.
const STATEMENT_CACHE: usize = 64;

/// `SELECT <every enrollment column> FROM enrollments` followed by the given literal.
macro_rules! select_enrollments {
    ($rest:literal) => {
        concat!(
            "SELECT device_id, parent, state, cert_sha256, push_token, push_magic, push_topic, ",
            "unlock_token, bootstrap_token, inventory, attributes, enrolled_at, last_seen, ",
            "checked_in_event_at, created_at, updated_at FROM enrollments ",
            $rest
        )
    };
}

/// `SELECT <every command column> FROM commands` followed by the given literal.
macro_rules! select_commands {
    ($rest:literal) => {
        concat!(
            "SELECT device_id, command_id, seq, request_type, normalised, payload, priority, status, ",
            "expires_at, idempotency_key, result, error, created_at, updated_at, sent_count FROM commands ",
            $rest
        )
    };
}

const ENROLLMENT_SQL: &str = select_enrollments!("WHERE device_id = ?");
// A device channel and its user channels present the same certificate; the device channel is
// the answer then, and among equals the most recently updated.
const ENROLLMENT_BY_CERT_SQL: &str = "SELECT device_id FROM enrollments \
     WHERE cert_sha256 = ? AND state <> 'unenrolled' \
     ORDER BY CASE WHEN parent IS NULL THEN 0 ELSE 1 END, updated_at DESC LIMIT 1";
// Every `LIMIT` takes its bound value through `CAST(? AS INTEGER)`, never a bare `?`: SQLite
// (3.46 and later) lets the planner peek at a bare `LIMIT ?` parameter, which marks the
// statement to be re-prepared at every new binding, so each cached statement would be compiled
// again on every call (about 10 % of an Idle check-in's CPU on the pending-commands read).
const LIST_ENROLLMENTS_SQL: &str =
    select_enrollments!("WHERE device_id > ? ORDER BY device_id LIMIT CAST(? AS INTEGER)");
const LIST_ENROLLMENTS_BY_PLATFORM_SQL: &str =
    select_enrollments!("WHERE platform = ? AND device_id > ? ORDER BY device_id LIMIT CAST(? AS INTEGER)");
const SET_STATE_WITH_CHILDREN_SQL: &str = "UPDATE enrollments SET state = ?, updated_at = ? \
     WHERE (device_id = ? OR parent = ?) AND state <> ?";
const PENDING_SQL: &str = select_commands!(
    "WHERE device_id = ? AND status IN ('queued', 'sent', 'not_now') ORDER BY priority DESC, seq LIMIT CAST(? AS INTEGER)"
);
const DUE_FOR_EXPIRY_SQL: &str = select_commands!(
    "WHERE expires_at <= ? AND expires_at IS NOT NULL AND status IN ('queued', 'sent', 'not_now') \
     ORDER BY expires_at, seq LIMIT CAST(? AS INTEGER)"
);
const QUEUED_ANDROID_SQL: &str = select_commands!(
    "WHERE status = 'queued' AND device_id >= 'android:' AND device_id < 'android;' \
     ORDER BY priority DESC, seq LIMIT CAST(? AS INTEGER)"
);
const COMMAND_SQL: &str = select_commands!("WHERE command_id = ? ORDER BY seq");
/// Takes or renews a lease in one statement (see `Store::acquire_lease`): the upsert updates
/// only a free, expired or own lease, and returns a row only when it did.
const ACQUIRE_LEASE_SQL: &str = "INSERT INTO leases (name, holder, acquired_at_ms, expires_at_ms) \
     VALUES (?1, ?2, ?3, ?3 + ?4) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms, \
     acquired_at_ms = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at_ms \
                           ELSE excluded.acquired_at_ms END \
     WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= ?3 \
     RETURNING holder";
/// The fenced cursor write: one statement, which writes only while the lease is held.
const SET_SINK_CURSOR_LEASED_SQL: &str = "INSERT INTO sink_cursors (sink, seq) SELECT ?1, ?2 \
     WHERE EXISTS (SELECT 1 FROM leases WHERE name = ?3 AND holder = ?4) \
     ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq";
/// The dispatcher's claim: queued, unclaimed Android commands in delivery order. The inner
/// WHERE keeps the `commands_android_queued` index's predicate.
/// A policy change (`policies.patch`) waits while an older one of the same device is still
/// queued: each patches the policy the one before it wrote, on whichever instance.
const CLAIM_ANDROID_SQL: &str = "UPDATE commands SET claimed_by = ?1, claimed_at = ?2 \
     WHERE seq IN (SELECT c.seq FROM commands c \
       WHERE c.status = 'queued' AND c.device_id >= 'android:' AND c.device_id < 'android;' \
         AND c.claimed_by IS NULL \
         AND NOT (c.request_type = 'policies.patch' AND EXISTS (SELECT 1 FROM commands e \
           WHERE e.device_id = c.device_id AND e.status = 'queued' AND e.request_type = 'policies.patch' \
             AND e.seq < c.seq)) \
       ORDER BY c.priority DESC, c.seq LIMIT CAST(?3 AS INTEGER)) \
     RETURNING device_id, command_id, seq, request_type, normalised, payload, priority, status, \
       expires_at, idempotency_key, result, error, created_at, updated_at, sent_count";
const ABANDONED_ANDROID_SQL: &str = "SELECT c.device_id, c.command_id, c.seq, c.request_type, c.normalised, \
     c.payload, c.priority, c.status, c.expires_at, c.idempotency_key, c.result, c.error, c.created_at, \
     c.updated_at, c.sent_count, c.claimed_by, c.claimed_at FROM commands c \
     WHERE c.status = 'queued' AND c.device_id >= 'android:' AND c.device_id < 'android;' \
       AND c.claimed_by IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'instance:' || c.claimed_by AND l.expires_at_ms > ?1) \
     ORDER BY c.claimed_at, c.seq LIMIT CAST(?2 AS INTEGER)";
const COMMAND_FOR_DEVICE_SQL: &str = select_commands!("WHERE device_id = ? AND command_id = ?");
const COMMAND_BY_IDEMPOTENCY_KEY_SQL: &str = select_commands!("WHERE idempotency_key = ?");

/// When a commit is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync at every commit: nothing acknowledged to a device or the API is lost, even on power
    /// loss. The default, because the gateway answers only after the state is stored.
    Full,
    /// WAL with `synchronous=NORMAL`: survives process crashes, may lose the last commits on
    /// power loss (never consistency). Faster on slow disks.
    Normal,
}

const INSERT_EVENT_SQL: &str = "INSERT INTO events (id, device_id, type, body) VALUES (?, ?, ?, ?)";
const SAVE_ENROLLMENT_SQL: &str = "INSERT INTO enrollments (device_id, platform, parent, state, cert_sha256, push_token, \
     push_magic, push_topic, unlock_token, bootstrap_token, inventory, attributes, enrolled_at, last_seen, \
     checked_in_event_at, created_at, updated_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (device_id) DO UPDATE SET \
     platform = excluded.platform, parent = excluded.parent, state = excluded.state, \
     cert_sha256 = excluded.cert_sha256, push_token = excluded.push_token, \
     push_magic = excluded.push_magic, push_topic = excluded.push_topic, \
     unlock_token = excluded.unlock_token, \
     inventory = excluded.inventory, attributes = excluded.attributes, \
     enrolled_at = excluded.enrolled_at, last_seen = excluded.last_seen, \
     checked_in_event_at = excluded.checked_in_event_at, created_at = excluded.created_at, \
     updated_at = excluded.updated_at";
// Android Pub/Sub intake (`apply_pubsub`, `pubsub_view`).
const INSERT_PUBSUB_MESSAGE_SQL: &str = "INSERT INTO pubsub_messages (message_id, received_at, outcome) \
     VALUES (?, ?, 'applied') ON CONFLICT (message_id) DO NOTHING";
/// Moves the device's watermark to the message's publish time unless it is older: no row
/// changed means stale. Equal times apply.
const ADVANCE_WATERMARK_SQL: &str = "INSERT INTO android_watermarks (device_id, publish_time_ms, message_id) \
     VALUES (?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET publish_time_ms = excluded.publish_time_ms, \
     message_id = excluded.message_id WHERE excluded.publish_time_ms >= android_watermarks.publish_time_ms";
const MARK_PUBSUB_STALE_SQL: &str = "UPDATE pubsub_messages SET outcome = 'stale' WHERE message_id = ?";
/// A routine status report: only the columns it changes, so no index of `enrollments` is touched.
const REPORT_ENROLLMENT_SQL: &str = "UPDATE enrollments SET attributes = ?, last_seen = ?, updated_at = ? \
     WHERE device_id = ?";
/// Seen?, the watermark, and the enrollment (columns from 2, NULL when none): one row always.
const PUBSUB_VIEW_SQL: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM pubsub_messages WHERE message_id = ?1), ",
    "(SELECT publish_time_ms FROM android_watermarks WHERE device_id = ?2), ",
    "e.device_id, e.parent, e.state, e.cert_sha256, e.push_token, e.push_magic, e.push_topic, ",
    "e.unlock_token, e.bootstrap_token, e.inventory, e.attributes, e.enrolled_at, e.last_seen, ",
    "e.checked_in_event_at, e.created_at, e.updated_at, ",
    "EXISTS (SELECT 1 FROM android_policy_commands p JOIN commands c ON c.device_id = p.device_id ",
    "AND c.command_id = p.command_id WHERE p.device_id = ?2 AND c.status = 'sent') ",
    "FROM (SELECT 1) LEFT JOIN enrollments e ON e.device_id = ?2"
);
const INSERT_COMMAND_SQL: &str = "INSERT INTO commands (device_id, command_id, seq, request_type, normalised, payload, \
     priority, status, expires_at, idempotency_key, result, error, created_at, updated_at, sent_count) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, 0)";
/// The compare-and-set of `update_command` as one statement: the status must be one of the
/// `from` list, bound as six parameters (there are six statuses), unused ones NULL, which
/// matches nothing.
const UPDATE_COMMAND_SQL: &str = "UPDATE commands SET status = ?1, result = ?2, error = ?3, updated_at = ?4, \
     sent_count = sent_count + ?5 \
     WHERE device_id = ?6 AND command_id = ?7 AND status IN (?8, ?9, ?10, ?11, ?12, ?13)";
const FROM_SLOTS: usize = 6;

const WINDOWS_CERTIFICATE_COLUMNS: &str = "SELECT cert_sha256, device_id, serial, thumbprint, not_before, not_after, \
     kind, upn, auth_policy, renewal_of, issued_at FROM windows_certificates ";
const INSERT_WINDOWS_CERTIFICATE_SQL: &str = "INSERT INTO windows_certificates (cert_sha256, device_id, serial, \
     thumbprint, not_before, not_after, kind, upn, auth_policy, renewal_of, issued_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const SCEP_CHALLENGE_COLUMNS: &str =
    "SELECT challenge_sha256, ticket, created_at, expires_at, used_at, issued_cert_sha256 FROM scep_challenges ";
const SCEP_CERTIFICATE_COLUMNS: &str = "SELECT cert_sha256, serial, subject, not_before, not_after, message_type, \
     transaction_id, challenge_sha256, ticket, renewal_of, issued_at FROM scep_certificates ";

/// The newest renewal of a certificate (index `scep_certificates_renewal_of`, migration 0005).
fn scep_renewal_of_sql() -> String {
    format!("{SCEP_CERTIFICATE_COLUMNS}WHERE renewal_of = ? ORDER BY issued_at DESC, cert_sha256 DESC LIMIT 1")
}

/// The consumption of a challenge as one compare-and-set statement.
const CONSUME_SCEP_CHALLENGE_SQL: &str = "UPDATE scep_challenges SET used_at = ?, issued_cert_sha256 = ? \
     WHERE challenge_sha256 = ? AND used_at IS NULL AND expires_at > ?";
const INSERT_SCEP_CERTIFICATE_SQL: &str = "INSERT INTO scep_certificates (cert_sha256, serial, subject, not_before, \
     not_after, message_type, transaction_id, challenge_sha256, ticket, renewal_of, issued_at) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const DECLARATIONS_SQL: &str = "SELECT device_id, identifier, type, server_token, body, created_at, updated_at \
     FROM declarations WHERE device_id = ? ORDER BY identifier";
const DECLARATION_SQL: &str = "SELECT device_id, identifier, type, server_token, body, created_at, updated_at \
     FROM declarations WHERE device_id = ? AND identifier = ?";
const DECLARATION_TOKEN_SQL: &str = "SELECT token, updated_at FROM declaration_tokens WHERE device_id = ?";
const PUT_DECLARATION_SQL: &str = "INSERT INTO declarations \
     (device_id, identifier, type, server_token, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
     ON CONFLICT (device_id, identifier) DO UPDATE SET type = excluded.type, \
     server_token = excluded.server_token, body = excluded.body, updated_at = excluded.updated_at";
const SET_DECLARATION_TOKEN_SQL: &str = "INSERT INTO declaration_tokens (device_id, token, updated_at) \
     VALUES (?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at";
const SET_BOOTSTRAP_TOKEN_SQL: &str = "UPDATE enrollments \
     SET bootstrap_token = ?, bootstrap_token_plaintext = NULL, updated_at = ? WHERE device_id = ?";
const PLAINTEXT_BOOTSTRAP_TOKENS_SQL: &str = "SELECT device_id, bootstrap_token_plaintext FROM enrollments \
     WHERE bootstrap_token_plaintext IS NOT NULL ORDER BY device_id LIMIT CAST(? AS INTEGER)";

/// Work for a connection thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Msg {
    Run(Job),
    /// A write transaction, run with the others queued behind it in one commit.
    Tx(Box<dyn TxJob>),
    /// Close the connection, then answer.
    Stop(oneshot::Sender<()>),
}

/// Most transactions committed together.
const GROUP_COMMIT_MAX: usize = 64;

/// A write transaction waiting for its turn on the writer thread. It runs inside a savepoint of
/// the group's transaction ([`run_group`]) and keeps its answer until the group has committed.
trait TxJob: Send {
    /// Runs the job on `conn` (inside the group's transaction). `Some(appended)` when it
    /// succeeded, `None` when it failed (its writes are then rolled back to its savepoint).
    fn run(&mut self, conn: &Connection) -> Option<bool>;
    /// Answers the caller, once the group's transaction committed (`Ok`) or failed (`Err`).
    fn finish(self: Box<Self>, committed: std::result::Result<(), String>);
}

struct PendingTx<T, F> {
    job: Option<F>,
    answer: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> TxJob for PendingTx<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<(T, bool)> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> Option<bool> {
        let job = self.job.take()?;
        match job(conn) {
            Ok((answer, appended)) => {
                self.answer = Some(Ok(answer));
                Some(appended)
            }
            Err(e) => {
                self.answer = Some(Err(e));
                None
            }
        }
    }

    fn finish(self: Box<Self>, committed: std::result::Result<(), String>) {
        let answer = match (self.answer, committed) {
            (Some(Ok(answer)), Ok(())) => Ok(answer),
            (Some(Ok(_)), Err(e)) => Err(StoreError::Commit(e)),
            (Some(Err(e)), _) => Err(e),
            // The job panicked: dropping the reply tells the caller (`Closed`).
            (None, _) => return,
        };
        let _ = self.reply.send(answer);
    }
}

/// The writer thread and the read pool behind a store, shared by its clones.
#[derive(Debug)]
struct Shared {
    writer: crossbeam_channel::Sender<Msg>,
    /// `None` for an in-memory database, which reads through the writer.
    reads: Option<ReadPool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Read-only connections for reads run in place. At most one read runs per calling thread at a
/// time (a read never awaits), so `keep` connections (at least the number of async workers)
/// cover the steady state; when they are all taken, an extra connection is opened for the read
/// and closed after it.
struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    keep: usize,
    target: Target,
    durability: Durability,
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ReadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPool").field("keep", &self.keep).field("target", &self.target).finish_non_exhaustive()
    }
}

impl ReadPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn run<T>(&self, job: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let taken = self.lock().pop();
        let mut conn = match taken {
            Some(conn) => conn,
            None => open_connection(&self.target, true, self.durability)?,
        };
        // A panicking job unwinds past this point and the connection is dropped with it, so a
        // connection left mid-statement never returns to the pool.
        let answer = job(&mut conn);
        if !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            let mut idle = self.lock();
            if idle.len() < self.keep {
                idle.push(conn);
            }
        }
        answer
    }

    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.lock().clear();
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Run(_) => "Run",
            Msg::Tx(_) => "Tx",
            Msg::Stop(_) => "Stop",
        })
    }
}

/// The SQLite store. Cheap to clone; clones share the connection threads and the notifier.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    notify: Arc<Notify>,
}

/// Where a connection points.
#[derive(Debug, Clone)]
enum Target {
    File(String),
    Memory,
}

fn parse_target(url_or_path: &str) -> Result<Target> {
    let Some(rest) = url_or_path.strip_prefix("sqlite:") else {
        return Ok(Target::File(url_or_path.to_owned()));
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let memory = path == ":memory:" || query.is_some_and(|q| q.split('&').any(|kv| kv == "mode=memory"));
    if memory {
        return Ok(Target::Memory);
    }
    if let Some(q) = query {
        // The options we honour are set in code; refuse the rest rather than ignore them.
        return Err(StoreError::Url(format!("unsupported options `{q}` in `{url_or_path}`")));
    }
    if path.is_empty() {
        return Err(StoreError::Url(format!("no database path in `{url_or_path}`")));
    }
    Ok(Target::File(path.to_owned()))
}

fn open_connection(target: &Target, read_only: bool, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = match target {
        Target::Memory => Connection::open_in_memory()?,
        Target::File(path) => {
            let flags =
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            Connection::open_with_flags(path, flags)?
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    if !read_only {
        // journal_mode is persistent in the file; the readers find it set.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    }
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        },
    )?;
    if read_only {
        // A write sent to the wrong connection fails loudly instead of competing with the
        // writer for the lock.
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(conn)
}

/// Brings the schema up to date, with sqlx's bookkeeping and checks: a failed (dirty) migration,
/// an applied migration whose file changed, or one this build does not know stop the store.
fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(MIGRATIONS_TABLE_SQL)
        .map_err(|e| StoreError::Migrate(format!("creating `_sqlx_migrations`: {e}")))?;
    let applied: Vec<(i64, bool, Vec<u8>)> = {
        let mut stmt = conn
            .prepare("SELECT version, success, checksum FROM _sqlx_migrations ORDER BY version")
            .map_err(|e| StoreError::Migrate(format!("reading `_sqlx_migrations`: {e}")))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| StoreError::Migrate(format!("reading `_sqlx_migrations`: {e}")))?
    };
    let name = |version: i64| match MIGRATIONS.iter().find(|m| m.0 == version) {
        Some((v, d, _)) => format!("migration {v:04}_{d}"),
        None => format!("migration {version}"),
    };
    if let Some((version, ..)) = applied.iter().find(|(_, success, _)| !success) {
        return Err(StoreError::Migrate(format!("{} failed earlier and left the database dirty", name(*version))));
    }
    for (version, _, checksum) in &applied {
        match MIGRATIONS.iter().find(|m| m.0 == *version) {
            None => {
                return Err(StoreError::Migrate(format!(
                    "migration {version} is applied to the database but unknown to this build"
                )));
            }
            Some((_, _, sql)) if Sha384::digest(sql.as_bytes()).as_slice() != checksum.as_slice() => {
                return Err(StoreError::Migrate(format!("{} was applied from a different file", name(*version))));
            }
            Some(_) => {}
        }
    }
    for &(version, description, sql) in MIGRATIONS {
        if applied.iter().any(|(v, ..)| *v == version) {
            continue;
        }
        let what = name(version);
        let started = Instant::now();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::Migrate(format!("{what}: {e}")))?;
        tx.execute_batch(sql).map_err(|e| StoreError::Migrate(format!("{what}: {e}")))?;
        let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?, ?, TRUE, ?, ?)",
            params![version, description, Sha384::digest(sql.as_bytes()).as_slice(), nanos],
        )
        .map_err(|e| StoreError::Migrate(format!("{what}: recording it: {e}")))?;
        tx.commit().map_err(|e| StoreError::Migrate(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// Runs jobs on `conn` until told to stop or every sender is gone.
///
/// Write transactions are committed in groups: when one arrives, the transactions already
/// queued behind it (up to [`GROUP_COMMIT_MAX`]) join it, each in a savepoint of one
/// transaction, and the group commits once. With `durability = "full"` a commit is an fsync, and
/// under load the fsyncs, not the statements, were most of the writer's time; a group pays one.
/// Each caller still gets its answer only after the commit that made its writes durable, a
/// failing job rolls back to its savepoint without touching the others, and the order of the
/// jobs is the order they were queued in.
fn serve(mut conn: Connection, jobs: crossbeam_channel::Receiver<Msg>, notify: Option<Arc<Notify>>) {
    let mut stopped = None;
    let mut next = None;
    loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => match jobs.recv() {
                Ok(msg) => msg,
                Err(_) => break,
            },
        };
        match msg {
            // A panicking job drops its reply (the caller sees `Closed`) and rolls back its
            // transaction while unwinding; the connection stays in service.
            Msg::Run(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
            }
            Msg::Tx(first) => {
                let mut group = vec![first];
                while group.len() < GROUP_COMMIT_MAX {
                    match jobs.try_recv() {
                        Ok(Msg::Tx(job)) => group.push(job),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                run_group(&conn, group, notify.as_deref());
            }
            Msg::Stop(done) => {
                stopped = Some(done);
                break;
            }
        }
    }
    drop(conn);
    if let Some(done) = stopped {
        let _ = done.send(());
    }
}

/// One transaction for `group`: each job in its own savepoint, then one commit, then the answers.
fn run_group(conn: &Connection, mut group: Vec<Box<dyn TxJob>>, notify: Option<&Notify>) {
    // IMMEDIATE: take the write lock at BEGIN, so a competing process makes us wait
    // (busy_timeout) up front rather than fail a read-to-write upgrade mid-way.
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = e.to_string();
        for job in group {
            job.finish(Err(e.clone()));
        }
        return;
    }
    let mut appended = false;
    for job in &mut group {
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            tracing::error!(error = %e, "cannot open a savepoint; the job is not run");
            continue; // its answer stays empty: the caller sees `Closed`
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn)));
        let kept = match outcome {
            Ok(Some(job_appended)) => {
                appended |= job_appended;
                conn.execute_batch("RELEASE job").is_ok()
            }
            Ok(None) | Err(_) => false,
        };
        if !kept {
            // Undo this job only; the savepoint is then released so the next one nests cleanly.
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
        }
    }
    let committed = conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    });
    if committed.is_ok()
        && appended
        && let Some(notify) = notify
    {
        notify.notify_waiters();
    }
    for job in group {
        job.finish(committed.clone());
    }
}

fn spawn(
    name: String,
    conn: Connection,
    jobs: crossbeam_channel::Receiver<Msg>,
    notify: Option<Arc<Notify>>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || serve(conn, jobs, notify)).map_err(StoreError::Thread)
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url_or_path` — a `sqlite:` URL or a file
    /// path — and brings its schema up to date. `read_connections` sizes the read pool (at
    /// least 1).
    pub async fn open(url_or_path: &str, read_connections: u32) -> Result<SqliteStore> {
        SqliteStore::open_with(url_or_path, read_connections, Durability::Full).await
    }

    /// Like [`SqliteStore::open`], choosing how commits reach the disk.
    pub async fn open_with(url_or_path: &str, read_connections: u32, durability: Durability) -> Result<SqliteStore> {
        let target = parse_target(url_or_path)?;
        let readers = usize::try_from(read_connections.max(1)).unwrap_or(1);
        let opening = target.clone();
        // Opening and migrating block; do it off the async workers, in one go.
        let opened = tokio::task::spawn_blocking(move || -> Result<_> {
            let target = opening;
            let mut writer = open_connection(&target, false, durability)?;
            migrate(&mut writer)?;
            // Each connection to an in-memory database is its own database; an in-memory
            // store reads through its writer.
            let readers = match target {
                Target::Memory => Vec::new(),
                Target::File(_) => {
                    (0..readers).map(|_| open_connection(&target, true, durability)).collect::<rusqlite::Result<_>>()?
                }
            };
            Ok((writer, readers))
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        let (writer, reader_conns) = opened?;

        let (writer_tx, writer_rx) = crossbeam_channel::unbounded();
        let notify = Arc::new(Notify::new());
        let threads = vec![spawn("sqlite-writer".into(), writer, writer_rx, Some(Arc::clone(&notify)))?];
        let reads = match target {
            Target::Memory => None,
            Target::File(_) => Some(ReadPool {
                idle: Mutex::new(reader_conns),
                keep: readers,
                target,
                durability,
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        Ok(SqliteStore { shared: Arc::new(Shared { writer: writer_tx, reads, threads: Mutex::new(threads) }), notify })
    }

    /// Notified (`notify_waiters`) after every commit that appended events. Only tasks already
    /// waiting are woken, so a waiter must register (`Notified::enable`, or create the
    /// `notified()` future) before it reads the log, then wait.
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Closes every connection, after the jobs already queued. Later calls fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
        // Readers first, so the writer (the last connection) checkpoints the WAL as it closes.
        if let Some(reads) = &self.shared.reads {
            reads.close();
        }
        let (tx, rx) = oneshot::channel();
        if self.shared.writer.send(Msg::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
        let threads =
            std::mem::take(&mut *self.shared.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        drop(threads); // every thread has answered its stop; they exit on their own.
    }

    /// Runs `job` on the writer thread (inside whatever transaction it opens) and returns its
    /// answer: one hand-off.
    async fn write<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        call(&self.shared.writer, job).await
    }

    /// Runs `job` in place on a pooled read-only connection (on the writer thread for an
    /// in-memory database). `job` must only read: it runs on the caller's async worker.
    async fn read<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        match &self.shared.reads {
            Some(reads) => reads.run(job),
            None => call(&self.shared.writer, job).await,
        }
    }

    /// A write transaction on the writer thread: `job` runs inside it (in a savepoint of a group
    /// commit, see [`serve`]), the commit follows, and waiters are notified when `appended` (the
    /// job wrote events). An error from `job` undoes everything it wrote.
    async fn transact<T, F>(&self, job: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, bool)> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let pending: Box<dyn TxJob> = Box::new(PendingTx { job: Some(job), answer: None, reply });
        self.shared.writer.send(Msg::Tx(pending)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn call<T, F>(to: &crossbeam_channel::Sender<Msg>, job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    to.send(Msg::Run(Box::new(move |conn: &mut Connection| {
        let _ = reply.send(job(conn));
    })))
    .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

/// An event ready to insert, serialised before it is sent to the writer, so the transaction
/// holds the writer only for the inserts.
struct EventRow {
    id: String,
    device_id: String,
    event_type: String,
    body: String,
}

fn event_rows(events: &[Event]) -> Result<Vec<EventRow>> {
    events
        .iter()
        .map(|e| {
            // An Event can fail to serialise only through its time (a year outside 0..=9999 has
            // no RFC 3339 form); refuse it here rather than store something unreadable.
            let body = serde_json::to_string(e)
                .map_err(|err| StoreError::Corrupt(format!("event `{}` cannot be serialised: {err}", e.id)))?;
            Ok(EventRow {
                id: e.id.clone(),
                device_id: e.device_id.as_str().to_owned(),
                event_type: e.event_type.as_str().to_owned(),
                body,
            })
        })
        .collect()
}

/// Rows per multi-row event insert.
const EVENTS_PER_INSERT: usize = 4;

/// `INSERT INTO events … VALUES (…)` with 1 to [`EVENTS_PER_INSERT`] rows (index = rows - 1).
fn insert_events_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        (1..=EVENTS_PER_INSERT)
            .map(|n| {
                let values = vec!["(?, ?, ?, ?)"; n].join(", ");
                format!("INSERT INTO events (id, device_id, type, body) VALUES {values}")
            })
            .collect()
    });
    &all[rows - 1]
}

/// Appends `rows` in order. Several rows go in one statement: besides fewer statement steps,
/// `AUTOINCREMENT` then updates `sqlite_sequence` once per statement rather than once per event.
fn insert_events(conn: &Connection, rows: &[EventRow]) -> Result<()> {
    if let [row] = rows {
        conn.prepare_cached(INSERT_EVENT_SQL)?.execute(params![row.id, row.device_id, row.event_type, row.body])?;
        return Ok(());
    }
    for chunk in rows.chunks(EVENTS_PER_INSERT) {
        let mut stmt = conn.prepare_cached(insert_events_sql(chunk.len()))?;
        let params: Vec<&dyn rusqlite::ToSql> =
            chunk.iter().flat_map(|r| [&r.id as &dyn rusqlite::ToSql, &r.device_id, &r.event_type, &r.body]).collect();
        stmt.execute(params.as_slice())?;
    }
    Ok(())
}

/// Reads column `idx` (named `column` for messages), reporting a value of the wrong type as
/// corruption.
fn get<T: FromSql>(row: &Row<'_>, idx: usize, column: &str) -> Result<T> {
    row.get(idx).map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(format!("column `{column}`: {e}")),
        other => StoreError::Sqlite(other),
    })
}

fn parse_device_id(s: &str, what: &str) -> Result<DeviceId> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("{what} `{s}` is not a device id: {e}")))
}

fn parse_json<T: DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what} is not valid JSON for its type: {e}")))
}

fn opt_json(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().map(serde_json::Value::to_string)
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

/// Runs a cached query and maps every row, stopping at the first error.
fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Like [`query_all`] for at most one row.
fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(map).transpose()
}

fn enrollment_from_row(row: &Row<'_>) -> Result<Enrollment> {
    enrollment_from_row_at(row, 0)
}

/// An enrollment from the columns of `select_enrollments!`, starting at column `at`.
fn enrollment_from_row_at(row: &Row<'_>, at: usize) -> Result<Enrollment> {
    let id_text: String = get(row, at, "device_id")?;
    let device_id = parse_device_id(&id_text, "enrollments.device_id")?;
    // Everything after the id is reported with the id, so an operator can find the row.
    let ctx = |e: StoreError| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("enrollment `{id_text}`: {m}")),
        other => other,
    };
    let rest = || -> Result<Enrollment> {
        let parent =
            get::<Option<String>>(row, at + 1, "parent")?.map(|p| parse_device_id(&p, "parent")).transpose()?;
        let state_text: String = get(row, at + 2, "state")?;
        let state = EnrollmentState::parse(&state_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown state `{state_text}`")))?;
        let push = match get::<Option<String>>(row, at + 6, "push_topic")? {
            None => None,
            Some(topic) => Some(PushInfo {
                token: get::<Option<Vec<u8>>>(row, at + 4, "push_token")?
                    .ok_or_else(|| StoreError::Corrupt("push_topic set without push_token".into()))?,
                magic: get::<Option<String>>(row, at + 5, "push_magic")?
                    .ok_or_else(|| StoreError::Corrupt("push_topic set without push_magic".into()))?,
                topic,
            }),
        };
        let inventory: Inventory = parse_json(&get::<String>(row, at + 9, "inventory")?, "inventory")?;
        let attributes = parse_json(&get::<String>(row, at + 10, "attributes")?, "attributes")?;
        Ok(Enrollment {
            device_id: device_id.clone(),
            parent,
            state,
            cert_sha256: get(row, at + 3, "cert_sha256")?,
            push,
            unlock_token: get(row, at + 7, "unlock_token")?,
            bootstrap_token: get(row, at + 8, "bootstrap_token")?,
            inventory,
            attributes,
            enrolled_at: get(row, at + 11, "enrolled_at")?,
            last_seen: get(row, at + 12, "last_seen")?,
            checked_in_event_at: get(row, at + 13, "checked_in_event_at")?,
            created_at: get(row, at + 14, "created_at")?,
            updated_at: get(row, at + 15, "updated_at")?,
        })
    };
    rest().map_err(ctx)
}

fn command_from_row(row: &Row<'_>) -> Result<CommandRecord> {
    let device_text: String = get(row, 0, "device_id")?;
    let command_id: String = get(row, 1, "command_id")?;
    let ctx = |e: StoreError| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("command `{command_id}` of `{device_text}`: {m}")),
        other => other,
    };
    let rest = || -> Result<CommandRecord> {
        let device_id = parse_device_id(&device_text, "device_id")?;
        let status_text: String = get(row, 7, "status")?;
        let status = CommandStatus::parse(&status_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status `{status_text}`")))?;
        let priority: i64 = get(row, 6, "priority")?;
        let priority =
            i32::try_from(priority).map_err(|_| StoreError::Corrupt(format!("priority {priority} is out of range")))?;
        let json_col = |idx: usize, column: &str| -> Result<Option<serde_json::Value>> {
            get::<Option<String>>(row, idx, column)?.map(|s| parse_json(&s, column)).transpose()
        };
        Ok(CommandRecord {
            command_id: command_id.clone(),
            device_id,
            request_type: get(row, 3, "request_type")?,
            normalised: json_col(4, "normalised")?,
            payload: get(row, 5, "payload")?,
            priority,
            seq: get(row, 2, "seq")?,
            status,
            expires_at: get(row, 8, "expires_at")?,
            idempotency_key: get(row, 9, "idempotency_key")?,
            result: json_col(10, "result")?,
            error: json_col(11, "error")?,
            created_at: get(row, 12, "created_at")?,
            updated_at: get(row, 13, "updated_at")?,
            sent_count: get(row, 14, "sent_count")?,
        })
    };
    rest().map_err(ctx)
}

fn declaration_from_row(row: &Row<'_>) -> Result<StoredDeclaration> {
    let device_text: String = get(row, 0, "device_id")?;
    Ok(StoredDeclaration {
        device_id: parse_device_id(&device_text, "declarations.device_id")?,
        identifier: get(row, 1, "identifier")?,
        declaration_type: get(row, 2, "type")?,
        server_token: get(row, 3, "server_token")?,
        body: get(row, 4, "body")?,
        created_at: get(row, 5, "created_at")?,
        updated_at: get(row, 6, "updated_at")?,
    })
}

/// The part of a declaration change common to put and delete, inside `tx`: the new token, the
/// commands, the events. Returns whether events were appended.
fn apply_declarations_change(
    tx: &Connection,
    device: &str,
    token: &str,
    now: i64,
    commands: &[NewCommand],
    events: &[EventRow],
) -> Result<bool> {
    tx.prepare_cached(SET_DECLARATION_TOKEN_SQL)?.execute(params![device, token, now])?;
    insert_commands(tx, commands)?;
    insert_events(tx, events)?;
    Ok(!events.is_empty())
}

fn push_cert_from_row(row: &Row<'_>) -> Result<PushCert> {
    Ok(PushCert {
        topic: get(row, 0, "topic")?,
        cert_pem: get(row, 1, "cert_pem")?,
        key_pem: get(row, 2, "key_pem")?,
        not_after: get(row, 3, "not_after")?,
        updated_at: get(row, 4, "updated_at")?,
    })
}

const OMADM_SESSION_SQL: &str = "SELECT device_id, session_id, client_msg_id, version, state, request_sha256, \
     reply, updated_at FROM omadm_sessions WHERE device_id = ?";
const OMADM_SESSIONS_SQL: &str = "SELECT device_id, session_id, client_msg_id, version, state, request_sha256, \
     reply, updated_at FROM omadm_sessions ORDER BY device_id LIMIT ?";

fn omadm_session_from_row(row: &Row<'_>) -> Result<OmaDmSession> {
    let id: String = get(row, 0, "device_id")?;
    Ok(OmaDmSession {
        device_id: parse_device_id(&id, "omadm_sessions.device_id")?,
        session_id: get(row, 1, "session_id")?,
        client_msg_id: get(row, 2, "client_msg_id")?,
        version: get(row, 3, "version")?,
        state: get(row, 4, "state")?,
        request_sha256: get(row, 5, "request_sha256")?,
        reply: get(row, 6, "reply")?,
        updated_at: get(row, 7, "updated_at")?,
    })
}

const ENROLL_TICKET_SQL: &str = "SELECT id, created_at, expires_at, profile_downloaded_at, downloads, variant \
     FROM enroll_tickets WHERE id = ?";

fn enroll_ticket_from_row(row: &Row<'_>) -> Result<EnrollTicket> {
    Ok(EnrollTicket {
        id: get(row, 0, "id")?,
        created_at: get(row, 1, "created_at")?,
        expires_at: get(row, 2, "expires_at")?,
        profile_downloaded_at: get(row, 3, "profile_downloaded_at")?,
        downloads: get(row, 4, "downloads")?,
        variant: get(row, 5, "variant")?,
    })
}

/// Maps a unique violation that slipped past the explicit checks in `enqueue` (which give the
/// precise key) to the matching error; anything else stays a database error.
fn enqueue_error(e: rusqlite::Error, command: &NewCommand) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(message)) = &e
        && f.code == ErrorCode::ConstraintViolation
    {
        if message.contains("idempotency_key")
            && let Some(key) = &command.idempotency_key
        {
            return StoreError::IdempotencyConflict(key.clone());
        }
        if message.contains("command_id") {
            return StoreError::DuplicateCommand(command.command_id.clone());
        }
    }
    StoreError::Sqlite(e)
}

/// Queues commands inside `tx`. A reused idempotency key or a command id already queued for
/// the device fails the call; the caller's transaction then rolls back everything.
fn insert_commands(tx: &Connection, commands: &[NewCommand]) -> Result<()> {
    for c in commands {
        // Checked explicitly (inside the transaction, so earlier commands of this batch
        // count) to name the offending key; the unique indexes remain the guarantee. An
        // early return drops the transaction, which rolls back everything this call wrote.
        if let Some(key) = &c.idempotency_key {
            let used = tx
                .prepare_cached("SELECT 1 FROM commands WHERE idempotency_key = ?")?
                .query_row([key], |_| Ok(()))
                .optional()?;
            if used.is_some() {
                return Err(StoreError::IdempotencyConflict(key.clone()));
            }
        }
        let exists = tx
            .prepare_cached("SELECT 1 FROM commands WHERE device_id = ? AND command_id = ?")?
            .query_row([c.device_id.as_str(), c.command_id.as_str()], |_| Ok(()))
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::DuplicateCommand(c.command_id.clone()));
        }
        let seq: i64 = tx
            .prepare_cached("UPDATE counters SET value = value + 1 WHERE name = 'command_seq' RETURNING value")?
            .query_row([], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::Corrupt("counter `command_seq` is missing".into()))?;
        tx.prepare_cached(INSERT_COMMAND_SQL)?
            .execute(params![
                c.device_id.as_str(),
                c.command_id,
                seq,
                c.request_type,
                opt_json(&c.normalised),
                c.payload,
                c.priority,
                CommandStatus::Queued.as_str(),
                c.expires_at,
                c.idempotency_key,
                c.created_at,
                c.created_at,
            ])
            .map_err(|e| enqueue_error(e, c))?;
    }
    Ok(())
}

/// An enrollment's column values, owned, ready for the writer thread.
struct EnrollmentRow {
    device_id: String,
    platform: &'static str,
    parent: Option<String>,
    state: &'static str,
    cert_sha256: Option<String>,
    push_token: Option<Vec<u8>>,
    push_magic: Option<String>,
    push_topic: Option<String>,
    unlock_token: Option<Vec<u8>>,
    bootstrap_token: Option<Vec<u8>>,
    inventory: String,
    attributes: String,
    enrolled_at: Option<i64>,
    last_seen: Option<i64>,
    checked_in_event_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

fn enrollment_row(e: &Enrollment) -> Result<EnrollmentRow> {
    let inventory = serde_json::to_string(&e.inventory)
        .map_err(|err| StoreError::Corrupt(format!("inventory cannot be serialised: {err}")))?;
    let attributes = serde_json::Value::Object(e.attributes.clone()).to_string();
    let (push_token, push_magic, push_topic) = match &e.push {
        Some(p) => (Some(p.token.clone()), Some(p.magic.clone()), Some(p.topic.clone())),
        None => (None, None, None),
    };
    Ok(EnrollmentRow {
        device_id: e.device_id.as_str().to_owned(),
        platform: e.platform().as_str(),
        parent: e.parent.as_ref().map(|p| p.as_str().to_owned()),
        state: e.state.as_str(),
        cert_sha256: e.cert_sha256.clone(),
        push_token,
        push_magic,
        push_topic,
        unlock_token: e.unlock_token.clone(),
        bootstrap_token: e.bootstrap_token.clone(),
        inventory,
        attributes,
        enrolled_at: e.enrolled_at,
        last_seen: e.last_seen,
        checked_in_event_at: e.checked_in_event_at,
        created_at: e.created_at,
        updated_at: e.updated_at,
    })
}

/// Inserts or replaces an enrollment (inside the caller's transaction).
fn write_enrollment(conn: &Connection, r: &EnrollmentRow) -> Result<()> {
    conn.prepare_cached(SAVE_ENROLLMENT_SQL)?.execute(params![
        r.device_id,
        r.platform,
        r.parent,
        r.state,
        r.cert_sha256,
        r.push_token,
        r.push_magic,
        r.push_topic,
        r.unlock_token,
        r.bootstrap_token,
        r.inventory,
        r.attributes,
        r.enrolled_at,
        r.last_seen,
        r.checked_in_event_at,
        r.created_at,
        r.updated_at,
    ])?;
    Ok(())
}

/// [`EnrollmentWrite`] as column values, ready for the writer thread.
enum PubSubEnrollmentRow {
    Full(Box<EnrollmentRow>),
    Report { device_id: String, attributes: String, last_seen: Option<i64>, updated_at: i64 },
}

impl PubSubEnrollmentRow {
    fn new(w: EnrollmentWrite<'_>) -> Result<Self> {
        Ok(match w {
            EnrollmentWrite::Full(e) => PubSubEnrollmentRow::Full(Box::new(enrollment_row(e)?)),
            EnrollmentWrite::Report(e) => PubSubEnrollmentRow::Report {
                device_id: e.device_id.as_str().to_owned(),
                attributes: serde_json::Value::Object(e.attributes.clone()).to_string(),
                last_seen: e.last_seen,
                updated_at: e.updated_at,
            },
        })
    }
}

fn windows_certificate_from_row(row: &Row<'_>) -> Result<WindowsCertificate> {
    Ok(WindowsCertificate {
        cert_sha256: get(row, 0, "cert_sha256")?,
        device_id: parse_device_id(&get::<String>(row, 1, "device_id")?, "windows_certificates.device_id")?,
        serial: get(row, 2, "serial")?,
        thumbprint: get(row, 3, "thumbprint")?,
        not_before: get(row, 4, "not_before")?,
        not_after: get(row, 5, "not_after")?,
        kind: get(row, 6, "kind")?,
        upn: get(row, 7, "upn")?,
        auth_policy: get(row, 8, "auth_policy")?,
        renewal_of: get(row, 9, "renewal_of")?,
        issued_at: get(row, 10, "issued_at")?,
    })
}

fn scep_challenge_from_row(row: &Row<'_>) -> Result<ScepChallenge> {
    Ok(ScepChallenge {
        challenge_sha256: get(row, 0, "challenge_sha256")?,
        ticket: get(row, 1, "ticket")?,
        created_at: get(row, 2, "created_at")?,
        expires_at: get(row, 3, "expires_at")?,
        used_at: get(row, 4, "used_at")?,
        issued_cert_sha256: get(row, 5, "issued_cert_sha256")?,
    })
}

fn scep_certificate_from_row(row: &Row<'_>) -> Result<ScepCertificate> {
    Ok(ScepCertificate {
        cert_sha256: get(row, 0, "cert_sha256")?,
        serial: get(row, 1, "serial")?,
        subject: get(row, 2, "subject")?,
        not_before: get(row, 3, "not_before")?,
        not_after: get(row, 4, "not_after")?,
        message_type: get(row, 5, "message_type")?,
        transaction_id: get(row, 6, "transaction_id")?,
        challenge_sha256: get(row, 7, "challenge_sha256")?,
        ticket: get(row, 8, "ticket")?,
        renewal_of: get(row, 9, "renewal_of")?,
        issued_at: get(row, 10, "issued_at")?,
    })
}

/// A [`CommandUpdate`] ready for [`UPDATE_COMMAND_SQL`], built before the job is sent to the writer.
struct UpdateRow {
    to: &'static str,
    sent: i64,
    result: Option<String>,
    error: Option<String>,
    now: i64,
    device: String,
    command_id: String,
    /// The allowed current statuses, each once; unused slots stay NULL.
    from: [Option<&'static str>; FROM_SLOTS],
}

/// `None` when `from` is empty (the update can never apply).
fn update_row(update: &CommandUpdate<'_>) -> Result<Option<UpdateRow>> {
    let mut from: [Option<&'static str>; FROM_SLOTS] = [None; FROM_SLOTS];
    let mut n = 0;
    for s in update.from {
        let s = s.as_str();
        if !from[..n].contains(&Some(s)) {
            if n == FROM_SLOTS {
                return Err(StoreError::Corrupt(format!("more than {FROM_SLOTS} distinct statuses")));
            }
            from[n] = Some(s);
            n += 1;
        }
    }
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(UpdateRow {
        to: update.to.as_str(),
        sent: i64::from(update.to == CommandStatus::Sent),
        result: opt_json(&update.result),
        error: opt_json(&update.error),
        now: update.now,
        device: update.device_id.as_str().to_owned(),
        command_id: update.command_id.to_owned(),
        from,
    }))
}

/// Runs one compare-and-set command update; the number of rows changed (0 or 1).
fn exec_update(tx: &Connection, r: &UpdateRow) -> Result<usize> {
    let f = &r.from;
    Ok(tx.prepare_cached(UPDATE_COMMAND_SQL)?.execute(params![
        r.to,
        r.result,
        r.error,
        r.now,
        r.sent,
        r.device,
        r.command_id,
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
    ])?)
}

fn android_operation_from_row(row: &Row<'_>) -> Result<AndroidOperation> {
    Ok(AndroidOperation {
        operation: get(row, 0, "operation")?,
        device_id: parse_device_id(&get::<String>(row, 1, "device_id")?, "android_operations.device_id")?,
        command_id: get(row, 2, "command_id")?,
        created_at: get(row, 3, "created_at")?,
    })
}

fn android_policy_command_from_row(row: &Row<'_>) -> Result<AndroidPolicyCommand> {
    let settings: String = get(row, 4, "settings")?;
    Ok(AndroidPolicyCommand {
        device_id: parse_device_id(&get::<String>(row, 0, "device_id")?, "android_policy_commands.device_id")?,
        command_id: get(row, 1, "command_id")?,
        policy: get(row, 2, "policy")?,
        policy_version: get(row, 3, "policy_version")?,
        settings: serde_json::from_str(&settings)
            .map_err(|e| StoreError::Corrupt(format!("android_policy_commands.settings: {e}")))?,
        package: get(row, 5, "package")?,
        created_at: get(row, 6, "created_at")?,
    })
}

fn android_signup_from_row(row: &Row<'_>) -> Result<AndroidSignup> {
    Ok(AndroidSignup {
        name: get(row, 0, "name")?,
        state_sha256: get(row, 1, "state_sha256")?,
        url: get(row, 2, "url")?,
        callback_url: get(row, 3, "callback_url")?,
        project_id: get(row, 4, "project_id")?,
        created_at: get(row, 5, "created_at")?,
        completed_at: get(row, 6, "completed_at")?,
        enterprise: get(row, 7, "enterprise")?,
    })
}

fn android_enterprise_from_row(row: &Row<'_>) -> Result<AndroidEnterprise> {
    Ok(AndroidEnterprise {
        name: get(row, 0, "name")?,
        project_id: get(row, 1, "project_id")?,
        signup_name: get(row, 2, "signup_name")?,
        pubsub_topic: get(row, 3, "pubsub_topic")?,
        created_at: get(row, 4, "created_at")?,
    })
}

fn dead_letter_from_row(row: &Row<'_>) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message_id: get(row, 0, "message_id")?,
        received_at: get(row, 1, "received_at")?,
        reason: get(row, 2, "reason")?,
        detail: get(row, 3, "detail")?,
        body: get(row, 4, "body")?,
    })
}

fn corporate_identifier_from_row(row: &Row<'_>) -> Result<CorporateIdentifier> {
    let kind: String = get(row, 0, "kind")?;
    let enrolled: Option<String> = get(row, 4, "enrolled_device")?;
    Ok(CorporateIdentifier {
        kind: IdentifierKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("corporate_identifiers.kind {kind:?}")))?,
        identifier: get(row, 1, "identifier")?,
        details: get(row, 2, "details")?,
        created_at: get(row, 3, "created_at")?,
        enrolled_device: enrolled.map(|d| parse_device_id(&d, "corporate_identifiers.enrolled_device")).transpose()?,
        enrolled_at: get(row, 5, "enrolled_at")?,
    })
}

const CORPORATE_IDENTIFIER_COLUMNS: &str =
    "SELECT kind, identifier, details, created_at, enrolled_device, enrolled_at FROM corporate_identifiers";

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.read(|conn| {
            conn.prepare_cached("SELECT 1")?.query_row([], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn enrollment(&self, id: &DeviceId) -> Result<Option<Enrollment>> {
        let id = id.as_str().to_owned();
        self.read(move |conn| query_opt(conn, ENROLLMENT_SQL, [&id], enrollment_from_row)).await
    }

    async fn enrollment_by_cert(&self, cert_sha256: &str) -> Result<Option<DeviceId>> {
        let cert = cert_sha256.to_owned();
        self.read(move |conn| {
            query_opt(conn, ENROLLMENT_BY_CERT_SQL, [&cert], |row| {
                parse_device_id(&get::<String>(row, 0, "device_id")?, "enrollments.device_id")
            })
        })
        .await
    }

    async fn save_enrollment(&self, e: &Enrollment, events: &[Event]) -> Result<()> {
        let r = enrollment_row(e)?;
        let events = event_rows(events)?;
        self.transact(move |tx| {
            write_enrollment(tx, &r)?;
            insert_events(tx, &events)?;
            Ok(((), !events.is_empty()))
        })
        .await
    }

    async fn set_state_with_children(
        &self,
        parent: &DeviceId,
        state: EnrollmentState,
        now: i64,
        events: &[Event],
    ) -> Result<u64> {
        let events = event_rows(events)?;
        let parent = parent.as_str().to_owned();
        let state = state.as_str();
        self.transact(move |tx| {
            // Rows already in `state` are left alone, so the count is of real changes.
            let changed =
                tx.prepare_cached(SET_STATE_WITH_CHILDREN_SQL)?.execute(params![state, now, parent, parent, state])?;
            insert_events(tx, &events)?;
            Ok((changed as u64, !events.is_empty()))
        })
        .await
    }

    async fn touch(&self, id: &DeviceId, now: i64) -> Result<()> {
        let id = id.as_str().to_owned();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE enrollments SET last_seen = ?, updated_at = ? WHERE device_id = ?")?
                .execute(params![now, now, id])?;
            Ok(())
        })
        .await
    }

    async fn list_enrollments(
        &self,
        platform: Option<Platform>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Enrollment>> {
        // Every id sorts after "" (ids are never empty), so the first page needs no other query.
        let after = after.unwrap_or("").to_owned();
        let limit = self::limit(limit);
        self.read(move |conn| match platform {
            Some(p) => query_all(
                conn,
                LIST_ENROLLMENTS_BY_PLATFORM_SQL,
                params![p.as_str(), after, limit],
                enrollment_from_row,
            ),
            None => query_all(conn, LIST_ENROLLMENTS_SQL, params![after, limit], enrollment_from_row),
        })
        .await
    }

    async fn count_enrollments(&self) -> Result<u64> {
        let n: i64 = self
            .read(|conn| Ok(conn.prepare_cached("SELECT COUNT(*) FROM enrollments")?.query_row([], |r| r.get(0))?))
            .await?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative enrollment count {n}")))
    }

    async fn enqueue(&self, commands: &[NewCommand], events: &[Event]) -> Result<()> {
        let events = event_rows(events)?;
        let commands = commands.to_vec();
        self.transact(move |tx| {
            insert_commands(tx, &commands)?;
            insert_events(tx, &events)?;
            Ok(((), !events.is_empty()))
        })
        .await
    }

    async fn command(&self, command_id: &str) -> Result<Vec<CommandRecord>> {
        let command_id = command_id.to_owned();
        self.read(move |conn| query_all(conn, COMMAND_SQL, [&command_id], command_from_row)).await
    }

    async fn command_for_device(&self, device: &DeviceId, command_id: &str) -> Result<Option<CommandRecord>> {
        let device = device.as_str().to_owned();
        let command_id = command_id.to_owned();
        self.read(move |conn| query_opt(conn, COMMAND_FOR_DEVICE_SQL, [&device, &command_id], command_from_row)).await
    }

    async fn command_by_idempotency_key(&self, key: &str) -> Result<Option<CommandRecord>> {
        let key = key.to_owned();
        self.read(move |conn| query_opt(conn, COMMAND_BY_IDEMPOTENCY_KEY_SQL, [&key], command_from_row)).await
    }

    async fn pending(&self, device: &DeviceId, limit: u32) -> Result<Vec<CommandRecord>> {
        let device = device.as_str().to_owned();
        let limit = self::limit(limit);
        self.read(move |conn| query_all(conn, PENDING_SQL, params![device, limit], command_from_row)).await
    }

    async fn request_snapshot(&self, channel: &DeviceId, id: &DeviceId, limit: u32) -> Result<RequestSnapshot> {
        let channel = channel.as_str().to_owned();
        let id = id.as_str().to_owned();
        let limit = self::limit(limit);
        self.read(move |conn| {
            // One read transaction for the three reads: one WAL snapshot, and the read lock
            // taken and released once (each autocommit statement would take its own).
            let tx = conn.transaction()?;
            let channel_enrollment = query_opt(&tx, ENROLLMENT_SQL, [&channel], enrollment_from_row)?;
            let user = if id == channel { None } else { query_opt(&tx, ENROLLMENT_SQL, [&id], enrollment_from_row)? };
            let pending = query_all(&tx, PENDING_SQL, params![id, limit], command_from_row)?;
            tx.commit()?;
            Ok(RequestSnapshot { channel: channel_enrollment, user, pending })
        })
        .await
    }

    async fn update_command(&self, update: CommandUpdate<'_>, events: &[Event]) -> Result<bool> {
        let events = event_rows(events)?;
        let Some(row) = update_row(&update)? else {
            return Ok(false);
        };
        self.transact(move |tx| {
            // Compare-and-set in one statement: it applies only if the current status is one of
            // `from`, and events are appended only then.
            if exec_update(tx, &row)? == 0 {
                return Ok((false, false));
            }
            insert_events(tx, &events)?;
            Ok((true, !events.is_empty()))
        })
        .await
    }

    async fn due_for_expiry(&self, now: i64, limit: u32) -> Result<Vec<CommandRecord>> {
        let limit = self::limit(limit);
        self.read(move |conn| query_all(conn, DUE_FOR_EXPIRY_SQL, params![now, limit], command_from_row)).await
    }

    async fn append_events(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let events = event_rows(events)?;
        self.transact(move |tx| {
            insert_events(tx, &events)?;
            Ok(((), true))
        })
        .await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<LoggedEvent>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT seq, device_id, body FROM events WHERE seq > ? ORDER BY seq LIMIT CAST(? AS INTEGER)",
                params![after, limit],
                |row| {
                    Ok(LoggedEvent {
                        seq: get(row, 0, "seq")?,
                        device_id: get(row, 1, "device_id")?,
                        json: get(row, 2, "body")?,
                    })
                },
            )
        })
        .await
    }

    async fn last_event_seq(&self) -> Result<i64> {
        self.read(|conn| {
            // The AUTOINCREMENT high-water mark: pruning the log does not lower it.
            Ok(conn
                .prepare_cached("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn sink_cursor(&self, sink: &str) -> Result<i64> {
        let sink = sink.to_owned();
        let seq: Option<i64> = self
            .read(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT seq FROM sink_cursors WHERE sink = ?")?
                    .query_row([&sink], |r| r.get(0))
                    .optional()?)
            })
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn prune_events(&self, older_than_id: &str, below_seq: i64, limit: u32) -> Result<u64> {
        let older_than_id = older_than_id.to_owned();
        let limit = self::limit(limit);
        self.transact(move |tx| {
            // Oldest first by position; AUTOINCREMENT keeps pruned positions from being reused.
            let deleted = tx
                .prepare_cached(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < ? AND id < ? \
                     ORDER BY seq LIMIT CAST(? AS INTEGER))",
                )?
                .execute(params![below_seq, older_than_id, limit])?;
            Ok((deleted as u64, false))
        })
        .await
    }

    async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<()> {
        let sink = sink.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO sink_cursors (sink, seq) VALUES (?, ?) ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq",
            )?
            .execute(params![sink, seq])?;
            Ok(())
        })
        .await
    }

    async fn save_push_cert(&self, cert: &PushCert) -> Result<()> {
        let cert = cert.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO push_certs (topic, cert_pem, key_pem, not_after, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (topic) DO UPDATE SET cert_pem = excluded.cert_pem, key_pem = excluded.key_pem, \
                 not_after = excluded.not_after, updated_at = excluded.updated_at",
            )?
            .execute(params![cert.topic, cert.cert_pem, cert.key_pem, cert.not_after, cert.updated_at])?;
            Ok(())
        })
        .await
    }

    async fn push_certs(&self) -> Result<Vec<PushCert>> {
        self.read(|conn| {
            query_all(
                conn,
                "SELECT topic, cert_pem, key_pem, not_after, updated_at FROM push_certs ORDER BY topic",
                [],
                push_cert_from_row,
            )
        })
        .await
    }

    async fn create_scep_challenge(&self, c: &NewScepChallenge) -> Result<()> {
        let c = c.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO scep_challenges (challenge_sha256, ticket, created_at, expires_at) VALUES (?, ?, ?, ?)",
            )?
            .execute(params![c.challenge_sha256, c.ticket, c.created_at, c.expires_at])?;
            Ok(())
        })
        .await
    }

    async fn scep_challenge(&self, challenge_sha256: &str) -> Result<Option<ScepChallenge>> {
        let h = challenge_sha256.to_owned();
        self.read(move |conn| {
            let sql = format!("{SCEP_CHALLENGE_COLUMNS}WHERE challenge_sha256 = ?");
            query_opt(conn, &sql, [&h], scep_challenge_from_row)
        })
        .await
    }

    async fn record_scep_certificate(
        &self,
        cert: &ScepCertificate,
        consume: Option<&str>,
        now: i64,
    ) -> Result<ScepRecord> {
        let c = cert.clone();
        let consume = consume.map(str::to_owned);
        self.transact(move |tx| {
            if let Some(h) = &consume {
                let changed =
                    tx.prepare_cached(CONSUME_SCEP_CHALLENGE_SQL)?.execute(params![now, c.cert_sha256, h, now])?;
                if changed == 0 {
                    return Ok((ScepRecord::ChallengeUnavailable, false));
                }
            }
            tx.prepare_cached(INSERT_SCEP_CERTIFICATE_SQL)?.execute(params![
                c.cert_sha256,
                c.serial,
                c.subject,
                c.not_before,
                c.not_after,
                c.message_type,
                c.transaction_id,
                c.challenge_sha256,
                c.ticket,
                c.renewal_of,
                c.issued_at,
            ])?;
            Ok((ScepRecord::Recorded, false))
        })
        .await
    }

    async fn scep_certificate(&self, cert_sha256: &str) -> Result<Option<ScepCertificate>> {
        let h = cert_sha256.to_owned();
        self.read(move |conn| {
            let sql = format!("{SCEP_CERTIFICATE_COLUMNS}WHERE cert_sha256 = ?");
            query_opt(conn, &sql, [&h], scep_certificate_from_row)
        })
        .await
    }

    async fn scep_renewal_of(&self, cert_sha256: &str) -> Result<Option<ScepCertificate>> {
        let h = cert_sha256.to_owned();
        self.read(move |conn| query_opt(conn, &scep_renewal_of_sql(), [&h], scep_certificate_from_row)).await
    }

    async fn scep_ticket_status(&self, ticket: &str) -> Result<Option<TicketStatus>> {
        let ticket = ticket.to_owned();
        self.read(move |conn| {
            // The most recently used challenge first; unused ones (used_at NULL) after.
            let sql = "SELECT used_at, issued_cert_sha256 FROM scep_challenges WHERE ticket = ? \
                       ORDER BY used_at IS NULL, used_at DESC LIMIT 1";
            query_opt(conn, sql, [&ticket], |row| {
                let used_at: Option<i64> = get(row, 0, "used_at")?;
                Ok(TicketStatus {
                    challenge_used: used_at.is_some(),
                    issued_cert_sha256: get(row, 1, "issued_cert_sha256")?,
                })
            })
        })
        .await
    }

    async fn scep_certificates(&self, limit: u32) -> Result<Vec<ScepCertificate>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            let sql = format!("{SCEP_CERTIFICATE_COLUMNS}ORDER BY issued_at, cert_sha256 LIMIT CAST(? AS INTEGER)");
            query_all(conn, &sql, [limit], scep_certificate_from_row)
        })
        .await
    }

    async fn scep_challenges(&self, limit: u32) -> Result<Vec<ScepChallenge>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            let sql = format!("{SCEP_CHALLENGE_COLUMNS}ORDER BY created_at, challenge_sha256 LIMIT CAST(? AS INTEGER)");
            query_all(conn, &sql, [limit], scep_challenge_from_row)
        })
        .await
    }

    // --- Declarations and tokens ---

    async fn declaration_set(&self, device: &DeviceId) -> Result<DeclarationSet> {
        let device = device.as_str().to_owned();
        self.read(move |conn| {
            // One read transaction: the token and the list come from the same snapshot.
            let tx = conn.transaction()?;
            let token = query_opt(&tx, DECLARATION_TOKEN_SQL, [&device], |row| {
                Ok(DeclarationsToken { token: get(row, 0, "token")?, updated_at: get(row, 1, "updated_at")? })
            })?;
            let declarations = query_all(&tx, DECLARATIONS_SQL, [&device], declaration_from_row)?;
            tx.finish()?;
            Ok(DeclarationSet { token, declarations })
        })
        .await
    }

    async fn declaration(&self, device: &DeviceId, identifier: &str) -> Result<Option<StoredDeclaration>> {
        let device = device.as_str().to_owned();
        let identifier = identifier.to_owned();
        self.read(move |conn| query_opt(conn, DECLARATION_SQL, [&device, &identifier], declaration_from_row)).await
    }

    async fn put_declaration(&self, declaration: &StoredDeclaration, change: DeclarationsChange<'_>) -> Result<bool> {
        let events = event_rows(change.events)?;
        let commands = change.commands.to_vec();
        let d = declaration.clone();
        let token = change.token.to_owned();
        let now = change.now;
        self.transact(move |tx| {
            let device = d.device_id.as_str();
            let same = query_opt(tx, DECLARATION_SQL, [device, d.identifier.as_str()], declaration_from_row)?
                .is_some_and(|old| {
                    old.declaration_type == d.declaration_type
                        && old.server_token == d.server_token
                        && old.body == d.body
                });
            if same {
                return Ok((false, false));
            }
            tx.prepare_cached(PUT_DECLARATION_SQL)?.execute(params![
                device,
                d.identifier,
                d.declaration_type,
                d.server_token,
                d.body,
                d.created_at,
                d.updated_at,
            ])?;
            let appended = apply_declarations_change(tx, device, &token, now, &commands, &events)?;
            Ok((true, appended))
        })
        .await
    }

    async fn delete_declaration(
        &self,
        device: &DeviceId,
        identifier: &str,
        change: DeclarationsChange<'_>,
    ) -> Result<bool> {
        let events = event_rows(change.events)?;
        let commands = change.commands.to_vec();
        let device = device.as_str().to_owned();
        let identifier = identifier.to_owned();
        let token = change.token.to_owned();
        let now = change.now;
        self.transact(move |tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM declarations WHERE device_id = ? AND identifier = ?")?
                .execute([&device, &identifier])?;
            if deleted == 0 {
                return Ok((false, false));
            }
            let appended = apply_declarations_change(tx, &device, &token, now, &commands, &events)?;
            Ok((true, appended))
        })
        .await
    }

    async fn set_bootstrap_token(
        &self,
        device: &DeviceId,
        sealed: Option<&[u8]>,
        now: i64,
        events: &[Event],
    ) -> Result<bool> {
        let events = event_rows(events)?;
        let device = device.as_str().to_owned();
        let sealed = sealed.map(<[u8]>::to_vec);
        self.transact(move |tx| {
            let changed = tx.prepare_cached(SET_BOOTSTRAP_TOKEN_SQL)?.execute(params![sealed, now, device])?;
            if changed == 0 {
                return Ok((false, false));
            }
            insert_events(tx, &events)?;
            Ok((true, !events.is_empty()))
        })
        .await
    }

    async fn plaintext_bootstrap_tokens(&self, limit: u32) -> Result<Vec<(DeviceId, Vec<u8>)>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            query_all(conn, PLAINTEXT_BOOTSTRAP_TOKENS_SQL, [limit], |row| {
                let id: String = get(row, 0, "device_id")?;
                Ok((parse_device_id(&id, "enrollments.device_id")?, get(row, 1, "bootstrap_token_plaintext")?))
            })
        })
        .await
    }

    // --- Enrollment tickets ---

    async fn create_enroll_ticket(&self, ticket: &EnrollTicket, purge_expired_before: i64) -> Result<()> {
        let t = ticket.clone();
        self.transact(move |tx| {
            tx.prepare_cached("DELETE FROM enroll_tickets WHERE expires_at < ?")?.execute([purge_expired_before])?;
            tx.prepare_cached(
                "INSERT INTO enroll_tickets (id, created_at, expires_at, profile_downloaded_at, downloads, variant) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                t.id,
                t.created_at,
                t.expires_at,
                t.profile_downloaded_at,
                t.downloads,
                t.variant
            ])?;
            Ok(((), false))
        })
        .await
    }

    async fn enroll_ticket(&self, id: &str) -> Result<Option<EnrollTicket>> {
        let id = id.to_owned();
        self.read(move |conn| query_opt(conn, ENROLL_TICKET_SQL, [&id], enroll_ticket_from_row)).await
    }

    async fn record_profile_download(&self, id: &str, variant: &str, now: i64) -> Result<bool> {
        let (id, variant) = (id.to_owned(), variant.to_owned());
        self.write(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE enroll_tickets SET profile_downloaded_at = COALESCE(profile_downloaded_at, ?1), \
                     downloads = downloads + 1, variant = ?2 WHERE id = ?3 AND expires_at > ?1",
                )?
                .execute(params![now, variant, id])?;
            Ok(changed == 1)
        })
        .await
    }

    // --- OMA-DM ---

    async fn omadm_session(&self, device: &DeviceId) -> Result<Option<OmaDmSession>> {
        let device = device.as_str().to_owned();
        self.read(move |conn| query_opt(conn, OMADM_SESSION_SQL, [&device], omadm_session_from_row)).await
    }

    async fn save_omadm_session(
        &self,
        session: &OmaDmSession,
        expected_version: Option<i64>,
        events: &[Event],
    ) -> Result<bool> {
        let events = event_rows(events)?;
        let s = session.clone();
        self.transact(move |tx| {
            let device = s.device_id.as_str();
            let changed = match expected_version {
                None => tx
                    .prepare_cached(
                        "INSERT INTO omadm_sessions (device_id, session_id, client_msg_id, version, state, \
                         request_sha256, reply, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                         ON CONFLICT (device_id) DO NOTHING",
                    )?
                    .execute(params![
                        device,
                        s.session_id,
                        s.client_msg_id,
                        s.version,
                        s.state,
                        s.request_sha256,
                        s.reply,
                        s.updated_at
                    ])?,
                Some(v) => tx
                    .prepare_cached(
                        "UPDATE omadm_sessions SET session_id = ?, client_msg_id = ?, version = ?, state = ?, \
                         request_sha256 = ?, reply = ?, updated_at = ? WHERE device_id = ? AND version = ?",
                    )?
                    .execute(params![
                        s.session_id,
                        s.client_msg_id,
                        s.version,
                        s.state,
                        s.request_sha256,
                        s.reply,
                        s.updated_at,
                        device,
                        v
                    ])?,
            };
            if changed == 0 {
                return Ok((false, false));
            }
            insert_events(tx, &events)?;
            Ok((true, !events.is_empty()))
        })
        .await
    }

    async fn omadm_sessions(&self, limit: u32) -> Result<Vec<OmaDmSession>> {
        let limit = self::limit(limit);
        self.read(move |conn| query_all(conn, OMADM_SESSIONS_SQL, [limit], omadm_session_from_row)).await
    }

    // --- Windows enrollment ---

    async fn record_windows_enrollment(
        &self,
        cert: &WindowsCertificate,
        enrollment: &Enrollment,
        expect_bound: Option<&str>,
        events: &[Event],
    ) -> Result<WindowsRecord> {
        let c = cert.clone();
        let r = enrollment_row(enrollment)?;
        let events = event_rows(events)?;
        let expect = expect_bound.map(str::to_owned);
        self.transact(move |tx| {
            if let Some(expected) = &expect {
                let current: Option<(Option<String>, String)> = tx
                    .prepare_cached("SELECT cert_sha256, state FROM enrollments WHERE device_id = ?")?
                    .query_row([&r.device_id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                match current {
                    Some((Some(bound), state)) if bound == *expected && state != "unenrolled" => {}
                    _ => return Ok((WindowsRecord::BindingChanged, false)),
                }
            }
            tx.prepare_cached(INSERT_WINDOWS_CERTIFICATE_SQL)?.execute(params![
                c.cert_sha256,
                c.device_id.as_str(),
                c.serial,
                c.thumbprint,
                c.not_before,
                c.not_after,
                c.kind,
                c.upn,
                c.auth_policy,
                c.renewal_of,
                c.issued_at,
            ])?;
            write_enrollment(tx, &r)?;
            insert_events(tx, &events)?;
            Ok((WindowsRecord::Recorded, !events.is_empty()))
        })
        .await
    }

    async fn windows_certificate(&self, cert_sha256: &str) -> Result<Option<WindowsCertificate>> {
        let h = cert_sha256.to_owned();
        self.read(move |conn| {
            let sql = format!("{WINDOWS_CERTIFICATE_COLUMNS}WHERE cert_sha256 = ?");
            query_opt(conn, &sql, [&h], windows_certificate_from_row)
        })
        .await
    }

    async fn windows_certificates(&self, limit: u32) -> Result<Vec<WindowsCertificate>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            let sql = format!("{WINDOWS_CERTIFICATE_COLUMNS}ORDER BY issued_at, cert_sha256 LIMIT CAST(? AS INTEGER)");
            query_all(conn, &sql, [limit], windows_certificate_from_row)
        })
        .await
    }

    async fn windows_devices_of_user(&self, upn: &str) -> Result<Vec<DeviceId>> {
        let upn = upn.to_owned();
        self.read(move |conn| {
            let sql = "SELECT e.device_id FROM windows_certificates c \
                       JOIN enrollments e ON e.cert_sha256 = c.cert_sha256 AND e.device_id = c.device_id \
                       WHERE c.upn = ? AND e.state <> 'unenrolled' ORDER BY e.device_id";
            query_all(conn, sql, [&upn], |row| {
                parse_device_id(&get::<String>(row, 0, "device_id")?, "enrollments.device_id")
            })
        })
        .await
    }

    async fn apply_pubsub(&self, d: PubSubDelivery<'_>) -> Result<PubSubOutcome> {
        let events = event_rows(d.events)?;
        let enrollment = d.enrollment.map(PubSubEnrollmentRow::new).transpose()?;
        let updates: Vec<UpdateRow> =
            d.command_updates.iter().map(update_row).filter_map(Result::transpose).collect::<Result<_>>()?;
        let message_id = d.message_id.to_owned();
        let received_at = d.received_at;
        let ordering = d.ordering.map(|(device, t)| (device.as_str().to_owned(), t));
        self.transact(move |tx| {
            // The dedupe gate: one insert, no lookup before it.
            if tx.prepare_cached(INSERT_PUBSUB_MESSAGE_SQL)?.execute(params![message_id, received_at])? == 0 {
                return Ok((PubSubOutcome::Duplicate, false));
            }
            if let Some((device, t)) = &ordering
                && tx.prepare_cached(ADVANCE_WATERMARK_SQL)?.execute(params![device, t, message_id])? == 0
            {
                // Older than the newest applied: only the id is kept, as stale.
                tx.prepare_cached(MARK_PUBSUB_STALE_SQL)?.execute([&message_id])?;
                return Ok((PubSubOutcome::Stale, false));
            }
            match &enrollment {
                Some(PubSubEnrollmentRow::Full(r)) => write_enrollment(tx, r)?,
                Some(PubSubEnrollmentRow::Report { device_id, attributes, last_seen, updated_at }) => {
                    let n = tx
                        .prepare_cached(REPORT_ENROLLMENT_SQL)?
                        .execute(params![attributes, last_seen, updated_at, device_id])?;
                    if n == 0 {
                        return Err(StoreError::Conflict(format!("enrollment `{device_id}` is gone")));
                    }
                }
                None => {}
            }
            // A command resolved meanwhile (reconcile, expiry) gets no second result event.
            let mut resolved = true;
            for u in &updates {
                resolved &= exec_update(tx, u)? > 0;
            }
            if !resolved {
                return Ok((PubSubOutcome::Applied, false));
            }
            insert_events(tx, &events)?;
            Ok((PubSubOutcome::Applied, !events.is_empty()))
        })
        .await
    }

    async fn record_dead_letter(&self, dead: &DeadLetter, events: &[Event]) -> Result<bool> {
        let events = event_rows(events)?;
        let dead = dead.clone();
        self.transact(move |tx| {
            if let Some(id) = &dead.message_id {
                let new = tx
                    .prepare_cached(
                        "INSERT INTO pubsub_messages (message_id, received_at, outcome) VALUES (?, ?, 'dead_letter') \
                         ON CONFLICT (message_id) DO NOTHING",
                    )?
                    .execute(params![id, dead.received_at])?;
                if new == 0 {
                    return Ok((false, false));
                }
            }
            tx.prepare_cached(
                "INSERT INTO pubsub_dead_letters (message_id, received_at, reason, detail, body) VALUES (?, ?, ?, ?, ?)",
            )?
            .execute(params![dead.message_id, dead.received_at, dead.reason, dead.detail, dead.body])?;
            insert_events(tx, &events)?;
            Ok((true, !events.is_empty()))
        })
        .await
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT message_id, received_at, reason, detail, body FROM pubsub_dead_letters \
                 ORDER BY id DESC LIMIT CAST(? AS INTEGER)",
                [limit],
                dead_letter_from_row,
            )
        })
        .await
    }

    async fn prune_pubsub_messages(&self, before: i64, limit: u32) -> Result<u64> {
        let limit = self::limit(limit);
        self.transact(move |tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM pubsub_messages WHERE message_id IN (SELECT message_id FROM pubsub_messages \
                     WHERE received_at < ? ORDER BY received_at LIMIT CAST(? AS INTEGER))",
                )?
                .execute(params![before, limit])?;
            Ok((n as u64, false))
        })
        .await
    }

    async fn record_android_operation(
        &self,
        operation: &AndroidOperation,
        update: Option<CommandUpdate<'_>>,
        events: &[Event],
    ) -> Result<()> {
        let events = event_rows(events)?;
        let update = update.as_ref().map(update_row).transpose()?.flatten();
        let op = operation.clone();
        self.transact(move |tx| {
            tx.prepare_cached(
                "INSERT INTO android_operations (operation, device_id, command_id, created_at) VALUES (?, ?, ?, ?)",
            )?
            .execute(params![op.operation, op.device_id.as_str(), op.command_id, op.created_at])?;
            if let Some(u) = &update {
                exec_update(tx, u)?;
            }
            insert_events(tx, &events)?;
            Ok(((), !events.is_empty()))
        })
        .await
    }

    async fn android_operation(&self, operation: &str) -> Result<Option<AndroidOperation>> {
        let operation = operation.to_owned();
        self.read(move |conn| {
            query_opt(
                conn,
                "SELECT operation, device_id, command_id, created_at FROM android_operations WHERE operation = ?",
                [&operation],
                android_operation_from_row,
            )
        })
        .await
    }

    async fn unresolved_android_operations(&self, created_before: i64, limit: u32) -> Result<Vec<AndroidOperation>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT o.operation, o.device_id, o.command_id, o.created_at FROM android_operations o \
                 JOIN commands c ON c.device_id = o.device_id AND c.command_id = o.command_id \
                 WHERE o.created_at <= ? AND c.status = 'sent' ORDER BY o.created_at LIMIT CAST(? AS INTEGER)",
                params![created_before, limit],
                android_operation_from_row,
            )
        })
        .await
    }

    async fn count_user_devices(&self, user: &str, excluding: Option<&DeviceId>) -> Result<u64> {
        let user = user.to_lowercase();
        let excluding = excluding.map(|d| d.as_str().to_owned()).unwrap_or_default();
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM enrollments \
                     WHERE lower(json_extract(inventory, '$.enrolled_user')) = ? AND parent IS NULL \
                     AND state <> 'unenrolled' AND device_id <> ?",
                )?
                .query_row(params![user, excluding], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn replace_corporate_identifiers(
        &self,
        kind: IdentifierKind,
        rows: &[(String, String)],
        now: i64,
    ) -> Result<u64> {
        let rows = rows.to_vec();
        let kind = kind.as_str();
        self.transact(move |tx| {
            tx.execute("CREATE TEMP TABLE IF NOT EXISTS import_ids (identifier TEXT PRIMARY KEY, details TEXT)", [])?;
            tx.execute("DELETE FROM temp.import_ids", [])?;
            {
                let mut ins =
                    tx.prepare_cached("INSERT OR IGNORE INTO temp.import_ids (identifier, details) VALUES (?, ?)")?;
                for (id, details) in &rows {
                    ins.execute(params![id, details])?;
                }
            }
            tx.execute(
                "DELETE FROM corporate_identifiers WHERE kind = ? \
                 AND identifier NOT IN (SELECT identifier FROM temp.import_ids)",
                [kind],
            )?;
            tx.execute(
                "INSERT INTO corporate_identifiers (kind, identifier, details, created_at) \
                 SELECT ?1, identifier, details, ?2 FROM temp.import_ids WHERE true \
                 ON CONFLICT (kind, identifier) DO UPDATE SET details = excluded.details",
                params![kind, now],
            )?;
            tx.execute("DELETE FROM temp.import_ids", [])?;
            let n: i64 =
                tx.query_row("SELECT COUNT(*) FROM corporate_identifiers WHERE kind = ?", [kind], |r| r.get(0))?;
            Ok((n.max(0) as u64, false))
        })
        .await
    }

    async fn corporate_identifier(
        &self,
        kind: IdentifierKind,
        identifier: &str,
    ) -> Result<Option<CorporateIdentifier>> {
        let identifier = identifier.to_owned();
        let sql = format!("{CORPORATE_IDENTIFIER_COLUMNS} WHERE kind = ? AND identifier = ?");
        self.read(move |conn| query_opt(conn, &sql, params![kind.as_str(), identifier], corporate_identifier_from_row))
            .await
    }

    async fn corporate_identifiers(
        &self,
        kind: IdentifierKind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CorporateIdentifier>> {
        let after = after.unwrap_or_default().to_owned();
        let limit = self::limit(limit);
        let sql = format!(
            "{CORPORATE_IDENTIFIER_COLUMNS} WHERE kind = ? AND identifier > ? ORDER BY identifier LIMIT CAST(? AS INTEGER)"
        );
        self.read(move |conn| {
            query_all(conn, &sql, params![kind.as_str(), after, limit], corporate_identifier_from_row)
        })
        .await
    }

    async fn mark_corporate_identifier_enrolled(
        &self,
        kind: IdentifierKind,
        identifier: &str,
        device: &DeviceId,
        now: i64,
    ) -> Result<bool> {
        let identifier = identifier.to_owned();
        let device = device.as_str().to_owned();
        self.transact(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE corporate_identifiers SET enrolled_device = ?, enrolled_at = ? WHERE kind = ? AND identifier = ?",
                )?
                .execute(params![device, now, kind.as_str(), identifier])?;
            Ok((n == 1, false))
        })
        .await
    }

    async fn queued_android_commands(&self, limit: u32) -> Result<Vec<CommandRecord>> {
        let limit = self::limit(limit);
        self.read(move |conn| query_all(conn, QUEUED_ANDROID_SQL, params![limit], command_from_row)).await
    }

    async fn save_android_signup(&self, signup: &AndroidSignup) -> Result<()> {
        let s = signup.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO android_signups (name, state_sha256, url, callback_url, project_id, created_at, \
                 completed_at, enterprise) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                s.name,
                s.state_sha256,
                s.url,
                s.callback_url,
                s.project_id,
                s.created_at,
                s.completed_at,
                s.enterprise
            ])?;
            Ok(())
        })
        .await
    }

    async fn android_signup_by_state(&self, state_sha256: &str) -> Result<Option<AndroidSignup>> {
        let state = state_sha256.to_owned();
        self.read(move |conn| {
            query_opt(
                conn,
                "SELECT name, state_sha256, url, callback_url, project_id, created_at, completed_at, enterprise \
                 FROM android_signups WHERE state_sha256 = ?",
                [&state],
                android_signup_from_row,
            )
        })
        .await
    }

    async fn complete_android_signup(
        &self,
        signup_name: &str,
        enterprise: &AndroidEnterprise,
        events: &[Event],
    ) -> Result<bool> {
        let events = event_rows(events)?;
        let name = signup_name.to_owned();
        let e = enterprise.clone();
        self.transact(move |tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE android_signups SET completed_at = ?, enterprise = ? WHERE name = ? AND completed_at IS NULL",
                )?
                .execute(params![e.created_at, e.name, name])?;
            if changed == 0 {
                return Ok((false, false));
            }
            tx.prepare_cached(
                "INSERT INTO android_enterprises (name, project_id, signup_name, pubsub_topic, created_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET signup_name = excluded.signup_name, \
                 pubsub_topic = excluded.pubsub_topic, created_at = excluded.created_at",
            )?
            .execute(params![e.name, e.project_id, e.signup_name, e.pubsub_topic, e.created_at])?;
            insert_events(tx, &events)?;
            Ok((true, !events.is_empty()))
        })
        .await
    }

    async fn android_enterprises(&self) -> Result<Vec<AndroidEnterprise>> {
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT name, project_id, signup_name, pubsub_topic, created_at FROM android_enterprises \
                 ORDER BY created_at DESC, name",
                [],
                android_enterprise_from_row,
            )
        })
        .await
    }

    // --- android ingest (s4) ---

    async fn pubsub_view(&self, message_id: &str, device: Option<&DeviceId>) -> Result<PubSubView> {
        let message_id = message_id.to_owned();
        let device = device.map(|d| d.as_str().to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(PUBSUB_VIEW_SQL)?;
            let mut rows = stmt.query(params![message_id, device])?;
            let row = rows.next()?.ok_or_else(|| StoreError::Corrupt("the Pub/Sub view returned no row".into()))?;
            let enrollment = match get::<Option<String>>(row, 2, "device_id")? {
                Some(_) => Some(enrollment_from_row_at(row, 2)?),
                None => None,
            };
            Ok(PubSubView {
                seen: get(row, 0, "seen")?,
                watermark_ms: get(row, 1, "publish_time_ms")?,
                enrollment,
                policy_commands_pending: get(row, 18, "policy_commands_pending")?,
            })
        })
        .await
    }

    // --- vocabulary (s4) ---

    async fn record_android_policy_command(
        &self,
        command: &AndroidPolicyCommand,
        update: CommandUpdate<'_>,
        events: &[Event],
    ) -> Result<bool> {
        let events = event_rows(events)?;
        let Some(row) = update_row(&update)? else {
            return Ok(false);
        };
        let c = command.clone();
        let settings = serde_json::to_string(&c.settings).unwrap_or_else(|_| "[]".into());
        self.transact(move |tx| {
            if exec_update(tx, &row)? == 0 {
                return Ok((false, false));
            }
            tx.prepare_cached(
                "INSERT INTO android_policy_commands \
                 (device_id, command_id, policy, policy_version, settings, package, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (device_id, command_id) DO UPDATE SET policy = excluded.policy, \
                 policy_version = excluded.policy_version, settings = excluded.settings, \
                 package = excluded.package, created_at = excluded.created_at",
            )?
            .execute(params![
                c.device_id.as_str(),
                c.command_id,
                c.policy,
                c.policy_version,
                settings,
                c.package,
                c.created_at
            ])?;
            insert_events(tx, &events)?;
            Ok((true, !events.is_empty()))
        })
        .await
    }

    async fn pending_android_policy_commands(&self, device: &DeviceId) -> Result<Vec<AndroidPolicyCommand>> {
        let device = device.as_str().to_owned();
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT p.device_id, p.command_id, p.policy, p.policy_version, p.settings, p.package, p.created_at FROM android_policy_commands p \
                     JOIN commands c ON c.device_id = p.device_id AND c.command_id = p.command_id \
                     WHERE p.device_id = ? AND c.status = 'sent' ORDER BY p.created_at, p.command_id",
                [&device],
                android_policy_command_from_row,
            )
        })
        .await
    }

    async fn unresolved_android_policy_commands(
        &self,
        created_before: i64,
        limit: u32,
    ) -> Result<Vec<AndroidPolicyCommand>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT p.device_id, p.command_id, p.policy, p.policy_version, p.settings, p.package, p.created_at FROM android_policy_commands p \
                     JOIN commands c ON c.device_id = p.device_id AND c.command_id = p.command_id \
                     WHERE p.created_at <= ? AND c.status = 'sent' ORDER BY p.created_at LIMIT CAST(? AS INTEGER)",
                params![created_before, limit],
                android_policy_command_from_row,
            )
        })
        .await
    }

    // --- cluster (s4) ---

    async fn acquire_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            let got: Option<String> = conn
                .prepare_cached(ACQUIRE_LEASE_SQL)?
                .query_row(params![name, holder, now_ms, ttl_ms], |r| r.get(0))
                .optional()?;
            Ok(got.as_deref() == Some(holder.as_str()))
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |conn| {
            let n =
                conn.prepare_cached("DELETE FROM leases WHERE name = ? AND holder = ?")?.execute([&name, &holder])?;
            Ok(n == 1)
        })
        .await
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        self.read(|conn| {
            query_all(conn, "SELECT name, holder, acquired_at_ms, expires_at_ms FROM leases ORDER BY name", [], |row| {
                Ok(Lease {
                    name: get(row, 0, "name")?,
                    holder: get(row, 1, "holder")?,
                    acquired_at_ms: get(row, 2, "acquired_at_ms")?,
                    expires_at_ms: get(row, 3, "expires_at_ms")?,
                })
            })
        })
        .await
    }

    async fn set_sink_cursor_leased(&self, sink: &str, seq: i64, lease: &str, holder: &str) -> Result<bool> {
        let (sink, lease, holder) = (sink.to_owned(), lease.to_owned(), holder.to_owned());
        self.write(move |conn| {
            let n = conn.prepare_cached(SET_SINK_CURSOR_LEASED_SQL)?.execute(params![sink, seq, lease, holder])?;
            Ok(n == 1)
        })
        .await
    }

    async fn claim_android_commands(&self, holder: &str, now: i64, limit: u32) -> Result<Vec<CommandRecord>> {
        let holder = holder.to_owned();
        let limit = self::limit(limit);
        // The writer runs one statement at a time: no two callers can claim the same row.
        let mut claimed = self
            .transact(move |tx| {
                Ok((query_all(tx, CLAIM_ANDROID_SQL, params![holder, now, limit], command_from_row)?, false))
            })
            .await?;
        claimed.sort_by_key(|c| (std::cmp::Reverse(c.priority), c.seq));
        Ok(claimed)
    }

    async fn abandoned_android_claims(&self, now_ms: i64, limit: u32) -> Result<Vec<AbandonedClaim>> {
        let limit = self::limit(limit);
        self.read(move |conn| {
            query_all(conn, ABANDONED_ANDROID_SQL, params![now_ms, limit], |row| {
                Ok(AbandonedClaim {
                    command: command_from_row(row)?,
                    holder: get(row, 15, "claimed_by")?,
                    claimed_at: get::<Option<i64>>(row, 16, "claimed_at")?.unwrap_or(0),
                })
            })
        })
        .await
    }

    async fn release_android_claim(&self, device: &DeviceId, command_id: &str, holder: &str) -> Result<bool> {
        let (device, command_id, holder) = (device.as_str().to_owned(), command_id.to_owned(), holder.to_owned());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE commands SET claimed_by = NULL, claimed_at = NULL \
                     WHERE device_id = ? AND command_id = ? AND claimed_by = ? AND status = 'queued'",
                )?
                .execute([&device, &command_id, &holder])?;
            Ok(n == 1)
        })
        .await
    }

    async fn take_budget(&self, bucket: &str, now_ms: i64, window_ms: i64, limit: u32) -> Result<BudgetTake> {
        let bucket = bucket.to_owned();
        self.transact(move |tx| {
            let stored: Option<String> = tx
                .prepare_cached("SELECT grants FROM request_budgets WHERE bucket = ?")?
                .query_row([&bucket], |r| r.get(0))
                .optional()?;
            let mut grants: Vec<i64> = match stored {
                Some(text) => parse_json(&text, "request_budgets.grants")?,
                None => Vec::new(),
            };
            let take = super::budget_step(&mut grants, now_ms, window_ms, limit);
            let text = serde_json::to_string(&grants).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tx.prepare_cached(
                "INSERT INTO request_budgets (bucket, grants) VALUES (?, ?) \
                 ON CONFLICT (bucket) DO UPDATE SET grants = excluded.grants",
            )?
            .execute(params![bucket, text])?;
            Ok((take, false))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    async fn fresh() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.db");
        let store = SqliteStore::open(path.to_str().expect("utf-8 path"), 2).await.expect("open store");
        (store, dir)
    }

    async fn harness() -> suite::Harness {
        let (store, dir) = fresh().await;
        // Another writer on the same file: what a second process would open.
        let path = dir.path().join("gateway.db");
        let second = SqliteStore::open(path.to_str().expect("utf-8 path"), 2).await.expect("open second store");
        suite::Harness {
            notifier: store.notifier(),
            store: Box::new(store),
            second: Box::new(second),
            guard: Box::new(dir),
        }
    }

    crate::store_suite!(harness);

    /// Runs `sql` on the writer connection, outside the store's methods.
    async fn exec(store: &SqliteStore, sql: &'static str) -> Result<()> {
        store.write(move |conn| Ok(conn.execute_batch(sql)?)).await
    }

    /// The query plan of `sql`, one `detail` line per step.
    async fn plan(store: &SqliteStore, sql: &str, binds: &[&str]) -> Vec<String> {
        let sql = format!("EXPLAIN QUERY PLAN {sql}");
        let binds: Vec<String> = binds.iter().map(|b| b.to_string()).collect();
        let plan = store
            .read(move |conn| {
                let mut stmt = conn.prepare(&sql)?;
                let rows =
                    stmt.query_map(rusqlite::params_from_iter(binds.iter()), |r| r.get::<_, String>("detail"))?;
                Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
            })
            .await
            .expect("explain");
        eprintln!("{plan:?}");
        plan
    }

    /// Asserts the plan reads `table` only through an index lookup (`SEARCH ... USING INDEX`),
    /// never a table or index scan, and sorts nothing itself.
    fn assert_searches(plan: &[String], table: &str, index: &str) {
        let text = plan.join("\n");
        assert!(
            plan.iter().any(|d| d.starts_with(&format!("SEARCH {table} USING")) && d.contains(index)),
            "expected an index search of {table} via {index}, got:\n{text}"
        );
        assert!(!plan.iter().any(|d| d.starts_with("SCAN")), "unexpected scan:\n{text}");
        assert!(!text.contains("TEMP B-TREE"), "unexpected sort:\n{text}");
    }

    #[tokio::test]
    async fn hot_queries_use_indexes() {
        let (store, _dir) = fresh().await;
        // The planner's choice should not depend on the data, but give it some anyway, and
        // statistics, so the test covers a populated table.
        let mut commands = Vec::new();
        for d in 0..20 {
            for c in 0..20 {
                let device: DeviceId = format!("apple:dev-{d}").parse().expect("id");
                commands.push(NewCommand {
                    command_id: format!("cmd-{c}"),
                    device_id: device.clone(),
                    request_type: "DeviceInformation".into(),
                    normalised: None,
                    payload: vec![1, 2, 3],
                    priority: c % 3,
                    expires_at: Some(1000 + i64::from(c)),
                    idempotency_key: None,
                    created_at: 1,
                });
            }
            store
                .save_enrollment(&Enrollment::new(format!("apple:dev-{d}").parse().expect("id"), 1), &[])
                .await
                .expect("save");
        }
        store.enqueue(&commands, &[]).await.expect("enqueue");
        exec(&store, "ANALYZE").await.expect("analyze");

        let p = plan(&store, PENDING_SQL, &["apple:dev-3", "10"]).await;
        assert_searches(&p, "commands", "commands_pending");
        let p = plan(&store, ENROLLMENT_SQL, &["apple:dev-3"]).await;
        assert_searches(&p, "enrollments", "sqlite_autoindex_enrollments_1");
        let p = plan(&store, ENROLLMENT_BY_CERT_SQL, &["abc"]).await;
        assert!(p.iter().any(|d| d.contains("USING INDEX enrollments_cert_sha256")), "{p:?}");
        assert!(!p.iter().any(|d| d.starts_with("SCAN")), "{p:?}");
        let p = plan(&store, LIST_ENROLLMENTS_BY_PLATFORM_SQL, &["apple", "", "10"]).await;
        assert_searches(&p, "enrollments", "enrollments_platform_device");
        let p = plan(&store, LIST_ENROLLMENTS_SQL, &["apple:dev-3", "10"]).await;
        assert_searches(&p, "enrollments", "sqlite_autoindex_enrollments_1");
        let p =
            plan(&store, SET_STATE_WITH_CHILDREN_SQL, &["unenrolled", "5", "apple:dev-3", "apple:dev-3", "unenrolled"])
                .await;
        assert!(p.iter().any(|d| d.contains("USING INDEX enrollments_parent")), "{p:?}");
        assert!(p.iter().any(|d| d.contains("sqlite_autoindex_enrollments_1")), "{p:?}");
        assert!(!p.iter().any(|d| d.starts_with("SCAN")), "{p:?}");
        let p = plan(&store, COMMAND_FOR_DEVICE_SQL, &["apple:dev-3", "cmd-1"]).await;
        assert_searches(&p, "commands", "sqlite_autoindex_commands_1");
        let p = plan(&store, COMMAND_BY_IDEMPOTENCY_KEY_SQL, &["k"]).await;
        assert_searches(&p, "commands", "commands_idempotency_key");
        let p = plan(&store, COMMAND_SQL, &["cmd-1"]).await;
        assert!(p.iter().any(|d| d.contains("USING INDEX commands_command_id")), "{p:?}");
        let p = plan(&store, DUE_FOR_EXPIRY_SQL, &["1005", "10"]).await;
        assert_searches(&p, "commands", "commands_expiry");
        let p = plan(&store, DECLARATIONS_SQL, &["apple:dev-3"]).await;
        assert_searches(&p, "declarations", "sqlite_autoindex_declarations_1");
        let p = plan(&store, DECLARATION_SQL, &["apple:dev-3", "x"]).await;
        assert_searches(&p, "declarations", "sqlite_autoindex_declarations_1");
        let p = plan(&store, DECLARATION_TOKEN_SQL, &["apple:dev-3"]).await;
        assert_searches(&p, "declaration_tokens", "sqlite_autoindex_declaration_tokens_1");
        let p = plan(&store, &scep_renewal_of_sql(), &["abc"]).await;
        assert_searches(&p, "scep_certificates", "scep_certificates_renewal_of");
        let p = plan(&store, PLAINTEXT_BOOTSTRAP_TOKENS_SQL, &["10"]).await;
        assert!(p.iter().any(|d| d.contains("enrollments_bootstrap_token_plaintext")), "{p:?}");
        assert!(!p.iter().any(|d| d.starts_with("SCAN enrollments") && !d.contains("INDEX")), "{p:?}");
    }

    /// Statuses that keep a command on its device's queue. The SQL spells them out (the partial
    /// indexes must match the queries textually to be used), so this checks that spelling
    /// against [`CommandStatus::is_final`].
    const PENDING_STATUSES: [&str; 3] = ["queued", "sent", "not_now"];

    #[test]
    fn pending_statuses_are_the_non_final_ones() {
        let all = [
            CommandStatus::Queued,
            CommandStatus::Sent,
            CommandStatus::Acknowledged,
            CommandStatus::Error,
            CommandStatus::NotNow,
            CommandStatus::Expired,
        ];
        for s in all {
            assert_eq!(PENDING_STATUSES.contains(&s.as_str()), !s.is_final(), "{s:?}");
        }
        let list = PENDING_STATUSES.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
        let clause = format!("status IN ({list})");
        assert!(PENDING_SQL.contains(&clause), "pending query must use `{clause}`");
        assert!(DUE_FOR_EXPIRY_SQL.contains(&clause), "expiry query must use `{clause}`");
        let migration = MIGRATIONS[0].2;
        assert_eq!(migration.matches(&clause).count(), 2, "both partial indexes must use `{clause}`");
    }

    /// The hot statements keep one compiled program however many devices they are run for.
    /// Without QPSG, SQLite marks a statement for re-compilation on every new binding when the
    /// planner looked at a bound value (partial indexes, `LIMIT ?`), which cost ~10 % of an
    /// Idle check-in.
    #[tokio::test]
    async fn hot_statements_are_not_recompiled_per_device() {
        let (store, _dir) = fresh().await;
        let counts = store
            .read(|conn| {
                let mut out = Vec::new();
                for sql in [PENDING_SQL, ENROLLMENT_SQL, ENROLLMENT_BY_CERT_SQL, COMMAND_FOR_DEVICE_SQL] {
                    for d in 0..5 {
                        let id = format!("apple:dev-{d}");
                        let n = conn.prepare_cached(sql)?.parameter_count();
                        match n {
                            1 => drop(query_opt(conn, sql, [&id], |_| Ok(()))?),
                            2 if sql == PENDING_SQL => drop(query_all(conn, sql, params![id, 64i64], |_| Ok(()))?),
                            _ => drop(query_opt(conn, sql, params![id, format!("cmd-{d}")], |_| Ok(()))?),
                        }
                    }
                    let stmt = conn.prepare_cached(sql)?;
                    out.push((sql, stmt.get_status(rusqlite::StatementStatus::RePrepare)));
                }
                Ok(out)
            })
            .await
            .expect("read");
        for (sql, reprepared) in counts {
            assert_eq!(reprepared, 0, "re-compiled {reprepared} times: {sql}");
        }
    }

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(v, d, _)| format!("{v:04}_{d}.sql")).collect();
        assert_eq!(files, listed);
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.db");
        let path = path.to_str().expect("utf-8 path");
        let id: DeviceId = "apple:REOPEN".parse().expect("id");
        let mut e = Enrollment::new(id.clone(), 10);
        e.state = EnrollmentState::Enrolled;
        e.cert_sha256 = Some("ff".into());
        {
            let store = SqliteStore::open(path, 1).await.expect("open");
            let ev = suite::event("ev-reopen", &id, mdm_core::EventType::DEVICE_ENROLLED, None);
            store.save_enrollment(&e, &[ev]).await.expect("save");
            store.enqueue(&[suite::new_command(&id, "c1", 0)], &[]).await.expect("enqueue");
            store.set_sink_cursor("nats", 1).await.expect("cursor");
            store.close().await;
        }
        // Opening again also re-runs the migrator, which must find nothing to do.
        let store = SqliteStore::open(&format!("sqlite://{path}"), 1).await.expect("reopen");
        assert_eq!(store.enrollment(&id).await.expect("read"), Some(e));
        assert_eq!(store.enrollment_by_cert("ff").await.expect("read"), Some(id.clone()));
        assert_eq!(store.pending(&id, 10).await.expect("read").len(), 1);
        assert_eq!(store.last_event_seq().await.expect("read"), 1);
        assert_eq!(store.sink_cursor("nats").await.expect("read"), 1);
        // Sequences continue rather than restart.
        store.enqueue(&[suite::new_command(&id, "c2", 0)], &[]).await.expect("enqueue");
        let p = store.pending(&id, 10).await.expect("read");
        assert!(p[1].seq > p[0].seq, "{p:?}");
    }

    #[tokio::test]
    async fn corrupt_rows_are_reported_not_unwrapped() {
        let (store, _dir) = fresh().await;
        let id: DeviceId = "apple:BROKEN".parse().expect("id");
        store.save_enrollment(&Enrollment::new(id.clone(), 1), &[]).await.expect("save");
        exec(&store, "UPDATE enrollments SET inventory = '{\"serial_number\": 5}'").await.expect("corrupt");
        match store.enrollment(&id).await {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("apple:BROKEN") && m.contains("inventory"), "{m}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        exec(&store, "UPDATE enrollments SET inventory = '{}', device_id = 'nope'").await.expect("corrupt");
        assert!(matches!(store.list_enrollments(None, None, 10).await, Err(StoreError::Corrupt(_))));

        store.enqueue(&[suite::new_command(&id, "c1", 0)], &[]).await.expect("enqueue");
        exec(&store, "UPDATE commands SET priority = 99999999999").await.expect("corrupt");
        assert!(matches!(store.pending(&id, 10).await, Err(StoreError::Corrupt(_))));
        exec(&store, "UPDATE commands SET priority = 'high'").await.expect("corrupt");
        assert!(matches!(store.command("c1").await, Err(StoreError::Corrupt(_))));
    }

    /// Many writers at once: their transactions are committed in groups, and each one still
    /// succeeds or fails on its own. A conflicting enqueue in the middle of a group, and a
    /// panicking job, leave the others' writes (and nothing of their own) stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_transactions_succeed_or_fail_one_by_one() {
        let (store, _dir) = fresh().await;
        let device = suite::id("apple:GROUP");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            let device = device.clone();
            tasks.spawn(async move {
                let mut c = suite::new_command(&device, &format!("cmd-{i}"), 0);
                // Every tenth command reuses key "shared": only the first of those can be stored.
                c.idempotency_key = Some(if i % 10 == 0 { "shared".into() } else { format!("k-{i}") });
                let ev =
                    suite::event(&format!("ev-{i}"), &device, mdm_core::EventType::COMMAND_QUEUED, Some(&c.command_id));
                (i, store.enqueue(&[c], &[ev]).await)
            });
        }
        // A job that panics inside the group: its caller sees `Closed`, the others are unaffected.
        let panicking = store.transact(|conn| -> Result<((), bool)> {
            conn.execute("INSERT INTO counters (name, value) VALUES ('panic-marker', 1)", [])?;
            panic!("job panics after writing");
        });
        assert!(matches!(panicking.await, Err(StoreError::Closed)));

        let (mut ok, mut conflicts) = (Vec::new(), 0);
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("task") {
                (i, Ok(())) => ok.push(i),
                (i, Err(StoreError::IdempotencyConflict(k))) => {
                    assert_eq!((i % 10, k.as_str()), (0, "shared"));
                    conflicts += 1;
                }
                (i, Err(e)) => panic!("enqueue {i}: {e}"),
            }
        }
        assert_eq!((ok.len(), conflicts), (181, 19));
        let pending = store.pending(&device, 500).await.expect("pending");
        assert_eq!(pending.len(), 181, "exactly the successful enqueues are stored");
        let mut stored: Vec<usize> =
            pending.iter().map(|c| c.command_id.trim_start_matches("cmd-").parse().expect("n")).collect();
        stored.sort_unstable();
        ok.sort_unstable();
        assert_eq!(stored, ok);
        // One event per stored command, none for the refused ones or the panicking job.
        assert_eq!(store.events_after(0, 1000).await.expect("events").len(), 181);
        let marker: i64 = store
            .read(|conn| {
                Ok(conn.query_row("SELECT COUNT(*) FROM counters WHERE name = 'panic-marker'", [], |r| r.get(0))?)
            })
            .await
            .expect("read");
        assert_eq!(marker, 0, "the panicking job's write was rolled back");
    }

    #[tokio::test]
    async fn readers_refuse_writes() {
        let (store, _dir) = fresh().await;
        for _ in 0..4 {
            let r =
                store.read(|conn| Ok(conn.execute("INSERT INTO sink_cursors (sink, seq) VALUES ('x', 1)", [])?)).await;
            assert!(matches!(r, Err(StoreError::Sqlite(_))), "the read connections must be query-only: {r:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_writers_do_not_fail() {
        let (store, _dir) = fresh().await;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id: DeviceId = format!("apple:conc-{t}").parse().expect("id");
                for i in 0..25 {
                    let ev = suite::event(&format!("ev-{t}-{i}"), &id, mdm_core::EventType::DEVICE_CHECKED_IN, None);
                    store.save_enrollment(&Enrollment::new(id.clone(), i), &[ev]).await.expect("save");
                    store.enqueue(&[suite::new_command(&id, &format!("c{i}"), 0)], &[]).await.expect("enqueue");
                    store.pending(&id, 5).await.expect("pending");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(store.last_event_seq().await.expect("seq"), 200);
        assert_eq!(store.count_enrollments().await.expect("count"), 8);
    }

    #[tokio::test]
    async fn in_memory_database_works() {
        let store = SqliteStore::open("sqlite::memory:", 4).await.expect("open");
        suite::events_are_logged_in_order(&store).await;
    }

    #[tokio::test]
    async fn closed_store_answers_closed() {
        let (store, _dir) = fresh().await;
        store.close().await;
        assert!(matches!(store.ping().await, Err(StoreError::Closed)));
        assert!(matches!(
            store
                .append_events(&[suite::event(
                    "ev-x",
                    &"apple:X".parse().expect("id"),
                    mdm_core::EventType::DEVICE_CHECKED_IN,
                    None
                )])
                .await,
            Err(StoreError::Closed)
        ));
    }

    #[tokio::test]
    async fn urls_and_paths() {
        assert!(matches!(parse_target("sqlite::memory:"), Ok(Target::Memory)));
        assert!(matches!(parse_target("sqlite://file.db?mode=memory&cache=shared"), Ok(Target::Memory)));
        assert!(
            matches!(parse_target("sqlite:///var/lib/x/gateway.db"), Ok(Target::File(p)) if p == "/var/lib/x/gateway.db")
        );
        assert!(matches!(parse_target("sqlite:rel.db"), Ok(Target::File(p)) if p == "rel.db"));
        assert!(matches!(parse_target("/abs/gateway.db"), Ok(Target::File(p)) if p == "/abs/gateway.db"));
        assert!(matches!(parse_target("sqlite://x.db?mode=ro"), Err(StoreError::Url(_))));
        assert!(matches!(parse_target("sqlite://"), Err(StoreError::Url(_))));
    }

    /// A database at migration 0001 only, with sqlx's bookkeeping as sqlx writes it (success as
    /// TRUE, execution_time in nanoseconds): what the earlier, sqlx-based store left behind.
    fn database_at_0001(path: &str) -> Connection {
        let (version, description, sql) = MIGRATIONS[0];
        let conn = Connection::open(path).expect("open");
        conn.execute_batch(MIGRATIONS_TABLE_SQL).expect("table");
        conn.execute_batch(sql).expect("schema");
        conn.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (?, ?, TRUE, ?, 1234)",
            params![version, description, Sha384::digest(sql.as_bytes()).as_slice()],
        )
        .expect("bookkeeping");
        conn
    }

    /// A database migrated by the earlier, sqlx-based store: sqlx's `_sqlx_migrations` table
    /// (its DDL, its SHA-384 checksum) with 0001 applied. It must open without re-running 0001
    /// (applying only the later ones), and a changed or unknown migration must stop the store,
    /// naming it.
    #[tokio::test]
    async fn opens_databases_migrated_by_sqlx() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.db");
        let path = path.to_str().expect("utf-8 path").to_owned();
        let sql = MIGRATIONS[0].2;
        {
            let conn = database_at_0001(&path);
            conn.execute("INSERT INTO sink_cursors (sink, seq) VALUES ('old', 7)", []).expect("row");
        }
        let store = SqliteStore::open(&format!("sqlite://{path}"), 1).await.expect("open sqlx database");
        assert_eq!(store.sink_cursor("old").await.expect("read"), 7);
        store.close().await;

        let conn = Connection::open(&path).expect("open");
        // The later migrations were applied on top, recorded the same way.
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM _sqlx_migrations ORDER BY version")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .expect("versions");
        assert_eq!(versions, MIGRATIONS.iter().map(|m| m.0).collect::<Vec<_>>());
        conn.execute("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1", []).expect("tamper");
        match SqliteStore::open(&path, 1).await {
            Err(StoreError::Migrate(m)) => assert!(m.contains("0001_init"), "{m}"),
            other => panic!("expected Migrate, got {other:?}"),
        }
        conn.execute(
            "UPDATE _sqlx_migrations SET checksum = ? WHERE version = 1",
            [Sha384::digest(sql.as_bytes()).as_slice()],
        )
        .expect("fix");
        conn.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'future', TRUE, x'00', 1)", []).expect("future");
        assert!(matches!(SqliteStore::open(&path, 1).await, Err(StoreError::Migrate(m)) if m.contains("migration 99")));
        conn.execute("DELETE FROM _sqlx_migrations WHERE version = 99", []).expect("undo");
        conn.execute("UPDATE _sqlx_migrations SET success = FALSE WHERE version = 1", []).expect("dirty");
        assert!(matches!(SqliteStore::open(&path, 1).await, Err(StoreError::Migrate(m)) if m.contains("dirty")));
    }

    /// Bootstrap tokens stored in plaintext before 0003 move to their own column, where
    /// `plaintext_bootstrap_tokens` finds them and `set_bootstrap_token` removes them.
    #[tokio::test]
    async fn plaintext_bootstrap_tokens_survive_migration_until_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.db");
        let path = path.to_str().expect("utf-8 path").to_owned();
        {
            let conn = database_at_0001(&path);
            for (id, token) in
                [("apple:OLD-1", Some(&b"plain-1"[..])), ("apple:OLD-2", None), ("apple:OLD-3", Some(b"p3"))]
            {
                conn.execute(
                    "INSERT INTO enrollments (device_id, platform, state, bootstrap_token, inventory, attributes, \
                     created_at, updated_at) VALUES (?, 'apple', 'enrolled', ?, '{}', '{}', 1, 1)",
                    params![id, token],
                )
                .expect("row");
            }
        }
        let store = SqliteStore::open(&path, 1).await.expect("open");
        let old1: DeviceId = "apple:OLD-1".parse().expect("id");
        let e = store.enrollment(&old1).await.expect("read").expect("present");
        assert_eq!(e.bootstrap_token, None, "a plaintext value is never handed out as a sealed one");
        let found = store.plaintext_bootstrap_tokens(10).await.expect("read");
        assert_eq!(found, [(old1.clone(), b"plain-1".to_vec()), ("apple:OLD-3".parse().expect("id"), b"p3".to_vec())]);
        assert_eq!(store.plaintext_bootstrap_tokens(1).await.expect("read").len(), 1);
        assert!(store.set_bootstrap_token(&old1, Some(b"sealed"), 2, &[]).await.expect("seal"));
        assert_eq!(store.plaintext_bootstrap_tokens(10).await.expect("read").len(), 1);
        assert_eq!(
            store.enrollment(&old1).await.expect("read").expect("present").bootstrap_token.as_deref(),
            Some(&b"sealed"[..])
        );
        let plain: Option<Vec<u8>> = store
            .read(|conn| {
                Ok(conn.query_row(
                    "SELECT bootstrap_token_plaintext FROM enrollments WHERE device_id = 'apple:OLD-1'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .expect("read");
        assert_eq!(plain, None, "the plaintext is gone once sealed");
    }

    /// A fresh database records its migration the way sqlx would, so the earlier store (and
    /// sqlx tooling) accepts it.
    #[tokio::test]
    async fn records_migrations_as_sqlx_does() {
        let (store, dir) = fresh().await;
        store.close().await;
        let conn = Connection::open(dir.path().join("gateway.db")).expect("open");
        let (version, description, success, checksum): (i64, String, bool, Vec<u8>) = conn
            .query_row(
                "SELECT version, description, success, checksum FROM _sqlx_migrations WHERE version = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("row");
        assert_eq!((version, description.as_str(), success), (1, "init", true));
        assert_eq!(checksum, Sha384::digest(MIGRATIONS[0].2.as_bytes()).to_vec());
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn connections_have_their_pragmas() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.db");
        let store = SqliteStore::open_with(path.to_str().expect("path"), 2, Durability::Normal).await.expect("open");
        let pragmas = |conn: &mut Connection| -> Result<(i64, i64, i64, i64)> {
            let get = |p: &str| conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
            Ok((get("foreign_keys")?, get("synchronous")?, get("busy_timeout")?, get("query_only")?))
        };
        assert_eq!(store.write(pragmas).await.expect("writer"), (1, 1, 5000, 0));
        assert_eq!(store.read(pragmas).await.expect("reader"), (1, 1, 5000, 1));
        let store = SqliteStore::open(path.to_str().expect("path"), 1).await.expect("open");
        assert_eq!(store.write(pragmas).await.expect("writer").1, 2);
    }
}
