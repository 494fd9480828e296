-- The enrollment gate: corporate device identifiers, and counting a user's enrolled devices.

-- Imported IMEI and serial number lists (PUT /v1/enrollment/corporate-identifiers): a device
-- whose reported identifier is listed enrolls as corporate.
CREATE TABLE corporate_identifiers (
    kind            TEXT NOT NULL,          -- imei | serial
    identifier      TEXT NOT NULL,          -- normalised: serials upper case, IMEIs digits only
    details         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    enrolled_device TEXT,                   -- the device that enrolled with it, if any
    enrolled_at     INTEGER,
    PRIMARY KEY (kind, identifier)
) WITHOUT ROWID;

-- Devices per user (the enrolled user recorded in the inventory), over all platforms.
CREATE INDEX enrollments_enrolled_user
    ON enrollments (lower(json_extract(inventory, '$.enrolled_user')))
    WHERE parent IS NULL;
