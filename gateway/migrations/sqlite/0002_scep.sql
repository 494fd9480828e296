-- SCEP: one-time enrollment challenges and the certificates issued through SCEP.
-- Challenges are stored only as the SHA-256 (hex) of their text. A challenge is consumed in the
-- same transaction that records the certificate issued with it.

CREATE TABLE scep_challenges (
    challenge_sha256   TEXT    NOT NULL PRIMARY KEY,
    -- Opaque enrollment ticket of the caller that asked for the challenge, if any.
    ticket             TEXT,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    -- Set exactly once, when a certificate is issued with it.
    used_at            INTEGER,
    issued_cert_sha256 TEXT
);

-- ticket_status.
CREATE INDEX scep_challenges_ticket ON scep_challenges (ticket, used_at) WHERE ticket IS NOT NULL;

CREATE TABLE scep_certificates (
    cert_sha256      TEXT    NOT NULL PRIMARY KEY,
    -- Hex, big-endian, as in the certificate.
    serial           TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    not_before       INTEGER NOT NULL,
    not_after        INTEGER NOT NULL,
    message_type     TEXT    NOT NULL CHECK (message_type IN ('PKCSReq', 'RenewalReq')),
    transaction_id   TEXT    NOT NULL,
    -- PKCSReq with a one-time challenge: which one (hash) and its ticket.
    challenge_sha256 TEXT,
    ticket           TEXT,
    -- RenewalReq: the fingerprint of the certificate that signed the request.
    renewal_of       TEXT,
    issued_at        INTEGER NOT NULL
);

CREATE INDEX scep_certificates_issued_at ON scep_certificates (issued_at);
