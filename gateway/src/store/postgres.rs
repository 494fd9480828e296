//! [`Store`] on PostgreSQL: the database of deployments with several gateway instances.
//!
//! A connection pool (sqlx) serves every operation; a write operation is one transaction on one
//! pooled connection (`READ COMMITTED`, with compare-and-set statements and `FOR UPDATE` where a
//! decision reads before it writes). Reads that must agree with each other
//! ([`Store::request_snapshot`], [`Store::declaration_set`]) run in one `REPEATABLE READ READ
//! ONLY` transaction.
//!
//! **The event log in commit order.** A relay reads the log with a cursor (`events_after(seq)`),
//! so a position must never become visible after a larger one was read. A sequence cannot
//! promise that: two transactions take positions 7 and 8, the second commits first, a relay reads
//! 8 and moves its cursor past 7 before 7 commits. Here positions come from the one-row table
//! `event_log_head`: every transaction that appends events does so in its **last** statement,
//! which increments the head (taking its row lock, held until commit) and inserts the events
//! with the positions it got. Appenders thus hold positions one at a time, in commit order, and
//! a reader that sees position N sees every smaller one. The price is that commits of
//! transactions that append events are serialised (statement, then commit); the lock is taken
//! as late as possible to keep that short. The head also answers `last_event_seq` without
//! counting rolled-back appends, like SQLite's AUTOINCREMENT.
//!
//! The schema is `migrations/postgres/`, applied at open with sqlx's migrator (its
//! `_sqlx_migrations` bookkeeping and its advisory lock, so instances starting together apply a
//! migration once).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mdm_core::{CommandStatus, DeviceId, Event, Inventory, Platform};
use serde::de::DeserializeOwned;
use sqlx_core::decode::Decode;
use sqlx_core::error::Error as SqlxError;
use sqlx_core::migrate::{Migration, MigrationType, Migrator};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::SqlSafeStr;
use sqlx_core::types::Type;
use sqlx_postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, Postgres};
use tokio::sync::{Notify, watch};

use super::{
    AbandonedClaim, AndroidEnterprise, AndroidOperation, AndroidPolicyCommand, AndroidSignup, BudgetTake,
    CommandRecord, CommandUpdate, CorporateIdentifier, DeadLetter, DeclarationSet, DeclarationsChange,
    DeclarationsToken, EnrollTicket, Enrollment, EnrollmentState, EnrollmentWrite, IdentifierKind, Lease, LoggedEvent,
    NewCommand, NewScepChallenge, OmaDmSession, PubSubDelivery, PubSubOutcome, PubSubView, PushCert, PushInfo,
    RequestSnapshot, Result, ScepCertificate, ScepChallenge, ScepRecord, Store, StoreError, StoredDeclaration,
    TicketStatus, WindowsCertificate, WindowsRecord,
};

/// Migrations, embedded at build time: `(version, description, sql)`, following the
/// `<version>_<description>.sql` file naming. A test checks that every file is listed.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (2, "android_enrollment_gate", include_str!("../../migrations/postgres/0002_android_enrollment_gate.sql")),
    (3, "android_client", include_str!("../../migrations/postgres/0003_android_client.sql")),
    (4, "cluster", include_str!("../../migrations/postgres/0004_cluster.sql")),
    (5, "android_policy_commands", include_str!("../../migrations/postgres/0005_android_policy_commands.sql")),
];

/// How the pool is sized and how long an operation waits for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections open at once (`store.max_connections`).
    pub max_connections: u32,
    /// How long an operation waits for a free connection, or for a new one to be established,
    /// before it fails (`store.acquire_timeout_s`).
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { max_connections: 16, acquire_timeout: Duration::from_secs(5) }
    }
}

/// The PostgreSQL store. Cheap to clone; clones share the pool and the notifier.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    notify: Arc<Notify>,
    /// Bumped when any instance saved a push certificate (see [`PostgresStore::push_cert_changes`]).
    push_certs: Arc<watch::Sender<u64>>,
}

/// Parses a `postgres://` (or `postgresql://`) URL into connection options. The application
/// name (seen in `pg_stat_activity`) is `mdm-gateway` unless the URL sets one.
fn connect_options(url: &str) -> Result<PgConnectOptions> {
    if !PostgresStore::is_url(url) {
        return Err(StoreError::Url("a PostgreSQL URL starts with postgres:// or postgresql://".into()));
    }
    // The parser's message may quote the URL, password included: keep only its kind.
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Url(format!("not a valid PostgreSQL URL ({})", error_kind(&e))))?;
    Ok(if options.get_application_name().is_none() { options.application_name("mdm-gateway") } else { options })
}

fn error_kind(e: &SqlxError) -> &'static str {
    match e {
        SqlxError::Configuration(_) => "bad option",
        _ => "unreadable",
    }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, description.into(), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

impl PostgresStore {
    /// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
    pub fn is_url(url: &str) -> bool {
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// Checks that `url` is a PostgreSQL URL this store can use, without connecting. The error
    /// never repeats the URL (it may hold a password).
    pub fn check_url(url: &str) -> Result<()> {
        connect_options(url).map(|_| ())
    }

    /// Connects to the database at `url` and brings its schema up to date.
    pub async fn open(url: &str, settings: PoolSettings) -> Result<PostgresStore> {
        PostgresStore::open_with(connect_options(url)?, settings).await
    }

    /// Like [`PostgresStore::open`], with options already parsed (tests set a search path).
    pub async fn open_with(options: PgConnectOptions, settings: PoolSettings) -> Result<PostgresStore> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        migrate_pool(&pool).await?;
        let store = PostgresStore { pool, notify: Arc::new(Notify::new()), push_certs: Arc::new(watch::channel(0).0) };
        let schema: Option<String> = query("SELECT current_schema()").fetch_one(&store.pool).await?.try_get(0)?;
        tokio::spawn(listen(store.clone(), options, schema.unwrap_or_default()));
        Ok(store)
    }

    /// Applies the migrations this build knows to the database at `url`, then disconnects.
    pub async fn migrate(url: &str) -> Result<()> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect_options(url)?)
            .await?;
        let done = migrate_pool(&pool).await;
        pool.close().await;
        done
    }

    /// Notified (`notify_waiters`) after every commit that appended events: this store's own
    /// commits at once, and those of every other instance on the same database and schema
    /// through `LISTEN` (a dedicated connection, reconnected when lost; after a reconnect the
    /// waiters are woken once, as notifications sent meanwhile are lost). Only tasks already
    /// waiting are woken (see `SqliteStore::notifier`).
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Changes (the value is a counter) when any instance on the same database and schema saved
    /// a push certificate, through `LISTEN` as for [`PostgresStore::notifier`]; also after the
    /// listening connection was re-established.
    pub fn push_cert_changes(&self) -> watch::Receiver<u64> {
        self.push_certs.subscribe()
    }

    /// Closes the pool (waiting for connections in use). Later calls fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<sqlx_postgres::PgTransaction<'static>> {
        Ok(self.pool.begin().await?)
    }

    /// Commits `tx`; wakes the waiters when it appended events.
    async fn commit(&self, tx: sqlx_postgres::PgTransaction<'static>, appended: bool) -> Result<()> {
        tx.commit().await.map_err(|e| StoreError::Commit(e.to_string()))?;
        if appended {
            self.notify.notify_waiters();
        }
        Ok(())
    }

    /// A read-only transaction on one snapshot.
    async fn snapshot(&self) -> Result<sqlx_postgres::PgTransaction<'static>> {
        Ok(self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?)
    }
}

/// The advisory lock held while migrating: one per schema (sqlx's own is one per database,
/// which would make gateways on different schemas of one database wait for each other).
const MIGRATION_LOCK_KEY_SQL: &str = "hashtextextended('mdm-gateway migrations ' || COALESCE(current_schema(), ''), 0)";

/// Applies the migrations on one connection, under the schema's advisory lock, so instances
/// starting together apply each migration once (the others wait, then find it applied).
async fn migrate_pool(pool: &PgPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    query(lock_sql("SELECT pg_advisory_lock(", ")")).execute(&mut *conn).await?;
    let mut migrator = migrator();
    migrator.set_locking(false);
    let applied = migrator.run(&mut *conn).await.map_err(|e| StoreError::Migrate(e.to_string()));
    let unlocked = query(lock_sql("SELECT pg_advisory_unlock(", ")")).execute(&mut *conn).await;
    if unlocked.is_err() {
        // A session lock ends with its session: do not return this connection to the pool.
        conn.detach();
    }
    applied
}

fn lock_sql(before: &'static str, after: &'static str) -> sqlx_core::sql_str::SqlStr {
    sqlx_core::sql_str::AssertSqlSafe(format!("{before}{MIGRATION_LOCK_KEY_SQL}{after}")).into_sql_str()
}

/// Longest pause between attempts to re-establish the listening connection.
const LISTEN_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Follows [`EVENTS_CHANNEL`] and [`PUSH_CERTS_CHANNEL`] on a connection of its own (a pool of
/// one, outside the store's pool) until the store's pool is closed, turning notifications for
/// `schema` into the store's signals. A lost connection is re-established with backoff; each
/// time, the signals fire once, since notifications sent meanwhile are gone.
async fn listen(store: PostgresStore, options: PgConnectOptions, schema: String) {
    let closed = store.pool.close_event();
    tokio::pin!(closed);
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    loop {
        let session = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options.clone())
                .await?;
            let mut listener = sqlx_postgres::PgListener::connect_with(&pool).await?;
            listener.ignore_pool_close_event(true);
            listener.listen_all([EVENTS_CHANNEL, PUSH_CERTS_CHANNEL]).await?;
            Ok::<_, SqlxError>((pool, listener))
        };
        let connected = tokio::select! {
            c = session => c,
            _ = &mut closed => return,
        };
        let (pool, mut listener) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "PostgreSQL LISTEN connection failed; other instances' events are seen at the next poll");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut closed => return,
                }
                backoff = (backoff * 2).min(LISTEN_MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        if !first {
            tracing::info!("PostgreSQL LISTEN connection re-established");
            // What was sent while the connection was down is lost: wake everyone once.
            store.notify.notify_waiters();
            store.push_certs.send_modify(|n| *n += 1);
        }
        first = false;
        loop {
            let next = tokio::select! {
                n = listener.try_recv() => n,
                _ = &mut closed => {
                    drop(listener);
                    pool.close().await;
                    return;
                }
            };
            match next {
                Ok(Some(n)) if n.payload() == schema => match n.channel() {
                    EVENTS_CHANNEL => store.notify.notify_waiters(),
                    PUSH_CERTS_CHANNEL => store.push_certs.send_modify(|n| *n += 1),
                    _ => {}
                },
                // Another schema on the same database (another deployment, a test).
                Ok(Some(_)) => {}
                // The connection was lost and re-established (sqlx re-issues LISTEN).
                Ok(None) => {
                    store.notify.notify_waiters();
                    store.push_certs.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL LISTEN connection lost");
                    break;
                }
            }
        }
        drop(listener);
        pool.close().await;
    }
}

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

