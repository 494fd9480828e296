//! The `wap-provisioningdoc` an enrollment answers with (MS-MDE2 §2.2.9.1): certificates
//! under `CertificateStore` (node names are the upper-case SHA-1 thumbprints), the renewal
//! settings (`My/WSTEP/Renew`), the w7 `APPLICATION` block that creates the OMA-DM account, and
//! the `DMClient` poll schedule. Built by the server, read back by clients.
//!
//! Thumbprints are given by the caller (this crate does no hashing).

use base64::Engine;

use super::EnrollError;
use super::xml::{self, Element, Writer};

/// A `parm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parm {
    pub name: String,
    /// Absent for flags such as `BACKCOMPATRETRYDISABLED`.
    pub value: Option<String>,
    pub datatype: Option<String>,
}

/// A `characteristic` and what it contains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Characteristic {
    pub kind: String,
    pub parms: Vec<Parm>,
    pub children: Vec<Characteristic>,
}

impl Characteristic {
    pub fn new(kind: impl Into<String>) -> Self {
        Characteristic { kind: kind.into(), ..Characteristic::default() }
    }

    pub fn parm(mut self, name: &str, value: impl Into<String>) -> Self {
        self.parms.push(Parm { name: name.into(), value: Some(value.into()), datatype: None });
        self
    }

    pub fn typed(mut self, name: &str, value: impl Into<String>, datatype: &str) -> Self {
        self.parms.push(Parm { name: name.into(), value: Some(value.into()), datatype: Some(datatype.into()) });
        self
    }

    pub fn flag(mut self, name: &str) -> Self {
        self.parms.push(Parm { name: name.into(), value: None, datatype: None });
        self
    }

    pub fn child(mut self, c: Characteristic) -> Self {
        self.children.push(c);
        self
    }

    /// The first child of this type.
    pub fn get(&self, kind: &str) -> Option<&Characteristic> {
        self.children.iter().find(|c| c.kind == kind)
    }

    /// The value of a parm.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.parms.iter().find(|p| p.name == name).and_then(|p| p.value.as_deref())
    }

    fn write(&self, w: &mut Writer) {
        if self.parms.is_empty() && self.children.is_empty() {
            w.empty("characteristic", &[("type", &self.kind)]);
            return;
        }
        w.open("characteristic", &[("type", &self.kind)]);
        for p in &self.parms {
            let mut attrs = vec![("name", p.name.as_str())];
            if let Some(v) = &p.value {
                attrs.push(("value", v));
            }
            if let Some(d) = &p.datatype {
                attrs.push(("datatype", d));
            }
            w.empty("parm", &attrs);
        }
        for c in &self.children {
            c.write(w);
        }
        w.close();
    }

    fn read(el: &Element) -> Result<Self, EnrollError> {
        let kind = el.attr("type").ok_or_else(|| EnrollError::ProvisioningDoc("characteristic without type".into()))?;
        let mut c = Characteristic::new(kind);
        for child in &el.children {
            match child.name.as_str() {
                "parm" => c.parms.push(Parm {
                    name: child
                        .attr("name")
                        .ok_or_else(|| EnrollError::ProvisioningDoc("parm without name".into()))?
                        .into(),
                    value: child.attr("value").map(str::to_owned),
                    datatype: child.attr("datatype").map(str::to_owned),
                }),
                "characteristic" => c.children.push(Characteristic::read(child)?),
                // characteristic-query and nocharacteristic mean nothing to an enrollment.
                _ => {}
            }
        }
        Ok(c)
    }
}

/// A whole document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningDoc {
    pub version: String,
    pub characteristics: Vec<Characteristic>,
}

impl ProvisioningDoc {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.open("wap-provisioningdoc", &[("version", &self.version)]);
        for c in &self.characteristics {
            c.write(&mut w);
        }
        let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        out.push_str(&w.finish());
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<ProvisioningDoc, EnrollError> {
        let root = xml::parse(bytes)?;
        if root.name != "wap-provisioningdoc" {
            return Err(EnrollError::ProvisioningDoc(format!("root element is {}", root.qualified())));
        }
        let characteristics = root
            .children
            .iter()
            .filter(|c| c.name == "characteristic")
            .map(Characteristic::read)
            .collect::<Result<_, _>>()?;
        Ok(ProvisioningDoc { version: root.attr("version").unwrap_or("1.1").to_owned(), characteristics })
    }

    /// Every top-level characteristic of this type (a document may split `CertificateStore`
    /// in two, as Microsoft's example does).
    pub fn all<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Characteristic> + 'a {
        self.characteristics.iter().filter(move |c| c.kind == kind)
    }
}

