-- Initial schema. Kept to plain SQL (upserts, partial indexes, CHECKs) so the PostgreSQL schema
-- can mirror it; the only SQLite-specific piece is AUTOINCREMENT on the event log.
-- Times are Unix seconds; JSON is stored as text; binary tokens as BLOBs.

CREATE TABLE enrollments (
    device_id           TEXT    NOT NULL PRIMARY KEY,
    -- Redundant with the device_id prefix, but lets list_enrollments filter by platform with an
    -- index range instead of a LIKE.
    platform            TEXT    NOT NULL,
    parent              TEXT,
    state               TEXT    NOT NULL CHECK (state IN ('authenticated', 'enrolled', 'unenrolled')),
    cert_sha256         TEXT,
    -- Push info is present exactly when push_topic is not NULL.
    push_token          BLOB,
    push_magic          TEXT,
    push_topic          TEXT,
    unlock_token        BLOB,
    bootstrap_token     BLOB,
    inventory           TEXT    NOT NULL,
    attributes          TEXT    NOT NULL,
    enrolled_at         INTEGER,
    last_seen           INTEGER,
    checked_in_event_at INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

-- Identity check on every request.
CREATE INDEX enrollments_cert_sha256 ON enrollments (cert_sha256);
-- Keyset pagination per platform.
CREATE INDEX enrollments_platform_device ON enrollments (platform, device_id);
-- set_state_with_children: find the user channels of a device.
CREATE INDEX enrollments_parent ON enrollments (parent);

CREATE TABLE commands (
    device_id       TEXT    NOT NULL,
    command_id      TEXT    NOT NULL,
    -- Global insertion order, from counters.command_seq (never reused).
    seq             INTEGER NOT NULL,
    request_type    TEXT    NOT NULL,
    normalised      TEXT,
    payload         BLOB    NOT NULL,
    priority        INTEGER NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status IN ('queued', 'sent', 'acknowledged', 'error', 'not_now', 'expired')),
    expires_at      INTEGER,
    idempotency_key TEXT,
    result          TEXT,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    sent_count      INTEGER NOT NULL DEFAULT 0,
    -- The same command id may be queued to several devices (NanoMDM-compatible API).
    PRIMARY KEY (device_id, command_id)
);

CREATE UNIQUE INDEX commands_seq ON commands (seq);
-- The check-in hot path: the next commands of one device, already in delivery order, touching
-- only its non-final rows however large the table grows. The WHERE must stay identical to the
-- one in `pending` for the planner to use it.
CREATE INDEX commands_pending ON commands (device_id, priority DESC, seq)
    WHERE status IN ('queued', 'sent', 'not_now');
CREATE UNIQUE INDEX commands_idempotency_key ON commands (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX commands_command_id ON commands (command_id);
CREATE INDEX commands_expiry ON commands (expires_at, seq)
    WHERE expires_at IS NOT NULL AND status IN ('queued', 'sent', 'not_now');

-- Named monotonic counters (the PostgreSQL schema can use a SEQUENCE instead).
CREATE TABLE counters (
    name  TEXT    NOT NULL PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('command_seq', 0);

-- The event log, which is also the outbox. AUTOINCREMENT so a position is never reused after
-- old events are pruned: sink cursors point into this sequence.
CREATE TABLE events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT    NOT NULL UNIQUE,
    device_id TEXT    NOT NULL,
    type      TEXT    NOT NULL,
    body      TEXT    NOT NULL
);

CREATE TABLE sink_cursors (
    sink TEXT    NOT NULL PRIMARY KEY,
    seq  INTEGER NOT NULL
);

CREATE TABLE push_certs (
    topic      TEXT    NOT NULL PRIMARY KEY,
    cert_pem   TEXT    NOT NULL,
    key_pem    TEXT    NOT NULL,
    not_after  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