macro_rules! select_scep_certificates {
    ($rest:literal) => {
        concat!(
            "SELECT cert_sha256, serial, subject, not_before, not_after, message_type, transaction_id, ",
            "challenge_sha256, ticket, renewal_of, issued_at FROM scep_certificates ",
            $rest
        )
    };
}

macro_rules! select_scep_challenges {
    ($rest:literal) => {
        concat!(
            "SELECT challenge_sha256, ticket, created_at, expires_at, used_at, issued_cert_sha256 FROM scep_challenges ",
            $rest
        )
    };
}

macro_rules! select_windows_certificates {
    ($rest:literal) => {
        concat!(
            "SELECT cert_sha256, device_id, serial, thumbprint, not_before, not_after, kind, upn, auth_policy, ",
            "renewal_of, issued_at FROM windows_certificates ",
            $rest
        )
    };
}

macro_rules! select_omadm_sessions {
    ($rest:literal) => {
        concat!(
            "SELECT device_id, session_id, client_msg_id, version, state, request_sha256, reply, updated_at ",
            "FROM omadm_sessions ",
            $rest
        )
    };
}

const ENROLLMENT_SQL: &str = select_enrollments!("WHERE device_id = $1");
// The device channel first (its user channels present the same certificate), then the most
// recently updated.
const ENROLLMENT_BY_CERT_SQL: &str = "SELECT device_id FROM enrollments \
     WHERE cert_sha256 = $1 AND state <> 'unenrolled' \
     ORDER BY CASE WHEN parent IS NULL THEN 0 ELSE 1 END, updated_at DESC LIMIT 1";
const LIST_ENROLLMENTS_SQL: &str = select_enrollments!("WHERE device_id > $1 ORDER BY device_id LIMIT $2");
const LIST_ENROLLMENTS_BY_PLATFORM_SQL: &str =
    select_enrollments!("WHERE platform = $1 AND device_id > $2 ORDER BY device_id LIMIT $3");
const SAVE_ENROLLMENT_SQL: &str = "INSERT INTO enrollments (device_id, platform, parent, state, cert_sha256, \
     push_token, push_magic, push_topic, unlock_token, bootstrap_token, inventory, attributes, enrolled_at, \
     last_seen, checked_in_event_at, created_at, updated_at, enrolled_user) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
     ON CONFLICT (device_id) DO UPDATE SET \
     platform = excluded.platform, parent = excluded.parent, state = excluded.state, \
     cert_sha256 = excluded.cert_sha256, push_token = excluded.push_token, \
     push_magic = excluded.push_magic, push_topic = excluded.push_topic, \
     unlock_token = excluded.unlock_token, \
     inventory = excluded.inventory, attributes = excluded.attributes, \
     enrolled_at = excluded.enrolled_at, last_seen = excluded.last_seen, \
     checked_in_event_at = excluded.checked_in_event_at, created_at = excluded.created_at, \
     updated_at = excluded.updated_at, enrolled_user = excluded.enrolled_user";
// Android Pub/Sub intake (`apply_pubsub`, `pubsub_view`).
const INSERT_PUBSUB_MESSAGE_SQL: &str = "INSERT INTO pubsub_messages (message_id, received_at, outcome) \
     VALUES ($1, $2, 'applied') ON CONFLICT (message_id) DO NOTHING";
/// Moves the device's watermark to the message's publish time unless it is older: no row
/// changed means stale. Equal times apply.
const ADVANCE_WATERMARK_SQL: &str = "INSERT INTO android_watermarks (device_id, publish_time_ms, message_id) \
     VALUES ($1, $2, $3) ON CONFLICT (device_id) DO UPDATE SET publish_time_ms = excluded.publish_time_ms, \
     message_id = excluded.message_id WHERE excluded.publish_time_ms >= android_watermarks.publish_time_ms";
const MARK_PUBSUB_STALE_SQL: &str = "UPDATE pubsub_messages SET outcome = 'stale' WHERE message_id = $1";
/// A routine status report: only the columns it changes.
const REPORT_ENROLLMENT_SQL: &str =
    "UPDATE enrollments SET attributes = $1, last_seen = $2, updated_at = $3 WHERE device_id = $4";
/// Seen?, the watermark, and the enrollment (columns from 2, NULL when none): one row always.
const PUBSUB_VIEW_SQL: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM pubsub_messages WHERE message_id = $1), ",
    "(SELECT publish_time_ms FROM android_watermarks WHERE device_id = $2), ",
    "e.device_id, e.parent, e.state, e.cert_sha256, e.push_token, e.push_magic, e.push_topic, ",
    "e.unlock_token, e.bootstrap_token, e.inventory, e.attributes, e.enrolled_at, e.last_seen, ",
    "e.checked_in_event_at, e.created_at, e.updated_at, ",
    "EXISTS (SELECT 1 FROM android_policy_commands p JOIN commands c ON c.device_id = p.device_id ",
    "AND c.command_id = p.command_id WHERE p.device_id = $2 AND c.status = 'sent') ",
    "FROM (SELECT 1) AS one LEFT JOIN enrollments e ON e.device_id = $2"
);
const SET_STATE_WITH_CHILDREN_SQL: &str = "UPDATE enrollments SET state = $1, updated_at = $2 \
     WHERE (device_id = $3 OR parent = $3) AND state <> $1";
// The WHERE must stay identical to the `commands_pending` index's for the planner to use it.
const PENDING_SQL: &str = select_commands!(
    "WHERE device_id = $1 AND status IN ('queued', 'sent', 'not_now') ORDER BY priority DESC, seq LIMIT $2"
);
const DUE_FOR_EXPIRY_SQL: &str = select_commands!(
    "WHERE expires_at <= $1 AND expires_at IS NOT NULL AND status IN ('queued', 'sent', 'not_now') \
     ORDER BY expires_at, seq LIMIT $2"
);
// The WHERE must stay identical to the `commands_android_queued` index's.
const QUEUED_ANDROID_SQL: &str = select_commands!(
    "WHERE status = 'queued' AND device_id >= 'android:' AND device_id < 'android;' \
     ORDER BY priority DESC, seq LIMIT $1"
);
const COMMAND_SQL: &str = select_commands!("WHERE command_id = $1 ORDER BY seq");
const COMMAND_FOR_DEVICE_SQL: &str = select_commands!("WHERE device_id = $1 AND command_id = $2");
const COMMAND_BY_IDEMPOTENCY_KEY_SQL: &str = select_commands!("WHERE idempotency_key = $1");
const INSERT_COMMAND_SQL: &str = "INSERT INTO commands (device_id, command_id, request_type, normalised, payload, \
     priority, status, expires_at, idempotency_key, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $9)";
/// The compare-and-set of `update_command`: only while the status is one of `$8`.
const UPDATE_COMMAND_SQL: &str = "UPDATE commands SET status = $1, result = $2, error = $3, updated_at = $4, \
     sent_count = sent_count + $5 WHERE device_id = $6 AND command_id = $7 AND status = ANY($8)";
/// Appends events in commit order (see the module documentation): the head's row lock is taken
/// here and held until commit, so this must be a transaction's last statement.
///
/// The same statement queues a `NOTIFY` on [`EVENTS_CHANNEL`] with the schema as payload,
/// delivered at commit to every instance listening (see [`PostgresStore::notifier`]).
const APPEND_EVENTS_SQL: &str = "WITH head AS ( \
       UPDATE event_log_head SET last_seq = last_seq + cardinality($1::text[]) RETURNING last_seq \
     ), appended AS ( \
       INSERT INTO events (seq, id, device_id, type, body) \
       SELECT head.last_seq - cardinality($1::text[]) + e.ord, e.id, e.device_id, e.type, e.body \
       FROM head, UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
         AS e(id, device_id, type, body, ord) \
     ) \
     SELECT pg_notify('mdm_gateway_events', COALESCE(current_schema(), ''))";
/// `NOTIFY` channel of "events were appended"; the payload is the schema they were appended in.
const EVENTS_CHANNEL: &str = "mdm_gateway_events";
/// `NOTIFY` channel of "a push certificate was saved"; the payload is the schema.
const PUSH_CERTS_CHANNEL: &str = "mdm_gateway_push_certs";
/// Takes or renews a lease in one statement (see `Store::acquire_lease`): the upsert updates
/// only a free, expired or own lease (the conflicting row is locked, then the condition is
/// checked on its newest version), and returns a row only when it did.
const ACQUIRE_LEASE_SQL: &str = "INSERT INTO leases (name, holder, acquired_at_ms, expires_at_ms) \
     VALUES ($1, $2, $3, $3 + $4) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms, \
     acquired_at_ms = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at_ms \
                           ELSE excluded.acquired_at_ms END \
     WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= $3 \
     RETURNING holder";
/// The fenced cursor write, one statement: the lease row is read `FOR SHARE`, so a takeover
/// (which updates that row) waits for this write to commit, and a write after a takeover finds
/// another holder and writes nothing.
const SET_SINK_CURSOR_LEASED_SQL: &str = "WITH held AS ( \
       SELECT 1 FROM leases WHERE name = $3 AND holder = $4 FOR SHARE \
     ) \
     INSERT INTO sink_cursors (sink, seq) SELECT $1, $2 FROM held \
     ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq";
/// The dispatcher's claim: `SKIP LOCKED`, so concurrent claimers take different commands
/// without waiting for each other; a row claimed meanwhile is re-checked (`claimed_by IS NULL`)
/// on its newest version and left out. The inner WHERE keeps the `commands_android_queued`
/// index's predicate.
/// A policy change (`policies.patch`) waits while an older one of the same device is still
/// queued: each patches the policy the one before it wrote, on whichever instance.
const CLAIM_ANDROID_SQL: &str = "UPDATE commands SET claimed_by = $1, claimed_at = $2 \
     WHERE seq IN (SELECT c.seq FROM commands c \
       WHERE c.status = 'queued' AND c.device_id >= 'android:' AND c.device_id < 'android;' \
         AND c.claimed_by IS NULL \
         AND NOT (c.request_type = 'policies.patch' AND EXISTS (SELECT 1 FROM commands e \
           WHERE e.device_id = c.device_id AND e.status = 'queued' AND e.request_type = 'policies.patch' \
             AND e.seq < c.seq)) \
       ORDER BY c.priority DESC, c.seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
     RETURNING device_id, command_id, seq, request_type, normalised, payload, priority, status, \
       expires_at, idempotency_key, result, error, created_at, updated_at, sent_count";
const ABANDONED_ANDROID_SQL: &str = "SELECT c.device_id, c.command_id, c.seq, c.request_type, c.normalised, \
     c.payload, c.priority, c.status, c.expires_at, c.idempotency_key, c.result, c.error, c.created_at, \
     c.updated_at, c.sent_count, c.claimed_by, c.claimed_at FROM commands c \
     WHERE c.status = 'queued' AND c.device_id >= 'android:' AND c.device_id < 'android;' \
       AND c.claimed_by IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = 'instance:' || c.claimed_by AND l.expires_at_ms > $1) \
     ORDER BY c.claimed_at, c.seq LIMIT $2";
const INSERT_WINDOWS_CERTIFICATE_SQL: &str = "INSERT INTO windows_certificates (cert_sha256, device_id, serial, \
     thumbprint, not_before, not_after, kind, upn, auth_policy, renewal_of, issued_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const CONSUME_SCEP_CHALLENGE_SQL: &str = "UPDATE scep_challenges SET used_at = $1, issued_cert_sha256 = $2 \
     WHERE challenge_sha256 = $3 AND used_at IS NULL AND expires_at > $1";
