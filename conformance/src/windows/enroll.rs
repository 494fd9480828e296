//! The emulated device: the requests a Windows enrollment client sends, in its order, over
//! HTTPS to the gateway.

use std::time::Duration;

use bytes::Bytes;
use mdm_certs::wstep::{self, CsrOptions, CsrSignature};
use mdm_certs::{PKey, Private, X509, devpki};
use mdm_windows::enroll::client::{Discovery, Enrolled, PolicyKnown};
use mdm_windows::enroll::{
    AdditionalContext, AuthPolicy, ClientCredential, CsrFormat, DiscoverRequest, EnrollError, Fault, ReplyError,
    RequestVersion,
};
use openssl::hash::MessageDigest;
use openssl::x509::{X509NameBuilder, X509ReqBuilder};

use super::WindowsIdentity;

/// How the device authenticates.
#[derive(Clone)]
pub enum EnrollCredential {
    /// OnPremise: the UPN and the enrollment secret.
    Password { upn: String, password: String },
    /// Federated: a token from the STS (a JWT), sent base64-encoded.
    Token(String),
}

impl std::fmt::Debug for EnrollCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollCredential::Password { upn, .. } => {
                f.debug_struct("Password").field("upn", upn).finish_non_exhaustive()
            }
            EnrollCredential::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// What certificate request the device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrStyle {
    /// A plain PKCS#10 from openssl's request builder: RSA, `CN=<email>`, SHA-256.
    Openssl,
    /// What real Windows sends at its quirkiest: a PrintableString subject holding `!` and NUL
    /// bytes, `sha1WithRSA` under its ISO OID, the device id in extension 1.3.6.1.4.1.311.66.1.0.
    WindowsQuirks,
    /// The openssl PKCS#10 inside a PKCS#7 signed with a throwaway self-signed certificate.
    Pkcs7Wrapped,
}

/// The device's facts and choices.
#[derive(Debug, Clone)]
pub struct WindowsEnrollerConfig {
    /// The native DeviceID.
    pub device_id: String,
    /// Typed in the Workplace settings; also the discovery `EmailAddress`.
    pub email: String,
    pub credential: EnrollCredential,
    /// `RequestVersion` of the discovery request (Windows 11 25H2 sends 9.0).
    pub request_version: String,
    /// `Full` (user enrollment) or `Device`.
    pub enrollment_type: String,
    pub csr_style: CsrStyle,
    /// Send `DeviceID` as a context item (Windows does; off leaves only the CSR extension).
    pub device_id_in_context: bool,
    pub device_name: String,
    pub os_version: String,
}

impl WindowsEnrollerConfig {
    /// An OnPremise device: `upn` and `password`, Windows 11 defaults.
    pub fn on_premise(device_id: &str, upn: &str, password: &str) -> Self {
        WindowsEnrollerConfig {
            device_id: device_id.to_owned(),
            email: upn.to_owned(),
            credential: EnrollCredential::Password { upn: upn.to_owned(), password: password.to_owned() },
            request_version: "9.0".into(),
            enrollment_type: "Full".into(),
            csr_style: CsrStyle::Openssl,
            device_id_in_context: true,
            device_name: format!("DESKTOP-{}", &device_id[..device_id.len().min(7)]),
            os_version: "10.0.26200.6584".into(),
        }
    }
}

/// A raw HTTP answer, for tests that look at the wire.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub content_length: Option<String>,
    pub transfer_encoding: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum WindowsEnrollError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the server answered HTTP {status} with a fault: {fault}")]
    Fault { status: u16, fault: Fault },
    #[error("the server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("unreadable answer: {0}")]
    Decode(#[from] EnrollError),
    #[error("discovery offered {0}, which this device is not configured for")]
    AuthPolicy(String),
    #[error("certificates: {0}")]
    Crypto(String),
}

fn crypto(e: impl std::fmt::Display) -> WindowsEnrollError {
    WindowsEnrollError::Crypto(e.to_string())
}

