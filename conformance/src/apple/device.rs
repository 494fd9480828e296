use std::time::Duration;

use bytes::Bytes;
use mdm_certs::{PKey, Private, X509};
use plist::{Dictionary, Value};

use super::managed::ManagedState;
use super::messages::{UserChannel, answer_for, base, to_xml};

const CHECKIN_TYPE: &str = "application/x-apple-aspen-mdm-checkin";
const REPORT_TYPE: &str = "application/x-apple-aspen-mdm";

/// How the device proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMode {
    /// `Mdm-Signature` over every body (profile `SignMessage` true).
    SignMessages,
    /// The identity certificate as TLS client certificate.
    TlsClientCertificate,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("signing: {0}")]
    Sign(#[from] mdm_certs::SignError),
    #[error("TLS identity: {0}")]
    Identity(String),
    #[error("gateway answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("gateway sent a command that is not a plist: {0}")]
    BadCommand(String),
}

/// A gateway reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// One emulated device channel (with optional user channels). Cloning gives a second handle on
/// the same device (same identity and HTTP client), e.g. to keep the old identity around across a
/// renewal.
#[derive(Debug, Clone)]
pub struct AppleDevice {
    pub udid: String,
    pub serial: String,
    pub topic: String,
    pub push_token: Vec<u8>,
    pub push_magic: String,
    pub key: PKey<Private>,
    pub cert: X509,
    pub mode: IdentityMode,
    /// Where command reports go (the profile's `ServerURL`), e.g. `https://localhost:8443/mdm`.
    pub server_url: String,
    /// Where check-in messages go (the profile's `CheckInURL`; `server_url` when it has none).
    pub check_in_url: String,
    /// Set when the device enrolled through a profile: what renewing its identity needs.
    pub(crate) enrolled_with: Option<std::sync::Arc<super::enroll::ProfileContext>>,
    pub(crate) client: reqwest::Client,
    /// Every `Command` dictionary received, in order (shared by clones).
    pub(crate) received: std::sync::Arc<std::sync::Mutex<Vec<Dictionary>>>,
    /// Profiles, managed apps and app configuration the commands left (shared by clones).
    pub(crate) managed: std::sync::Arc<std::sync::Mutex<ManagedState>>,
    /// Capture mode: every request and reply written as a transcript ([`AppleDevice::record_to`],
    /// or `MDM_CAPTURE_DIR`).
    pub(crate) recorder: Option<crate::suite::Recorder>,
}

