-- Android `set_settings`, `install_app` and `app_config` are patches of the device's own AMAPI
-- policy (docs/commands.md). Once patched, the command is `sent` and waits for the device to
-- report the patched version applied: what it waits for is kept here, one row per command.
-- Rows whose command is no longer `sent` are ignored (they go with the command's history).
CREATE TABLE android_policy_commands (
    device_id       TEXT    NOT NULL,
    command_id      TEXT    NOT NULL,
    policy          TEXT    NOT NULL,    -- enterprises/<e>/policies/<p>
    policy_version  INTEGER NOT NULL,    -- the version the patch made
    settings        TEXT    NOT NULL,    -- JSON array: top-level Policy fields the command touched
    package         TEXT,                -- install_app / app_config: the app
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (device_id, command_id)
) WITHOUT ROWID;
CREATE INDEX android_policy_commands_created ON android_policy_commands (created_at);
