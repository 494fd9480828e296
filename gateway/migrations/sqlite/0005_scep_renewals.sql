-- Following an identity through its SCEP renewals (a ticket's status names the device whose
-- enrollment is bound to the certificate the ticket's challenge issued, or to a renewal of it):
-- look certificates up by the one they renew.
-- (issued_at, cert_sha256): the newest renewal first, without a sort.
CREATE INDEX scep_certificates_renewal_of ON scep_certificates (renewal_of, issued_at, cert_sha256)
    WHERE renewal_of IS NOT NULL;