const INSERT_SCEP_CERTIFICATE_SQL: &str = "INSERT INTO scep_certificates (cert_sha256, serial, subject, not_before, \
     not_after, message_type, transaction_id, challenge_sha256, ticket, renewal_of, issued_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const DECLARATIONS_SQL: &str = "SELECT device_id, identifier, type, server_token, body, created_at, updated_at \
     FROM declarations WHERE device_id = $1 ORDER BY identifier";
const DECLARATION_SQL: &str = "SELECT device_id, identifier, type, server_token, body, created_at, updated_at \
     FROM declarations WHERE device_id = $1 AND identifier = $2";
const DECLARATION_FOR_UPDATE_SQL: &str = "SELECT device_id, identifier, type, server_token, body, created_at, \
     updated_at FROM declarations WHERE device_id = $1 AND identifier = $2 FOR UPDATE";
const DECLARATION_TOKEN_SQL: &str = "SELECT token, updated_at FROM declaration_tokens WHERE device_id = $1";
const PUT_DECLARATION_SQL: &str = "INSERT INTO declarations \
     (device_id, identifier, type, server_token, body, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (device_id, identifier) DO UPDATE SET type = excluded.type, \
     server_token = excluded.server_token, body = excluded.body, updated_at = excluded.updated_at";
const SET_DECLARATION_TOKEN_SQL: &str = "INSERT INTO declaration_tokens (device_id, token, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (device_id) DO UPDATE SET token = excluded.token, \
     updated_at = excluded.updated_at";

/// Events ready to insert, as the four arrays [`APPEND_EVENTS_SQL`] takes.
#[derive(Debug, Default)]
struct EventRows {
    ids: Vec<String>,
    devices: Vec<String>,
    types: Vec<String>,
    bodies: Vec<String>,
}