/// An emulated Windows device that has not enrolled yet (or renews an identity).
#[derive(Debug, Clone)]
pub struct WindowsEnroller {
    pub config: WindowsEnrollerConfig,
    base_url: String,
    trust_pem: Vec<u8>,
    client: reqwest::Client,
    /// Capture mode ([`WindowsEnroller::record_to`], or `MDM_CAPTURE_DIR`).
    recorder: Option<crate::suite::Recorder>,
}

fn message_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::now_v7())
}

impl WindowsEnroller {
    /// A device that reaches the gateway at `base_url` (`https://host:port`, standing in for
    /// `https://EnterpriseEnrollment.<domain>`) and trusts `gateway_ca_pem`.
    pub fn new(
        config: WindowsEnrollerConfig,
        base_url: &str,
        gateway_ca_pem: &[u8],
    ) -> Result<Self, WindowsEnrollError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(gateway_ca_pem)?)
            .timeout(Duration::from_secs(30))
            .build()?;
        let enroller = WindowsEnroller {
            config,
            base_url: base_url.trim_end_matches('/').to_owned(),
            trust_pem: gateway_ca_pem.to_vec(),
            client,
            recorder: None,
        };
        Ok(match std::env::var_os("MDM_CAPTURE_DIR") {
            Some(root) => enroller.record_to(std::path::PathBuf::from(root)),
            None => enroller,
        })
    }

    /// Capture mode: the enrollment traffic (discovery, policy, enrollment, renewal) is written
    /// as a transcript under `root` (`<root>/captured/windows-enroll/<device id>/`), with the
    /// secret as `{{enroll_secret}}`, the UPN as `{{upn}}`, the DeviceID as `{{windows_device_id}}`.
    pub fn record_to(mut self, root: impl Into<std::path::PathBuf>) -> Self {
        let r = crate::suite::Recorder::new(
            root,
            "captured/windows-enroll",
            &self.config.device_id,
            "Recorded from the emulated Windows enrollment client (mdm-conformance capture mode).",
            crate::suite::format::Setup::None,
        );
        if let EnrollCredential::Password { upn, password } = &self.config.credential {
            r.template(password, "{{enroll_secret}}");
            r.template(upn, "{{upn}}");
        }
        r.template(&self.config.email, "{{upn}}");
        r.template(&self.base_url, "{{gateway}}");
        r.template(&self.config.device_id, "{{windows_device_id}}");
        self.recorder = Some(r);
        self
    }

    fn record(&self, method: &str, url: &str, body: &[u8], reply: &HttpReply) {
        use crate::suite::format::MessageKind;
        let Some(r) = &self.recorder else { return };
        let path = reqwest::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_else(|_| url.to_owned());
        let lower = path.to_ascii_lowercase();
        let (name, kind, answer) = if lower.ends_with("/discovery.svc") {
            ("Discover", MessageKind::Mde2Discover, MessageKind::Mde2DiscoverResponse)
        } else if lower.ends_with("/policy.svc") {
            ("GetPolicies", MessageKind::XcepGetPolicies, MessageKind::XcepGetPoliciesResponse)
        } else {
            ("RequestSecurityToken", MessageKind::WstepRequest, MessageKind::WstepResponse)
        };
        let get = method == "GET";
        let reply_kind = match reply.status {
            _ if reply.body.is_empty() => None,
            200 => Some(answer),
            _ => Some(MessageKind::SoapFault),
        };
        let headers: &[(&str, &str)] = if get {
            &[("User-Agent", "ENROLLClient")]
        } else {
            &[("Content-Type", "application/soap+xml; charset=utf-8")]
        };
        let traffic = crate::suite::record::Traffic {
            name: if get { "GET discovery" } else { name },
            method,
            path: &path,
            headers,
            identity: "none",
            body,
            kind: (!get).then_some(kind),
            status: reply.status,
            content_type: reply.content_type.as_deref(),
            reply: &reply.body,
            reply_kind,
            captures: Vec::new(),
        };
        if let Err(e) = r.record(&traffic) {
            eprintln!("capture mode: {}: {e}", r.dir().display());
        }
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/EnrollmentServer/Discovery.svc", self.base_url)
    }

    async fn send(req: reqwest::RequestBuilder) -> Result<HttpReply, WindowsEnrollError> {
        let resp = req.send().await?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (content_type, content_length, transfer_encoding) =
            (header("content-type"), header("content-length"), header("transfer-encoding"));
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        Ok(HttpReply { status, content_type, content_length, transfer_encoding, body })
    }

    /// `POST` a SOAP body as Windows does.
    pub async fn post(&self, url: &str, body: Vec<u8>) -> Result<HttpReply, WindowsEnrollError> {
        self.post_with(&self.client, url, body).await
    }

    async fn post_with(
        &self,
        client: &reqwest::Client,
        url: &str,
        body: Vec<u8>,
    ) -> Result<HttpReply, WindowsEnrollError> {
        let req = client
            .post(url)
            .header("Content-Type", "application/soap+xml; charset=utf-8")
            .header("User-Agent", "ENROLLClient")
            .header("Cache-Control", "no-cache")
            .body(body.clone());
        let reply = Self::send(req).await?;
        self.record("POST", url, &body, &reply);
        Ok(reply)
    }

    /// The first step of a real client: `GET` on the discovery URL.
    pub async fn get_discovery(&self) -> Result<HttpReply, WindowsEnrollError> {
        let req = self.client.get(self.discovery_url()).header("User-Agent", "ENROLLClient");
        let reply = Self::send(req).await?;
        self.record("GET", &self.discovery_url(), &[], &reply);
        Ok(reply)
    }

    pub fn discover_request(&self) -> Result<DiscoverRequest, WindowsEnrollError> {
        let policies = match self.config.credential {
            EnrollCredential::Password { .. } => vec![AuthPolicy::OnPremise, AuthPolicy::Federated],
            EnrollCredential::Token(_) => vec![AuthPolicy::Federated],
        };
        Ok(DiscoverRequest {
            message_id: None,
            email_address: Some(self.config.email.clone()),
            request_version: RequestVersion::parse(&self.config.request_version)?,
            device_type: Some("CIMClient_Windows".into()),
            application_version: Some(self.config.os_version.clone()),
            os_edition: Some("72".into()),
            os_version: None,
            auth_policies: policies,
        })
    }

    /// The header credential.
    pub fn credential(&self) -> ClientCredential {
        match &self.config.credential {
            EnrollCredential::Password { upn, password } => {
                ClientCredential::UsernameToken { username: upn.clone(), password: password.clone() }
            }
            EnrollCredential::Token(t) => ClientCredential::UserToken(t.as_bytes().to_vec()),
        }
    }

    /// The context items Windows sends with policy and enrollment requests.
    pub fn context(&self) -> AdditionalContext {
        let c = &self.config;
        let mut ctx = AdditionalContext::default();
        ctx.push("UXInitiated", "true")
            .push("HWDevID", format!("HW-{}", c.device_id))
            .push("Locale", "en-US")
            .push("TargetedUserLoggedIn", "true")
            .push("OSEdition", "72")
            .push("DeviceName", &c.device_name)
            .push("MAC", "00-15-5D-01-02-03")
            .push("DeviceType", "CIMClient_Windows")
            .push("OSVersion", &c.os_version)
            .push("ApplicationVersion", &c.os_version)
            .push("EnrollmentType", &c.enrollment_type);
        if c.device_id_in_context {
            ctx.push("DeviceID", &c.device_id);
        }
        ctx
    }

    /// A new key and the certificate request for it, as [`CsrStyle`] says.
    pub fn certificate_request(
        &self,
        min_bits: u32,
    ) -> Result<(PKey<Private>, Vec<u8>, CsrFormat), WindowsEnrollError> {
        let key = devpki::generate_rsa_key(min_bits.max(2048)).map_err(crypto)?;
        let (csr, format) = self.certificate_request_for(&key)?;
        Ok((key, csr, format))
    }

    /// The certificate request for an existing `key`, as [`CsrStyle`] says (a TPM's key made
    /// beforehand; load tools make their keys before the run).
    pub fn certificate_request_for(&self, key: &PKey<Private>) -> Result<(Vec<u8>, CsrFormat), WindowsEnrollError> {
        let (csr, format) = match self.config.csr_style {
            CsrStyle::Openssl => (openssl_csr(key, &self.config.email)?, CsrFormat::Pkcs10),
            CsrStyle::WindowsQuirks => {
                let cn = format!("{}!\0\0", self.config.email);
                let opts = CsrOptions {
                    subject_cn: cn.as_bytes(),
                    signature: CsrSignature::Sha1IsoOid,
                    device_id_extension: Some(&self.config.device_id),
                };
                (wstep::build_windows_csr(key, &opts).map_err(crypto)?, CsrFormat::Pkcs10)
            }
            CsrStyle::Pkcs7Wrapped => {
                let csr = openssl_csr(key, &self.config.email)?;
                let serial = devpki::serial_from_random(rand::random());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                let name = X509NameBuilder::new().and_then(|mut n| {
                    n.append_entry_by_text("CN", &self.config.device_id)?;
                    Ok(n.build())
                });
                let name = name.map_err(crypto)?;
                let self_signed = mdm_certs::scep::self_signed_certificate(key, &name, now - 3600, now + 3600, &serial)
                    .map_err(crypto)?;
                (wstep::wrap_pkcs7(&csr, &self_signed, key).map_err(crypto)?, CsrFormat::Pkcs7)
            }
        };
        Ok((csr, format))
    }

    fn read<T>(reply: &HttpReply, decoded: Result<T, ReplyError>) -> Result<T, WindowsEnrollError> {
        match decoded {
            Ok(v) if reply.status == 200 => Ok(v),
            Ok(_) => Err(WindowsEnrollError::Status {
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).into_owned(),
            }),
            Err(ReplyError::Fault(fault)) => Err(WindowsEnrollError::Fault { status: reply.status, fault }),
            Err(ReplyError::Decode(_)) if reply.status != 200 => Err(WindowsEnrollError::Status {
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).into_owned(),
            }),
            Err(ReplyError::Decode(e)) => Err(WindowsEnrollError::Decode(e)),
        }
    }

    /// Discovery and policy: the state just before the certificate request.
    pub async fn discover_and_get_policy(&self) -> Result<PolicyKnown, WindowsEnrollError> {
        let get = self.get_discovery().await?;
        if get.status != 200 {
            return Err(WindowsEnrollError::Status {
                status: get.status,
                body: String::from_utf8_lossy(&get.body).into(),
            });
        }
        let discovery = Discovery::new(self.discover_request()?);
        let url = self.discovery_url();
        let reply = self.post(&url, discovery.request(&message_id(), &url)).await?;
        let discovered = Self::read(&reply, discovery.on_response(&reply.body))?;
        let wanted = match self.config.credential {
            EnrollCredential::Password { .. } => AuthPolicy::OnPremise,
            EnrollCredential::Token(_) => AuthPolicy::Federated,
        };
        if discovered.response.auth_policy != wanted {
            return Err(WindowsEnrollError::AuthPolicy(discovered.response.auth_policy.to_string()));
        }
        match discovered.policy_request(&message_id(), &self.credential(), &self.context()) {
            Some((url, body)) => {
                let reply = self.post(&url, body).await?;
                Self::read(&reply, discovered.on_policy_response(&reply.body))
            }
            None => Ok(discovered.without_policy()),
        }
    }

    /// The whole enrollment: discovery (`GET`, then `Discover`), `GetPolicies`,
    /// `RequestSecurityToken` with a new key, and the provisioning document read back.
    pub async fn enroll(&self) -> Result<WindowsIdentity, WindowsEnrollError> {
        self.enroll_inner(None).await
    }

    /// Like [`WindowsEnroller::enroll`], certifying `key` (made beforehand, e.g. off the async
    /// runtime: an RSA key takes a while) instead of a fresh one. An RSA key shorter than the
    /// policy's minimum is refused before anything is sent for it.
    pub async fn enroll_with_key(&self, key: PKey<Private>) -> Result<WindowsIdentity, WindowsEnrollError> {
        self.enroll_inner(Some(key)).await
    }

    async fn enroll_inner(&self, key: Option<PKey<Private>>) -> Result<WindowsIdentity, WindowsEnrollError> {
        let policy = self.discover_and_get_policy().await?;
        let (key, csr, format) = match key {
            None => self.certificate_request(policy.policy.minimal_key_length)?,
            Some(key) => {
                if let Ok(rsa) = key.rsa()
                    && rsa.size() * 8 < policy.policy.minimal_key_length
                {
                    return Err(crypto(format!(
                        "the policy asks for at least {} bits, the key has {}",
                        policy.policy.minimal_key_length,
                        rsa.size() * 8
                    )));
                }
                let (csr, format) = self.certificate_request_for(&key)?;
                (key, csr, format)
            }
        };
        let enrollment_url = policy.discovery.enrollment_service_url.clone();
        let (url, body) = policy.enroll_request(&message_id(), &self.credential(), csr, format, self.context());
        let reply = self.post(&url, body).await?;
        let enrolled = Self::read(&reply, policy.on_enroll_response(&reply.body))?;
        self.identity(enrolled, key, enrollment_url)
    }

    /// Renews `identity` as Windows' ROBO renewal does: a new key, its PKCS#10 inside a PKCS#7
    /// signed with the current certificate, `Renew` to the enrollment URL over TLS with the
    /// current certificate.
    pub async fn renew(&self, identity: &WindowsIdentity) -> Result<WindowsIdentity, WindowsEnrollError> {
        let (key, csr) = {
            let key = devpki::generate_rsa_key(2048).map_err(crypto)?;
            let csr = openssl_csr(&key, &self.config.email)?;
            (key, csr)
        };
        let p7 = wstep::wrap_pkcs7(&csr, &identity.cert, &identity.key).map_err(crypto)?;
        let reply = self.renew_raw(identity, p7).await?;
        let enrolled = Self::read(&reply, Enrolled::from_reply(&reply.body))?;
        self.identity(enrolled, key, identity.enrollment_url.clone())
    }

    /// Sends a renewal carrying `token` (PKCS#7 or PKCS#10) over TLS with `identity`.
    pub async fn renew_raw(&self, identity: &WindowsIdentity, token: Vec<u8>) -> Result<HttpReply, WindowsEnrollError> {
        let client = identity.https_client(&self.trust_pem)?;
        let body = Enrolled::renewal_request(&identity.enrollment_url, &message_id(), token, self.context());
        self.post_with(&client, &identity.enrollment_url, body).await
    }

    fn identity(
        &self,
        enrolled: Enrolled,
        key: PKey<Private>,
        enrollment_url: String,
    ) -> Result<WindowsIdentity, WindowsEnrollError> {
        let p = enrolled.identity;
        let cert = X509::from_der(&p.client.der).map_err(crypto)?;
        if !cert.public_key().map_err(crypto)?.public_eq(&key) {
            return Err(crypto("the provisioned client certificate is not for this device's key"));
        }
        let computed = wstep::thumbprint_sha1(&cert);
        if !computed.eq_ignore_ascii_case(&p.client.thumbprint) {
            return Err(crypto(format!(
                "the document names the client certificate {}, its SHA-1 is {computed}",
                p.client.thumbprint
            )));
        }
        let roots = p.roots.iter().map(|r| X509::from_der(&r.der)).collect::<Result<Vec<_>, _>>().map_err(crypto)?;
        Ok(WindowsIdentity {
            device_id: self.config.device_id.clone(),
            cert,
            key,
            roots,
            management_url: p.management_url.clone(),
            provider_id: p.provider_id.clone(),
            poll: p.poll,
            renew: p.renew,
            store: p.store.clone(),
            enrollment_url,
            provisioning_doc: enrolled.raw_doc,
            provisioned: p,
        })
    }
}

/// A PKCS#10 from openssl's builder: `CN=<cn>`, SHA-256.
pub(crate) fn openssl_csr(key: &PKey<Private>, cn: &str) -> Result<Vec<u8>, WindowsEnrollError> {
    let build = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", cn)?;
        let mut b = X509ReqBuilder::new()?;
        b.set_subject_name(&name.build())?;
        b.set_pubkey(key)?;
        b.sign(key, MessageDigest::sha256())?;
        b.build().to_der()
    };
    build().map_err(crypto)
}
