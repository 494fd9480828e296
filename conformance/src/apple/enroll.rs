//! Enrollment the way a real device does it: (optionally) an enrollment ticket from
//! `POST /enroll/session`, the signed profile from `GET /mdm/enroll`, its signature checked against
//! the roots the device trusts, then the SCEP payload followed (an RSA key of the size it asks for,
//! a PKCSReq with its challenge and subject), and the MDM payload's URLs, topic and `SignMessage`
//! used for Authenticate, TokenUpdate and everything after. Later, the identity can be renewed
//! through the same SCEP server with a RenewalReq signed by the current certificate.
//!
//! The steps are separate calls ([`Enroller::create_ticket`], [`Enroller::fetch_profile`],
//! [`Enroller::request_identity`], [`Enroller::device`], [`AppleDevice::enroll`]) so a test can look
//! at the gateway between them; [`AppleDevice::enroll_with_profile`] runs them all.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mdm_certs::scep::{FailInfo, PkiStatus};
use mdm_certs::{PKey, Private, TrustAnchors, X509};
use openssl::hash::MessageDigest;
use serde_json::Value as Json;

use super::device::{AppleDevice, DeviceError, IdentityMode};
use super::profile::{EnrollmentSettings, ProfileError, ScepPayload, verify_signed_profile};
use super::scep::{PendingRequest, ScepClient, ScepClientError};

/// The media type of a signed configuration profile.
const PROFILE_TYPE: &str = "application/x-apple-aspen-config";

