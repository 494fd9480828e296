//! SCEP enrollment service: one-time and static challenges, issuing certificates for verified
//! PKCSReq / RenewalReq messages, and the record of what was issued. The HTTP side is
//! `sources::scep`; the message formats are `mdm_certs::scep`.
//!
//! Challenge rule: a challenge is checked only after every other check of the request passed
//! (signature, decryption, CSR signature, key strength), and a one-time challenge is consumed in
//! the same store transaction that records the issued certificate. A refused request therefore
//! never uses up a challenge, and a challenge can never issue two certificates.

use std::sync::{Arc, OnceLock};

use mdm_certs::devpki;
use mdm_certs::scep::{
    CertRequest, EnvelopeSecret, FailInfo, MessageType, PkiMessage, ServerIdentity, VerifyOptions, subject_text,
};
use mdm_certs::{PKey, Private, TrustAnchors, X509};
use sha2::{Digest as _, Sha256};

use crate::clock::Clock;
use crate::config::AppleConfig;
use crate::store::{NewScepChallenge, ScepCertificate, ScepRecord, Store, StoreError};

pub use crate::store::TicketStatus;

/// `GetCACaps` answer (RFC 8894 §3.5.2): what this server supports.
pub const CA_CAPS: &str = "AES\nDES3\nPOSTPKIOperation\nRenewal\nSHA-256\nSHA-512\nSCEPStandard\n";

/// How far before issuance SCEP certificates start being valid (device clocks a little behind).
const NOT_BEFORE_SLACK_S: i64 = 300;

/// The answer to a PKIOperation.
#[derive(Debug)]
pub enum PkiOutcome {
    /// Not a PKI message (nothing to address a CertRep to): HTTP 400.
    Malformed { reason: &'static str, detail: String },
    /// A CertRep to send with 200: SUCCESS (`fail_info` `None`) or FAILURE.
    Reply { der: Vec<u8>, message_type: MessageType, fail_info: Option<FailInfo>, reason: &'static str, detail: String },
    /// The server could not answer (store or openssl failure): HTTP 500, the client retries.
    Internal { message_type: Option<MessageType>, detail: String },
}

/// One-time or static: which challenge a request used.
enum ChallengeUse {
    Static,
    OneTime { sha256: String, ticket: Option<String> },
}

pub struct ScepService {
    ra: X509,
    ra_key: PKey<Private>,
    ca: X509,
    ca_key: PKey<Private>,
    /// RenewalReq signers must chain to the gateway CA, and only to it.
    anchors: TrustAnchors,
    static_challenge: Option<String>,
    challenge_ttl_s: i64,
    validity_days: u32,
    allow_des: bool,
    ca_certs: Vec<u8>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ScepService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScepService")
            .field("static_challenge", &self.static_challenge.is_some())
            .field("challenge_ttl_s", &self.challenge_ttl_s)
            .field("validity_days", &self.validity_days)
            .field("allow_des", &self.allow_des)
            .finish_non_exhaustive()
    }
}

/// SHA-256 hex of a challenge: the only form stored.
pub fn challenge_sha256(challenge: &str) -> String {
    hex::encode(Sha256::digest(challenge.as_bytes()))
}

/// Loads OpenSSL's legacy provider (single DES) once per process and keeps it loaded.
fn legacy_provider_loaded() -> bool {
    static LEGACY: OnceLock<Option<openssl::provider::Provider>> = OnceLock::new();
    LEGACY.get_or_init(|| openssl::provider::Provider::try_load(None, "legacy", true).ok()).is_some()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ScepService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &AppleConfig,
        ca: X509,
        ca_key: PKey<Private>,
        ra: X509,
        ra_key: PKey<Private>,
        static_challenge: String,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<ScepService, String> {
        let ca_certs = mdm_certs::scep::certs_only(&[ra.clone(), ca.clone()]).map_err(|e| e.to_string())?;
        if config.scep_allow_des && !legacy_provider_loaded() {
            return Err("apple.scep_allow_des needs OpenSSL's legacy provider, which could not be loaded".into());
        }
        Ok(ScepService {
            anchors: TrustAnchors::new(vec![ca.clone()]),
            ra,
            ra_key,
            ca,
            ca_key,
            static_challenge: config.scep_static_challenge.then_some(static_challenge),
            challenge_ttl_s: i64::try_from(config.scep_challenge_ttl_s).unwrap_or(i64::MAX),
            validity_days: config.scep_cert_validity_days,
            allow_des: config.scep_allow_des,
            ca_certs,
            store,
            clock,
        })
    }

    /// Creates a one-time challenge, optionally tied to an opaque enrollment `ticket`, valid for
    /// `apple.scep_challenge_ttl_s`.
    pub async fn issue_challenge(&self, ticket: Option<&str>) -> Result<String, StoreError> {
        self.issue_challenge_expiring(ticket).await.map(|(c, _)| c)
    }

    /// [`ScepService::issue_challenge`], also returning when it expires (unix seconds).
    pub async fn issue_challenge_expiring(&self, ticket: Option<&str>) -> Result<(String, i64), StoreError> {
        // 16 random bytes in hex: PrintableString-safe and easy to put in a profile.
        let challenge = hex::encode(rand::random::<[u8; 16]>());
        let now = self.clock.unix();
        let expires_at = now.saturating_add(self.challenge_ttl_s);
        self.store
            .create_scep_challenge(&NewScepChallenge {
                challenge_sha256: challenge_sha256(&challenge),
                ticket: ticket.map(str::to_owned),
                created_at: now,
                expires_at,
            })
            .await?;
        Ok((challenge, expires_at))
    }

    /// Whether a challenge handed out for `ticket` was used, and for which certificate. `None`
    /// when no challenge was ever issued for it.
    pub async fn ticket_status(&self, ticket: &str) -> Result<Option<TicketStatus>, StoreError> {
        self.store.scep_ticket_status(ticket).await
    }

    /// The `GetCACert` body: a certs-only PKCS#7 with the RA and the CA
    /// (`application/x-x509-ca-ra-cert`).
    pub fn ca_certs(&self) -> &[u8] {
        &self.ca_certs
    }

    /// The RA certificate requests must be encrypted to.
    pub fn ra_certificate(&self) -> &X509 {
        &self.ra
    }

    fn server(&self) -> ServerIdentity<'_> {
        ServerIdentity { cert: &self.ra, key: &self.ra_key }
    }

