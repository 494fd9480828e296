//! What an enrolled emulated Windows device holds after enrollment (or renewal).

use std::time::Duration;

use mdm_certs::{PKey, Private, X509};
use mdm_windows::enroll::{PollSchedule, ProvisionedIdentity, RenewSettings};

/// An enrolled device's identity: for the management side (OMA-DM sessions over mTLS) and for
/// renewal.
#[derive(Clone)]
pub struct WindowsIdentity {
    /// The native DeviceID (the gateway's device id is `windows:<device_id>`).
    pub device_id: String,
    /// The issued client certificate (from `CertificateStore/My/...`).
    pub cert: X509,
    /// Its private key (generated on the device; never left it).
    pub key: PKey<Private>,
    /// Trusted roots the document installed (`CertificateStore/Root/System`).
    pub roots: Vec<X509>,
    /// `APPLICATION/ADDR`: where management sessions go.
    pub management_url: String,
    /// `APPLICATION/PROVIDER-ID` (also the `DMClient` provider).
    pub provider_id: String,
    /// The `DMClient` poll schedule, when the document had one.
    pub poll: Option<PollSchedule>,
    /// `CertificateStore/My/WSTEP/Renew`, when the server offers renewal.
    pub renew: Option<RenewSettings>,
    /// `User` or `System`.
    pub store: String,
    /// The enrollment service URL (from discovery): where renewals go.
    pub enrollment_url: String,
    /// The provisioning document as received (XML).
    pub provisioning_doc: Vec<u8>,
    /// What the document said, parsed.
    pub provisioned: ProvisionedIdentity,
}

impl std::fmt::Debug for WindowsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowsIdentity")
            .field("device_id", &self.device_id)
            .field("cert_sha256", &self.cert_sha256())
            .field("management_url", &self.management_url)
            .field("provider_id", &self.provider_id)
            .finish_non_exhaustive()
    }
}

impl WindowsIdentity {
    /// SHA-256 of the certificate (what the gateway binds the enrollment to), lowercase hex.
    pub fn cert_sha256(&self) -> String {
        mdm_certs::fingerprint_sha256(&self.cert)
    }

    /// `windows:<DeviceID>`.
    pub fn gateway_device_id(&self) -> String {
        format!("windows:{}", self.device_id)
    }

    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().expect("openssl failed to allocate while encoding a certificate")
    }

    pub fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().expect("openssl failed to allocate while encoding a key")
    }

    /// An HTTPS client that trusts `server_ca_pem` (the roots the document installed are
    /// trusted too) and presents this identity as TLS client certificate.
    pub fn https_client(&self, server_ca_pem: &[u8]) -> Result<reqwest::Client, reqwest::Error> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(server_ca_pem)?)
            .timeout(Duration::from_secs(30));
        for r in &self.roots {
            if let Ok(pem) = r.to_pem()
                && let Ok(c) = reqwest::Certificate::from_pem(&pem)
            {
                b = b.add_root_certificate(c);
            }
        }
        let mut pem = self.cert_pem();
        pem.extend(self.key_pem());
        b.identity(reqwest::Identity::from_pem(&pem)?).build()
    }
}
