//! [`Store`] on SQLite: the embedded deployment's database.
//!
//! Two pools share one database file in WAL mode. Every write and every transaction goes
//! through a writer pool of exactly one connection, so our own writers queue in the pool instead
//! of meeting `SQLITE_BUSY` inside SQLite; plain reads go through a separate pool of read-only
//! connections, which WAL lets run alongside the writer.
//!
//! The SQL stays close to what PostgreSQL accepts (upserts, partial indexes, `RETURNING`) so the
//! PostgreSQL store can share its shape.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mdm_core::{CommandStatus, DeviceId, Event, Inventory, Platform};
use serde::de::DeserializeOwned;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Decode, Row, SqlSafeStr, Sqlite, Type};
use tokio::sync::Notify;

use super::{
    CommandRecord, CommandUpdate, Enrollment, EnrollmentState, LoggedEvent, NewCommand, PushCert, PushInfo, Result,
    Store, StoreError,
};

/// Migrations, embedded at build time. Listed by hand (rather than with `sqlx::migrate!`) so the
/// workspace does not need sqlx's proc-macro feature; the version and description follow sqlx's
/// `<version>_<description>.sql` file naming, so the `_sqlx_migrations` bookkeeping is the same
/// as the macro's would be. A test checks that every file in the directory is listed here.
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "init", include_str!("../../migrations/sqlite/0001_init.sql"))];

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

/// How long a connection waits on a lock held by another process (an operator's `sqlite3`
/// shell, a backup) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
const LIST_ENROLLMENTS_SQL: &str = select_enrollments!("WHERE device_id > ? ORDER BY device_id LIMIT CAST(? AS INTEGER)");
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
const COMMAND_SQL: &str = select_commands!("WHERE command_id = ? ORDER BY seq");
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

/// The SQLite store. Cheap to clone; clones share the pools and the notifier.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    notify: Arc<Notify>,
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
        let base = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path)?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let base = base
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            });

        // The single writer connection is kept for the life of the store: it is the queue all
        // writes wait in, and reopening it per burst would only cost time.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.clone().journal_mode(SqliteJournalMode::Wal))
            .await?;
        migrator().run(&writer).await?;

        // Each connection to an in-memory database is its own database unless shared; rather
        // than depend on that, an in-memory store reads through its writer.
        let in_memory = url_or_path.contains(":memory:") || url_or_path.contains("mode=memory");
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(read_connections.max(1))
                // journal_mode is persistent and already WAL (set by the writer above);
                // query_only makes a write sent to the wrong pool fail loudly instead of
                // competing with the writer for the lock.
                .connect_with(base.pragma("query_only", "ON"))
                .await?
        };

        Ok(SqliteStore { writer, reader, notify: Arc::new(Notify::new()) })
    }

    /// Notified (`notify_waiters`) after every commit that appended events. Only tasks already
    /// waiting are woken, so a waiter must register (`Notified::enable`, or create the
    /// `notified()` future) before it reads the log, then wait.
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn commit(&self, tx: sqlx::Transaction<'static, Sqlite>, appended: bool) -> Result<()> {
        tx.commit().await?;
        if appended {
            self.notify.notify_waiters();
        }
        Ok(())
    }
}

/// An event ready to insert, serialised before the transaction opens so the transaction holds
/// the writer only for the inserts.
struct EventRow<'a> {
    id: &'a str,
    device_id: &'a str,
    event_type: &'a str,
    body: String,
}

fn event_rows(events: &[Event]) -> Result<Vec<EventRow<'_>>> {
    events
        .iter()
        .map(|e| {
            // An Event can fail to serialise only through its time (a year outside 0..=9999 has
            // no RFC 3339 form); refuse it here rather than store something unreadable.
            let body = serde_json::to_string(e)
                .map_err(|err| StoreError::Corrupt(format!("event `{}` cannot be serialised: {err}", e.id)))?;
            Ok(EventRow { id: &e.id, device_id: e.device_id.as_str(), event_type: e.event_type.as_str(), body })
        })
        .collect()
}