/// A certificate and its thumbprint (SHA-1 of the DER, upper-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateEntry {
    pub thumbprint: String,
    pub der: Vec<u8>,
}

/// Which `My` store the client certificate goes to: the user's for user enrollments, the
/// machine's (`System`) for device enrollments (`EnrollmentType` `Device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStore {
    User,
    System,
}

impl CertStore {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStore::User => "User",
            CertStore::System => "System",
        }
    }
}

/// `CertificateStore/My/WSTEP/Renew`: how the client renews its certificate. ROBO ("renew on
/// behalf of") means the client renews by itself, authenticating with the current certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewSettings {
    pub robo_support: bool,
    /// Days before expiry when the client starts renewing.
    pub renew_period_days: u32,
    /// Days between renewal attempts after a failure.
    pub retry_interval_days: u32,
}

/// `DMClient/Provider/<id>/Poll`: when the device starts management sessions by itself.
/// Intervals in minutes; `None` leaves the client's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSchedule {
    pub interval_for_first_set_of_retries: Option<u32>,
    pub number_of_first_retries: Option<u32>,
    pub interval_for_second_set_of_retries: Option<u32>,
    pub number_of_second_retries: Option<u32>,
    pub interval_for_remaining_scheduled_retries: Option<u32>,
    /// 0: forever.
    pub number_of_remaining_scheduled_retries: Option<u32>,
    pub poll_on_login: Option<bool>,
    pub all_users_poll_on_first_login: Option<bool>,
}

const POLL_INTS: [&str; 6] = [
    "IntervalForFirstSetOfRetries",
    "NumberOfFirstRetries",
    "IntervalForSecondSetOfRetries",
    "NumberOfSecondRetries",
    "IntervalForRemainingScheduledRetries",
    "NumberOfRemainingScheduledRetries",
];

impl PollSchedule {
    fn ints(&self) -> [Option<u32>; 6] {
        [
            self.interval_for_first_set_of_retries,
            self.number_of_first_retries,
            self.interval_for_second_set_of_retries,
            self.number_of_second_retries,
            self.interval_for_remaining_scheduled_retries,
            self.number_of_remaining_scheduled_retries,
        ]
    }

    fn characteristic(&self) -> Characteristic {
        let mut c = Characteristic::new("Poll");
        for (name, v) in POLL_INTS.iter().zip(self.ints()) {
            if let Some(v) = v {
                c = c.typed(name, v.to_string(), "integer");
            }
        }
        for (name, v) in
            [("PollOnLogin", self.poll_on_login), ("AllUsersPollOnFirstLogin", self.all_users_poll_on_first_login)]
        {
            if let Some(v) = v {
                c = c.typed(name, v.to_string(), "boolean");
            }
        }
        c
    }

    fn read(c: &Characteristic) -> Self {
        let int = |n: &str| c.value(n).and_then(|v| v.trim().parse().ok());
        let boolean = |n: &str| c.value(n).and_then(|v| v.trim().to_ascii_lowercase().parse().ok());
        PollSchedule {
            interval_for_first_set_of_retries: int(POLL_INTS[0]),
            number_of_first_retries: int(POLL_INTS[1]),
            interval_for_second_set_of_retries: int(POLL_INTS[2]),
            number_of_second_retries: int(POLL_INTS[3]),
            interval_for_remaining_scheduled_retries: int(POLL_INTS[4]),
            number_of_remaining_scheduled_retries: int(POLL_INTS[5]),
            poll_on_login: boolean("PollOnLogin"),
            all_users_poll_on_first_login: boolean("AllUsersPollOnFirstLogin"),
        }
    }
}

/// The DM-level credentials of the w7 account (`APPAUTH`): the client's (`CLIENT`: the server
/// authenticates to the client) and the server's (`APPSRV`). This gateway authenticates
/// devices by their TLS client certificate; these are written because Windows expects the
/// blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAuth {
    pub client_secret: String,
    pub client_nonce: String,
    pub server_name: String,
    pub server_secret: String,
    pub server_nonce: String,
}

/// The w7 `APPLICATION` characteristic: the OMA-DM account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementAccount {
    /// `PROVIDER-ID`; also the `DMClient/Provider` node name.
    pub provider_id: String,
    pub name: String,
    /// `ADDR`: the management endpoint.
    pub addr: String,
    /// `SSLCLIENTCERTSEARCHCRITERIA` (already URL-encoded, `Subject=CN%3D…&Stores=My%5CUser`).
    pub client_cert_search: Option<String>,
    pub app_auth: Option<AppAuth>,
}