    /// Answers one PKIOperation message.
    pub async fn pki_operation(&self, der: &[u8]) -> PkiOutcome {
        let msg = match PkiMessage::decode(der) {
            Ok(m) => m,
            Err(e) => return PkiOutcome::Malformed { reason: e.reason(), detail: e.to_string() },
        };
        let message_type = msg.message_type;
        let now = self.clock.unix();
        let opts = VerifyOptions { allow_des: self.allow_des, renewal_anchors: &self.anchors, now };
        let sender_nonce: [u8; 16] = rand::random();
        let req = match msg.verify(self.server(), &opts) {
            Ok(r) => r,
            Err(refused) => {
                let fail_info = refused.fail_info();
                return match refused.reply.failure(self.server(), fail_info, &sender_nonce) {
                    Ok(der) => PkiOutcome::Reply {
                        der,
                        message_type,
                        fail_info: Some(fail_info),
                        reason: refused.error.reason(),
                        detail: refused.error.to_string(),
                    },
                    Err(e) => PkiOutcome::Internal { message_type: Some(message_type), detail: e.to_string() },
                };
            }
        };
        let failure = |fail_info: FailInfo, reason: &'static str, detail: String| match req.reply.failure(
            self.server(),
            fail_info,
            &sender_nonce,
        ) {
            Ok(der) => PkiOutcome::Reply { der, message_type, fail_info: Some(fail_info), reason, detail },
            Err(e) => PkiOutcome::Internal { message_type: Some(message_type), detail: e.to_string() },
        };
        let challenge = if message_type == MessageType::RENEWAL_REQ {
            // Authenticated by the certificate being renewed; a challenge in the CSR is ignored
            // (and not consumed).
            None
        } else {
            match self.check_challenge(req.csr.challenge.as_deref(), now).await {
                Ok(Ok(c)) => Some(c),
                Ok(Err((reason, detail))) => return failure(FailInfo::BAD_REQUEST, reason, detail),
                Err(e) => return PkiOutcome::Internal { message_type: Some(message_type), detail: e.to_string() },
            }
        };
        match self.issue(&req, challenge, now).await {
            Ok(Ok(issued)) => {
                let secret = EnvelopeSecret(rand::random());
                match req.reply.success(self.server(), &issued, &sender_nonce, &secret) {
                    Ok(der) => PkiOutcome::Reply {
                        der,
                        message_type,
                        fail_info: None,
                        reason: "issued",
                        detail: format!("issued {}", subject_text(issued.subject_name())),
                    },
                    Err(e) => PkiOutcome::Internal { message_type: Some(message_type), detail: e.to_string() },
                }
            }
            Ok(Err((reason, detail))) => failure(FailInfo::BAD_REQUEST, reason, detail),
            Err(detail) => PkiOutcome::Internal { message_type: Some(message_type), detail },
        }
    }

    /// `Ok(Err((reason, detail)))` for a refused challenge (badRequest).
    async fn check_challenge(
        &self,
        challenge: Option<&str>,
        now: i64,
    ) -> Result<Result<ChallengeUse, (&'static str, String)>, StoreError> {
        let Some(challenge) = challenge else {
            return Ok(Err(("missing_challenge", "the CSR has no challengePassword".into())));
        };
        if let Some(s) = &self.static_challenge
            && ct_eq(s.as_bytes(), challenge.as_bytes())
        {
            return Ok(Ok(ChallengeUse::Static));
        }
        let sha256 = challenge_sha256(challenge);
        let Some(stored) = self.store.scep_challenge(&sha256).await? else {
            return Ok(Err(("wrong_challenge", "the challenge password is not one this server issued".into())));
        };
        if stored.used_at.is_some() {
            return Ok(Err(("challenge_used", "the challenge password was already used".into())));
        }
        if stored.expires_at <= now {
            return Ok(Err(("challenge_expired", "the challenge password has expired".into())));
        }
        Ok(Ok(ChallengeUse::OneTime { sha256, ticket: stored.ticket }))
    }

    /// Issues and records the certificate; `Ok(Err(..))` when the challenge was taken meanwhile.
    async fn issue(
        &self,
        req: &CertRequest,
        challenge: Option<ChallengeUse>,
        now: i64,
    ) -> Result<Result<X509, (&'static str, String)>, String> {
        let serial = devpki::serial_from_random(rand::random());
        let not_before = now - NOT_BEFORE_SLACK_S;
        let not_after = now + i64::from(self.validity_days) * 86_400;
        let cert = devpki::issue_certificate_for_request(
            &self.ca,
            &self.ca_key,
            &req.csr.subject,
            &req.csr.public_key,
            not_before,
            not_after,
            &serial,
        )
        .map_err(|e| e.to_string())?;
        let der = cert.to_der().map_err(|e| e.to_string())?;
        let signer_der = req.signer.to_der().map_err(|e| e.to_string())?;
        let (consume, ticket) = match challenge {
            Some(ChallengeUse::OneTime { sha256, ticket }) => (Some(sha256), ticket),
            _ => (None, None),
        };
        let renewal = req.message_type == MessageType::RENEWAL_REQ;
        let record = ScepCertificate {
            cert_sha256: hex::encode(Sha256::digest(&der)),
            serial: hex::encode(serial),
            subject: subject_text(cert.subject_name()),
            not_before,
            not_after,
            message_type: req.message_type.label().to_owned(),
            transaction_id: req.transaction_id.clone(),
            challenge_sha256: consume.clone(),
            ticket,
            renewal_of: renewal.then(|| hex::encode(Sha256::digest(&signer_der))),
            issued_at: now,
        };
        match self.store.record_scep_certificate(&record, consume.as_deref(), now).await.map_err(|e| e.to_string())? {
            ScepRecord::Recorded => Ok(Ok(cert)),
            ScepRecord::ChallengeUnavailable => {
                Ok(Err(("challenge_used", "the challenge password was used or expired meanwhile".into())))
            }
        }
    }
}
