//! Reading an enrollment profile the way a device does before installing it: the CMS signature
//! around it is checked against the roots the device trusts, then the property list is read for
//! what enrollment needs: where to get an identity (`com.apple.security.scep`), where to check in
//! (`com.apple.mdm`) and which CA to install (`com.apple.security.root`).
//!
//! Keys are read as Apple's device-management schema documents them, independently of the
//! gateway's profile builder, so a mistake there shows up here. No network: the IO side is
//! [`super::enroll`].

use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509Name, X509StoreContext};
use plist::{Dictionary, Value};

/// Why a profile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("the profile is not a DER CMS/PKCS#7 structure: {0}")]
    NotCms(String),
    #[error("the profile is not signed (no SignedData with content)")]
    NotSigned,
    #[error("the profile has {0} signers; exactly one is expected")]
    SignerCount(usize),
    #[error("the profile's signature does not verify: {0}")]
    BadSignature(String),
    #[error("the profile's signer ({subject}) does not chain to a trusted root: {reason}")]
    Untrusted { subject: String, reason: String },
    #[error("the signed content is not a property list: {0}")]
    NotPlist(String),
    #[error("profile key {key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
}

fn invalid(key: &str, problem: impl Into<String>) -> ProfileError {
    ProfileError::Invalid { key: key.to_owned(), problem: problem.into() }
}

/// A profile whose signature verified: its content and who signed it.
#[derive(Debug, Clone)]
pub struct VerifiedProfile {
    /// The signed content (an XML or binary property list).
    pub content: Vec<u8>,
    /// The signer's certificate.
    pub signer: X509,
}

/// Checks a signed profile (`application/x-apple-aspen-config`): one signer whose signature covers
/// the attached content, and whose certificate chains, through the certificates carried in the
/// CMS, to one of `anchors` and is valid now. The signer's extended key usage is not checked: Apple
/// devices accept a TLS server certificate as profile signer.
pub fn verify_signed_profile(der: &[u8], anchors: &[X509]) -> Result<VerifiedProfile, ProfileError> {
    let p7 = Pkcs7::from_der(der).map_err(|e| ProfileError::NotCms(e.to_string()))?;
    let carried: Stack<X509> = match p7.signed().and_then(|s| s.certificates()) {
        Some(certs) => {
            let mut s = Stack::new()?;
            for c in certs {
                s.push(c.to_owned())?;
            }
            s
        }
        None => Stack::new()?,
    };
    let signers = p7.signers(&carried, Pkcs7Flags::empty()).map_err(|_| ProfileError::NotSigned)?;
    if signers.len() != 1 {
        return Err(ProfileError::SignerCount(signers.len()));
    }
    let signer = signers.get(0).expect("one signer").to_owned();
    // The signature over the content first (chain checked below, with our own rules).
    let empty = X509StoreBuilder::new()?.build();
    let mut content = Vec::new();
    p7.verify(&carried, &empty, None, Some(&mut content), Pkcs7Flags::NOVERIFY | Pkcs7Flags::BINARY)
        .map_err(|e| ProfileError::BadSignature(e.to_string()))?;
    let mut store = X509StoreBuilder::new()?;
    for a in anchors {
        store.add_cert(a.clone())?;
    }
    let store = store.build();
    let mut ctx = X509StoreContext::new()?;
    let (ok, reason) = ctx.init(&store, &signer, &carried, |c| {
        let ok = c.verify_cert()?;
        Ok((ok, c.error().error_string().to_owned()))
    })?;
    if !ok {
        let subject = mdm_certs::scep::subject_text(signer.subject_name());
        return Err(ProfileError::Untrusted { subject, reason });
    }
    Ok(VerifiedProfile { content, signer })
}

/// The `com.apple.security.scep` payload's content: how the device gets its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct ScepPayload {
    pub url: String,
    /// `Name`: sent as `message=` with GetCACert.
    pub name: Option<String>,
    pub challenge: Option<String>,
    /// `Subject` as (type, value) pairs in order, one pair per RDN element.
    pub subject: Vec<Vec<(String, String)>>,
    /// `Key Type`; Apple devices support only `RSA`.
    pub key_type: String,
    /// `Keysize` (Apple's default: 1024).
    pub key_size: u32,
    /// `Key Usage` bits (1 signing, 4 encryption).
    pub key_usage: i64,
    /// `CAFingerprint`: hash of the CA certificate GetCACert must return (MD5, SHA-1 or SHA-256 by length).
    pub ca_fingerprint: Option<Vec<u8>>,
}

