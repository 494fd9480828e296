-- Android (AMAPI): Pub/Sub delivery bookkeeping and the operations the gateway started.

-- Every Pub/Sub message id handled, so a redelivery is answered without being applied again.
-- Kept at least `android.dedupe_days` (Pub/Sub redelivers for up to 7 days).
CREATE TABLE pubsub_messages (
    message_id  TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    -- applied | stale | dead_letter
    outcome     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX pubsub_messages_received ON pubsub_messages (received_at);

-- Per device, the publish time (ms) of the newest applied notification: an older one arriving
-- later is not applied, so a stale DELETED cannot unenroll a re-enrolled device.
CREATE TABLE android_watermarks (
    device_id       TEXT PRIMARY KEY,
    publish_time_ms INTEGER NOT NULL,
    message_id      TEXT NOT NULL
) WITHOUT ROWID;

-- Messages that can never be applied (answered 2xx so Pub/Sub stops redelivering).
CREATE TABLE pubsub_dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id  TEXT,
    received_at INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    body        BLOB NOT NULL
);

-- AMAPI long-running operations started for commands (devices.issueCommand), by operation name.
CREATE TABLE android_operations (
    operation  TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL,
    command_id TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX android_operations_command ON android_operations (device_id, command_id);