impl AppleDevice {
    /// Every `Command` dictionary this device (or a clone of it) received in sessions, oldest first.
    pub fn received_commands(&self) -> Vec<Dictionary> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What the commands carried out so far left on the device (profiles, managed apps, app
    /// configuration).
    pub fn managed_state(&self) -> ManagedState {
        self.managed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The installed configuration profile with this `PayloadIdentifier`.
    pub fn profile(&self, identifier: &str) -> Option<Dictionary> {
        self.managed.lock().unwrap_or_else(|e| e.into_inner()).profiles.get(identifier).cloned()
    }

    /// `gateway_ca_pem` is what the device trusts for the server; `base_url` e.g.
    /// `https://localhost:8443`.
    pub fn new(
        udid: &str,
        key: PKey<Private>,
        cert: X509,
        mode: IdentityMode,
        base_url: &str,
        gateway_ca_pem: &[u8],
    ) -> Result<Self, DeviceError> {
        let root = reqwest::Certificate::from_pem(gateway_ca_pem)?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .timeout(Duration::from_secs(30));
        if mode == IdentityMode::TlsClientCertificate {
            let mut pem = cert.to_pem().map_err(|e| DeviceError::Identity(e.to_string()))?;
            pem.extend(key.private_key_to_pem_pkcs8().map_err(|e| DeviceError::Identity(e.to_string()))?);
            builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
        }
        Ok(Self::with_client(udid, key, cert, mode, base_url, builder.build()?))
    }

    /// A device that sends through `client`, which may be shared by many devices (connection
    /// reuse). With [`IdentityMode::TlsClientCertificate`] the client must present this device's
    /// certificate; signing devices can all share one client.
    pub fn with_client(
        udid: &str,
        key: PKey<Private>,
        cert: X509,
        mode: IdentityMode,
        base_url: &str,
        client: reqwest::Client,
    ) -> Self {
        let serial: String =
            udid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect::<String>().to_uppercase();
        let base_url = base_url.trim_end_matches('/');
        AppleDevice {
            udid: udid.to_owned(),
            serial,
            topic: "com.apple.mgmt.External.emulated".into(),
            push_token: udid.as_bytes().iter().rev().copied().cycle().take(32).collect(),
            push_magic: format!("magic-{udid}"),
            key,
            cert,
            mode,
            server_url: format!("{base_url}/mdm"),
            check_in_url: format!("{base_url}/mdm"),
            enrolled_with: None,
            client,
            received: Default::default(),
            managed: Default::default(),
            recorder: None,
        }
        .record_to_env()
    }

    /// Capture mode: this device's traffic is written as a transcript under `root`
    /// (`<root>/captured/apple/<udid>/`), its UDID as `{{udid}}`.
    pub fn record_to(mut self, root: impl Into<std::path::PathBuf>) -> Self {
        let r = crate::suite::Recorder::new(
            root,
            "captured/apple",
            &self.udid,
            "Recorded from the emulated Apple device (mdm-conformance capture mode).",
            crate::suite::format::Setup::AppleIdentity,
        );
        r.template(&self.udid, "{{udid}}");
        self.recorder = Some(r);
        self
    }

    /// [`AppleDevice::record_to`] `$MDM_CAPTURE_DIR`, when it is set.
    fn record_to_env(self) -> Self {
        match std::env::var_os("MDM_CAPTURE_DIR") {
            Some(root) => self.record_to(std::path::PathBuf::from(root)),
            None => self,
        }
    }

    fn record(&self, url: &str, content_type: &str, body: &[u8], reply: &Reply, reply_type: Option<&str>) {
        use crate::suite::format::MessageKind;
        use crate::suite::record::Traffic;
        let Some(r) = &self.recorder else { return };
        let dict: Option<Dictionary> = plist::from_bytes(body).ok();
        let field = |k: &str| dict.as_ref().and_then(|d| d.get(k)).and_then(Value::as_string).map(str::to_owned);
        let checkin = content_type == CHECKIN_TYPE;
        let name = if checkin { field("MessageType") } else { field("Status") }.unwrap_or_else(|| "message".into());
        let mut captures = Vec::new();
        let mut reply_kind = None;
        if !checkin && !reply.body.is_empty() {
            reply_kind = Some(MessageKind::AppleCommand);
            let cmd: Option<Dictionary> = plist::from_bytes(&reply.body).ok();
            if let Some(uuid) = cmd.as_ref().and_then(|c| c.get("CommandUUID")).and_then(Value::as_string) {
                let n = self.received.lock().unwrap_or_else(|e| e.into_inner()).len() + 1;
                captures.push((format!("command_uuid_{n}"), "CommandUUID".to_owned(), uuid.to_owned()));
            }
        }
        // Replayed with the runner's setup, whose profile names the URLs.
        let _ = url;
        let path = if checkin { "{{checkin_path}}" } else { "{{server_path}}" };
        let traffic = Traffic {
            name: &name,
            method: "PUT",
            path,
            headers: &[("Content-Type", content_type)],
            identity: "device",
            body,
            kind: Some(if checkin { MessageKind::AppleCheckin } else { MessageKind::AppleReport }),
            status: reply.status,
            content_type: reply_type,
            reply: &reply.body,
            reply_kind,
            captures,
        };
        if let Err(e) = r.record(&traffic) {
            eprintln!("capture mode: {}: {e}", r.dir().display());
        }
    }

    pub fn authenticate_message(&self) -> Vec<u8> {
        let mut d = base("Authenticate", &self.udid, None);
        d.insert("Topic".into(), self.topic.clone().into());
        d.insert("SerialNumber".into(), self.serial.clone().into());
        d.insert("Model".into(), "iPhone15,3".into());
        d.insert("ModelName".into(), "iPhone".into());
        d.insert("ProductName".into(), "iPhone15,3".into());
        d.insert("OSVersion".into(), "17.5.1".into());
        d.insert("BuildVersion".into(), "21F90".into());
        d.insert("DeviceName".into(), format!("Emulated {}", self.serial).into());
        d.insert("IMEI".into(), "35 391108 563102 6".into());
        to_xml(d)
    }

    pub fn token_update_message(&self, user: Option<&UserChannel>) -> Vec<u8> {
        let mut d = base("TokenUpdate", &self.udid, user);
        d.insert("Topic".into(), self.topic.clone().into());
        d.insert("Token".into(), Value::Data(self.push_token.clone()));
        d.insert("PushMagic".into(), self.push_magic.clone().into());
        if user.is_none() {
            d.insert("UnlockToken".into(), Value::Data(b"unlock-token-bytes".to_vec()));
            d.insert("AwaitingConfiguration".into(), Value::Boolean(false));
        }
        to_xml(d)
    }

    pub fn checkout_message(&self) -> Vec<u8> {
        let mut d = base("CheckOut", &self.udid, None);
        d.insert("Topic".into(), self.topic.clone().into());
        to_xml(d)
    }

    /// Any other check-in message, with extra keys.
    pub fn checkin_message(&self, message_type: &str, user: Option<&UserChannel>, extra: Dictionary) -> Vec<u8> {
        let mut d = base(message_type, &self.udid, user);
        for (k, v) in extra {
            d.insert(k, v);
        }
        to_xml(d)
    }

    /// A command report. `extra` carries the command's answer keys.
    pub fn report_message(
        &self,
        status: &str,
        command_uuid: Option<&str>,
        user: Option<&UserChannel>,
        extra: Dictionary,
    ) -> Vec<u8> {
        let mut d = Dictionary::new();
        d.insert("UDID".into(), self.udid.clone().into());
        if let Some(u) = user {
            d.insert("UserID".into(), u.user_id.clone().into());
        }
        d.insert("Status".into(), status.into());
        if let Some(uuid) = command_uuid {
            d.insert("CommandUUID".into(), uuid.into());
        }
        for (k, v) in extra {
            d.insert(k, v);
        }
        to_xml(d)
    }

    /// The `Mdm-Signature` header value for `body`.
    pub fn sign(&self, body: &[u8]) -> Result<String, DeviceError> {
        Ok(mdm_certs::sign_detached(&self.cert, &self.key, body)?)
    }

    async fn put(&self, url: &str, content_type: &str, body: Vec<u8>) -> Result<Reply, DeviceError> {
        let mut req = self.client.put(url).header("Content-Type", content_type);
        if self.mode == IdentityMode::SignMessages {
            req = req.header("Mdm-Signature", self.sign(&body)?);
        }
        let sent = self.recorder.is_some().then(|| body.clone());
        let resp = req.body(body).send().await?;
        let status = resp.status().as_u16();
        let reply_type =
            resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let reply = Reply { status, body: resp.bytes().await? };
        if let Some(sent) = sent {
            self.record(url, content_type, &sent, &reply, reply_type.as_deref());
        }
        Ok(reply)
    }

    /// A check-in message, to the check-in URL.
    pub async fn send_checkin(&self, body: Vec<u8>) -> Result<Reply, DeviceError> {
        self.put(&self.check_in_url, CHECKIN_TYPE, body).await
    }

    /// A command report, to the server URL.
    pub async fn send_report(&self, body: Vec<u8>) -> Result<Reply, DeviceError> {
        self.put(&self.server_url, REPORT_TYPE, body).await
    }

    pub(crate) fn expect_ok(reply: Reply) -> Result<Reply, DeviceError> {
        if reply.status == 200 {
            Ok(reply)
        } else {
            Err(DeviceError::Status { status: reply.status, body: String::from_utf8_lossy(&reply.body).into_owned() })
        }
    }

    /// Authenticate then TokenUpdate, as after installing an enrollment profile.
    pub async fn enroll(&self) -> Result<(), DeviceError> {
        Self::expect_ok(self.send_checkin(self.authenticate_message()).await?)?;
        Self::expect_ok(self.send_checkin(self.token_update_message(None)).await?)?;
        Ok(())
    }

    /// One MDM session as after a push: Idle, then answer each command with `choose(request_type)`
    /// giving the Status to report ("Acknowledged", "Error", "NotNow"), until the gateway has
    /// nothing more. An acknowledged command is carried out ([`ManagedState::execute`]); one the
    /// device cannot carry out (a malformed profile…) is reported `Error` instead. Returns the (CommandUUID, RequestType, Status) handled, in order.
    pub async fn session(
        &self,
        choose: impl FnMut(&str) -> &'static str,
    ) -> Result<Vec<(String, String, String)>, DeviceError> {
        self.session_timed(choose, |_| {}).await
    }

    /// [`AppleDevice::session`], calling `timed` with the duration of every request it sends.
    pub async fn session_timed(
        &self,
        mut choose: impl FnMut(&str) -> &'static str,
        mut timed: impl FnMut(Duration),
    ) -> Result<Vec<(String, String, String)>, DeviceError> {
        let mut handled = Vec::new();
        let started = std::time::Instant::now();
        let mut reply =
            Self::expect_ok(self.send_report(self.report_message("Idle", None, None, Dictionary::new())).await?)?;
        timed(started.elapsed());
        // A session can never be longer than the queue; the bound stops a broken server looping us.
        for _ in 0..10_000 {
            if reply.body.is_empty() {
                return Ok(handled);
            }
            let cmd: Dictionary = plist::from_bytes(&reply.body).map_err(|e| DeviceError::BadCommand(e.to_string()))?;
            let uuid = cmd.get("CommandUUID").and_then(Value::as_string).unwrap_or_default().to_owned();
            let inner = cmd.get("Command").and_then(Value::as_dictionary).cloned().unwrap_or_default();
            self.received.lock().unwrap_or_else(|e| e.into_inner()).push(inner.clone());
            let request_type = inner.get("RequestType").and_then(Value::as_string).unwrap_or_default().to_owned();
            let mut status = choose(&request_type);
            let extra = match status {
                // The device carries the command out; it may still refuse it.
                "Acknowledged" => {
                    let done = self.managed.lock().unwrap_or_else(|e| e.into_inner()).execute(&request_type, &inner);
                    match done {
                        Ok(keys) => {
                            let mut d = answer_for(&request_type, &inner, self);
                            d.extend(keys);
                            d
                        }
                        Err(refusal) => {
                            status = "Error";
                            refusal.report_keys()
                        }
                    }
                }
                "Error" => error_chain(),
                _ => Dictionary::new(),
            };
            handled.push((uuid.clone(), request_type, status.to_owned()));
            let started = std::time::Instant::now();
            reply = Self::expect_ok(self.send_report(self.report_message(status, Some(&uuid), None, extra)).await?)?;
            timed(started.elapsed());
        }
        Err(DeviceError::BadCommand("session did not end after 10000 commands".into()))
    }
}

/// The keys of an `Error` report: one emulated MDM error.
fn error_chain() -> Dictionary {
    let mut e = Dictionary::new();
    e.insert("ErrorCode".into(), Value::Integer(12021.into()));
    e.insert("ErrorDomain".into(), "MCMDMErrorDomain".into());
    e.insert("LocalizedDescription".into(), "Emulated failure".into());
    e.insert("USEnglishDescription".into(), "Emulated failure".into());
    let mut d = Dictionary::new();
    d.insert("ErrorChain".into(), Value::Array(vec![Value::Dictionary(e)]));
    d
}