/// Everything a successful enrollment provisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentProvisioning {
    /// Trusted roots (`Root/System`).
    pub roots: Vec<CertificateEntry>,
    /// The issued client certificate.
    pub client: CertificateEntry,
    pub store: CertStore,
    /// `None` writes no `WSTEP/Renew` (the server does not renew).
    pub renew: Option<RenewSettings>,
    pub account: ManagementAccount,
    pub poll: PollSchedule,
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

impl EnrollmentProvisioning {
    pub fn to_doc(&self) -> ProvisioningDoc {
        let mut root_system = Characteristic::new("System");
        for r in &self.roots {
            root_system = root_system.child(Characteristic::new(&r.thumbprint).parm("EncodedCertificate", b64(&r.der)));
        }
        let mut my = Characteristic::new("My").child(
            Characteristic::new(self.store.as_str())
                .child(Characteristic::new(&self.client.thumbprint).parm("EncodedCertificate", b64(&self.client.der)))
                .child(Characteristic::new("PrivateKeyContainer")),
        );
        if let Some(r) = &self.renew {
            my = my.child(
                Characteristic::new("WSTEP").child(
                    Characteristic::new("Renew")
                        .typed("ROBOSupport", r.robo_support.to_string(), "boolean")
                        .typed("RenewPeriod", r.renew_period_days.to_string(), "integer")
                        .typed("RetryInterval", r.retry_interval_days.to_string(), "integer"),
                ),
            );
        }
        let cert_store =
            Characteristic::new("CertificateStore").child(Characteristic::new("Root").child(root_system)).child(my);

        let a = &self.account;
        let mut app = Characteristic::new("APPLICATION")
            .parm("APPID", "w7")
            .parm("PROVIDER-ID", &a.provider_id)
            .parm("NAME", &a.name)
            .parm("ADDR", &a.addr)
            .parm("ROLE", "4294967295")
            .flag("BACKCOMPATRETRYDISABLED")
            .parm("DEFAULTENCODING", "application/vnd.syncml.dm+xml");
        if let Some(s) = &a.client_cert_search {
            app = app.parm("SSLCLIENTCERTSEARCHCRITERIA", s);
        }
        if let Some(auth) = &a.app_auth {
            app = app
                .child(
                    Characteristic::new("APPAUTH")
                        .parm("AAUTHLEVEL", "CLIENT")
                        .parm("AAUTHTYPE", "DIGEST")
                        .parm("AAUTHSECRET", &auth.client_secret)
                        .parm("AAUTHDATA", &auth.client_nonce),
                )
                .child(
                    Characteristic::new("APPAUTH")
                        .parm("AAUTHLEVEL", "APPSRV")
                        .parm("AAUTHTYPE", "DIGEST")
                        .parm("AAUTHNAME", &auth.server_name)
                        .parm("AAUTHSECRET", &auth.server_secret)
                        .parm("AAUTHDATA", &auth.server_nonce),
                );
        }
        let dm_client = Characteristic::new("DMClient").child(
            Characteristic::new("Provider")
                .child(Characteristic::new(&a.provider_id).child(self.poll.characteristic())),
        );
        ProvisioningDoc { version: "1.1".into(), characteristics: vec![cert_store, app, dm_client] }
    }
}

/// What a client takes from a provisioning document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedIdentity {
    pub roots: Vec<CertificateEntry>,
    pub client: CertificateEntry,
    pub store: String,
    pub renew: Option<RenewSettings>,
    pub provider_id: String,
    pub name: Option<String>,
    /// `ADDR`: where management sessions go.
    pub management_url: String,
    pub client_cert_search: Option<String>,
    pub poll: Option<PollSchedule>,
}

fn entries(store: &Characteristic) -> Result<Vec<CertificateEntry>, EnrollError> {
    store
        .children
        .iter()
        .filter_map(|c| c.value("EncodedCertificate").map(|v| (c, v)))
        .map(|(c, v)| {
            let der = super::soap::decode_base64(v)
                .ok_or_else(|| EnrollError::ProvisioningDoc(format!("certificate {} is not base64", c.kind)))?;
            Ok(CertificateEntry { thumbprint: c.kind.clone(), der })
        })
        .collect()
}

