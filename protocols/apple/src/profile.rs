//! The enrollment profile: the configuration profile a device installs to enroll in MDM.
//!
//! One profile (`PayloadType` `Configuration`) with three payloads, in the order the device needs
//! them:
//! 1. `com.apple.security.root`: the gateway's CA certificate (DER), so the device trusts the
//!    certificates the gateway issues (and its development server certificate);
//! 2. `com.apple.security.scep`: how the device gets its identity certificate (URL, one-time
//!    challenge, RSA 2048, signing + encryption, subject);
//! 3. `com.apple.mdm`: where to check in and fetch commands, the push topic, and the identity to
//!    use (`IdentityCertificateUUID` = the SCEP payload's UUID).
//!
//! Two variants: [`ProfileVariant::Device`], the classic profile a person installs by hand, with all
//! access rights; and [`ProfileVariant::User`], the profile an account-driven User Enrollment
//! (BYOD) service hands out: `EnrollmentMode` `BYOD` and `AssignedManagedAppleID`, no
//! `AccessRights` (Apple: ignored in User Enrollment; the device decides what MDM may do).
//!
//! This module only builds the property list. It does not sign it (that is `mdm-certs`), choose
//! UUIDs, challenges or topics (the gateway does, with its own randomness and store), and reads no
//! clock. Keys and values follow Apple's device-management schema (`com.apple.mdm`,
//! `com.apple.security.scep`, `com.apple.security.root`, `TopLevel`).

use plist::{Dictionary, Value};

use crate::fields::to_xml;

/// The media type of a (signed) configuration profile.
pub const PROFILE_CONTENT_TYPE: &str = "application/x-apple-aspen-config";

/// Every `AccessRights` bit (1 through 4096): inspect and manage profiles, lock, erase, query
/// device and network information, provisioning profiles, apps, restrictions, security, settings,
/// app management.
pub const ACCESS_RIGHTS_ALL: i64 = 8191;

/// `ServerCapabilities` item: the server supports device and user channels (needed for macOS
/// and Shared iPad user channels, which this gateway serves).
pub const CAPABILITY_PER_USER_CONNECTIONS: &str = "com.apple.mdm.per-user-connections";
/// `ServerCapabilities` item: the server escrows the Bootstrap Token (macOS), which this gateway
/// stores and returns (`SetBootstrapToken` / `GetBootstrapToken`).
pub const CAPABILITY_BOOTSTRAP_TOKEN: &str = "com.apple.mdm.bootstraptoken";

/// SCEP key size requested from the device.
pub const SCEP_KEY_SIZE: i64 = 2048;
/// SCEP `Key Usage`: 1 (signing) | 4 (encryption). The identity signs `Mdm-Signature` and
/// authenticates TLS; encryption lets the server send it encrypted payloads.
pub const SCEP_KEY_USAGE: i64 = 5;

/// Which kind of enrollment the profile is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileVariant {
    /// Device enrollment: the whole device is managed, `AccessRights` = all.
    Device,
    /// Account-driven User Enrollment (BYOD): the Managed Apple Account that signed in on the
    /// device, `EnrollmentMode` `BYOD`.
    User { assigned_managed_apple_id: String },
}

impl ProfileVariant {
    /// `device` or `user`, as in the gateway's `?variant=`.
    pub fn name(&self) -> &'static str {
        match self {
            ProfileVariant::Device => "device",
            ProfileVariant::User { .. } => "user",
        }
    }
}

/// The `PayloadUUID`s of the profile and of its three payloads. Each must be unique; a new set per
/// profile handed out is fine (the device replaces a profile by `PayloadIdentifier`, not UUID).
#[derive(Debug, Clone, Copy)]
pub struct PayloadUuids<'a> {
    pub profile: &'a str,
    pub mdm: &'a str,
    pub scep: &'a str,
    pub ca: &'a str,
}

