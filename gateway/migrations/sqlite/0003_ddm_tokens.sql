-- Declarative device management, and bootstrap tokens sealed at rest.
-- Plain SQL, like 0001, so the PostgreSQL schema can mirror it.

-- The declarations the backend assigned to each channel (a device or a user channel id).
CREATE TABLE declarations (
    device_id    TEXT    NOT NULL,
    identifier   TEXT    NOT NULL,
    -- The full `Type` (com.apple.configuration.passcode.settings ...).
    type         TEXT    NOT NULL,
    server_token TEXT    NOT NULL,
    -- The declaration JSON, exactly as the device gets it.
    body         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    -- Also the order of the declaration-items manifest.
    PRIMARY KEY (device_id, identifier)
);

-- Each channel's DeclarationsToken, replaced in the same transaction as every change of its
-- declaration set. A channel without a row never had declarations.
CREATE TABLE declaration_tokens (
    device_id  TEXT    NOT NULL PRIMARY KEY,
    token      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- `bootstrap_token` now holds only values the gateway sealed (AES-256-GCM, bound to the device
-- id). Values earlier versions stored in plaintext move to `bootstrap_token_plaintext`, which
-- the gateway empties at start by sealing each one into `bootstrap_token`.
ALTER TABLE enrollments RENAME COLUMN bootstrap_token TO bootstrap_token_plaintext;
ALTER TABLE enrollments ADD COLUMN bootstrap_token BLOB;
-- Keeps the start-up check for such values an index lookup, not a scan of every enrollment.
CREATE INDEX enrollments_bootstrap_token_plaintext ON enrollments (device_id)
    WHERE bootstrap_token_plaintext IS NOT NULL;
