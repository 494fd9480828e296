-- The PostgreSQL schema: the same logical schema as SQLite's migrations 0001 to 0007, in one file
-- (no PostgreSQL database predates it). Later changes go in new files, as for SQLite.
--
-- Types: times are Unix seconds (BIGINT), as in SQLite; binary values BYTEA. JSON is TEXT, not
-- JSONB: event bodies and declarations must come back byte for byte, and JSONB refuses some
-- valid JSON (a "\u0000" escape) that the gateway may be handed. Identifiers that are compared or
-- paged (`ORDER BY`, keyset `>`) are COLLATE "C", so their order is the byte order SQLite uses,
-- whatever the database's default collation.
--
-- Not carried over: `enrollments.bootstrap_token_plaintext` (SQLite 0003). Bootstrap tokens were
-- sealed before PostgreSQL was supported, so a PostgreSQL database never holds plaintext ones.

CREATE TABLE enrollments (
    device_id           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- Redundant with the device_id prefix; lets list_enrollments filter by platform on an index.
    platform            TEXT    NOT NULL,
    parent              TEXT COLLATE "C",
    state               TEXT    NOT NULL CHECK (state IN ('authenticated', 'enrolled', 'unenrolled')),
    cert_sha256         TEXT,
    -- Push info is present exactly when push_topic is not NULL.
    push_token          BYTEA,
    push_magic          TEXT,
    push_topic          TEXT,
    unlock_token        BYTEA,
    -- Sealed by the gateway (AES-256-GCM, bound to the device id); never plaintext.
    bootstrap_token     BYTEA,
    inventory           TEXT    NOT NULL,
    attributes          TEXT    NOT NULL,
    enrolled_at         BIGINT,
    last_seen           BIGINT,
    checked_in_event_at BIGINT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
);

-- Identity check on every request.
CREATE INDEX enrollments_cert_sha256 ON enrollments (cert_sha256);
-- Keyset pagination per platform.
CREATE INDEX enrollments_platform_device ON enrollments (platform, device_id);
-- set_state_with_children: find the user channels of a device.
CREATE INDEX enrollments_parent ON enrollments (parent);

CREATE TABLE commands (
    device_id       TEXT COLLATE "C" NOT NULL,
    command_id      TEXT COLLATE "C" NOT NULL,
    -- Global insertion order (never reused). Concurrent enqueues may commit out of seq order;
    -- only the order of one device's queue depends on it.
    seq             BIGINT  NOT NULL GENERATED ALWAYS AS IDENTITY,
    request_type    TEXT    NOT NULL,
    normalised      TEXT,
    payload         BYTEA   NOT NULL,
    priority        INTEGER NOT NULL,
    status          TEXT    NOT NULL
        CHECK (status IN ('queued', 'sent', 'acknowledged', 'error', 'not_now', 'expired')),
    expires_at      BIGINT,
    idempotency_key TEXT,
    result          TEXT,
    error           TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    sent_count      BIGINT  NOT NULL DEFAULT 0,
    -- The same command id may be queued to several devices (NanoMDM-compatible API). The
    -- constraint's name is what the store maps to "command already exists".
    CONSTRAINT commands_pkey PRIMARY KEY (device_id, command_id)
);

CREATE UNIQUE INDEX commands_seq ON commands (seq);
-- The check-in hot path: the next commands of one device, in delivery order, touching only its
-- non-final rows. The WHERE must stay identical to the one in `pending`.
CREATE INDEX commands_pending ON commands (device_id, priority DESC, seq)
    WHERE status IN ('queued', 'sent', 'not_now');