impl ProvisionedIdentity {
    pub fn from_doc(doc: &ProvisioningDoc) -> Result<Self, EnrollError> {
        let bad = |m: &str| EnrollError::ProvisioningDoc(m.to_owned());
        let mut roots = Vec::new();
        let mut client = None;
        let mut renew = None;
        for cs in doc.all("CertificateStore") {
            if let Some(sys) = cs.get("Root").and_then(|r| r.get("System")) {
                roots.extend(entries(sys)?);
            }
            if let Some(my) = cs.get("My") {
                for store in my.children.iter().filter(|c| c.kind != "WSTEP") {
                    if let Some(e) = entries(store)?.into_iter().next() {
                        client = Some((store.kind.clone(), e));
                    }
                }
                if let Some(r) = my.get("WSTEP").and_then(|w| w.get("Renew")) {
                    let int = |n: &str| r.value(n).and_then(|v| v.trim().parse().ok());
                    renew = Some(RenewSettings {
                        robo_support: r.value("ROBOSupport").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
                        renew_period_days: int("RenewPeriod").unwrap_or(0),
                        retry_interval_days: int("RetryInterval").unwrap_or(0),
                    });
                }
            }
        }
        let (store, client) = client.ok_or_else(|| bad("no client certificate under CertificateStore/My"))?;
        let app = doc
            .all("APPLICATION")
            .find(|a| a.value("APPID") == Some("w7"))
            .ok_or_else(|| bad("no w7 APPLICATION characteristic"))?;
        let provider_id = app.value("PROVIDER-ID").ok_or_else(|| bad("APPLICATION has no PROVIDER-ID"))?.to_owned();
        let management_url = app.value("ADDR").ok_or_else(|| bad("APPLICATION has no ADDR"))?.to_owned();
        let poll = doc
            .all("DMClient")
            .filter_map(|d| d.get("Provider"))
            .filter_map(|p| p.get(&provider_id))
            .find_map(|p| p.get("Poll"))
            .map(PollSchedule::read);
        Ok(ProvisionedIdentity {
            roots,
            client,
            store,
            renew,
            name: app.value("NAME").map(str::to_owned),
            client_cert_search: app.value("SSLCLIENTCERTSEARCHCRITERIA").map(str::to_owned),
            provider_id,
            management_url,
            poll,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnrollmentProvisioning {
        EnrollmentProvisioning {
            roots: vec![CertificateEntry { thumbprint: "AA11".into(), der: vec![1, 2, 3] }],
            client: CertificateEntry { thumbprint: "BB22".into(), der: vec![4, 5] },
            store: CertStore::System,
            renew: Some(RenewSettings { robo_support: true, renew_period_days: 42, retry_interval_days: 7 }),
            account: ManagementAccount {
                provider_id: "MDM Gateway".into(),
                name: "MDM Gateway".into(),
                addr: "https://h/ManagementServer/MDM.svc".into(),
                client_cert_search: Some("Subject=CN%3DDEV&Stores=My%5CSystem".into()),
                app_auth: Some(AppAuth {
                    client_secret: "c".into(),
                    client_nonce: "n1".into(),
                    server_name: "s".into(),
                    server_secret: "ss".into(),
                    server_nonce: "n2".into(),
                }),
            },
            poll: PollSchedule {
                interval_for_first_set_of_retries: Some(3),
                number_of_first_retries: Some(5),
                poll_on_login: Some(true),
                ..PollSchedule::default()
            },
        }
    }

    #[test]
    fn build_and_read_back() {
        let p = sample();
        let doc = p.to_doc();
        let bytes = doc.encode();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        // The search criteria's `&` is escaped once in the XML.
        assert!(text.contains("Subject=CN%3DDEV&amp;Stores=My%5CSystem"), "{text}");
        assert!(text.contains(r#"<parm name="BACKCOMPATRETRYDISABLED"/>"#));
        let back = ProvisioningDoc::decode(&bytes).expect("decodes");
        assert_eq!(back, doc);
        let id = ProvisionedIdentity::from_doc(&back).expect("identity");
        assert_eq!(id.roots, p.roots);
        assert_eq!((id.client.clone(), id.store.as_str()), (p.client.clone(), "System"));
        assert_eq!(id.renew, p.renew);
        assert_eq!(id.management_url, p.account.addr);
        assert_eq!(id.poll, Some(p.poll));
    }

    #[test]
    fn missing_parts_are_named() {
        let mut p = sample().to_doc();
        p.characteristics.retain(|c| c.kind != "APPLICATION");
        let e = ProvisionedIdentity::from_doc(&p).expect_err("no account");
        assert_eq!(e, EnrollError::ProvisioningDoc("no w7 APPLICATION characteristic".into()));
        assert!(ProvisioningDoc::decode(b"<other/>").is_err());
    }
}
