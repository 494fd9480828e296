-- Android `set_settings`, `install_app` and `app_config` are patches of the device's own AMAPI
-- policy (docs/commands.md). Once patched, the command is `sent` and waits for the device to
-- report the patched version applied: what it waits for is kept here, one row per command.
-- The same logical schema as SQLite's 0012.
CREATE TABLE android_policy_commands (
    device_id       TEXT COLLATE "C" NOT NULL,
    command_id      TEXT COLLATE "C" NOT NULL,
    policy          TEXT   NOT NULL,
    policy_version  BIGINT NOT NULL,
    settings        TEXT   NOT NULL,
    package         TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (device_id, command_id)
);
CREATE INDEX android_policy_commands_created ON android_policy_commands (created_at);