/// Why an enrollment (or a renewal) did not complete.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{what} answered {status}: {body}")]
    Status { what: &'static str, status: u16, body: String },
    #[error("the enrollment profile came as {0:?}, not {PROFILE_TYPE}")]
    ContentType(String),
    #[error("{what}: unexpected answer: {detail}")]
    BadAnswer { what: &'static str, detail: String },
    #[error("enrollment profile refused: {0}")]
    Profile(#[from] ProfileError),
    #[error("SCEP: {0}")]
    Scep(#[from] ScepClientError),
    /// The SCEP server answered FAILURE.
    #[error("SCEP {message_type} answered FAILURE (failInfo {})", .fail_info.map(|f| f.label()).unwrap_or("absent"))]
    ScepFailure { message_type: &'static str, fail_info: Option<FailInfo> },
    #[error("SCEP {0} answered PENDING; this emulator does not poll")]
    ScepPending(&'static str),
    #[error("SCEP server does not offer {0} (GetCACaps)")]
    ScepCapability(&'static str),
    #[error("the profile asks for a {0:?} key; Apple devices make RSA keys only")]
    UnsupportedKeyType(String),
    #[error("the issued certificate is not usable: {0}")]
    IssuedCertificate(String),
    #[error("key generation: {0}")]
    Key(String),
    #[error("trusted roots: {0}")]
    Trust(String),
    #[error("this device did not enroll through a profile: it has no SCEP server to renew with")]
    NotProfileEnrolled,
    #[error(
        "the profile is for User Enrollment (EnrollmentMode {0:?}): such devices identify with EnrollmentID, which \
         this emulator does not send"
    )]
    UserEnrollment(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl EnrollError {
    /// The failInfo of a SCEP FAILURE, if this is one.
    pub fn scep_fail_info(&self) -> Option<FailInfo> {
        match self {
            EnrollError::ScepFailure { fail_info, .. } => *fail_info,
            _ => None,
        }
    }
}

/// An enrollment ticket (`POST /enroll/session`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub ticket: String,
    /// Relative to the gateway, e.g. `/mdm/enroll?ticket=…`.
    pub profile_url: String,
    pub status_url: String,
    pub expires_at: String,
}

/// `GET /enroll/session/<ticket>`.
#[derive(Debug, Clone, PartialEq)]
pub struct TicketState {
    /// `created`, `profile_downloaded`, `certificate_issued` or `enrolled`.
    pub state: String,
    pub device_id: Option<String>,
    pub expired: bool,
    /// The whole answer.
    pub raw: Json,
}

/// What renewing a profile-enrolled identity needs, kept on the device.
#[derive(Debug)]
pub(crate) struct ProfileContext {
    scep: ScepPayload,
    /// What the device trusts for TLS (to rebuild a client-certificate client after renewal).
    trust_pem: Vec<u8>,
    /// The profile's root payloads: issued identities must chain to one of them.
    roots: Vec<X509>,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn https_client(trust_pem: &[u8], identity: Option<(&PKey<Private>, &X509)>) -> Result<reqwest::Client, EnrollError> {
    let mut b =
        reqwest::Client::builder().use_rustls_tls().tls_built_in_root_certs(false).timeout(Duration::from_secs(30));
    for cert in reqwest::Certificate::from_pem_bundle(trust_pem)? {
        b = b.add_root_certificate(cert);
    }
    if let Some((key, cert)) = identity {
        let bad = |e: openssl::error::ErrorStack| EnrollError::Key(e.to_string());
        let mut pem = cert.to_pem().map_err(bad)?;
        pem.extend(key.private_key_to_pem_pkcs8().map_err(bad)?);
        b = b.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

/// A device that has not enrolled yet: what it trusts and where it gets its profile.
#[derive(Debug, Clone)]
pub struct Enroller {
    /// Where `/enroll/session` and `/mdm/enroll` are, e.g. `https://localhost:8443`.
    gateway_url: String,
    trust_pem: Vec<u8>,
    anchors: Vec<X509>,
    client: reqwest::Client,
    /// `?topic=` for the profile download (when the gateway has several push certificates).
    pub topic: Option<String>,
    /// On 429 (the gateway's enrollment rate limit), wait as told by `Retry-After` and try again,
    /// for at most this long in total per request. Zero: no retry.
    pub rate_limit_patience: Duration,
}

impl Enroller {
    /// `trust_pem`: the roots the device trusts, for the server's TLS certificate and for the
    /// profile's signature (the gateway's `ca.pem`, or the public roots a real device ships with).
    pub fn new(gateway_url: &str, trust_pem: &[u8]) -> Result<Enroller, EnrollError> {
        let client = https_client(trust_pem, None)?;
        Self::with_client(gateway_url, trust_pem, client)
    }

    /// Like [`Enroller::new`], sending through `client` (shared by many devices; it must trust
    /// the server and present no client certificate).
    pub fn with_client(gateway_url: &str, trust_pem: &[u8], client: reqwest::Client) -> Result<Enroller, EnrollError> {
        let anchors = X509::stack_from_pem(trust_pem).map_err(|e| EnrollError::Trust(e.to_string()))?;
        if anchors.is_empty() {
            return Err(EnrollError::Trust("no certificate in the PEM".into()));
        }
        Ok(Enroller {
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            trust_pem: trust_pem.to_vec(),
            anchors,
            client,
            topic: None,
            rate_limit_patience: Duration::ZERO,
        })
    }

    /// Sends `make()` until it is not a 429 or patience runs out.
    async fn send(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), EnrollError> {
        let deadline = tokio::time::Instant::now() + self.rate_limit_patience;
        loop {
            let resp = make().send().await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            if status == 429 {
                let wait = headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(Duration::from_secs(1));
                // Spread retries a little so a fleet does not come back all at once.
                let wait = wait + Duration::from_millis(rand::random::<u64>() % 500);
                if tokio::time::Instant::now() + wait <= deadline {
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Ok((status, headers, body));
        }
    }

    fn status_error(what: &'static str, status: u16, body: &[u8]) -> EnrollError {
        EnrollError::Status { what, status, body: String::from_utf8_lossy(body).trim().to_owned() }
    }

    /// `POST /enroll/session`, as the enrollment page does.
    pub async fn create_ticket(&self) -> Result<Ticket, EnrollError> {
        const WHAT: &str = "POST /enroll/session";
        let url = format!("{}/enroll/session", self.gateway_url);
        let (status, _, body) = self.send(|| self.client.post(&url)).await?;
        if status != 201 {
            return Err(Self::status_error(WHAT, status, &body));
        }
        let v: Json = serde_json::from_slice(&body)
            .map_err(|e| EnrollError::BadAnswer { what: WHAT, detail: format!("not JSON: {e}") })?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| EnrollError::BadAnswer { what: WHAT, detail: format!("no {k} in {v}") })
        };
        Ok(Ticket {
            ticket: field("ticket")?,
            profile_url: field("profile_url")?,
            status_url: field("status_url")?,
            expires_at: field("expires_at")?,
        })
    }

    /// `GET /enroll/session/<ticket>`, as the enrollment page polls it.
    pub async fn ticket_status(&self, ticket: &Ticket) -> Result<TicketState, EnrollError> {
        const WHAT: &str = "GET /enroll/session/<ticket>";
        let url = format!("{}{}", self.gateway_url, ticket.status_url);
        let resp = self.client.get(&url).send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        if status != 200 {
            return Err(Self::status_error(WHAT, status, &body));
        }
        let raw: Json = serde_json::from_slice(&body)
            .map_err(|e| EnrollError::BadAnswer { what: WHAT, detail: format!("not JSON: {e}") })?;
        let state = raw["state"]
            .as_str()
            .ok_or_else(|| EnrollError::BadAnswer { what: WHAT, detail: format!("no state in {raw}") })?
            .to_owned();
        Ok(TicketState {
            state,
            device_id: raw["device_id"].as_str().map(str::to_owned),
            expired: raw["expired"].as_bool().unwrap_or(false),
            raw,
        })
    }

    /// `GET /mdm/enroll` (with the ticket, when given): the signed profile as served.
    pub async fn download_profile(&self, ticket: Option<&Ticket>) -> Result<Vec<u8>, EnrollError> {
        let url = format!("{}/mdm/enroll", self.gateway_url);
        let mut query = Vec::new();
        if let Some(t) = ticket {
            query.push(("ticket", t.ticket.as_str()));
        }
        if let Some(topic) = &self.topic {
            query.push(("topic", topic.as_str()));
        }
        let (status, headers, body) = self.send(|| self.client.get(&url).query(&query)).await?;
        if status != 200 {
            return Err(Self::status_error("GET /mdm/enroll", status, &body));
        }
        let content_type = headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if content_type != PROFILE_TYPE {
            return Err(EnrollError::ContentType(content_type.to_owned()));
        }
        Ok(body.to_vec())
    }

    /// Checks a downloaded profile's signature against the trusted roots and reads it.
    pub fn read_profile(&self, der: &[u8]) -> Result<EnrollmentSettings, EnrollError> {
        let verified = verify_signed_profile(der, &self.anchors)?;
        Ok(EnrollmentSettings::from_plist(&verified.content)?)
    }

    /// [`Enroller::download_profile`] then [`Enroller::read_profile`].
    pub async fn fetch_profile(&self, ticket: Option<&Ticket>) -> Result<EnrollmentSettings, EnrollError> {
        let der = self.download_profile(ticket).await?;
        self.read_profile(&der)
    }

    /// Runs the profile's SCEP payload: a new key as it asks, a PKCSReq with its subject and
    /// challenge. Returns the key and the issued certificate, checked to certify that key and to
    /// chain to one of the profile's roots (or the trusted ones).
    pub async fn request_identity(&self, settings: &EnrollmentSettings) -> Result<(PKey<Private>, X509), EnrollError> {
        let roots = self.identity_roots(settings)?;
        let scep = &settings.scep;
        let server = ScepServer::connect(scep, self.client.clone()).await?;
        let key = new_key(scep).await?;
        let subject = scep.subject_name()?;
        let req = PendingRequest::pkcs_req(key.clone(), &subject, scep.challenge.as_deref(), &server.ra, unix_now())?;
        let cert = server.exchange(&req, "PKCSReq").await?;
        check_issued(&cert, &key, &roots)?;
        Ok((key, cert))
    }

    fn identity_roots(&self, settings: &EnrollmentSettings) -> Result<Vec<X509>, EnrollError> {
        let mut roots = settings.root_certificates()?;
        roots.extend(self.anchors.iter().cloned());
        Ok(roots)
    }

    /// The enrolled-to-be device: the identity from [`Enroller::request_identity`], the profile's
    /// URLs and topic, `Mdm-Signature` when the profile says `SignMessage` (else the identity as
    /// TLS client certificate). Sends nothing.
    pub fn device(
        &self,
        udid: &str,
        settings: &EnrollmentSettings,
        key: PKey<Private>,
        cert: X509,
    ) -> Result<AppleDevice, EnrollError> {
        supported(settings)?;
        let (mode, client) = if settings.mdm.sign_message {
            (IdentityMode::SignMessages, self.client.clone())
        } else {
            (IdentityMode::TlsClientCertificate, https_client(&self.trust_pem, Some((&key, &cert)))?)
        };
        let mut device = AppleDevice::with_client(udid, key, cert, mode, &self.gateway_url, client);
        device.server_url = settings.mdm.server_url.clone();
        device.check_in_url = settings.mdm.check_in_url.clone();
        device.topic = settings.mdm.topic.clone();
        device.enrolled_with = Some(Arc::new(ProfileContext {
            scep: settings.scep.clone(),
            trust_pem: self.trust_pem.clone(),
            roots: self.identity_roots(settings)?,
        }));
        Ok(device)
    }

    /// Profile (with `ticket` when given) and SCEP: a device with its identity that has not
    /// checked in yet.
    pub async fn identity_device(&self, udid: &str, ticket: Option<&Ticket>) -> Result<AppleDevice, EnrollError> {
        let settings = self.fetch_profile(ticket).await?;
        // Refuse before SCEP, so an unsupported profile does not use up its challenge.
        supported(&settings)?;
        let (key, cert) = self.request_identity(&settings).await?;
        self.device(udid, &settings, key, cert)
    }
}

/// Profiles this emulator cannot follow faithfully.
fn supported(settings: &EnrollmentSettings) -> Result<(), EnrollError> {
    match &settings.mdm.enrollment_mode {
        Some(mode) => Err(EnrollError::UserEnrollment(mode.clone())),
        None => Ok(()),
    }
}

/// A SCEP server as the device sees it after GetCACaps and GetCACert.
struct ScepServer {
    client: ScepClient,
    caps: Vec<String>,
    /// The certificate requests are encrypted to and replies are signed with (the RA).
    ra: X509,
}

impl ScepServer {
    async fn connect(scep: &ScepPayload, http: reqwest::Client) -> Result<ScepServer, EnrollError> {
        let client = ScepClient::new(&scep.url, http);
        let caps: Vec<String> = client.ca_caps().await?.lines().map(|l| l.trim().to_owned()).collect();
        let certs = client.ca_certs_named(scep.name.as_deref()).await?;
        if let Some(fp) = &scep.ca_fingerprint {
            let digest = match fp.len() {
                16 => MessageDigest::md5(),
                20 => MessageDigest::sha1(),
                _ => MessageDigest::sha256(),
            };
            let matches = certs.iter().any(|c| c.digest(digest).map(|d| d.as_ref() == fp.as_slice()).unwrap_or(false));
            if !matches {
                return Err(EnrollError::IssuedCertificate(
                    "no certificate from GetCACert matches the profile's CAFingerprint".into(),
                ));
            }
        }
        let ra = ScepClient::recipient(&certs)?;
        Ok(ScepServer { client, caps, ra })
    }

    fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// Sends the request (POST when offered, as devices prefer) and takes the certificate from a
    /// SUCCESS answer.
    async fn exchange(&self, req: &PendingRequest, message_type: &'static str) -> Result<X509, EnrollError> {
        let reply = if self.has("POSTPKIOperation") {
            self.client.post_pki(&req.der).await?
        } else {
            self.client.get_pki(&req.der).await?
        };
        if reply.status != 200 {
            return Err(EnrollError::Status {
                what: "SCEP PKIOperation",
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).trim().to_owned(),
            });
        }
        let rep = req.read_reply(&reply.body, &self.ra)?;
        match rep.status {
            PkiStatus::SUCCESS => {}
            PkiStatus::PENDING => return Err(EnrollError::ScepPending(message_type)),
            _ => return Err(EnrollError::ScepFailure { message_type, fail_info: rep.fail_info }),
        }
        let own = req.new_key.public_key_to_der().map_err(|e| EnrollError::Key(e.to_string()))?;
        rep.certificates
            .into_iter()
            .find(|c| c.public_key().and_then(|k| k.public_key_to_der()).map(|d| d == own).unwrap_or(false))
            .ok_or_else(|| EnrollError::IssuedCertificate("the SUCCESS reply has no certificate for our key".into()))
    }
}

/// A key as the SCEP payload asks (RSA of `Keysize` bits), made off the async threads.
async fn new_key(scep: &ScepPayload) -> Result<PKey<Private>, EnrollError> {
    if !scep.key_type.eq_ignore_ascii_case("RSA") {
        return Err(EnrollError::UnsupportedKeyType(scep.key_type.clone()));
    }
    let bits = scep.key_size;
    tokio::task::spawn_blocking(move || {
        openssl::rsa::Rsa::generate(bits).and_then(PKey::from_rsa).map_err(|e| EnrollError::Key(e.to_string()))
    })
    .await
    .map_err(|e| EnrollError::Key(e.to_string()))?
}

fn check_issued(cert: &X509, key: &PKey<Private>, roots: &[X509]) -> Result<(), EnrollError> {
    let ours = cert.public_key().map(|k| k.public_eq(key)).unwrap_or(false);
    if !ours {
        return Err(EnrollError::IssuedCertificate("it certifies another key".into()));
    }
    mdm_certs::verify_device_certificate(cert, &[], &TrustAnchors::new(roots.to_vec()), unix_now())
        .map_err(|e| EnrollError::IssuedCertificate(e.to_string()))
}

impl AppleDevice {
    /// The whole real-world enrollment: profile (through `ticket` when given), signature check,
    /// SCEP, then Authenticate and TokenUpdate with the issued identity.
    pub async fn enroll_with_profile(
        udid: &str,
        enroller: &Enroller,
        ticket: Option<&Ticket>,
    ) -> Result<AppleDevice, EnrollError> {
        let device = enroller.identity_device(udid, ticket).await?;
        device.enroll().await?;
        Ok(device)
    }

    /// The SCEP settings this device enrolled with, when it enrolled through a profile.
    pub fn scep_settings(&self) -> Option<&ScepPayload> {
        self.enrolled_with.as_ref().map(|c| &c.scep)
    }

    /// Renews the identity through the profile's SCEP server: a new key, a RenewalReq for the
    /// current subject signed with the current certificate. On success the device uses the new
    /// key and certificate from then on (keep a [`Clone`] to hold on to the old one).
    pub async fn renew_identity(&mut self) -> Result<(), EnrollError> {
        let ctx = self.enrolled_with.clone().ok_or(EnrollError::NotProfileEnrolled)?;
        let http = if self.mode == IdentityMode::SignMessages {
            self.client.clone()
        } else {
            https_client(&ctx.trust_pem, None)?
        };
        let server = ScepServer::connect(&ctx.scep, http).await?;
        if !server.has("Renewal") {
            return Err(EnrollError::ScepCapability("Renewal"));
        }
        let key = new_key(&ctx.scep).await?;
        let subject = self.cert.subject_name().to_owned().map_err(|e| EnrollError::Key(e.to_string()))?;
        let req = PendingRequest::renewal_req(self.cert.clone(), self.key.clone(), key.clone(), &subject, &server.ra)?;
        let cert = server.exchange(&req, "RenewalReq").await?;
        check_issued(&cert, &key, &ctx.roots)?;
        if self.mode == IdentityMode::TlsClientCertificate {
            self.client = https_client(&ctx.trust_pem, Some((&key, &cert)))?;
        }
        self.key = key;
        self.cert = cert;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apple::profile::MdmPayload;

    fn settings(enrollment_mode: Option<&str>) -> EnrollmentSettings {
        EnrollmentSettings {
            identifier: "x.enrollment".into(),
            uuid: "11111111-1111-4111-8111-111111111111".into(),
            mdm: MdmPayload {
                server_url: "https://mdm.example.test/mdm".into(),
                check_in_url: "https://mdm.example.test/checkin".into(),
                topic: "com.apple.mgmt.External.x".into(),
                identity_certificate_uuid: "u".into(),
                sign_message: true,
                access_rights: None,
                server_capabilities: Vec::new(),
                enrollment_mode: enrollment_mode.map(str::to_owned),
                assigned_managed_apple_id: enrollment_mode.map(|_| "ana@example.com".to_owned()),
            },
            scep: ScepPayload {
                url: "https://mdm.example.test/scep".into(),
                name: None,
                challenge: None,
                subject: Vec::new(),
                key_type: "RSA".into(),
                key_size: 2048,
                key_usage: 5,
                ca_fingerprint: None,
            },
            roots: Vec::new(),
        }
    }

    #[test]
    fn user_enrollment_profiles_are_refused_before_scep() {
        assert!(supported(&settings(None)).is_ok());
        let e = supported(&settings(Some("BYOD"))).expect_err("BYOD");
        assert!(matches!(e, EnrollError::UserEnrollment(ref m) if m == "BYOD"), "{e}");
        assert!(e.to_string().contains("EnrollmentID"), "{e}");
    }

    #[tokio::test]
    async fn keys_are_made_as_the_profile_asks() {
        let mut scep = settings(None).scep;
        let key = new_key(&scep).await.expect("RSA 2048");
        assert_eq!((key.id(), key.bits()), (openssl::pkey::Id::RSA, 2048));
        scep.key_type = "ECSECPrimeRandom".into();
        assert!(matches!(new_key(&scep).await, Err(EnrollError::UnsupportedKeyType(t)) if t == "ECSECPrimeRandom"));
    }
}