/// Everything that goes into an enrollment profile.
#[derive(Debug, Clone)]
pub struct EnrollmentProfile<'a> {
    /// The gateway's public base URL (`https://host[:port][/prefix]`); `ServerURL` is
    /// `<public_url>/mdm`, `CheckInURL` `<public_url>/checkin`, the SCEP `URL` `<public_url>/scep`.
    pub public_url: &'a str,
    /// The APNs topic of the push certificate (`com.apple.mgmt.…`).
    pub topic: &'a str,
    /// Reverse-DNS `PayloadIdentifier` of the profile; payloads get `<identifier>.mdm`, `.scep`,
    /// `.ca`. Keep it stable: a device replaces an installed profile with the same identifier.
    pub identifier: &'a str,
    /// `PayloadOrganization`, also used in the names and descriptions the device shows.
    pub organization: &'a str,
    pub uuids: PayloadUuids<'a>,
    /// The SCEP `Challenge`: a one-time secret the SCEP server checks.
    pub scep_challenge: &'a str,
    /// The `CN` of the SCEP `Subject`: names this enrollment in the issued certificate.
    pub scep_subject_cn: &'a str,
    /// The SCEP `Name` (a CA instance name the SCEP server understands).
    pub scep_name: &'a str,
    /// DER of the CA certificate installed as `com.apple.security.root`.
    pub ca_der: &'a [u8],
    pub variant: &'a ProfileVariant,
}

