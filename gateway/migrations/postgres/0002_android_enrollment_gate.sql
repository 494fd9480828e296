-- Android (AMAPI) Pub/Sub bookkeeping and operations, and the enrollment gate: the same logical
-- schema as SQLite's 0008 and 0010.

-- Every Pub/Sub message id handled, so a redelivery is answered without being applied again.
-- Kept at least `android.dedupe_days` (Pub/Sub redelivers for up to 7 days).
CREATE TABLE pubsub_messages (
    message_id  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    received_at BIGINT NOT NULL,
    outcome     TEXT   NOT NULL CHECK (outcome IN ('applied', 'stale', 'dead_letter'))
);
CREATE INDEX pubsub_messages_received ON pubsub_messages (received_at);

-- Per device, the publish time (ms) of the newest applied notification: an older one arriving
-- later is not applied, so a stale DELETED cannot unenroll a re-enrolled device.
CREATE TABLE android_watermarks (
    device_id       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    publish_time_ms BIGINT NOT NULL,
    message_id      TEXT   NOT NULL
);

-- Messages that can never be applied (answered 2xx so Pub/Sub stops redelivering).
CREATE TABLE pubsub_dead_letters (
    id          BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id  TEXT,
    received_at BIGINT NOT NULL,
    reason      TEXT   NOT NULL,
    detail      TEXT   NOT NULL,
    body        BYTEA  NOT NULL
);

-- AMAPI long-running operations started for commands (devices.issueCommand), by operation name.
CREATE TABLE android_operations (
    operation  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    device_id  TEXT COLLATE "C" NOT NULL,
    command_id TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX android_operations_command ON android_operations (device_id, command_id);
-- unresolved_android_operations: oldest first.
CREATE INDEX android_operations_created ON android_operations (created_at);

-- Imported IMEI and serial number lists: a device whose reported identifier is listed enrolls as
-- corporate. Identifiers are stored normalised (serials upper case, IMEIs digits only).
CREATE TABLE corporate_identifiers (
    kind            TEXT   NOT NULL CHECK (kind IN ('imei', 'serial')),
    identifier      TEXT COLLATE "C" NOT NULL,
    details         TEXT   NOT NULL,
    created_at      BIGINT NOT NULL,
    -- The device that enrolled with it, if any.
    enrolled_device TEXT,
    enrolled_at     BIGINT,
    PRIMARY KEY (kind, identifier)
);

-- Devices per user: the inventory's `enrolled_user`, lower case, kept in a column of its own by
-- the store at every write of the enrollment (SQLite indexes an expression over the JSON text;
-- here a cast to JSONB in an index would make a write fail on JSON that JSONB refuses).
ALTER TABLE enrollments ADD COLUMN enrolled_user TEXT;
UPDATE enrollments SET enrolled_user = lower(inventory::jsonb ->> 'enrolled_user')
    WHERE strpos(inventory, '"enrolled_user"') > 0 AND strpos(inventory, '\u0000') = 0;
CREATE INDEX enrollments_enrolled_user ON enrollments (enrolled_user)
    WHERE parent IS NULL AND enrolled_user IS NOT NULL;
