//! What an emulated Apple device keeps from the commands it carries out, and the queries that
//! read it back: configuration profiles (`InstallProfile`, `RemoveProfile`, `ProfileList`),
//! managed apps (`InstallApplication`, `RemoveApplication`, `ManagedApplicationList`,
//! `InstalledApplicationList`) and managed app configuration (`Settings` with
//! `ApplicationConfiguration` items, `InstallApplication`'s `Configuration`,
//! `ManagedApplicationConfiguration`).
//!
//! Apps install at once (no App Store, no licences): an `InstallApplication` answers `State`
//! `Installing` and the app is `Managed` in the next list. An app given by `iTunesStoreID` is
//! named `store.<id>` and one given by `ManifestURL` by the manifest's file name, since the
//! emulator has no catalogue to look bundle ids up in.

use std::collections::BTreeMap;

use plist::{Dictionary, Value};

/// One managed app.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedApp {
    pub identifier: String,
    pub management_flags: i64,
    /// `Managed` once installed.
    pub status: String,
}

/// The device's managed state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManagedState {
    /// Installed configuration profiles (the profile dictionary) by `PayloadIdentifier`.
    pub profiles: BTreeMap<String, Dictionary>,
    pub apps: BTreeMap<String, ManagedApp>,
    /// Managed app configuration by bundle id.
    pub app_configs: BTreeMap<String, Dictionary>,
}

/// Why the device refuses a command: the `ErrorChain` entry it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: i64,
    pub domain: &'static str,
    pub description: String,
}

impl Refusal {
    fn new(code: i64, domain: &'static str, description: impl Into<String>) -> Refusal {
        Refusal { code, domain, description: description.into() }
    }

    /// The keys of the `Error` report.
    pub fn report_keys(&self) -> Dictionary {
        let mut e = Dictionary::new();
        e.insert("ErrorCode".into(), Value::Integer(self.code.into()));
        e.insert("ErrorDomain".into(), self.domain.into());
        e.insert("LocalizedDescription".into(), self.description.clone().into());
        e.insert("USEnglishDescription".into(), self.description.clone().into());
        let mut d = Dictionary::new();
        d.insert("ErrorChain".into(), Value::Array(vec![Value::Dictionary(e)]));
        d
    }
}

fn string_list(command: &Dictionary, key: &str) -> Option<Vec<String>> {
    command
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_string().map(str::to_owned)).collect())
}

/// `PayloadType`, `PayloadIdentifier`, `PayloadUUID`, `PayloadVersion` (and the display name) of
/// a payload: what `ProfileList` reports about it.
fn payload_summary(p: &Dictionary) -> Dictionary {
    let mut s = Dictionary::new();
    for k in ["PayloadType", "PayloadIdentifier", "PayloadUUID", "PayloadVersion", "PayloadDisplayName"] {
        if let Some(v) = p.get(k) {
            s.insert(k.into(), v.clone());
        }
    }
    s
}