/// Why a profile could not be built: an input the device would refuse or misread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// `ServerURL` and the SCEP URL must be `https://` with a host, no query or fragment.
    #[error("public URL {url:?} is not an https:// URL with a host and without query or fragment")]
    BadPublicUrl { url: String },
    /// Apple requires the push topic to start with `com.apple.mgmt.`.
    #[error("push topic {topic:?} does not start with com.apple.mgmt.")]
    BadTopic { topic: String },
    /// A `PayloadUUID` not in the 8-4-4-4-12 form Apple's schema requires.
    #[error("{which} UUID {value:?} is not of the form XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX")]
    BadUuid { which: &'static str, value: String },
    /// Two payloads with the same UUID: the MDM payload's identity reference would be ambiguous.
    #[error("payload UUIDs must all differ; {value:?} is used twice")]
    DuplicateUuid { value: String },
    /// A required text field is empty or holds control characters.
    #[error("{field} is empty or contains control characters")]
    BadField { field: &'static str },
    /// The CA certificate is missing.
    #[error("CA certificate DER is empty")]
    NoCaCertificate,
    /// `AssignedManagedAppleID` must look like `user@domain`.
    #[error("managed Apple account {value:?} is not of the form user@domain")]
    BadManagedAppleId { value: String },
}

impl EnrollmentProfile<'_> {
    /// The profile as a plist dictionary, after checking every input.
    pub fn to_plist(&self) -> Result<Value, ProfileError> {
        let base = self.check()?;
        let id = |suffix: &str| format!("{}.{suffix}", self.identifier);

        let mut ca = payload("com.apple.security.root", &id("ca"), self.uuids.ca);
        ca.insert("PayloadDisplayName".into(), format!("{} certificate authority", self.organization).into());
        ca.insert("PayloadCertificateFileName".into(), "ca.cer".into());
        ca.insert("PayloadContent".into(), Value::Data(self.ca_der.to_vec()));

        let mut scep_content = Dictionary::new();
        scep_content.insert("URL".into(), format!("{base}/scep").into());
        scep_content.insert("Name".into(), self.scep_name.into());
        scep_content.insert("Challenge".into(), self.scep_challenge.into());
        scep_content.insert("Keysize".into(), SCEP_KEY_SIZE.into());
        scep_content.insert("Key Type".into(), "RSA".into());
        scep_content.insert("Key Usage".into(), SCEP_KEY_USAGE.into());
        // An X.500 name as RDNs, each an array of [type, value] pairs: [[["CN", "…"]]].
        let cn = Value::Array(vec!["CN".into(), self.scep_subject_cn.into()]);
        scep_content.insert("Subject".into(), Value::Array(vec![Value::Array(vec![cn])]));
        let mut scep = payload("com.apple.security.scep", &id("scep"), self.uuids.scep);
        scep.insert("PayloadDisplayName".into(), "Device identity (SCEP)".into());
        scep.insert("PayloadContent".into(), Value::Dictionary(scep_content));

        let mut mdm = payload("com.apple.mdm", &id("mdm"), self.uuids.mdm);
        mdm.insert("PayloadDisplayName".into(), "Device management".into());
        mdm.insert("ServerURL".into(), format!("{base}/mdm").into());
        mdm.insert("CheckInURL".into(), format!("{base}/checkin").into());
        mdm.insert("Topic".into(), self.topic.into());
        mdm.insert("IdentityCertificateUUID".into(), self.uuids.scep.into());
        mdm.insert("SignMessage".into(), true.into());
        mdm.insert("CheckOutWhenRemoved".into(), true.into());
        mdm.insert(
            "ServerCapabilities".into(),
            Value::Array(vec![CAPABILITY_PER_USER_CONNECTIONS.into(), CAPABILITY_BOOTSTRAP_TOKEN.into()]),
        );
        let description = match self.variant {
            ProfileVariant::Device => {
                mdm.insert("AccessRights".into(), ACCESS_RIGHTS_ALL.into());
                format!(
                    "Enrolls this device in {org}'s device management (MDM). It installs {org}'s certificate \
                     authority, requests a device identity certificate and lets {org} manage this device.",
                    org = self.organization
                )
            }
            ProfileVariant::User { assigned_managed_apple_id } => {
                mdm.insert("EnrollmentMode".into(), "BYOD".into());
                mdm.insert("AssignedManagedAppleID".into(), assigned_managed_apple_id.as_str().into());
                format!(
                    "Enrolls {assigned_managed_apple_id} in {org}'s device management (User Enrollment). {org} \
                     manages only the work account, its apps and data on this device.",
                    org = self.organization
                )
            }
        };

        let mut top = Dictionary::new();
        top.insert("PayloadType".into(), "Configuration".into());
        top.insert("PayloadVersion".into(), 1.into());
        top.insert("PayloadIdentifier".into(), self.identifier.into());
        top.insert("PayloadUUID".into(), self.uuids.profile.into());
        top.insert("PayloadDisplayName".into(), format!("{} device management", self.organization).into());
        top.insert("PayloadDescription".into(), description.into());
        top.insert("PayloadOrganization".into(), self.organization.into());
        top.insert(
            "PayloadContent".into(),
            Value::Array(vec![Value::Dictionary(ca), Value::Dictionary(scep), Value::Dictionary(mdm)]),
        );
        Ok(Value::Dictionary(top))
    }

    /// The profile as XML plist bytes: the content to sign.
    pub fn to_xml(&self) -> Result<Vec<u8>, ProfileError> {
        Ok(to_xml(&self.to_plist()?))
    }

    /// Checks the inputs; returns the public URL without a trailing `/`.
    fn check(&self) -> Result<&str, ProfileError> {
        let base = self.public_url.trim_end_matches('/');
        let host_and_path = base.strip_prefix("https://").unwrap_or("");
        let host = host_and_path.split(['/', ':']).next().unwrap_or("");
        if host.is_empty() || base.contains(['?', '#']) || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ProfileError::BadPublicUrl { url: self.public_url.to_owned() });
        }
        if !self.topic.starts_with("com.apple.mgmt.") || !text_ok(self.topic) {
            return Err(ProfileError::BadTopic { topic: self.topic.to_owned() });
        }
        let uuids = [
            ("profile", self.uuids.profile),
            ("MDM payload", self.uuids.mdm),
            ("SCEP payload", self.uuids.scep),
            ("CA payload", self.uuids.ca),
        ];
        for (i, (which, value)) in uuids.iter().enumerate() {
            if !uuid_ok(value) {
                return Err(ProfileError::BadUuid { which, value: (*value).to_owned() });
            }
            if uuids[..i].iter().any(|(_, earlier)| earlier.eq_ignore_ascii_case(value)) {
                return Err(ProfileError::DuplicateUuid { value: (*value).to_owned() });
            }
        }
        for (field, value) in [
            ("identifier", self.identifier),
            ("organization", self.organization),
            ("SCEP challenge", self.scep_challenge),
            ("SCEP subject CN", self.scep_subject_cn),
            ("SCEP name", self.scep_name),
        ] {
            if !text_ok(value) {
                return Err(ProfileError::BadField { field });
            }
        }
        if self.ca_der.is_empty() {
            return Err(ProfileError::NoCaCertificate);
        }
        if let ProfileVariant::User { assigned_managed_apple_id: id } = self.variant
            && !managed_apple_id_ok(id)
        {
            return Err(ProfileError::BadManagedAppleId { value: id.clone() });
        }
        Ok(base)
    }
}

/// The keys every payload carries.
fn payload(payload_type: &str, identifier: &str, uuid: &str) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("PayloadType".into(), payload_type.into());
    d.insert("PayloadVersion".into(), 1.into());
    d.insert("PayloadIdentifier".into(), identifier.into());
    d.insert("PayloadUUID".into(), uuid.into());
    d
}

fn text_ok(s: &str) -> bool {
    !s.trim().is_empty() && !s.chars().any(char::is_control)
}

/// Apple's schema: `^[0-9A-Za-z]{8}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{4}-[0-9A-Za-z]{12}$`.
fn uuid_ok(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `user@domain`: one `@` with text on both sides, a dot in the domain, no spaces or controls.
pub fn managed_apple_id_ok(s: &str) -> bool {
    let Some((user, domain)) = s.rsplit_once('@') else { return false };
    !user.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}
