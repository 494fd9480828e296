-- Android (AMAPI) client: enterprise signups, the enterprises they created, and the dispatcher's
-- lookup of Android commands not yet sent to AMAPI. The same logical schema as SQLite's 0009.

-- One row per `signupUrls.create`. `state_sha256` is the hash of the one-time value the gateway
-- put in the callback URL: the admin's browser proves it started this signup by bringing it back.
CREATE TABLE android_signups (
    name          TEXT COLLATE "C" NOT NULL PRIMARY KEY,   -- signupUrls/<id>
    state_sha256  TEXT   NOT NULL UNIQUE,
    url           TEXT   NOT NULL,
    callback_url  TEXT   NOT NULL,
    project_id    TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    completed_at  BIGINT,
    enterprise    TEXT
);

-- Enterprises created through signup. Without `android.enterprise` in the configuration, the
-- newest one is the gateway's enterprise.
CREATE TABLE android_enterprises (
    name         TEXT COLLATE "C" NOT NULL PRIMARY KEY,    -- enterprises/<id>
    project_id   TEXT   NOT NULL,
    signup_name  TEXT,
    pubsub_topic TEXT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX android_enterprises_created ON android_enterprises (created_at);

-- The dispatcher's scan: queued Android commands in delivery order. The WHERE must stay
-- identical to the one in `queued_android_commands` for the planner to use it (device_id is
-- COLLATE "C", so the range is byte order, as in SQLite).
CREATE INDEX commands_android_queued ON commands (priority DESC, seq)
    WHERE status = 'queued' AND device_id >= 'android:' AND device_id < 'android;';