impl ManagedState {
    /// Carries out `command` (its `RequestType` is `request_type`): the keys of the
    /// `Acknowledged` report, or why it is refused. Commands this module does not model are
    /// acknowledged with no keys and change nothing.
    pub fn execute(&mut self, request_type: &str, command: &Dictionary) -> Result<Dictionary, Refusal> {
        let mut out = Dictionary::new();
        match request_type {
            "InstallProfile" => {
                let data = command
                    .get("Payload")
                    .and_then(Value::as_data)
                    .ok_or_else(|| Refusal::new(1000, "MCProfileErrorDomain", "The profile has no payload data."))?;
                let profile: Dictionary = plist::from_bytes(data).map_err(|_| {
                    Refusal::new(1000, "MCProfileErrorDomain", "The profile is not a readable property list.")
                })?;
                let id = profile
                    .get("PayloadIdentifier")
                    .and_then(Value::as_string)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| Refusal::new(1000, "MCProfileErrorDomain", "The profile has no PayloadIdentifier."))?
                    .to_owned();
                // A profile with the identifier of an installed one replaces it.
                self.profiles.insert(id, profile);
            }
            "RemoveProfile" => {
                let id = command.get("Identifier").and_then(Value::as_string).unwrap_or_default();
                if self.profiles.remove(id).is_none() {
                    return Err(Refusal::new(
                        1001,
                        "MCProfileErrorDomain",
                        format!("The profile “{id}” is not installed."),
                    ));
                }
            }
            "ProfileList" => {
                let list = self
                    .profiles
                    .values()
                    .map(|p| {
                        let mut s = payload_summary(p);
                        s.insert("IsManaged".into(), Value::Boolean(true));
                        s.insert("IsEncrypted".into(), Value::Boolean(false));
                        if let Some(v) = p.get("PayloadRemovalDisallowed") {
                            s.insert("PayloadRemovalDisallowed".into(), v.clone());
                        }
                        let content: Vec<Value> = p
                            .get("PayloadContent")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_dictionary)
                            .map(|c| Value::Dictionary(payload_summary(c)))
                            .collect();
                        s.insert("PayloadContent".into(), Value::Array(content));
                        Value::Dictionary(s)
                    })
                    .collect();
                out.insert("ProfileList".into(), Value::Array(list));
            }
            "InstallApplication" => {
                let identifier = if let Some(id) = command.get("Identifier").and_then(Value::as_string) {
                    id.to_owned()
                } else if let Some(n) = command.get("iTunesStoreID").and_then(Value::as_signed_integer) {
                    format!("store.{n}")
                } else if let Some(url) = command.get("ManifestURL").and_then(Value::as_string) {
                    let file = url.rsplit('/').next().unwrap_or(url);
                    file.strip_suffix(".plist").unwrap_or(file).to_owned()
                } else {
                    return Err(Refusal::new(
                        12064,
                        "MCMDMErrorDomain",
                        "InstallApplication needs Identifier, iTunesStoreID or ManifestURL.",
                    ));
                };
                let flags = command.get("ManagementFlags").and_then(Value::as_signed_integer).unwrap_or(0);
                self.apps.insert(
                    identifier.clone(),
                    ManagedApp { identifier: identifier.clone(), management_flags: flags, status: "Managed".into() },
                );
                if let Some(c) = command.get("Configuration").and_then(Value::as_dictionary) {
                    self.app_configs.insert(identifier.clone(), c.clone());
                }
                out.insert("Identifier".into(), identifier.into());
                out.insert("State".into(), "Installing".into());
            }
            "RemoveApplication" => {
                let id = command.get("Identifier").and_then(Value::as_string).unwrap_or_default();
                if self.apps.remove(id).is_none() {
                    return Err(Refusal::new(12029, "MCMDMErrorDomain", format!("The app “{id}” is not managed.")));
                }
                self.app_configs.remove(id);
            }
            "ManagedApplicationList" => {
                let only = string_list(command, "Identifiers");
                let mut list = Dictionary::new();
                for app in self.apps.values() {
                    if only.as_ref().is_some_and(|o| !o.contains(&app.identifier)) {
                        continue;
                    }
                    let mut a = Dictionary::new();
                    a.insert("Status".into(), app.status.clone().into());
                    a.insert("ManagementFlags".into(), Value::Integer(app.management_flags.into()));
                    a.insert("HasConfiguration".into(), Value::Boolean(self.app_configs.contains_key(&app.identifier)));
                    a.insert("HasFeedback".into(), Value::Boolean(false));
                    a.insert("IsValidated".into(), Value::Boolean(true));
                    a.insert("ExternalVersionIdentifier".into(), Value::Integer(0.into()));
                    list.insert(app.identifier.clone(), Value::Dictionary(a));
                }
                out.insert("ManagedApplicationList".into(), Value::Dictionary(list));
            }
            "InstalledApplicationList" => {
                let list = self
                    .apps
                    .values()
                    .map(|app| {
                        let mut a = Dictionary::new();
                        a.insert("Identifier".into(), app.identifier.clone().into());
                        a.insert("Name".into(), app.identifier.clone().into());
                        a.insert("ShortVersion".into(), "1.0".into());
                        a.insert("Version".into(), "1".into());
                        a.insert("IsValidated".into(), Value::Boolean(true));
                        Value::Dictionary(a)
                    })
                    .collect();
                out.insert("InstalledApplicationList".into(), Value::Array(list));
            }
            "Settings" => {
                let items = command.get("Settings").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut answers = Vec::new();
                for item in items.iter().filter_map(Value::as_dictionary) {
                    let kind = item.get("Item").and_then(Value::as_string).unwrap_or_default();
                    let mut a = Dictionary::new();
                    a.insert("Item".into(), kind.into());
                    if kind == "ApplicationConfiguration" {
                        let id = item.get("Identifier").and_then(Value::as_string).unwrap_or_default().to_owned();
                        a.insert("Identifier".into(), id.clone().into());
                        match item.get("Configuration").and_then(Value::as_dictionary) {
                            Some(c) => {
                                self.app_configs.insert(id, c.clone());
                            }
                            // No configuration: the app's managed configuration is removed.
                            None => {
                                self.app_configs.remove(&id);
                            }
                        }
                    }
                    a.insert("Status".into(), "Acknowledged".into());
                    answers.push(Value::Dictionary(a));
                }
                out.insert("Settings".into(), Value::Array(answers));
            }
            "ManagedApplicationConfiguration" => {
                let ids = string_list(command, "Identifiers").unwrap_or_default();
                let list = ids
                    .iter()
                    .filter_map(|id| {
                        let c = self.app_configs.get(id)?;
                        let mut a = Dictionary::new();
                        a.insert("Identifier".into(), id.clone().into());
                        a.insert("Configuration".into(), Value::Dictionary(c.clone()));
                        Some(Value::Dictionary(a))
                    })
                    .collect();
                out.insert("ApplicationConfigurations".into(), Value::Array(list));
            }
            _ => {}
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, Value)]) -> Dictionary {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    fn profile(id: &str, content: Vec<Value>) -> Vec<u8> {
        let p = dict(&[
            ("PayloadIdentifier", id.into()),
            ("PayloadUUID", "U-1".into()),
            ("PayloadType", "Configuration".into()),
            ("PayloadVersion", Value::Integer(1.into())),
            ("PayloadContent", Value::Array(content)),
        ]);
        let mut out = Vec::new();
        plist::to_writer_xml(&mut out, &Value::Dictionary(p)).unwrap();
        out
    }

    #[test]
    fn profiles_install_replace_list_and_remove() {
        let mut s = ManagedState::default();
        let restrictions = Value::Dictionary(dict(&[
            ("PayloadType", "com.apple.applicationaccess".into()),
            ("PayloadIdentifier", "p.r".into()),
            ("allowCamera", Value::Boolean(false)),
        ]));
        s.execute("InstallProfile", &dict(&[("Payload", Value::Data(profile("p", vec![restrictions])))])).unwrap();
        s.execute("InstallProfile", &dict(&[("Payload", Value::Data(profile("p", vec![])))])).unwrap();
        assert_eq!(s.profiles.len(), 1, "same identifier: replaced");
        let list = s.execute("ProfileList", &Dictionary::new()).unwrap();
        let list = list["ProfileList"].as_array().unwrap();
        assert_eq!(list[0].as_dictionary().unwrap()["PayloadIdentifier"].as_string(), Some("p"));
        assert!(s.execute("InstallProfile", &dict(&[("Payload", Value::Data(b"junk".to_vec()))])).is_err());
        s.execute("RemoveProfile", &dict(&[("Identifier", "p".into())])).unwrap();
        assert!(s.execute("RemoveProfile", &dict(&[("Identifier", "p".into())])).is_err());
    }

    #[test]
    fn apps_and_their_configuration() {
        let mut s = ManagedState::default();
        let cfg = dict(&[("server", "mail.example.com".into())]);
        let r = s
            .execute(
                "InstallApplication",
                &dict(&[
                    ("Identifier", "com.example.mail".into()),
                    ("ManagementFlags", Value::Integer(1.into())),
                    ("Configuration", Value::Dictionary(cfg.clone())),
                ]),
            )
            .unwrap();
        assert_eq!(r["State"].as_string(), Some("Installing"));
        s.execute("InstallApplication", &dict(&[("iTunesStoreID", Value::Integer(361309726.into()))])).unwrap();
        let list = s.execute("ManagedApplicationList", &Dictionary::new()).unwrap();
        let list = list["ManagedApplicationList"].as_dictionary().unwrap();
        assert_eq!(list.keys().collect::<Vec<_>>(), ["com.example.mail", "store.361309726"]);
        assert_eq!(list["com.example.mail"].as_dictionary().unwrap()["HasConfiguration"], Value::Boolean(true));
        let item = dict(&[
            ("Item", "ApplicationConfiguration".into()),
            ("Identifier", "com.example.mail".into()),
            ("Configuration", Value::Dictionary(dict(&[("server", "imap.example.com".into())]))),
        ]);
        s.execute("Settings", &dict(&[("Settings", Value::Array(vec![Value::Dictionary(item)]))])).unwrap();
        let q = dict(&[("Identifiers", Value::Array(vec!["com.example.mail".into(), "com.none".into()]))]);
        let r = s.execute("ManagedApplicationConfiguration", &q).unwrap();
        let confs = r["ApplicationConfigurations"].as_array().unwrap();
        assert_eq!(confs.len(), 1);
        assert_eq!(
            confs[0].as_dictionary().unwrap()["Configuration"].as_dictionary().unwrap()["server"].as_string(),
            Some("imap.example.com")
        );
        s.execute("RemoveApplication", &dict(&[("Identifier", "com.example.mail".into())])).unwrap();
        assert!(!s.app_configs.contains_key("com.example.mail"));
    }
}
