-- Following an identity through its SCEP renewals (a ticket's status names the device whose
-- enrollment is bound to the certificate the ticket's challenge issued, or to a renewal of it):
-- look certificates up by the one they renew.
CREATE INDEX scep_certificates_renewal_of ON scep_certificates (renewal_of) WHERE renewal_of IS NOT NULL;