impl ScepPayload {
    /// The subject as an X.509 name (types by short name or dotted OID).
    pub fn subject_name(&self) -> Result<X509Name, ProfileError> {
        let mut b = X509Name::builder()?;
        for rdn in &self.subject {
            for (t, v) in rdn {
                b.append_entry_by_text(t, v).map_err(|e| invalid("Subject", format!("{t}={v}: {e}")))?;
            }
        }
        Ok(b.build())
    }
}

/// The `com.apple.mdm` payload.
#[derive(Debug, Clone, PartialEq)]
pub struct MdmPayload {
    pub server_url: String,
    /// `CheckInURL`, or `ServerURL` when the profile has none.
    pub check_in_url: String,
    pub topic: String,
    pub identity_certificate_uuid: String,
    pub sign_message: bool,
    pub access_rights: Option<i64>,
    pub server_capabilities: Vec<String>,
    /// `EnrollmentMode` (`BYOD` for User Enrollment).
    pub enrollment_mode: Option<String>,
    pub assigned_managed_apple_id: Option<String>,
}

/// What enrollment takes from a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentSettings {
    pub identifier: String,
    pub uuid: String,
    pub mdm: MdmPayload,
    /// The SCEP payload the MDM payload's `IdentityCertificateUUID` names.
    pub scep: ScepPayload,
    /// DER of every `com.apple.security.root` payload, in order.
    pub roots: Vec<Vec<u8>>,
}

fn dict<'a>(v: &'a Value, key: &str) -> Result<&'a Dictionary, ProfileError> {
    v.as_dictionary().ok_or_else(|| invalid(key, "not a dictionary"))
}

fn string(d: &Dictionary, key: &str) -> Result<String, ProfileError> {
    optional_string(d, key)?.ok_or_else(|| invalid(key, "missing"))
}

fn optional_string(d: &Dictionary, key: &str) -> Result<Option<String>, ProfileError> {
    match d.get(key) {
        None => Ok(None),
        Some(v) => v.as_string().map(|s| Some(s.to_owned())).ok_or_else(|| invalid(key, "not a string")),
    }
}

fn integer(d: &Dictionary, key: &str) -> Result<Option<i64>, ProfileError> {
    match d.get(key) {
        None => Ok(None),
        Some(v) => v.as_signed_integer().map(Some).ok_or_else(|| invalid(key, "not an integer")),
    }
}

fn boolean(d: &Dictionary, key: &str) -> Result<Option<bool>, ProfileError> {
    match d.get(key) {
        None => Ok(None),
        Some(v) => v.as_boolean().map(Some).ok_or_else(|| invalid(key, "not a boolean")),
    }
}

fn https_url(key: &str, url: String) -> Result<String, ProfileError> {
    match url.strip_prefix("https://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(url),
        _ => Err(invalid(key, format!("{url:?} is not an https:// URL"))),
    }
}