-- Its name is what the store maps to "idempotency key already used".
CREATE UNIQUE INDEX commands_idempotency_key ON commands (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX commands_command_id ON commands (command_id);
CREATE INDEX commands_expiry ON commands (expires_at, seq)
    WHERE expires_at IS NOT NULL AND status IN ('queued', 'sent', 'not_now');

-- The event log, which is also the outbox. Positions come from `event_log_head`, not from a
-- sequence: every transaction that appends events takes the head row's lock (an UPDATE) as its
-- last statement and keeps it until it commits, so positions are handed out in commit order and
-- a reader that has seen position N will never later find a smaller one appear (with a sequence,
-- a transaction holding N-1 could commit after N is read, and a relay's cursor would skip it).
-- The head also keeps the highest position ever appended: pruning does not lower it, and a
-- rolled-back append does not raise it (SQLite's AUTOINCREMENT behaves the same).
CREATE TABLE events (
    seq       BIGINT NOT NULL PRIMARY KEY,
    -- UUIDv7: byte order is creation order (prune_events compares ids).
    id        TEXT COLLATE "C" NOT NULL UNIQUE,
    device_id TEXT   NOT NULL,
    type      TEXT   NOT NULL,
    body      TEXT   NOT NULL
);

CREATE TABLE event_log_head (
    -- Exactly one row.
    one      BOOLEAN NOT NULL PRIMARY KEY DEFAULT TRUE CHECK (one),
    last_seq BIGINT  NOT NULL
);
INSERT INTO event_log_head (one, last_seq) VALUES (TRUE, 0);

CREATE TABLE sink_cursors (
    sink TEXT   NOT NULL PRIMARY KEY,
    seq  BIGINT NOT NULL
);

CREATE TABLE push_certs (
    topic      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    cert_pem   TEXT   NOT NULL,
    key_pem    TEXT   NOT NULL,
    not_after  BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- SCEP: one-time enrollment challenges (stored only as the SHA-256, hex, of their text) and the
-- certificates issued through SCEP. A challenge is consumed in the same transaction that records
-- the certificate issued with it.
CREATE TABLE scep_challenges (
    challenge_sha256   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- Opaque enrollment ticket of the caller that asked for the challenge, if any.
    ticket             TEXT,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    -- Set exactly once, when a certificate is issued with it.
    used_at            BIGINT,
    issued_cert_sha256 TEXT
);

CREATE INDEX scep_challenges_ticket ON scep_challenges (ticket, used_at) WHERE ticket IS NOT NULL;

CREATE TABLE scep_certificates (
    cert_sha256      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    -- Hex, big-endian, as in the certificate.
    serial           TEXT   NOT NULL,
    subject          TEXT   NOT NULL,
    not_before       BIGINT NOT NULL,
    not_after        BIGINT NOT NULL,
    message_type     TEXT   NOT NULL CHECK (message_type IN ('PKCSReq', 'RenewalReq')),
    transaction_id   TEXT   NOT NULL,
    challenge_sha256 TEXT,
    ticket           TEXT,
    -- RenewalReq: the fingerprint of the certificate that signed the request.
    renewal_of       TEXT,
    issued_at        BIGINT NOT NULL
);

CREATE INDEX scep_certificates_issued_at ON scep_certificates (issued_at);
-- The newest renewal of a certificate first, without a sort.
CREATE INDEX scep_certificates_renewal_of ON scep_certificates (renewal_of, issued_at, cert_sha256)
    WHERE renewal_of IS NOT NULL;

-- Declarative device management: the declarations the backend assigned to each channel.
CREATE TABLE declarations (
    device_id    TEXT COLLATE "C" NOT NULL,
    identifier   TEXT COLLATE "C" NOT NULL,
    type         TEXT   NOT NULL,
    server_token TEXT   NOT NULL,
    -- The declaration JSON, exactly as the device gets it.
    body         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    -- Also the order of the declaration-items manifest.
    PRIMARY KEY (device_id, identifier)
);

-- Each channel's DeclarationsToken, replaced in the same transaction as every change of its
-- declaration set. A channel without a row never had declarations.
CREATE TABLE declaration_tokens (
    device_id  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    token      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Enrollment tickets (POST /enroll/session). `id` is the SHA-256 (hex) of the ticket.
CREATE TABLE enroll_tickets (
    id                    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created_at            BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    profile_downloaded_at BIGINT,
    downloads             BIGINT NOT NULL DEFAULT 0,
    -- `device` or `user`: the variant of the last profile downloaded.
    variant               TEXT
);

CREATE INDEX enroll_tickets_expires ON enroll_tickets (expires_at);

-- OMA-DM sessions (see SQLite migration 0006): one row per device; `version` makes every save a
-- compare-and-set.
CREATE TABLE omadm_sessions (
    device_id      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    session_id     TEXT   NOT NULL,
    client_msg_id  BIGINT NOT NULL,
    version        BIGINT NOT NULL,
    state          TEXT   NOT NULL,
    request_sha256 TEXT   NOT NULL,
    reply          BYTEA  NOT NULL,
    updated_at     BIGINT NOT NULL
);

-- Windows enrollment: every device certificate issued by the enrollment service (MS-WSTEP).
CREATE TABLE windows_certificates (
    cert_sha256 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    device_id   TEXT COLLATE "C" NOT NULL,
    serial      TEXT   NOT NULL,
    -- SHA-1 of the DER, upper-case hex: the node name in the provisioning document.
    thumbprint  TEXT   NOT NULL,
    not_before  BIGINT NOT NULL,
    not_after   BIGINT NOT NULL,
    kind        TEXT   NOT NULL CHECK (kind IN ('enroll', 'renew')),
    -- The user it was issued to, lower case (renewals keep the enrolling user).
    upn         TEXT,
    auth_policy TEXT   NOT NULL,
    renewal_of  TEXT,
    issued_at   BIGINT NOT NULL
);

CREATE INDEX windows_certificates_device ON windows_certificates (device_id, issued_at);
CREATE INDEX windows_certificates_upn ON windows_certificates (upn) WHERE upn IS NOT NULL;
