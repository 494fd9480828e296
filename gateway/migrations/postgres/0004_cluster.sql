-- Cross-instance duties (docs/scale-out.md): leases, claims of queued Android commands, and the
-- AMAPI request budget shared by every instance on this database. The same logical schema as
-- SQLite's 0011.

-- One row per lease (`relay:<sink>`, `expiry`, `retention`, `android-reconcile`, and each
-- running instance's heartbeat `instance:<id>`). Held by `holder` until `expires_at_ms` (Unix
-- milliseconds, the holder's clock) unless renewed; released by deleting the row.
CREATE TABLE leases (
    name           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    holder         TEXT   NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);

-- A queued Android command taken by one instance's dispatcher (its instance id, and when).
-- The command stays `queued` until the AMAPI outcome is recorded; a claim whose instance's
-- heartbeat lease has lapsed is abandoned (resolved by the `android-reconcile` lease holder).
ALTER TABLE commands ADD COLUMN claimed_by TEXT;
ALTER TABLE commands ADD COLUMN claimed_at BIGINT;

-- Request budgets shared by every instance: per bucket (`amapi:<project>`), the times (Unix
-- milliseconds, oldest first) of the grants still inside the window. Taken under the row lock.
CREATE TABLE request_budgets (
    bucket TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    grants BIGINT[] NOT NULL
);
