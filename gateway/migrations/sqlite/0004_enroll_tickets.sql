-- Enrollment tickets (POST /enroll/session): the enrollment page's handle on one enrollment, kept
-- in the database so any instance behind a load balancer can serve the download and the status,
-- and so a restart does not lose them. `id` is the SHA-256 (hex) of the ticket the client holds;
-- the ticket itself is never stored.
CREATE TABLE enroll_tickets (
    id                    TEXT    NOT NULL PRIMARY KEY,
    created_at            INTEGER NOT NULL,
    expires_at            INTEGER NOT NULL,
    -- First download of a profile with this ticket; NULL until then.
    profile_downloaded_at INTEGER,
    downloads             INTEGER NOT NULL DEFAULT 0,
    -- `device` or `user`: the variant of the last profile downloaded.
    variant               TEXT
);

-- Purging old tickets (at each new ticket) reads by expiry.
CREATE INDEX enroll_tickets_expires ON enroll_tickets (expires_at);
