-- OMA-DM (Windows management) sessions: the state between the messages of one SyncML session, so
-- that any gateway instance can serve the next message of a session another one started. One row
-- per device: a new SessionID replaces the row. `state` is the JSON of
-- `mdm_windows::syncml::Session` (MsgIDs, CmdID counter, the commands in flight with their
-- CmdIDs and partial results, a large object being assembled or sent). `version` makes every
-- save a compare-and-set, so two instances handling the same message cannot both apply it.
-- `request_sha256` and `reply` are the last message handled and the answer given, replayed when
-- the device sends that message again (its answer was lost).
CREATE TABLE omadm_sessions (
    device_id       TEXT    NOT NULL PRIMARY KEY,
    session_id      TEXT    NOT NULL,
    client_msg_id   INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    request_sha256  TEXT    NOT NULL,
    reply           BLOB    NOT NULL,
    updated_at      INTEGER NOT NULL
);