impl EventRows {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

fn event_rows(events: &[Event]) -> Result<EventRows> {
    let mut rows = EventRows::default();
    for e in events {
        // An Event fails to serialise only through its time (no RFC 3339 form); refuse it here
        // rather than store something unreadable.
        let body = serde_json::to_string(e)
            .map_err(|err| StoreError::Corrupt(format!("event `{}` cannot be serialised: {err}", e.id)))?;
        rows.ids.push(e.id.clone());
        rows.devices.push(e.device_id.as_str().to_owned());
        rows.types.push(e.event_type.as_str().to_owned());
        rows.bodies.push(body);
    }
    Ok(rows)
}

/// Appends `rows` inside the caller's transaction, as its last statement. Returns whether any
/// row was appended.
async fn append_events(conn: &mut PgConnection, rows: &EventRows) -> Result<bool> {
    if rows.is_empty() {
        return Ok(false);
    }
    query(APPEND_EVENTS_SQL)
        .bind(rows.ids.as_slice())
        .bind(rows.devices.as_slice())
        .bind(rows.types.as_slice())
        .bind(rows.bodies.as_slice())
        .execute(conn)
        .await?;
    Ok(true)
}

/// Reads column `idx` (named `column` for messages), reporting a value of the wrong type as
/// corruption.
fn get<'r, T>(row: &'r PgRow, idx: usize, column: &str) -> Result<T>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(idx).map_err(|e| match e {
        SqlxError::ColumnDecode { .. } | SqlxError::Decode(_) | SqlxError::ColumnNotFound(_) => {
            StoreError::Corrupt(format!("column `{column}`: {e}"))
        }
        other => StoreError::from(other),
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

fn enrollment_from_row(row: &PgRow) -> Result<Enrollment> {
    enrollment_from_row_at(row, 0)
}

/// An enrollment from the columns of `select_enrollments!`, starting at column `at`.
fn enrollment_from_row_at(row: &PgRow, at: usize) -> Result<Enrollment> {
    let id_text: String = get(row, at, "device_id")?;
    let device_id = parse_device_id(&id_text, "enrollments.device_id")?;
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

fn command_from_row(row: &PgRow) -> Result<CommandRecord> {
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
        let json_col = |idx: usize, column: &str| -> Result<Option<serde_json::Value>> {
            get::<Option<String>>(row, idx, column)?.map(|s| parse_json(&s, column)).transpose()
        };
        Ok(CommandRecord {
            command_id: command_id.clone(),
            device_id,
            request_type: get(row, 3, "request_type")?,
            normalised: json_col(4, "normalised")?,
            payload: get(row, 5, "payload")?,
            priority: get(row, 6, "priority")?,
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

fn declaration_from_row(row: &PgRow) -> Result<StoredDeclaration> {
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

fn push_cert_from_row(row: &PgRow) -> Result<PushCert> {
    Ok(PushCert {
        topic: get(row, 0, "topic")?,
        cert_pem: get(row, 1, "cert_pem")?,
        key_pem: get(row, 2, "key_pem")?,
        not_after: get(row, 3, "not_after")?,
        updated_at: get(row, 4, "updated_at")?,
    })
}

fn omadm_session_from_row(row: &PgRow) -> Result<OmaDmSession> {
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

fn enroll_ticket_from_row(row: &PgRow) -> Result<EnrollTicket> {
    Ok(EnrollTicket {
        id: get(row, 0, "id")?,
        created_at: get(row, 1, "created_at")?,
        expires_at: get(row, 2, "expires_at")?,
        profile_downloaded_at: get(row, 3, "profile_downloaded_at")?,
        downloads: get(row, 4, "downloads")?,
        variant: get(row, 5, "variant")?,
    })
}

fn windows_certificate_from_row(row: &PgRow) -> Result<WindowsCertificate> {
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

fn scep_challenge_from_row(row: &PgRow) -> Result<ScepChallenge> {
    Ok(ScepChallenge {
        challenge_sha256: get(row, 0, "challenge_sha256")?,
        ticket: get(row, 1, "ticket")?,
        created_at: get(row, 2, "created_at")?,
        expires_at: get(row, 3, "expires_at")?,
        used_at: get(row, 4, "used_at")?,
        issued_cert_sha256: get(row, 5, "issued_cert_sha256")?,
    })
}

fn scep_certificate_from_row(row: &PgRow) -> Result<ScepCertificate> {
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

/// Maps the unique violations of an insert into `commands` to the precise errors.
fn enqueue_error(e: SqlxError, command: &NewCommand) -> StoreError {
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        match db.constraint() {
            Some("commands_idempotency_key") => {
                if let Some(key) = &command.idempotency_key {
                    return StoreError::IdempotencyConflict(key.clone());
                }
            }
            Some("commands_pkey") => return StoreError::DuplicateCommand(command.command_id.clone()),
            _ => {}
        }
    }
    StoreError::from(e)
}

/// Queues commands inside the caller's transaction. A reused idempotency key or a command id
/// already queued for the device fails the call; the caller's transaction then rolls back.
async fn insert_commands(conn: &mut PgConnection, commands: &[NewCommand]) -> Result<()> {
    for c in commands {
        // The key is checked first, as SQLite does, so a command that both reuses a key and a
        // command id is reported as the key's conflict. A concurrent transaction holding the
        // same key makes the insert wait, then fail on the unique index: mapped the same way.
        if let Some(key) = &c.idempotency_key {
            let used =
                query("SELECT 1 FROM commands WHERE idempotency_key = $1").bind(key).fetch_optional(&mut *conn).await?;
            if used.is_some() {
                return Err(StoreError::IdempotencyConflict(key.clone()));
            }
        }
        query(INSERT_COMMAND_SQL)
            .bind(c.device_id.as_str())
            .bind(&c.command_id)
            .bind(&c.request_type)
            .bind(opt_json(&c.normalised))
            .bind(&c.payload)
            .bind(c.priority)
            .bind(c.expires_at)
            .bind(&c.idempotency_key)
            .bind(c.created_at)
            .execute(&mut *conn)
            .await
            .map_err(|e| enqueue_error(e, c))?;
    }
    Ok(())
}

/// Inserts or replaces an enrollment (inside the caller's transaction).
async fn write_enrollment(conn: &mut PgConnection, e: &Enrollment) -> Result<()> {
    let inventory = serde_json::to_string(&e.inventory)
        .map_err(|err| StoreError::Corrupt(format!("inventory cannot be serialised: {err}")))?;
    let attributes = serde_json::Value::Object(e.attributes.clone()).to_string();
    let (push_token, push_magic, push_topic) = match &e.push {
        Some(p) => (Some(p.token.as_slice()), Some(p.magic.as_str()), Some(p.topic.as_str())),
        None => (None, None, None),
    };
    query(SAVE_ENROLLMENT_SQL)
        .bind(e.device_id.as_str())
        .bind(e.platform().as_str())
        .bind(e.parent.as_ref().map(DeviceId::as_str))
        .bind(e.state.as_str())
        .bind(&e.cert_sha256)
        .bind(push_token)
        .bind(push_magic)
        .bind(push_topic)
        .bind(&e.unlock_token)
        .bind(&e.bootstrap_token)
        .bind(inventory)
        .bind(attributes)
        .bind(e.enrolled_at)
        .bind(e.last_seen)
        .bind(e.checked_in_event_at)
        .bind(e.created_at)
        .bind(e.updated_at)
        // count_user_devices matches on it, case-insensitively.
        .bind(e.inventory.enrolled_user.as_deref().map(str::to_lowercase))
        .execute(conn)
        .await?;
    Ok(())
}

/// Runs one compare-and-set command update (see [`UPDATE_COMMAND_SQL`]) inside the caller's
/// transaction; the number of rows changed (0 or 1). An empty `from` never applies.
async fn exec_update(conn: &mut PgConnection, update: &CommandUpdate<'_>) -> Result<u64> {
    if update.from.is_empty() {
        return Ok(0);
    }
    let from: Vec<&str> = update.from.iter().map(|s| s.as_str()).collect();
    Ok(query(UPDATE_COMMAND_SQL)
        .bind(update.to.as_str())
        .bind(opt_json(&update.result))
        .bind(opt_json(&update.error))
        .bind(update.now)
        .bind(i64::from(update.to == CommandStatus::Sent))
        .bind(update.device_id.as_str())
        .bind(update.command_id)
        .bind(from.as_slice())
        .execute(conn)
        .await?
        .rows_affected())
}

fn android_operation_from_row(row: &PgRow) -> Result<AndroidOperation> {
    Ok(AndroidOperation {
        operation: get(row, 0, "operation")?,
        device_id: parse_device_id(&get::<String>(row, 1, "device_id")?, "android_operations.device_id")?,
        command_id: get(row, 2, "command_id")?,
        created_at: get(row, 3, "created_at")?,
    })
}

fn android_policy_command_from_row(row: &PgRow) -> Result<AndroidPolicyCommand> {
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

fn dead_letter_from_row(row: &PgRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        message_id: get(row, 0, "message_id")?,
        received_at: get(row, 1, "received_at")?,
        reason: get(row, 2, "reason")?,
        detail: get(row, 3, "detail")?,
        body: get(row, 4, "body")?,
    })
}

fn corporate_identifier_from_row(row: &PgRow) -> Result<CorporateIdentifier> {
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

fn android_signup_from_row(row: &PgRow) -> Result<AndroidSignup> {
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

fn android_enterprise_from_row(row: &PgRow) -> Result<AndroidEnterprise> {
    Ok(AndroidEnterprise {
        name: get(row, 0, "name")?,
        project_id: get(row, 1, "project_id")?,
        signup_name: get(row, 2, "signup_name")?,
        pubsub_topic: get(row, 3, "pubsub_topic")?,
        created_at: get(row, 4, "created_at")?,
    })
}

macro_rules! select_corporate_identifiers {
    ($rest:literal) => {
        concat!(
            "SELECT kind, identifier, details, created_at, enrolled_device, enrolled_at FROM corporate_identifiers ",
            $rest
        )
    };
}

/// The part of a declaration change common to put and delete, inside the caller's transaction:
/// the new token, the commands, the events (last). Returns whether events were appended.
async fn apply_declarations_change(
    conn: &mut PgConnection,
    device: &str,
    change: &DeclarationsChange<'_>,
    events: &EventRows,
) -> Result<bool> {
    query(SET_DECLARATION_TOKEN_SQL).bind(device).bind(change.token).bind(change.now).execute(&mut *conn).await?;
    insert_commands(&mut *conn, change.commands).await?;
    append_events(conn, events).await
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<()> {
        query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn enrollment(&self, id: &DeviceId) -> Result<Option<Enrollment>> {
        let row = query(ENROLLMENT_SQL).bind(id.as_str()).fetch_optional(&self.pool).await?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    async fn enrollment_by_cert(&self, cert_sha256: &str) -> Result<Option<DeviceId>> {
        let row = query(ENROLLMENT_BY_CERT_SQL).bind(cert_sha256).fetch_optional(&self.pool).await?;
        row.map(|r| parse_device_id(&get::<String>(&r, 0, "device_id")?, "enrollments.device_id")).transpose()
    }

    async fn save_enrollment(&self, enrollment: &Enrollment, events: &[Event]) -> Result<()> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        write_enrollment(&mut tx, enrollment).await?;
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await
    }

    async fn set_state_with_children(
        &self,
        parent: &DeviceId,
        state: EnrollmentState,
        now: i64,
        events: &[Event],
    ) -> Result<u64> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        // Rows already in `state` are left alone, so the count is of real changes.
        let changed = query(SET_STATE_WITH_CHILDREN_SQL)
            .bind(state.as_str())
            .bind(now)
            .bind(parent.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(changed)
    }

    async fn touch(&self, id: &DeviceId, now: i64) -> Result<()> {
        query("UPDATE enrollments SET last_seen = $1, updated_at = $1 WHERE device_id = $2")
            .bind(now)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_enrollments(
        &self,
        platform: Option<Platform>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Enrollment>> {
        // Every id sorts after "" (ids are never empty).
        let after = after.unwrap_or("");
        let rows = match platform {
            Some(p) => {
                query(LIST_ENROLLMENTS_BY_PLATFORM_SQL)
                    .bind(p.as_str())
                    .bind(after)
                    .bind(self::limit(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => query(LIST_ENROLLMENTS_SQL).bind(after).bind(self::limit(limit)).fetch_all(&self.pool).await?,
        };
        rows.iter().map(enrollment_from_row).collect()
    }

    async fn count_enrollments(&self) -> Result<u64> {
        let row = query("SELECT COUNT(*) FROM enrollments").fetch_one(&self.pool).await?;
        let n: i64 = get(&row, 0, "count")?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative enrollment count {n}")))
    }

    async fn enqueue(&self, commands: &[NewCommand], events: &[Event]) -> Result<()> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        insert_commands(&mut tx, commands).await?;
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await
    }

    async fn command(&self, command_id: &str) -> Result<Vec<CommandRecord>> {
        let rows = query(COMMAND_SQL).bind(command_id).fetch_all(&self.pool).await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn command_for_device(&self, device: &DeviceId, command_id: &str) -> Result<Option<CommandRecord>> {
        let row =
            query(COMMAND_FOR_DEVICE_SQL).bind(device.as_str()).bind(command_id).fetch_optional(&self.pool).await?;
        row.as_ref().map(command_from_row).transpose()
    }

    async fn command_by_idempotency_key(&self, key: &str) -> Result<Option<CommandRecord>> {
        let row = query(COMMAND_BY_IDEMPOTENCY_KEY_SQL).bind(key).fetch_optional(&self.pool).await?;
        row.as_ref().map(command_from_row).transpose()
    }

    async fn pending(&self, device: &DeviceId, limit: u32) -> Result<Vec<CommandRecord>> {
        let rows = query(PENDING_SQL).bind(device.as_str()).bind(self::limit(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn request_snapshot(&self, channel: &DeviceId, id: &DeviceId, limit: u32) -> Result<RequestSnapshot> {
        let mut tx = self.snapshot().await?;
        let row = query(ENROLLMENT_SQL).bind(channel.as_str()).fetch_optional(&mut *tx).await?;
        let channel_enrollment = row.as_ref().map(enrollment_from_row).transpose()?;
        let user = if id == channel {
            None
        } else {
            let row = query(ENROLLMENT_SQL).bind(id.as_str()).fetch_optional(&mut *tx).await?;
            row.as_ref().map(enrollment_from_row).transpose()?
        };
        let rows = query(PENDING_SQL).bind(id.as_str()).bind(self::limit(limit)).fetch_all(&mut *tx).await?;
        let pending = rows.iter().map(command_from_row).collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(RequestSnapshot { channel: channel_enrollment, user, pending })
    }

    async fn update_command(&self, update: CommandUpdate<'_>, events: &[Event]) -> Result<bool> {
        if update.from.is_empty() {
            return Ok(false);
        }
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        // Compare-and-set in one statement: it applies only if the current status is one of
        // `from` (a concurrent change is waited for, then re-checked), and events are appended
        // only then.
        if exec_update(&mut tx, &update).await? == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn due_for_expiry(&self, now: i64, limit: u32) -> Result<Vec<CommandRecord>> {
        let rows = query(DUE_FOR_EXPIRY_SQL).bind(now).bind(self::limit(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn append_events(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<LoggedEvent>> {
        let rows = query("SELECT seq, device_id, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LoggedEvent {
                    seq: get(row, 0, "seq")?,
                    device_id: get(row, 1, "device_id")?,
                    json: get(row, 2, "body")?,
                })
            })
            .collect()
    }

    async fn last_event_seq(&self) -> Result<i64> {
        let row = query("SELECT last_seq FROM event_log_head").fetch_optional(&self.pool).await?;
        match row {
            Some(row) => get(&row, 0, "last_seq"),
            None => Err(StoreError::Corrupt("table `event_log_head` has no row".into())),
        }
    }

    async fn sink_cursor(&self, sink: &str) -> Result<i64> {
        let row = query("SELECT seq FROM sink_cursors WHERE sink = $1").bind(sink).fetch_optional(&self.pool).await?;
        row.map(|r| get(&r, 0, "seq")).transpose().map(|s| s.unwrap_or(0))
    }

    async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<()> {
        query(
            "INSERT INTO sink_cursors (sink, seq) VALUES ($1, $2) ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq",
        )
        .bind(sink)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn prune_events(&self, older_than_id: &str, below_seq: i64, limit: u32) -> Result<u64> {
        let deleted = query(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq < $1 AND id < $2 \
             ORDER BY seq LIMIT $3)",
        )
        .bind(below_seq)
        .bind(older_than_id)
        .bind(self::limit(limit))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }

    async fn save_push_cert(&self, cert: &PushCert) -> Result<()> {
        // Every instance's push pools follow (PUSH_CERTS_CHANNEL, delivered at commit).
        query(
            "WITH saved AS ( \
               INSERT INTO push_certs (topic, cert_pem, key_pem, not_after, updated_at) VALUES ($1, $2, $3, $4, $5) \
               ON CONFLICT (topic) DO UPDATE SET cert_pem = excluded.cert_pem, key_pem = excluded.key_pem, \
               not_after = excluded.not_after, updated_at = excluded.updated_at \
             ) SELECT pg_notify('mdm_gateway_push_certs', COALESCE(current_schema(), ''))",
        )
        .bind(&cert.topic)
        .bind(&cert.cert_pem)
        .bind(&cert.key_pem)
        .bind(cert.not_after)
        .bind(cert.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn push_certs(&self) -> Result<Vec<PushCert>> {
        let rows = query("SELECT topic, cert_pem, key_pem, not_after, updated_at FROM push_certs ORDER BY topic")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(push_cert_from_row).collect()
    }

    // --- SCEP ---

    async fn create_scep_challenge(&self, c: &NewScepChallenge) -> Result<()> {
        query("INSERT INTO scep_challenges (challenge_sha256, ticket, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(&c.challenge_sha256)
            .bind(&c.ticket)
            .bind(c.created_at)
            .bind(c.expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn scep_challenge(&self, challenge_sha256: &str) -> Result<Option<ScepChallenge>> {
        let row = query(select_scep_challenges!("WHERE challenge_sha256 = $1"))
            .bind(challenge_sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(scep_challenge_from_row).transpose()
    }

    async fn record_scep_certificate(
        &self,
        c: &ScepCertificate,
        consume: Option<&str>,
        now: i64,
    ) -> Result<ScepRecord> {
        let mut tx = self.begin().await?;
        if let Some(h) = consume {
            let changed = query(CONSUME_SCEP_CHALLENGE_SQL)
                .bind(now)
                .bind(&c.cert_sha256)
                .bind(h)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if changed == 0 {
                tx.rollback().await?;
                return Ok(ScepRecord::ChallengeUnavailable);
            }
        }
        query(INSERT_SCEP_CERTIFICATE_SQL)
            .bind(&c.cert_sha256)
            .bind(&c.serial)
            .bind(&c.subject)
            .bind(c.not_before)
            .bind(c.not_after)
            .bind(&c.message_type)
            .bind(&c.transaction_id)
            .bind(&c.challenge_sha256)
            .bind(&c.ticket)
            .bind(&c.renewal_of)
            .bind(c.issued_at)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, false).await?;
        Ok(ScepRecord::Recorded)
    }

    async fn scep_certificate(&self, cert_sha256: &str) -> Result<Option<ScepCertificate>> {
        let row = query(select_scep_certificates!("WHERE cert_sha256 = $1"))
            .bind(cert_sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(scep_certificate_from_row).transpose()
    }

    async fn scep_renewal_of(&self, cert_sha256: &str) -> Result<Option<ScepCertificate>> {
        let row =
            query(select_scep_certificates!("WHERE renewal_of = $1 ORDER BY issued_at DESC, cert_sha256 DESC LIMIT 1"))
                .bind(cert_sha256)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(scep_certificate_from_row).transpose()
    }

    async fn scep_ticket_status(&self, ticket: &str) -> Result<Option<TicketStatus>> {
        // The most recently used challenge first; unused ones (used_at NULL) after.
        let row = query(
            "SELECT used_at, issued_cert_sha256 FROM scep_challenges WHERE ticket = $1 \
             ORDER BY used_at IS NULL, used_at DESC LIMIT 1",
        )
        .bind(ticket)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let used_at: Option<i64> = get(&row, 0, "used_at")?;
            Ok(TicketStatus {
                challenge_used: used_at.is_some(),
                issued_cert_sha256: get(&row, 1, "issued_cert_sha256")?,
            })
        })
        .transpose()
    }

    async fn scep_certificates(&self, limit: u32) -> Result<Vec<ScepCertificate>> {
        let rows = query(select_scep_certificates!("ORDER BY issued_at, cert_sha256 LIMIT $1"))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(scep_certificate_from_row).collect()
    }

    async fn scep_challenges(&self, limit: u32) -> Result<Vec<ScepChallenge>> {
        let rows = query(select_scep_challenges!("ORDER BY created_at, challenge_sha256 LIMIT $1"))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(scep_challenge_from_row).collect()
    }

    // --- Declarations and tokens ---

    async fn declaration_set(&self, device: &DeviceId) -> Result<DeclarationSet> {
        let mut tx = self.snapshot().await?;
        let row = query(DECLARATION_TOKEN_SQL).bind(device.as_str()).fetch_optional(&mut *tx).await?;
        let token = row
            .map(|row| -> Result<DeclarationsToken> {
                Ok(DeclarationsToken { token: get(&row, 0, "token")?, updated_at: get(&row, 1, "updated_at")? })
            })
            .transpose()?;
        let rows = query(DECLARATIONS_SQL).bind(device.as_str()).fetch_all(&mut *tx).await?;
        let declarations = rows.iter().map(declaration_from_row).collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok(DeclarationSet { token, declarations })
    }

    async fn declaration(&self, device: &DeviceId, identifier: &str) -> Result<Option<StoredDeclaration>> {
        let row = query(DECLARATION_SQL).bind(device.as_str()).bind(identifier).fetch_optional(&self.pool).await?;
        row.as_ref().map(declaration_from_row).transpose()
    }

    async fn put_declaration(&self, d: &StoredDeclaration, change: DeclarationsChange<'_>) -> Result<bool> {
        let events = event_rows(change.events)?;
        let device = d.device_id.as_str();
        let mut tx = self.begin().await?;
        // Locked, so two puts of one declaration decide "changed or not" one after the other.
        let old = query(DECLARATION_FOR_UPDATE_SQL).bind(device).bind(&d.identifier).fetch_optional(&mut *tx).await?;
        let same = old.as_ref().map(declaration_from_row).transpose()?.is_some_and(|old| {
            old.declaration_type == d.declaration_type && old.server_token == d.server_token && old.body == d.body
        });
        if same {
            tx.rollback().await?;
            return Ok(false);
        }
        query(PUT_DECLARATION_SQL)
            .bind(device)
            .bind(&d.identifier)
            .bind(&d.declaration_type)
            .bind(&d.server_token)
            .bind(&d.body)
            .bind(d.created_at)
            .bind(d.updated_at)
            .execute(&mut *tx)
            .await?;
        let appended = apply_declarations_change(&mut tx, device, &change, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn delete_declaration(
        &self,
        device: &DeviceId,
        identifier: &str,
        change: DeclarationsChange<'_>,
    ) -> Result<bool> {
        let events = event_rows(change.events)?;
        let mut tx = self.begin().await?;
        let deleted = query("DELETE FROM declarations WHERE device_id = $1 AND identifier = $2")
            .bind(device.as_str())
            .bind(identifier)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let appended = apply_declarations_change(&mut tx, device.as_str(), &change, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn set_bootstrap_token(
        &self,
        device: &DeviceId,
        sealed: Option<&[u8]>,
        now: i64,
        events: &[Event],
    ) -> Result<bool> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        let changed = query("UPDATE enrollments SET bootstrap_token = $1, updated_at = $2 WHERE device_id = $3")
            .bind(sealed)
            .bind(now)
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn plaintext_bootstrap_tokens(&self, _limit: u32) -> Result<Vec<(DeviceId, Vec<u8>)>> {
        // Plaintext bootstrap tokens predate PostgreSQL support: the schema has no place for them.
        Ok(Vec::new())
    }

    // --- Enrollment tickets ---

    async fn create_enroll_ticket(&self, t: &EnrollTicket, purge_expired_before: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        query("DELETE FROM enroll_tickets WHERE expires_at < $1").bind(purge_expired_before).execute(&mut *tx).await?;
        query(
            "INSERT INTO enroll_tickets (id, created_at, expires_at, profile_downloaded_at, downloads, variant) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.id)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.profile_downloaded_at)
        .bind(t.downloads)
        .bind(&t.variant)
        .execute(&mut *tx)
        .await?;
        self.commit(tx, false).await
    }

    async fn enroll_ticket(&self, id: &str) -> Result<Option<EnrollTicket>> {
        let row = query(
            "SELECT id, created_at, expires_at, profile_downloaded_at, downloads, variant \
             FROM enroll_tickets WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(enroll_ticket_from_row).transpose()
    }

    async fn record_profile_download(&self, id: &str, variant: &str, now: i64) -> Result<bool> {
        let changed = query(
            "UPDATE enroll_tickets SET profile_downloaded_at = COALESCE(profile_downloaded_at, $1), \
             downloads = downloads + 1, variant = $2 WHERE id = $3 AND expires_at > $1",
        )
        .bind(now)
        .bind(variant)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    // --- OMA-DM ---

    async fn omadm_session(&self, device: &DeviceId) -> Result<Option<OmaDmSession>> {
        let row = query(select_omadm_sessions!("WHERE device_id = $1"))
            .bind(device.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(omadm_session_from_row).transpose()
    }

    async fn save_omadm_session(
        &self,
        s: &OmaDmSession,
        expected_version: Option<i64>,
        events: &[Event],
    ) -> Result<bool> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        let changed = match expected_version {
            None => query(
                "INSERT INTO omadm_sessions (device_id, session_id, client_msg_id, version, state, \
                 request_sha256, reply, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (device_id) DO NOTHING",
            ),
            // A concurrent save of the same row is waited for, then the version re-checked.
            Some(_) => query(
                "UPDATE omadm_sessions SET session_id = $2, client_msg_id = $3, version = $4, state = $5, \
                 request_sha256 = $6, reply = $7, updated_at = $8 WHERE device_id = $1 AND version = $9",
            ),
        }
        .bind(s.device_id.as_str())
        .bind(&s.session_id)
        .bind(s.client_msg_id)
        .bind(s.version)
        .bind(&s.state)
        .bind(&s.request_sha256)
        .bind(&s.reply)
        .bind(s.updated_at);
        let changed = match expected_version {
            None => changed,
            Some(v) => changed.bind(v),
        }
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn omadm_sessions(&self, limit: u32) -> Result<Vec<OmaDmSession>> {
        let rows = query(select_omadm_sessions!("ORDER BY device_id LIMIT $1"))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(omadm_session_from_row).collect()
    }

    // --- Windows enrollment ---

    async fn record_windows_enrollment(
        &self,
        c: &WindowsCertificate,
        enrollment: &Enrollment,
        expect_bound: Option<&str>,
        events: &[Event],
    ) -> Result<WindowsRecord> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        if let Some(expected) = expect_bound {
            // Locked until commit: the binding cannot change between this check and the write.
            let current = query("SELECT cert_sha256, state FROM enrollments WHERE device_id = $1 FOR UPDATE")
                .bind(enrollment.device_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let bound = match &current {
                Some(row) => {
                    let cert: Option<String> = get(row, 0, "cert_sha256")?;
                    let state: String = get(row, 1, "state")?;
                    cert.as_deref() == Some(expected) && state != EnrollmentState::Unenrolled.as_str()
                }
                None => false,
            };
            if !bound {
                tx.rollback().await?;
                return Ok(WindowsRecord::BindingChanged);
            }
        }
        query(INSERT_WINDOWS_CERTIFICATE_SQL)
            .bind(&c.cert_sha256)
            .bind(c.device_id.as_str())
            .bind(&c.serial)
            .bind(&c.thumbprint)
            .bind(c.not_before)
            .bind(c.not_after)
            .bind(&c.kind)
            .bind(&c.upn)
            .bind(&c.auth_policy)
            .bind(&c.renewal_of)
            .bind(c.issued_at)
            .execute(&mut *tx)
            .await?;
        write_enrollment(&mut tx, enrollment).await?;
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(WindowsRecord::Recorded)
    }

    async fn windows_certificate(&self, cert_sha256: &str) -> Result<Option<WindowsCertificate>> {
        let row = query(select_windows_certificates!("WHERE cert_sha256 = $1"))
            .bind(cert_sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(windows_certificate_from_row).transpose()
    }

    async fn windows_certificates(&self, limit: u32) -> Result<Vec<WindowsCertificate>> {
        let rows = query(select_windows_certificates!("ORDER BY issued_at, cert_sha256 LIMIT $1"))
            .bind(self::limit(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(windows_certificate_from_row).collect()
    }

    async fn windows_devices_of_user(&self, upn: &str) -> Result<Vec<DeviceId>> {
        let rows = query(
            "SELECT e.device_id FROM windows_certificates c \
             JOIN enrollments e ON e.cert_sha256 = c.cert_sha256 AND e.device_id = c.device_id \
             WHERE c.upn = $1 AND e.state <> 'unenrolled' ORDER BY e.device_id",
        )
        .bind(upn)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| parse_device_id(&get::<String>(row, 0, "device_id")?, "enrollments.device_id")).collect()
    }

    // --- Android (Pub/Sub and AMAPI operations) ---

    async fn apply_pubsub(&self, d: PubSubDelivery<'_>) -> Result<PubSubOutcome> {
        let events = event_rows(d.events)?;
        let mut tx = self.begin().await?;
        // The dedupe gate: a concurrent delivery of the same id waits here for the first one,
        // then finds its row.
        let new = query(INSERT_PUBSUB_MESSAGE_SQL)
            .bind(d.message_id)
            .bind(d.received_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if new == 0 {
            tx.rollback().await?;
            return Ok(PubSubOutcome::Duplicate);
        }
        if let Some((device, t)) = d.ordering {
            // The upsert locks the device's watermark row (or its key, when new) until commit, so
            // one device's messages apply one at a time across instances.
            let advanced = query(ADVANCE_WATERMARK_SQL)
                .bind(device.as_str())
                .bind(t)
                .bind(d.message_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if advanced == 0 {
                query(MARK_PUBSUB_STALE_SQL).bind(d.message_id).execute(&mut *tx).await?;
                self.commit(tx, false).await?;
                return Ok(PubSubOutcome::Stale);
            }
        }
        match d.enrollment {
            Some(EnrollmentWrite::Full(e)) => write_enrollment(&mut tx, e).await?,
            Some(EnrollmentWrite::Report(e)) => {
                let n = query(REPORT_ENROLLMENT_SQL)
                    .bind(serde_json::Value::Object(e.attributes.clone()).to_string())
                    .bind(e.last_seen)
                    .bind(e.updated_at)
                    .bind(e.device_id.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    tx.rollback().await?;
                    return Err(StoreError::Conflict(format!("enrollment `{}` is gone", e.device_id)));
                }
            }
            None => {}
        }
        // A command resolved meanwhile (reconcile, expiry) gets no second result event.
        let mut resolved = true;
        for u in d.command_updates {
            resolved &= exec_update(&mut tx, u).await? > 0;
        }
        let appended = resolved && append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(PubSubOutcome::Applied)
    }

    async fn record_dead_letter(&self, dead: &DeadLetter, events: &[Event]) -> Result<bool> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        if let Some(id) = &dead.message_id {
            let new = query(
                "INSERT INTO pubsub_messages (message_id, received_at, outcome) VALUES ($1, $2, 'dead_letter') \
                 ON CONFLICT (message_id) DO NOTHING",
            )
            .bind(id)
            .bind(dead.received_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if new == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        query(
            "INSERT INTO pubsub_dead_letters (message_id, received_at, reason, detail, body) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&dead.message_id)
        .bind(dead.received_at)
        .bind(&dead.reason)
        .bind(&dead.detail)
        .bind(&dead.body)
        .execute(&mut *tx)
        .await?;
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>> {
        let rows = query(
            "SELECT message_id, received_at, reason, detail, body FROM pubsub_dead_letters ORDER BY id DESC LIMIT $1",
        )
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    async fn prune_pubsub_messages(&self, before: i64, limit: u32) -> Result<u64> {
        Ok(query(
            "DELETE FROM pubsub_messages WHERE message_id IN (SELECT message_id FROM pubsub_messages \
             WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
        )
        .bind(before)
        .bind(self::limit(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn record_android_operation(
        &self,
        operation: &AndroidOperation,
        update: Option<CommandUpdate<'_>>,
        events: &[Event],
    ) -> Result<()> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        query("INSERT INTO android_operations (operation, device_id, command_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&operation.operation)
            .bind(operation.device_id.as_str())
            .bind(&operation.command_id)
            .bind(operation.created_at)
            .execute(&mut *tx)
            .await?;
        if let Some(u) = &update {
            exec_update(&mut tx, u).await?;
        }
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await
    }

    async fn android_operation(&self, operation: &str) -> Result<Option<AndroidOperation>> {
        let row =
            query("SELECT operation, device_id, command_id, created_at FROM android_operations WHERE operation = $1")
                .bind(operation)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(android_operation_from_row).transpose()
    }

    async fn unresolved_android_operations(&self, created_before: i64, limit: u32) -> Result<Vec<AndroidOperation>> {
        let rows = query(
            "SELECT o.operation, o.device_id, o.command_id, o.created_at FROM android_operations o \
             JOIN commands c ON c.device_id = o.device_id AND c.command_id = o.command_id \
             WHERE o.created_at <= $1 AND c.status = 'sent' ORDER BY o.created_at LIMIT $2",
        )
        .bind(created_before)
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(android_operation_from_row).collect()
    }

    // --- Enrollment gate ---

    async fn count_user_devices(&self, user: &str, excluding: Option<&DeviceId>) -> Result<u64> {
        let row = query(
            "SELECT COUNT(*) FROM enrollments WHERE enrolled_user = $1 AND parent IS NULL \
             AND state <> 'unenrolled' AND device_id <> $2",
        )
        .bind(user.to_lowercase())
        .bind(excluding.map(DeviceId::as_str).unwrap_or_default())
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = get(&row, 0, "count")?;
        Ok(n.max(0) as u64)
    }

    async fn replace_corporate_identifiers(
        &self,
        kind: IdentifierKind,
        rows: &[(String, String)],
        now: i64,
    ) -> Result<u64> {
        let (ids, details): (Vec<&str>, Vec<&str>) = rows.iter().map(|(i, d)| (i.as_str(), d.as_str())).unzip();
        let mut tx = self.begin().await?;
        query("DELETE FROM corporate_identifiers WHERE kind = $1 AND NOT (identifier = ANY($2))")
            .bind(kind.as_str())
            .bind(ids.as_slice())
            .execute(&mut *tx)
            .await?;
        // An identifier listed twice keeps its first details (as SQLite's INSERT OR IGNORE).
        query(
            "INSERT INTO corporate_identifiers (kind, identifier, details, created_at) \
             SELECT DISTINCT ON (t.identifier) $1, t.identifier, t.details, $4 \
             FROM UNNEST($2::text[], $3::text[]) WITH ORDINALITY AS t(identifier, details, n) \
             ORDER BY t.identifier, t.n \
             ON CONFLICT (kind, identifier) DO UPDATE SET details = excluded.details",
        )
        .bind(kind.as_str())
        .bind(ids.as_slice())
        .bind(details.as_slice())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row = query("SELECT COUNT(*) FROM corporate_identifiers WHERE kind = $1")
            .bind(kind.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let n: i64 = get(&row, 0, "count")?;
        self.commit(tx, false).await?;
        Ok(n.max(0) as u64)
    }

    async fn corporate_identifier(
        &self,
        kind: IdentifierKind,
        identifier: &str,
    ) -> Result<Option<CorporateIdentifier>> {
        let row = query(select_corporate_identifiers!("WHERE kind = $1 AND identifier = $2"))
            .bind(kind.as_str())
            .bind(identifier)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(corporate_identifier_from_row).transpose()
    }

    async fn corporate_identifiers(
        &self,
        kind: IdentifierKind,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<CorporateIdentifier>> {
        let rows =
            query(select_corporate_identifiers!("WHERE kind = $1 AND identifier > $2 ORDER BY identifier LIMIT $3"))
                .bind(kind.as_str())
                .bind(after.unwrap_or_default())
                .bind(self::limit(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(corporate_identifier_from_row).collect()
    }

    async fn mark_corporate_identifier_enrolled(
        &self,
        kind: IdentifierKind,
        identifier: &str,
        device: &DeviceId,
        now: i64,
    ) -> Result<bool> {
        let n = query(
            "UPDATE corporate_identifiers SET enrolled_device = $1, enrolled_at = $2 WHERE kind = $3 AND identifier = $4",
        )
        .bind(device.as_str())
        .bind(now)
        .bind(kind.as_str())
        .bind(identifier)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    // --- Android AMAPI client ---

    async fn queued_android_commands(&self, limit: u32) -> Result<Vec<CommandRecord>> {
        // A read, not a claim: the dispatcher then moves each command queued → sent with a
        // compare-and-set (`update_command`), which one instance alone wins.
        let rows = query(QUEUED_ANDROID_SQL).bind(self::limit(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn save_android_signup(&self, s: &AndroidSignup) -> Result<()> {
        query(
            "INSERT INTO android_signups (name, state_sha256, url, callback_url, project_id, created_at, \
             completed_at, enterprise) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&s.name)
        .bind(&s.state_sha256)
        .bind(&s.url)
        .bind(&s.callback_url)
        .bind(&s.project_id)
        .bind(s.created_at)
        .bind(s.completed_at)
        .bind(&s.enterprise)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn android_signup_by_state(&self, state_sha256: &str) -> Result<Option<AndroidSignup>> {
        let row = query(
            "SELECT name, state_sha256, url, callback_url, project_id, created_at, completed_at, enterprise \
             FROM android_signups WHERE state_sha256 = $1",
        )
        .bind(state_sha256)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(android_signup_from_row).transpose()
    }

    async fn complete_android_signup(
        &self,
        signup_name: &str,
        e: &AndroidEnterprise,
        events: &[Event],
    ) -> Result<bool> {
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        let changed = query(
            "UPDATE android_signups SET completed_at = $1, enterprise = $2 WHERE name = $3 AND completed_at IS NULL",
        )
        .bind(e.created_at)
        .bind(&e.name)
        .bind(signup_name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        query(
            "INSERT INTO android_enterprises (name, project_id, signup_name, pubsub_topic, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET signup_name = excluded.signup_name, \
             pubsub_topic = excluded.pubsub_topic, created_at = excluded.created_at",
        )
        .bind(&e.name)
        .bind(&e.project_id)
        .bind(&e.signup_name)
        .bind(&e.pubsub_topic)
        .bind(e.created_at)
        .execute(&mut *tx)
        .await?;
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn android_enterprises(&self) -> Result<Vec<AndroidEnterprise>> {
        let rows = query(
            "SELECT name, project_id, signup_name, pubsub_topic, created_at FROM android_enterprises \
             ORDER BY created_at DESC, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(android_enterprise_from_row).collect()
    }

    // --- android ingest (s4) ---

    async fn pubsub_view(&self, message_id: &str, device: Option<&DeviceId>) -> Result<PubSubView> {
        let row =
            query(PUBSUB_VIEW_SQL).bind(message_id).bind(device.map(DeviceId::as_str)).fetch_one(&self.pool).await?;
        let enrollment = match get::<Option<String>>(&row, 2, "device_id")? {
            Some(_) => Some(enrollment_from_row_at(&row, 2)?),
            None => None,
        };
        Ok(PubSubView {
            seen: get(&row, 0, "seen")?,
            watermark_ms: get(&row, 1, "publish_time_ms")?,
            enrollment,
            policy_commands_pending: get(&row, 18, "policy_commands_pending")?,
        })
    }

    // --- vocabulary (s4) ---

    async fn record_android_policy_command(
        &self,
        command: &AndroidPolicyCommand,
        update: CommandUpdate<'_>,
        events: &[Event],
    ) -> Result<bool> {
        if update.from.is_empty() {
            return Ok(false);
        }
        let events = event_rows(events)?;
        let mut tx = self.begin().await?;
        if exec_update(&mut tx, &update).await? == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        query(
            "INSERT INTO android_policy_commands \
             (device_id, command_id, policy, policy_version, settings, package, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (device_id, command_id) DO UPDATE SET policy = excluded.policy, \
             policy_version = excluded.policy_version, settings = excluded.settings, \
             package = excluded.package, created_at = excluded.created_at",
        )
        .bind(command.device_id.as_str())
        .bind(&command.command_id)
        .bind(&command.policy)
        .bind(command.policy_version)
        .bind(serde_json::to_string(&command.settings).unwrap_or_else(|_| "[]".into()))
        .bind(&command.package)
        .bind(command.created_at)
        .execute(&mut *tx)
        .await?;
        let appended = append_events(&mut tx, &events).await?;
        self.commit(tx, appended).await?;
        Ok(true)
    }

    async fn pending_android_policy_commands(&self, device: &DeviceId) -> Result<Vec<AndroidPolicyCommand>> {
        let rows = query("SELECT p.device_id, p.command_id, p.policy, p.policy_version, p.settings, p.package, p.created_at FROM android_policy_commands p \
             JOIN commands c ON c.device_id = p.device_id AND c.command_id = p.command_id \
             WHERE p.device_id = $1 AND c.status = 'sent' ORDER BY p.created_at, p.command_id")
        .bind(device.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(android_policy_command_from_row).collect()
    }

    async fn unresolved_android_policy_commands(
        &self,
        created_before: i64,
        limit: u32,
    ) -> Result<Vec<AndroidPolicyCommand>> {
        let rows = query("SELECT p.device_id, p.command_id, p.policy, p.policy_version, p.settings, p.package, p.created_at FROM android_policy_commands p \
             JOIN commands c ON c.device_id = p.device_id AND c.command_id = p.command_id \
             WHERE p.created_at <= $1 AND c.status = 'sent' ORDER BY p.created_at LIMIT $2")
        .bind(created_before)
        .bind(self::limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(android_policy_command_from_row).collect()
    }

    // --- cluster (s4) ---

    async fn acquire_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        let row = query(ACQUIRE_LEASE_SQL)
            .bind(name)
            .bind(holder)
            .bind(now_ms)
            .bind(ttl_ms)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => get::<String>(&r, 0, "holder")? == holder,
            None => false,
        })
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool> {
        let done = query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn leases(&self) -> Result<Vec<Lease>> {
        let rows = query("SELECT name, holder, acquired_at_ms, expires_at_ms FROM leases ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Lease {
                    name: get(r, 0, "name")?,
                    holder: get(r, 1, "holder")?,
                    acquired_at_ms: get(r, 2, "acquired_at_ms")?,
                    expires_at_ms: get(r, 3, "expires_at_ms")?,
                })
            })
            .collect()
    }

    async fn set_sink_cursor_leased(&self, sink: &str, seq: i64, lease: &str, holder: &str) -> Result<bool> {
        let done =
            query(SET_SINK_CURSOR_LEASED_SQL).bind(sink).bind(seq).bind(lease).bind(holder).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_android_commands(&self, holder: &str, now: i64, limit: u32) -> Result<Vec<CommandRecord>> {
        let rows =
            query(CLAIM_ANDROID_SQL).bind(holder).bind(now).bind(self::limit(limit)).fetch_all(&self.pool).await?;
        let mut claimed = rows.iter().map(command_from_row).collect::<Result<Vec<_>>>()?;
        // RETURNING has no order.
        claimed.sort_by_key(|c| (std::cmp::Reverse(c.priority), c.seq));
        Ok(claimed)
    }

    async fn abandoned_android_claims(&self, now_ms: i64, limit: u32) -> Result<Vec<AbandonedClaim>> {
        let rows = query(ABANDONED_ANDROID_SQL).bind(now_ms).bind(self::limit(limit)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AbandonedClaim {
                    command: command_from_row(r)?,
                    holder: get(r, 15, "claimed_by")?,
                    claimed_at: get::<Option<i64>>(r, 16, "claimed_at")?.unwrap_or(0),
                })
            })
            .collect()
    }

    async fn release_android_claim(&self, device: &DeviceId, command_id: &str, holder: &str) -> Result<bool> {
        let done = query(
            "UPDATE commands SET claimed_by = NULL, claimed_at = NULL \
             WHERE device_id = $1 AND command_id = $2 AND claimed_by = $3 AND status = 'queued'",
        )
        .bind(device.as_str())
        .bind(command_id)
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn take_budget(&self, bucket: &str, now_ms: i64, window_ms: i64, limit: u32) -> Result<BudgetTake> {
        let mut tx = self.begin().await?;
        // The bucket's row lock orders every taker of this bucket, on every instance.
        query("INSERT INTO request_budgets (bucket, grants) VALUES ($1, '{}') ON CONFLICT (bucket) DO NOTHING")
            .bind(bucket)
            .execute(&mut *tx)
            .await?;
        let row = query("SELECT grants FROM request_budgets WHERE bucket = $1 FOR UPDATE")
            .bind(bucket)
            .fetch_one(&mut *tx)
            .await?;
        let mut grants: Vec<i64> = get(&row, 0, "grants")?;
        let take = super::budget_step(&mut grants, now_ms, window_ms, limit);
        query("UPDATE request_budgets SET grants = $2 WHERE bucket = $1")
            .bind(bucket)
            .bind(&grants)
            .execute(&mut *tx)
            .await?;
        self.commit(tx, false).await?;
        Ok(take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::{self, PostgresSchema};
    use mdm_core::EventType;

    fn small_pool() -> PoolSettings {
        PoolSettings { max_connections: 4, acquire_timeout: Duration::from_secs(10) }
    }

    /// A store on a schema of its own; `None` when PostgreSQL tests are skipped.
    async fn fresh() -> Option<(PostgresStore, PostgresSchema)> {
        let schema = PostgresSchema::create().await?;
        let store = PostgresStore::open(&schema.url, small_pool()).await.expect("open store");
        Some((store, schema))
    }

    async fn harness() -> Option<suite::Harness> {
        let (store, schema) = fresh().await?;
        // Another pool on the same schema: what a second gateway instance would open.
        let second = PostgresStore::open(&schema.url, small_pool()).await.expect("open second store");
        Some(suite::Harness {
            notifier: store.notifier(),
            store: Box::new(store),
            second: Box::new(second),
            guard: Box::new(schema),
        })
    }

    /// Whether `notify` fires within `wait` after `act`, having registered before `act` runs.
    async fn fires_within(notify: &Notify, wait: Duration, act: impl std::future::Future<Output = ()>) -> bool {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        act.await;
        tokio::time::timeout(wait, notified).await.is_ok()
    }

    async fn fires_after(notify: &Notify, act: impl std::future::Future<Output = ()>) -> bool {
        fires_within(notify, Duration::from_secs(10), act).await
    }

    /// An append on one instance wakes the waiters of another (LISTEN/NOTIFY), and a push
    /// certificate saved on one is signalled on the other; another schema on the same database
    /// (another deployment) wakes nobody.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_instances_are_woken() {
        let Some((a, schema)) = fresh().await else { return };
        let b = PostgresStore::open(&schema.url, small_pool()).await.expect("second store");
        let Some((elsewhere, _other_schema)) = fresh().await else { return };
        // The listeners are connected shortly after open; a notification before that is lost
        // (their first connection is what the idle poll covers), so wait until one gets through.
        let d = suite::id("apple:WAKE");
        let mut n = 0;
        let listening = loop {
            n += 1;
            let ev = suite::event(&format!("probe-{n}"), &d, EventType::DEVICE_CHECKED_IN, None);
            if fires_after(&b.notify, async { a.append_events(&[ev]).await.expect("append") }).await || n > 5 {
                break n <= 5;
            }
        };
        assert!(listening, "b's listener never heard a's appends");
        let ev = suite::event("wake-1", &d, EventType::DEVICE_CHECKED_IN, None);
        assert!(fires_after(&b.notify, async { a.append_events(&[ev]).await.expect("append") }).await);
        let ev = suite::event("wake-2", &d, EventType::COMMAND_QUEUED, Some("c1"));
        assert!(
            fires_after(&a.notify, async {
                b.enqueue(&[suite::new_command(&d, "c1", 0)], &[ev]).await.expect("enqueue");
            })
            .await,
            "and the other way round, from any appending operation"
        );
        // Push certificates.
        let mut changes = b.push_cert_changes();
        changes.borrow_and_update();
        let cert = PushCert {
            topic: "com.apple.mgmt.External.wake".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            not_after: 2_000_000_000,
            updated_at: 1,
        };
        a.save_push_cert(&cert).await.expect("save");
        tokio::time::timeout(Duration::from_secs(10), changes.changed()).await.expect("signalled").expect("open");
        // Another schema: not signalled.
        let ev = suite::event("elsewhere", &d, EventType::DEVICE_CHECKED_IN, None);
        let quiet = Duration::from_secs(1);
        assert!(
            !fires_within(&b.notify, quiet, async { elsewhere.append_events(&[ev]).await.expect("append") }).await,
            "an append in another schema does not wake this one"
        );
        elsewhere.save_push_cert(&cert).await.expect("save elsewhere");
        assert!(tokio::time::timeout(quiet, changes.changed()).await.is_err(), "nor a push certificate saved there");
        a.close().await;
        b.close().await;
    }

    crate::store_suite!(harness);

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS.iter().map(|(v, d, _)| format!("{v:04}_{d}.sql")).collect();
        assert_eq!(files, embedded);
        for (v, d, sql) in MIGRATIONS {
            let on_disk = std::fs::read_to_string(format!("{dir}/{v:04}_{d}.sql")).expect("read");
            assert_eq!(&on_disk, sql);
        }
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(PostgresStore::check_url("postgres://u:p@localhost:5432/db").is_ok());
        assert!(PostgresStore::check_url("postgresql://localhost/db?sslmode=require").is_ok());
        for bad in ["sqlite://x.db", "mysql://u:secret@h/db", "postgres://u:secret@h/db?sslmode=sometimes"] {
            let e = PostgresStore::check_url(bad).expect_err(bad).to_string();
            assert!(!e.contains("secret"), "{e}");
        }
    }

    /// A relay reads the log with a cursor. An append that took its position and then committed
    /// late must not be overtaken: when the reader sees a position, every smaller one is
    /// already there. The slow transaction appends, then waits before committing while others
    /// append and commit and a reader polls; every event must be read exactly once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn events_are_read_in_commit_order() {
        let Some((store, _schema)) = fresh().await else { return };
        let d = suite::id("apple:ORDER");

        // A transaction appends its event, then holds its commit back.
        let slow_rows = event_rows(&[suite::event("slow", &d, EventType::DEVICE_CHECKED_IN, None)]).expect("rows");
        let mut slow = store.begin().await.expect("begin");
        append_events(&mut slow, &slow_rows).await.expect("append in the slow transaction");

        // Others append meanwhile (they wait for the slow one, or a reader would skip it).
        let fast = {
            let store = store.clone();
            let d = d.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    let ev = suite::event(&format!("fast-{i}"), &d, EventType::DEVICE_CHECKED_IN, None);
                    store.append_events(&[ev]).await.expect("fast append");
                }
            })
        };
        let reader = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut cursor = 0;
                let mut seen = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while seen.len() < 6 && tokio::time::Instant::now() < deadline {
                    for e in store.events_after(cursor, 100).await.expect("read") {
                        assert!(e.seq > cursor);
                        cursor = e.seq;
                        let ev: Event = serde_json::from_str(&e.json).expect("json");
                        seen.push((e.seq, ev.id));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.commit().await.expect("slow commit");
        fast.await.expect("fast task");
        let seen = reader.await.expect("reader");
        let ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids.len(), 6, "every event read once: {seen:?}");
        assert_eq!(ids[0], "slow", "the event that took the first position is read first: {seen:?}");
        let seqs: Vec<i64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=6).collect::<Vec<_>>());
    }

    /// Many writers append through every kind of operation while a reader follows the log with
    /// a cursor: it reads each event exactly once, positions have no gaps, and the count matches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appenders_and_a_cursor_reader() {
        let Some((store, _schema)) = fresh().await else { return };
        const WRITERS: usize = 8;
        const EACH: usize = 25;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                let d = suite::id(&format!("apple:W{w}"));
                store.save_enrollment(&Enrollment::new(d.clone(), 1), &[]).await.expect("save");
                for i in 0..EACH {
                    let ev = suite::event(&format!("w{w}-{i}"), &d, EventType::COMMAND_QUEUED, None);
                    match i % 3 {
                        0 => store.append_events(&[ev]).await.expect("append"),
                        1 => {
                            store.enqueue(&[suite::new_command(&d, &format!("c{i}"), 0)], &[ev]).await.expect("enqueue")
                        }
                        _ => store.save_enrollment(&Enrollment::new(d.clone(), i as i64), &[ev]).await.expect("save"),
                    }
                }
            }));
        }
        let total = WRITERS * EACH;
        let reader = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut cursor = 0;
                let mut seen = std::collections::HashSet::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while seen.len() < total && tokio::time::Instant::now() < deadline {
                    for e in store.events_after(cursor, 7).await.expect("read") {
                        assert_eq!(e.seq, cursor + 1, "positions are read without gaps");
                        cursor = e.seq;
                        let ev: Event = serde_json::from_str(&e.json).expect("json");
                        assert!(seen.insert(ev.id.clone()), "{} read twice", ev.id);
                    }
                }
                seen.len()
            })
        };
        for w in writers {
            w.await.expect("writer");
        }
        assert_eq!(reader.await.expect("reader"), total);
        assert_eq!(store.last_event_seq().await.expect("seq"), total as i64);
    }

    /// Two enqueues racing with one idempotency key: one wins, the other gets the conflict (the
    /// loser waits on the unique index, not on the explicit check).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_idempotency_keys_conflict() {
        let Some((store, _schema)) = fresh().await else { return };
        for round in 0..10 {
            let key = format!("K{round}");
            let mut tasks = Vec::new();
            for t in 0..4 {
                let store = store.clone();
                let key = key.clone();
                tasks.push(tokio::spawn(async move {
                    let d = suite::id(&format!("apple:RACE{t}"));
                    let mut c = suite::new_command(&d, &format!("r{round}-{t}"), 0);
                    c.idempotency_key = Some(key);
                    store.enqueue(&[c], &[]).await
                }));
            }
            let mut ok = 0;
            for t in tasks {
                match t.await.expect("task") {
                    Ok(()) => ok += 1,
                    Err(StoreError::IdempotencyConflict(k)) => assert_eq!(k, key),
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            assert_eq!(ok, 1, "round {round}");
        }
    }

    /// Instances starting together migrate once; a migrated database opens unchanged; the
    /// standalone `migrate` does the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn migrations_apply_once() {
        let Some(schema) = PostgresSchema::create().await else { return };
        let (a, b, c) = tokio::join!(
            PostgresStore::open(&schema.url, small_pool()),
            PostgresStore::open(&schema.url, small_pool()),
            PostgresStore::migrate(&schema.url),
        );
        let (a, b) = (a.expect("first"), b.expect("second"));
        c.expect("migrate");
        PostgresStore::migrate(&schema.url).await.expect("migrate again");
        let rows = query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&a.pool)
            .await
            .expect("bookkeeping");
        let applied: Vec<(i64, bool)> =
            rows.iter().map(|r| (get(r, 0, "version").expect("v"), get(r, 1, "success").expect("s"))).collect();
        assert_eq!(applied, MIGRATIONS.iter().map(|m| (m.0, true)).collect::<Vec<_>>());
        // Both stores see one database.
        let d = suite::id("apple:SHARED");
        a.save_enrollment(&Enrollment::new(d.clone(), 1), &[]).await.expect("save");
        assert!(b.enrollment(&d).await.expect("read").is_some());
        a.close().await;
        assert!(matches!(a.ping().await, Err(StoreError::Closed)));
        b.close().await;
    }

    /// The server ends the store's connections (a restart, a failover): the pool replaces them
    /// and the next operations succeed.
    #[tokio::test]
    async fn lost_connections_are_replaced() {
        let Some((store, schema)) = fresh().await else { return };
        let d = suite::id("apple:LOST");
        store.save_enrollment(&Enrollment::new(d.clone(), 1), &[]).await.expect("save");
        let mut conn =
            <PgConnection as sqlx_core::connection::Connection>::connect(&suite::postgres_test_url().expect("url"))
                .await
                .expect("admin connection");
        let killed = query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&schema.name)
            .fetch_all(&mut conn)
            .await
            .expect("terminate");
        assert!(!killed.is_empty(), "the store had connections to end");
        for _ in 0..3 {
            assert!(store.enrollment(&d).await.expect("read after reconnect").is_some());
        }
        store.ping().await.expect("ping");
    }

    /// With `sslmode=require` the pool talks TLS (rustls, ring). Run when the server offers TLS
    /// (Debian's clusters do, with their snake-oil certificate).
    #[tokio::test]
    async fn connects_over_tls_when_asked() {
        let Some(schema) = PostgresSchema::create().await else { return };
        let plain = PostgresStore::open(&schema.url, small_pool()).await.expect("open");
        let ssl_on: String =
            get(&query("SHOW ssl").fetch_one(&plain.pool).await.expect("show ssl"), 0, "ssl").expect("ssl");
        plain.close().await;
        if ssl_on != "on" {
            eprintln!("skipped: the test server does not offer TLS (ssl = {ssl_on})");
            return;
        }
        let url = if schema.url.contains("sslmode=") {
            schema.url.replace("sslmode=disable", "sslmode=require").replace("sslmode=prefer", "sslmode=require")
        } else {
            format!("{}&sslmode=require", schema.url)
        };
        let store = PostgresStore::open(&url, small_pool()).await.expect("open over TLS");
        let row = query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&store.pool)
            .await
            .expect("pg_stat_ssl");
        assert!(get::<bool>(&row, 0, "ssl").expect("ssl"), "the connection is encrypted");
        store.ping().await.expect("ping");
        store.close().await;
    }

    /// Pub/Sub deliveries racing on other instances: one message id is applied once, and for one
    /// device only ever newer messages are applied (so the newest wins, whatever the order).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_pubsub_deliveries() {
        use crate::store::{PubSubDelivery, PubSubOutcome};
        let Some((store, _schema)) = fresh().await else { return };
        let d = suite::id("android:LC1:RACE");
        // The same message four times at once.
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let store = store.clone();
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let ev = [suite::event("ev-same", &d, EventType::DEVICE_CHECKED_IN, None)];
                let delivery = PubSubDelivery {
                    message_id: "same",
                    received_at: 1,
                    ordering: Some((&d, 1)),
                    enrollment: None,
                    command_updates: &[],
                    events: &ev,
                };
                store.apply_pubsub(delivery).await.expect("apply")
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("task"));
        }
        assert_eq!(outcomes.iter().filter(|o| **o == PubSubOutcome::Applied).count(), 1, "{outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == PubSubOutcome::Duplicate).count(), 3, "{outcomes:?}");

        // Messages with publish times 2..=17 at once, in a scrambled order.
        let mut tasks = Vec::new();
        for k in 0..16i64 {
            let t = 2 + (k * 7) % 16;
            let store = store.clone();
            let d = d.clone();
            tasks.push(tokio::spawn(async move {
                let mut e = Enrollment::new(d.clone(), 1);
                e.last_seen = Some(t);
                let ev = [suite::event(&format!("ev-{t}"), &d, EventType::DEVICE_CHECKED_IN, None)];
                let id = format!("m-{t}");
                let delivery = PubSubDelivery {
                    message_id: &id,
                    received_at: 1,
                    ordering: Some((&d, t)),
                    enrollment: Some(crate::store::EnrollmentWrite::Full(&e)),
                    command_updates: &[],
                    events: &ev,
                };
                (t, store.apply_pubsub(delivery).await.expect("apply"))
            }));
        }
        let mut applied = Vec::new();
        for task in tasks {
            let (t, outcome) = task.await.expect("task");
            assert_ne!(outcome, PubSubOutcome::Duplicate);
            if outcome == PubSubOutcome::Applied {
                applied.push(t);
            }
        }
        assert!(applied.contains(&17), "the newest message is always applied: {applied:?}");
        let stored = store.enrollment(&d).await.expect("read").expect("enrollment");
        assert_eq!(stored.last_seen, Some(17));
        // In the log, the applied messages' events are in publish order.
        let logged: Vec<String> = store
            .events_after(1, 100)
            .await
            .expect("events")
            .into_iter()
            .map(|e| serde_json::from_str::<Event>(&e.json).expect("json").id)
            .collect();
        let mut expected: Vec<i64> = applied.clone();
        expected.sort_unstable();
        assert_eq!(logged, expected.iter().map(|t| format!("ev-{t}")).collect::<Vec<_>>());
    }

    /// The hot statements can use the index meant for them (the partial index's WHERE and the
    /// ids' collation must match the query's, or PostgreSQL silently scans). Sequential scans
    /// are disabled for the check: on an almost empty table they would win anyway.
    #[tokio::test]
    async fn hot_queries_can_use_their_indexes() {
        let Some((store, _schema)) = fresh().await else { return };
        let mut tx = store.begin().await.expect("begin");
        query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await.expect("set");
        let cases: [(&str, &str, Vec<&str>); 8] = [
            (QUEUED_ANDROID_SQL, "commands_android_queued", vec!["10"]),
            (PENDING_SQL, "commands_pending", vec!["apple:X", "10"]),
            (ENROLLMENT_BY_CERT_SQL, "enrollments_cert_sha256", vec!["ab"]),
            (LIST_ENROLLMENTS_BY_PLATFORM_SQL, "enrollments_platform_device", vec!["apple", "apple:A", "10"]),
            (DUE_FOR_EXPIRY_SQL, "commands_expiry", vec!["100", "10"]),
            (
                "SELECT seq, device_id, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                "events_pkey",
                vec!["5", "10"],
            ),
            (
                "SELECT COUNT(*) FROM enrollments WHERE enrolled_user = $1 AND parent IS NULL \
                 AND state <> 'unenrolled' AND device_id <> $2",
                "enrollments_enrolled_user",
                vec!["ann@example.com", ""],
            ),
            (COMMAND_BY_IDEMPOTENCY_KEY_SQL, "commands_idempotency_key", vec!["K"]),
        ];
        for (sql, index, binds) in cases {
            // EXPLAIN over the extended protocol plans with the values bound, as the store runs it.
            let explain = sqlx_core::sql_str::AssertSqlSafe(format!("EXPLAIN {sql}"));
            let mut q = query(explain);
            for b in &binds {
                q = match b.parse::<i64>() {
                    Ok(n) => q.bind(n),
                    Err(_) => q.bind(*b),
                };
            }
            let plan: Vec<String> = q
                .fetch_all(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("explain {sql}: {e}"))
                .iter()
                .map(|r| get::<String>(r, 0, "plan").expect("plan line"))
                .collect();
            let text = plan.join("\n");
            assert!(text.contains(index), "{sql}\nexpected {index}:\n{text}");
            assert!(!text.contains("Seq Scan"), "{sql}\n{text}");
        }
        tx.rollback().await.expect("rollback");
    }

    /// No connection to be had within `acquire_timeout`: the operation fails (callers answer
    /// "try again later"), it does not hang; once one is free again, it works.
    #[tokio::test]
    async fn exhausted_pool_fails_in_time() {
        let Some(schema) = PostgresSchema::create().await else { return };
        let settings = PoolSettings { max_connections: 1, acquire_timeout: Duration::from_millis(300) };
        let store = PostgresStore::open(&schema.url, settings).await.expect("open");
        let held = store.begin().await.expect("take the only connection");
        let started = std::time::Instant::now();
        let r = store.last_event_seq().await;
        assert!(matches!(r, Err(StoreError::Postgres(SqlxError::PoolTimedOut))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(held);
        assert_eq!(store.last_event_seq().await.expect("free again"), 0);
    }
}