impl EnrollmentSettings {
    /// Reads a verified profile's content (XML or binary plist).
    pub fn from_plist(content: &[u8]) -> Result<EnrollmentSettings, ProfileError> {
        let top: Value = plist::from_bytes(content).map_err(|e| ProfileError::NotPlist(e.to_string()))?;
        let top = dict(&top, "(top level)")?;
        let kind = string(top, "PayloadType")?;
        if kind != "Configuration" {
            return Err(invalid("PayloadType", format!("{kind:?}, expected Configuration")));
        }
        let payloads = top
            .get("PayloadContent")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("PayloadContent", "missing or not an array"))?;
        let mut mdm = None;
        let mut sceps = Vec::new();
        let mut roots = Vec::new();
        for p in payloads {
            let p = dict(p, "PayloadContent[]")?;
            match string(p, "PayloadType")?.as_str() {
                "com.apple.mdm" if mdm.is_some() => return Err(invalid("com.apple.mdm", "more than one MDM payload")),
                "com.apple.mdm" => mdm = Some(p),
                "com.apple.security.scep" => sceps.push(p),
                "com.apple.security.root" => match p.get("PayloadContent").and_then(Value::as_data) {
                    Some(der) => roots.push(der.to_vec()),
                    None => return Err(invalid("com.apple.security.root PayloadContent", "missing or not data")),
                },
                _ => {}
            }
        }
        let mdm = mdm.ok_or_else(|| invalid("com.apple.mdm", "no MDM payload"))?;
        let server_url = https_url("ServerURL", string(mdm, "ServerURL")?)?;
        let check_in_url = match optional_string(mdm, "CheckInURL")? {
            Some(u) => https_url("CheckInURL", u)?,
            None => server_url.clone(),
        };
        let identity_certificate_uuid = string(mdm, "IdentityCertificateUUID")?;
        let capabilities = match mdm.get("ServerCapabilities") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .ok_or_else(|| invalid("ServerCapabilities", "not an array"))?
                .iter()
                .map(|c| c.as_string().map(str::to_owned).ok_or_else(|| invalid("ServerCapabilities", "not strings")))
                .collect::<Result<_, _>>()?,
        };
        let mdm_payload = MdmPayload {
            server_url,
            check_in_url,
            topic: string(mdm, "Topic")?,
            identity_certificate_uuid: identity_certificate_uuid.clone(),
            sign_message: boolean(mdm, "SignMessage")?.unwrap_or(false),
            access_rights: integer(mdm, "AccessRights")?,
            server_capabilities: capabilities,
            enrollment_mode: optional_string(mdm, "EnrollmentMode")?,
            assigned_managed_apple_id: optional_string(mdm, "AssignedManagedAppleID")?,
        };
        let scep = sceps
            .into_iter()
            .find(|p| optional_string(p, "PayloadUUID").ok().flatten().as_deref() == Some(&identity_certificate_uuid))
            .ok_or_else(|| {
                invalid(
                    "IdentityCertificateUUID",
                    format!("no SCEP payload has PayloadUUID {identity_certificate_uuid}"),
                )
            })?;
        let content = dict(
            scep.get("PayloadContent").ok_or_else(|| invalid("com.apple.security.scep PayloadContent", "missing"))?,
            "com.apple.security.scep PayloadContent",
        )?;
        Ok(EnrollmentSettings {
            identifier: string(top, "PayloadIdentifier")?,
            uuid: string(top, "PayloadUUID")?,
            mdm: mdm_payload,
            scep: scep_payload(content)?,
            roots,
        })
    }

    /// The root payloads as certificates.
    pub fn root_certificates(&self) -> Result<Vec<X509>, ProfileError> {
        self.roots
            .iter()
            .map(|der| {
                X509::from_der(der).map_err(|e| invalid("com.apple.security.root PayloadContent", e.to_string()))
            })
            .collect()
    }
}