async fn insert_events(conn: &mut SqliteConnection, rows: &[EventRow<'_>]) -> Result<()> {
    for row in rows {
        sqlx::query("INSERT INTO events (id, device_id, type, body) VALUES (?, ?, ?, ?)")
            .bind(row.id)
            .bind(row.device_id)
            .bind(row.event_type)
            .bind(row.body.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Reads a column, reporting a value of the wrong type as corruption.
fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get(column).map_err(|e| match e {
        sqlx::Error::ColumnDecode { .. } => StoreError::Corrupt(format!("column `{column}`: {e}")),
        other => StoreError::Database(other),
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

fn enrollment_from_row(row: &SqliteRow) -> Result<Enrollment> {
    let id_text: String = get(row, "device_id")?;
    let device_id = parse_device_id(&id_text, "enrollments.device_id")?;
    // Everything after the id is reported with the id, so an operator can find the row.
    let ctx = |e: StoreError| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("enrollment `{id_text}`: {m}")),
        other => other,
    };
    let rest = || -> Result<Enrollment> {
        let parent = get::<Option<String>>(row, "parent")?.map(|p| parse_device_id(&p, "parent")).transpose()?;
        let state_text: String = get(row, "state")?;
        let state = EnrollmentState::parse(&state_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown state `{state_text}`")))?;
        let push = match get::<Option<String>>(row, "push_topic")? {
            None => None,
            Some(topic) => Some(PushInfo {
                token: get::<Option<Vec<u8>>>(row, "push_token")?
                    .ok_or_else(|| StoreError::Corrupt("push_topic set without push_token".into()))?,
                magic: get::<Option<String>>(row, "push_magic")?
                    .ok_or_else(|| StoreError::Corrupt("push_topic set without push_magic".into()))?,
                topic,
            }),
        };
        let inventory: Inventory = parse_json(&get::<String>(row, "inventory")?, "inventory")?;
        let attributes = parse_json(&get::<String>(row, "attributes")?, "attributes")?;
        Ok(Enrollment {
            device_id: device_id.clone(),
            parent,
            state,
            cert_sha256: get(row, "cert_sha256")?,
            push,
            unlock_token: get(row, "unlock_token")?,
            bootstrap_token: get(row, "bootstrap_token")?,
            inventory,
            attributes,
            enrolled_at: get(row, "enrolled_at")?,
            last_seen: get(row, "last_seen")?,
            checked_in_event_at: get(row, "checked_in_event_at")?,
            created_at: get(row, "created_at")?,
            updated_at: get(row, "updated_at")?,
        })
    };
    rest().map_err(ctx)
}

fn command_from_row(row: &SqliteRow) -> Result<CommandRecord> {
    let device_text: String = get(row, "device_id")?;
    let command_id: String = get(row, "command_id")?;
    let ctx = |e: StoreError| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("command `{command_id}` of `{device_text}`: {m}")),
        other => other,
    };
    let rest = || -> Result<CommandRecord> {
        let device_id = parse_device_id(&device_text, "device_id")?;
        let status_text: String = get(row, "status")?;
        let status = CommandStatus::parse(&status_text)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status `{status_text}`")))?;
        let priority: i64 = get(row, "priority")?;
        let priority =
            i32::try_from(priority).map_err(|_| StoreError::Corrupt(format!("priority {priority} is out of range")))?;
        let json_col = |column: &str| -> Result<Option<serde_json::Value>> {
            get::<Option<String>>(row, column)?.map(|s| parse_json(&s, column)).transpose()
        };
        Ok(CommandRecord {
            command_id: command_id.clone(),
            device_id,
            request_type: get(row, "request_type")?,
            normalised: json_col("normalised")?,
            payload: get(row, "payload")?,
            priority,
            seq: get(row, "seq")?,
            status,
            expires_at: get(row, "expires_at")?,
            idempotency_key: get(row, "idempotency_key")?,
            result: json_col("result")?,
            error: json_col("error")?,
            created_at: get(row, "created_at")?,
            updated_at: get(row, "updated_at")?,
            sent_count: get(row, "sent_count")?,
        })
    };
    rest().map_err(ctx)
}

fn push_cert_from_row(row: &SqliteRow) -> Result<PushCert> {
    Ok(PushCert {
        topic: get(row, "topic")?,
        cert_pem: get(row, "cert_pem")?,
        key_pem: get(row, "key_pem")?,
        not_after: get(row, "not_after")?,
        updated_at: get(row, "updated_at")?,
    })
}

/// Maps a unique violation that slipped past the explicit checks in `enqueue` (which give the
/// precise key) to the matching error; anything else stays a database error.
fn enqueue_error(e: sqlx::Error, command: &NewCommand) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.kind() == sqlx::error::ErrorKind::UniqueViolation
    {
        if db.message().contains("idempotency_key")
            && let Some(key) = &command.idempotency_key
        {
            return StoreError::IdempotencyConflict(key.clone());
        }
        if db.message().contains("command_id") {
            return StoreError::DuplicateCommand(command.command_id.clone());
        }
    }
    StoreError::Database(e)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn enrollment(&self, id: &DeviceId) -> Result<Option<Enrollment>> {
        let row = sqlx::query(ENROLLMENT_SQL).bind(id.as_str()).fetch_optional(&self.reader).await?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    async fn enrollment_by_cert(&self, cert_sha256: &str) -> Result<Option<DeviceId>> {
        let id: Option<String> =
            sqlx::query_scalar(ENROLLMENT_BY_CERT_SQL).bind(cert_sha256).fetch_optional(&self.reader).await?;
        id.map(|s| parse_device_id(&s, "enrollments.device_id")).transpose()
    }

    async fn save_enrollment(&self, e: &Enrollment, events: &[Event]) -> Result<()> {
        let inventory = serde_json::to_string(&e.inventory)
            .map_err(|err| StoreError::Corrupt(format!("inventory cannot be serialised: {err}")))?;
        let attributes = serde_json::Value::Object(e.attributes.clone()).to_string();
        let rows = event_rows(events)?;
        let (push_token, push_magic, push_topic) = match &e.push {
            Some(p) => (Some(p.token.as_slice()), Some(p.magic.as_str()), Some(p.topic.as_str())),
            None => (None, None, None),
        };

        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO enrollments (device_id, platform, parent, state, cert_sha256, push_token, push_magic, \
             push_topic, unlock_token, bootstrap_token, inventory, attributes, enrolled_at, last_seen, \
             checked_in_event_at, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (device_id) DO UPDATE SET \
             platform = excluded.platform, parent = excluded.parent, state = excluded.state, \
             cert_sha256 = excluded.cert_sha256, push_token = excluded.push_token, \
             push_magic = excluded.push_magic, push_topic = excluded.push_topic, \
             unlock_token = excluded.unlock_token, bootstrap_token = excluded.bootstrap_token, \
             inventory = excluded.inventory, attributes = excluded.attributes, \
             enrolled_at = excluded.enrolled_at, last_seen = excluded.last_seen, \
             checked_in_event_at = excluded.checked_in_event_at, created_at = excluded.created_at, \
             updated_at = excluded.updated_at",
        )
        .bind(e.device_id.as_str())
        .bind(e.platform().as_str())
        .bind(e.parent.as_ref().map(DeviceId::as_str))
        .bind(e.state.as_str())
        .bind(e.cert_sha256.as_deref())
        .bind(push_token)
        .bind(push_magic)
        .bind(push_topic)
        .bind(e.unlock_token.as_deref())
        .bind(e.bootstrap_token.as_deref())
        .bind(inventory)
        .bind(attributes)
        .bind(e.enrolled_at)
        .bind(e.last_seen)
        .bind(e.checked_in_event_at)
        .bind(e.created_at)
        .bind(e.updated_at)
        .execute(&mut *tx)
        .await?;
        insert_events(&mut tx, &rows).await?;
        self.commit(tx, !rows.is_empty()).await
    }

    async fn set_state_with_children(
        &self,
        parent: &DeviceId,
        state: EnrollmentState,
        now: i64,
        events: &[Event],
    ) -> Result<u64> {
        let rows = event_rows(events)?;
        let mut tx = self.writer.begin().await?;
        // Rows already in `state` are left alone, so the count is of real changes.
        let done = sqlx::query(SET_STATE_WITH_CHILDREN_SQL)
            .bind(state.as_str())
            .bind(now)
            .bind(parent.as_str())
            .bind(parent.as_str())
            .bind(state.as_str())
            .execute(&mut *tx)
            .await?;
        insert_events(&mut tx, &rows).await?;
        self.commit(tx, !rows.is_empty()).await?;
        Ok(done.rows_affected())
    }

    async fn touch(&self, id: &DeviceId, now: i64) -> Result<()> {
        sqlx::query("UPDATE enrollments SET last_seen = ?, updated_at = ? WHERE device_id = ?")
            .bind(now)
            .bind(now)
            .bind(id.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn list_enrollments(
        &self,
        platform: Option<Platform>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Enrollment>> {
        // Every id sorts after "" (ids are never empty), so the first page needs no other query.
        let after = after.unwrap_or("");
        let rows = match platform {
            Some(p) => {
                sqlx::query(LIST_ENROLLMENTS_BY_PLATFORM_SQL)
                    .bind(p.as_str())
                    .bind(after)
                    .bind(self::limit(limit))
                    .fetch_all(&self.reader)
                    .await?
            }
            None => {
                sqlx::query(LIST_ENROLLMENTS_SQL).bind(after).bind(self::limit(limit)).fetch_all(&self.reader).await?
            }
        };
        rows.iter().map(enrollment_from_row).collect()
    }

    async fn count_enrollments(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM enrollments").fetch_one(&self.reader).await?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative enrollment count {n}")))
    }

    async fn enqueue(&self, commands: &[NewCommand], events: &[Event]) -> Result<()> {
        let rows = event_rows(events)?;
        let mut tx = self.writer.begin().await?;
        for c in commands {
            // Checked explicitly (inside the transaction, so earlier commands of this batch
            // count) to name the offending key; the unique indexes remain the guarantee. An
            // early return drops `tx`, which rolls back everything this call wrote.
            if let Some(key) = &c.idempotency_key {
                let used = sqlx::query("SELECT 1 FROM commands WHERE idempotency_key = ?")
                    .bind(key.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if used.is_some() {
                    return Err(StoreError::IdempotencyConflict(key.clone()));
                }
            }
            let exists = sqlx::query("SELECT 1 FROM commands WHERE device_id = ? AND command_id = ?")
                .bind(c.device_id.as_str())
                .bind(c.command_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Err(StoreError::DuplicateCommand(c.command_id.clone()));
            }
            let seq: i64 =
                sqlx::query_scalar("UPDATE counters SET value = value + 1 WHERE name = 'command_seq' RETURNING value")
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("counter `command_seq` is missing".into()))?;
            sqlx::query(
                "INSERT INTO commands (device_id, command_id, seq, request_type, normalised, payload, priority, \
                 status, expires_at, idempotency_key, result, error, created_at, updated_at, sent_count) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, 0)",
            )
            .bind(c.device_id.as_str())
            .bind(c.command_id.as_str())
            .bind(seq)
            .bind(c.request_type.as_str())
            .bind(opt_json(&c.normalised))
            .bind(c.payload.as_slice())
            .bind(c.priority)
            .bind(CommandStatus::Queued.as_str())
            .bind(c.expires_at)
            .bind(c.idempotency_key.as_deref())
            .bind(c.created_at)
            .bind(c.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| enqueue_error(e, c))?;
        }
        insert_events(&mut tx, &rows).await?;
        self.commit(tx, !rows.is_empty()).await
    }

    async fn command(&self, command_id: &str) -> Result<Vec<CommandRecord>> {
        let rows = sqlx::query(COMMAND_SQL).bind(command_id).fetch_all(&self.reader).await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn command_for_device(&self, device: &DeviceId, command_id: &str) -> Result<Option<CommandRecord>> {
        let row = sqlx::query(COMMAND_FOR_DEVICE_SQL)
            .bind(device.as_str())
            .bind(command_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(command_from_row).transpose()
    }

    async fn command_by_idempotency_key(&self, key: &str) -> Result<Option<CommandRecord>> {
        let row = sqlx::query(COMMAND_BY_IDEMPOTENCY_KEY_SQL).bind(key).fetch_optional(&self.reader).await?;
        row.as_ref().map(command_from_row).transpose()
    }

    async fn pending(&self, device: &DeviceId, limit: u32) -> Result<Vec<CommandRecord>> {
        let rows =
            sqlx::query(PENDING_SQL).bind(device.as_str()).bind(self::limit(limit)).fetch_all(&self.reader).await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn update_command(&self, update: CommandUpdate<'_>, events: &[Event]) -> Result<bool> {
        let rows = event_rows(events)?;
        let mut tx = self.writer.begin().await?;
        // Read, decide, then write conditionally on the status read: a portable compare-and-set
        // that needs no dynamic `IN (...)` list.
        let current: Option<String> =
            sqlx::query_scalar("SELECT status FROM commands WHERE device_id = ? AND command_id = ?")
                .bind(update.device_id.as_str())
                .bind(update.command_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(current) = current else {
            return Ok(false);
        };
        let status = CommandStatus::parse(&current).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "command `{}` of `{}`: unknown status `{current}`",
                update.command_id, update.device_id
            ))
        })?;
        if !update.from.contains(&status) {
            return Ok(false);
        }
        let done = sqlx::query(
            "UPDATE commands SET status = ?, result = ?, error = ?, updated_at = ?, sent_count = sent_count + ? \
             WHERE device_id = ? AND command_id = ? AND status = ?",
        )
        .bind(update.to.as_str())
        .bind(opt_json(&update.result))
        .bind(opt_json(&update.error))
        .bind(update.now)
        .bind(i64::from(update.to == CommandStatus::Sent))
        .bind(update.device_id.as_str())
        .bind(update.command_id)
        .bind(current.as_str())
        .execute(&mut *tx)
        .await?;
        // Cannot be 0 behind the single writer; kept so the logic holds on any backend.
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_events(&mut tx, &rows).await?;
        self.commit(tx, !rows.is_empty()).await?;
        Ok(true)
    }

    async fn due_for_expiry(&self, now: i64, limit: u32) -> Result<Vec<CommandRecord>> {
        let rows = sqlx::query(DUE_FOR_EXPIRY_SQL).bind(now).bind(self::limit(limit)).fetch_all(&self.reader).await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn append_events(&self, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let rows = event_rows(events)?;
        let mut tx = self.writer.begin().await?;
        insert_events(&mut tx, &rows).await?;
        self.commit(tx, true).await
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<LoggedEvent>> {
        let rows = sqlx::query("SELECT seq, device_id, body FROM events WHERE seq > ? ORDER BY seq LIMIT CAST(? AS INTEGER)")
            .bind(after)
            .bind(self::limit(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(LoggedEvent { seq: get(row, "seq")?, device_id: get(row, "device_id")?, json: get(row, "body")? })
            })
            .collect()
    }

    async fn last_event_seq(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events").fetch_one(&self.reader).await?)
    }

    async fn sink_cursor(&self, sink: &str) -> Result<i64> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM sink_cursors WHERE sink = ?")
            .bind(sink)
            .fetch_optional(&self.reader)
            .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn set_sink_cursor(&self, sink: &str, seq: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO sink_cursors (sink, seq) VALUES (?, ?) ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq",
        )
        .bind(sink)
        .bind(seq)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn save_push_cert(&self, cert: &PushCert) -> Result<()> {
        sqlx::query(
            "INSERT INTO push_certs (topic, cert_pem, key_pem, not_after, updated_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (topic) DO UPDATE SET cert_pem = excluded.cert_pem, key_pem = excluded.key_pem, \
             not_after = excluded.not_after, updated_at = excluded.updated_at",
        )
        .bind(cert.topic.as_str())
        .bind(cert.cert_pem.as_str())
        .bind(cert.key_pem.as_str())
        .bind(cert.not_after)
        .bind(cert.updated_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn push_certs(&self) -> Result<Vec<PushCert>> {
        let rows = sqlx::query("SELECT topic, cert_pem, key_pem, not_after, updated_at FROM push_certs ORDER BY topic")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(push_cert_from_row).collect()
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
        suite::Harness { notifier: store.notifier(), store: Box::new(store), guard: Box::new(dir) }
    }

    crate::store_suite!(harness);

    /// The query plan of `sql`, one `detail` line per step.
    async fn plan(store: &SqliteStore, sql: &str, binds: &[&str]) -> Vec<String> {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
        for b in binds {
            q = q.bind(b.to_string());
        }
        let rows = q.fetch_all(&store.reader).await.expect("explain");
        let plan: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("detail").expect("detail column")).collect();
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
        sqlx::query("ANALYZE").execute(&store.writer).await.expect("analyze");

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
        sqlx::query("UPDATE enrollments SET inventory = '{\"serial_number\": 5}'")
            .execute(&store.writer)
            .await
            .expect("corrupt");
        match store.enrollment(&id).await {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("apple:BROKEN") && m.contains("inventory"), "{m}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        sqlx::query("UPDATE enrollments SET inventory = '{}', device_id = 'nope'")
            .execute(&store.writer)
            .await
            .expect("corrupt");
        assert!(matches!(store.list_enrollments(None, None, 10).await, Err(StoreError::Corrupt(_))));

        store.enqueue(&[suite::new_command(&id, "c1", 0)], &[]).await.expect("enqueue");
        sqlx::query("UPDATE commands SET priority = 99999999999").execute(&store.writer).await.expect("corrupt");
        assert!(matches!(store.pending(&id, 10).await, Err(StoreError::Corrupt(_))));
        sqlx::query("UPDATE commands SET priority = 'high'").execute(&store.writer).await.expect("corrupt");
        assert!(matches!(store.command("c1").await, Err(StoreError::Corrupt(_))));
    }

    #[tokio::test]
    async fn readers_refuse_writes() {
        let (store, _dir) = fresh().await;
        let r = sqlx::query("INSERT INTO sink_cursors (sink, seq) VALUES ('x', 1)").execute(&store.reader).await;
        assert!(r.is_err(), "the read pool must be query-only");
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
}
