-- Windows enrollment: every device certificate issued by the enrollment service (MS-WSTEP), for
-- enrollment or renewal. The enrollment itself is a row of `enrollments` (platform `windows`)
-- whose `cert_sha256` is the certificate currently bound; it is written in the same transaction.

CREATE TABLE windows_certificates (
    cert_sha256 TEXT    NOT NULL PRIMARY KEY,
    device_id   TEXT    NOT NULL,
    -- Hex, big-endian, as in the certificate.
    serial      TEXT    NOT NULL,
    -- SHA-1 of the DER, upper-case hex: the node name in the provisioning document.
    thumbprint  TEXT    NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('enroll', 'renew')),
    -- The user it was issued to, lower case (renewals keep the enrolling user).
    upn         TEXT,
    auth_policy TEXT    NOT NULL,
    -- A renewal: the fingerprint of the certificate it replaces.
    renewal_of  TEXT,
    issued_at   INTEGER NOT NULL
);

CREATE INDEX windows_certificates_device ON windows_certificates (device_id, issued_at);
-- windows_devices_of_user (device caps).
CREATE INDEX windows_certificates_upn ON windows_certificates (upn) WHERE upn IS NOT NULL;