fn scep_payload(c: &Dictionary) -> Result<ScepPayload, ProfileError> {
    let url = https_url("URL", string(c, "URL")?)?;
    let key_size = match integer(c, "Keysize")? {
        None => 1024,
        Some(n @ (1024 | 2048 | 4096)) => n as u32,
        Some(n) => return Err(invalid("Keysize", format!("{n}: Apple devices use 1024, 2048 or 4096"))),
    };
    let key_type = optional_string(c, "Key Type")?.unwrap_or_else(|| "RSA".into());
    let mut subject = Vec::new();
    if let Some(v) = c.get("Subject") {
        // [[["CN", "value"], …], …]: RDNs, each an array of [type, value] pairs.
        let rdns = v.as_array().ok_or_else(|| invalid("Subject", "not an array"))?;
        for rdn in rdns {
            let pairs = rdn.as_array().ok_or_else(|| invalid("Subject", "an RDN is not an array"))?;
            let mut out = Vec::new();
            for pair in pairs {
                match pair.as_array().map(Vec::as_slice) {
                    Some([t, v]) => match (t.as_string(), v.as_string()) {
                        (Some(t), Some(v)) => out.push((t.to_owned(), v.to_owned())),
                        _ => return Err(invalid("Subject", "a pair is not two strings")),
                    },
                    _ => return Err(invalid("Subject", "an RDN element is not a [type, value] pair")),
                }
            }
            subject.push(out);
        }
    }
    Ok(ScepPayload {
        url,
        name: optional_string(c, "Name")?,
        challenge: optional_string(c, "Challenge")?,
        subject,
        key_type,
        key_size,
        key_usage: integer(c, "Key Usage")?.unwrap_or(0),
        ca_fingerprint: c.get("CAFingerprint").and_then(Value::as_data).map(<[u8]>::to_vec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdm_apple::{EnrollmentProfile, PayloadUuids, ProfileVariant};
    use mdm_certs::devpki;

    struct Pki {
        ca: X509,
        server: X509,
        server_key: mdm_certs::PKey<mdm_certs::Private>,
    }

    fn now() -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
    }

    fn pki() -> Pki {
        let ca_key = devpki::generate_key().expect("key");
        let ca =
            devpki::create_ca(&ca_key, "Profile Test CA", now(), 30, &devpki::serial_from_random([1; 16])).expect("ca");
        let server_key = devpki::generate_key().expect("key");
        let server = devpki::issue_server_certificate(
            &ca,
            &ca_key,
            &server_key,
            &[devpki::SubjectAltName::Dns("localhost".into())],
            now(),
            1,
            &devpki::serial_from_random([2; 16]),
        )
        .expect("server");
        Pki { ca, server, server_key }
    }

    fn profile_xml(ca: &X509, variant: &ProfileVariant) -> Vec<u8> {
        EnrollmentProfile {
            public_url: "https://mdm.example.test:8443/",
            topic: "com.apple.mgmt.External.test",
            identifier: "test.example.mdm.enrollment",
            organization: "Example",
            uuids: PayloadUuids {
                profile: "11111111-1111-4111-8111-111111111111",
                mdm: "22222222-2222-4222-8222-222222222222",
                scep: "33333333-3333-4333-8333-333333333333",
                ca: "44444444-4444-4444-8444-444444444444",
            },
            scep_challenge: "00112233445566778899aabbccddeeff",
            scep_subject_cn: "MDM identity 11111111-1111-4111-8111-111111111111",
            scep_name: "mdm-gateway",
            ca_der: &ca.to_der().expect("der"),
            variant,
        }
        .to_xml()
        .expect("profile")
    }

    fn signed(p: &Pki, xml: &[u8]) -> Vec<u8> {
        mdm_certs::sign_attached(&p.server, &p.server_key, &[], xml).expect("sign")
    }

    #[test]
    fn a_signed_profile_verifies_and_decodes() {
        let p = pki();
        let xml = profile_xml(&p.ca, &ProfileVariant::Device);
        let v = verify_signed_profile(&signed(&p, &xml), std::slice::from_ref(&p.ca)).expect("verifies");
        assert_eq!(v.content, xml);
        assert_eq!(v.signer.to_der().expect("der"), p.server.to_der().expect("der"));
        let s = EnrollmentSettings::from_plist(&v.content).expect("decodes");
        assert_eq!(s.mdm.server_url, "https://mdm.example.test:8443/mdm");
        assert_eq!(s.mdm.check_in_url, "https://mdm.example.test:8443/checkin");
        assert_eq!(s.mdm.topic, "com.apple.mgmt.External.test");
        assert!(s.mdm.sign_message);
        assert_eq!(s.mdm.access_rights, Some(8191));
        assert_eq!(s.scep.url, "https://mdm.example.test:8443/scep");
        assert_eq!(s.scep.challenge.as_deref(), Some("00112233445566778899aabbccddeeff"));
        assert_eq!((s.scep.key_type.as_str(), s.scep.key_size, s.scep.key_usage), ("RSA", 2048, 5));
        assert_eq!(s.scep.name.as_deref(), Some("mdm-gateway"));
        let name = s.scep.subject_name().expect("subject");
        assert_eq!(mdm_certs::scep::subject_text(&name), "CN=MDM identity 11111111-1111-4111-8111-111111111111");
        assert_eq!(s.root_certificates().expect("roots")[0].to_der().expect("der"), p.ca.to_der().expect("der"));

        let user = ProfileVariant::User { assigned_managed_apple_id: "ana@example.com".into() };
        let s = EnrollmentSettings::from_plist(&profile_xml(&p.ca, &user)).expect("decodes");
        assert_eq!(s.mdm.enrollment_mode.as_deref(), Some("BYOD"));
        assert_eq!(s.mdm.assigned_managed_apple_id.as_deref(), Some("ana@example.com"));
        assert_eq!(s.mdm.access_rights, None);
    }

    #[test]
    fn a_tampered_profile_is_refused() {
        let p = pki();
        let xml = profile_xml(&p.ca, &ProfileVariant::Device);
        let good = signed(&p, &xml);
        // One byte of the challenge inside the signed content.
        let at = good.windows(32).position(|w| w == b"00112233445566778899aabbccddeeff").expect("content attached");
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let e = verify_signed_profile(&bad, std::slice::from_ref(&p.ca)).expect_err("content changed");
        assert!(matches!(e, ProfileError::BadSignature(_)), "{e}");
        // One byte of the signature value (the last bytes of the structure).
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x80;
        let e = verify_signed_profile(&bad, std::slice::from_ref(&p.ca)).expect_err("signature changed");
        assert!(matches!(e, ProfileError::BadSignature(_)), "{e}");
        // Not CMS at all; and the unchanged profile still verifies (the checks above are real).
        assert!(matches!(verify_signed_profile(&xml, std::slice::from_ref(&p.ca)), Err(ProfileError::NotCms(_))));
        verify_signed_profile(&good, std::slice::from_ref(&p.ca)).expect("untouched verifies");
    }

    #[test]
    fn a_profile_signed_under_another_root_is_untrusted() {
        let p = pki();
        let other = pki();
        let der = signed(&p, &profile_xml(&p.ca, &ProfileVariant::Device));
        let e = verify_signed_profile(&der, std::slice::from_ref(&other.ca)).expect_err("other root");
        assert!(matches!(e, ProfileError::Untrusted { .. }), "{e}");
        assert!(e.to_string().contains("localhost"), "names the signer: {e}");
        assert!(matches!(verify_signed_profile(&der, &[]), Err(ProfileError::Untrusted { .. })));
    }

    /// The profile with `change` applied to the payload of `payload_type` (or to the top level).
    fn changed(xml: &[u8], payload_type: Option<&str>, change: impl FnOnce(&mut Dictionary)) -> Vec<u8> {
        let mut top: Value = plist::from_bytes(xml).expect("plist");
        let top_dict = top.as_dictionary_mut().expect("dict");
        match payload_type {
            None => change(top_dict),
            Some(t) => {
                let payloads = top_dict.get_mut("PayloadContent").and_then(Value::as_array_mut).expect("payloads");
                let p = payloads
                    .iter_mut()
                    .filter_map(Value::as_dictionary_mut)
                    .find(|p| p.get("PayloadType").and_then(Value::as_string) == Some(t))
                    .expect("payload");
                change(p)
            }
        }
        let mut out = Vec::new();
        plist::to_writer_xml(&mut out, &top).expect("xml");
        out
    }

    fn scep_content(p: &mut Dictionary) -> &mut Dictionary {
        p.get_mut("PayloadContent").and_then(Value::as_dictionary_mut).expect("content")
    }

    #[test]
    fn decoding_names_what_is_wrong() {
        let p = pki();
        let xml = profile_xml(&p.ca, &ProfileVariant::Device);
        let scep = Some("com.apple.security.scep");
        let mdm = Some("com.apple.mdm");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                changed(&xml, scep, |d| {
                    d.insert("PayloadUUID".into(), "other".into());
                }),
                "IdentityCertificateUUID",
            ),
            (
                changed(&xml, mdm, |d| {
                    d.insert("ServerURL".into(), "http://mdm.example.test/mdm".into());
                }),
                "ServerURL",
            ),
            (
                changed(&xml, mdm, |d| {
                    d.remove("Topic");
                }),
                "Topic",
            ),
            (
                changed(&xml, scep, |d| {
                    scep_content(d).insert("Keysize".into(), 3000.into());
                }),
                "Keysize",
            ),
            (
                changed(&xml, scep, |d| {
                    scep_content(d).insert("Subject".into(), "CN=x".into());
                }),
                "Subject",
            ),
            (
                changed(&xml, None, |d| {
                    d.insert("PayloadType".into(), "Other".into());
                }),
                "PayloadType",
            ),
        ];
        for (bytes, key) in cases {
            let e = EnrollmentSettings::from_plist(&bytes).expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        // Without CheckInURL, check-ins go to ServerURL.
        let s = EnrollmentSettings::from_plist(&changed(&xml, mdm, |d| {
            d.remove("CheckInURL");
        }))
        .expect("ok");
        assert_eq!(s.mdm.check_in_url, s.mdm.server_url);
        assert!(matches!(EnrollmentSettings::from_plist(b"not a plist"), Err(ProfileError::NotPlist(_))));
    }
}
