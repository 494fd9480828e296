//! A declaration: `{Type, Identifier, ServerToken, Payload}`, JSON, as the server hands it to the
//! device. Validated here when an API caller supplies one, so a device is never given something
//! it must reject as a whole.

use serde_json::{Map, Value as Json};

/// The four kinds of declaration, from the second component of `Type`
/// (`com.apple.<class>.…`), and the path segment the device fetches them under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeclarationClass {
    Activation,
    Asset,
    Configuration,
    Management,
}

impl DeclarationClass {
    pub const ALL: [DeclarationClass; 4] = [
        DeclarationClass::Activation,
        DeclarationClass::Asset,
        DeclarationClass::Configuration,
        DeclarationClass::Management,
    ];

    /// The class as written in `Type` and in the `declaration/<class>/…` endpoint.
    pub fn path(self) -> &'static str {
        match self {
            DeclarationClass::Activation => "activation",
            DeclarationClass::Asset => "asset",
            DeclarationClass::Configuration => "configuration",
            DeclarationClass::Management => "management",
        }
    }

    /// The key of this class in the `declaration-items` manifest.
    pub fn manifest_key(self) -> &'static str {
        match self {
            DeclarationClass::Activation => "Activations",
            DeclarationClass::Asset => "Assets",
            DeclarationClass::Configuration => "Configurations",
            DeclarationClass::Management => "Management",
        }
    }

    pub fn from_path(s: &str) -> Option<DeclarationClass> {
        DeclarationClass::ALL.into_iter().find(|c| c.path() == s)
    }

    /// The class of a declaration `Type`: `com.apple.<class>.<name>` with a non-empty name.
    pub fn of_type(declaration_type: &str) -> Option<DeclarationClass> {
        let rest = declaration_type.strip_prefix("com.apple.")?;
        let (class, name) = rest.split_once('.')?;
        if name.is_empty() {
            return None;
        }
        DeclarationClass::from_path(class)
    }
}

/// Longest `Identifier` and `ServerToken` accepted, in bytes. Apple sets no limit; these keep
/// rows and manifests bounded (a UUID is 36).
pub const MAX_IDENTIFIER_BYTES: usize = 512;
pub const MAX_SERVER_TOKEN_BYTES: usize = 512;

/// A declaration that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Declaration {
    pub declaration_type: String,
    pub class: DeclarationClass,
    pub identifier: String,
    pub server_token: String,
    /// The whole object (the four keys), as the device will get it.
    pub json: Map<String, Json>,
}

/// Why a declaration was refused. Each names the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclarationError {
    #[error("declaration is not JSON: {0}")]
    NotJson(String),
    #[error("declaration is not a JSON object")]
    NotObject,
    #[error("declaration has no `{0}`")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType { field: &'static str, expected: &'static str },
    #[error("`{0}` is empty")]
    Empty(&'static str),
    #[error("`{field}` is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("`{0}` contains control characters")]
    ControlCharacters(&'static str),
    #[error("`Type` {0:?} is not com.apple.<activation|asset|configuration|management>.<name>")]
    UnknownType(String),
    #[error("unknown key `{0}`: a declaration has only Type, Identifier, ServerToken and Payload")]
    UnknownKey(String),
}

const KEYS: [&str; 4] = ["Type", "Identifier", "ServerToken", "Payload"];

fn text(obj: &Map<String, Json>, field: &'static str, max: usize) -> Result<String, DeclarationError> {
    let s = match obj.get(field) {
        None => return Err(DeclarationError::Missing(field)),
        Some(Json::String(s)) => s,
        Some(_) => return Err(DeclarationError::WrongType { field, expected: "a string" }),
    };
    if s.is_empty() {
        return Err(DeclarationError::Empty(field));
    }
    if s.len() > max {
        return Err(DeclarationError::TooLong { field, max });
    }
    if s.chars().any(char::is_control) {
        return Err(DeclarationError::ControlCharacters(field));
    }
    Ok(s.clone())
}

impl Declaration {
    /// Parses and validates JSON bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Declaration, DeclarationError> {
        let v: Json = serde_json::from_slice(bytes).map_err(|e| DeclarationError::NotJson(e.to_string()))?;
        Declaration::from_json(v)
    }

    /// Validates a JSON value: an object with exactly `Type` (a known class), `Identifier` and
    /// `ServerToken` (non-empty strings without control characters) and `Payload` (an object).
    pub fn from_json(v: Json) -> Result<Declaration, DeclarationError> {
        let Json::Object(obj) = v else {
            return Err(DeclarationError::NotObject);
        };
        if let Some(extra) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(DeclarationError::UnknownKey(extra.clone()));
        }
        let declaration_type = text(&obj, "Type", 256)?;
        let class = DeclarationClass::of_type(&declaration_type)
            .ok_or(DeclarationError::UnknownType(declaration_type.clone()))?;
        let identifier = text(&obj, "Identifier", MAX_IDENTIFIER_BYTES)?;
        let server_token = text(&obj, "ServerToken", MAX_SERVER_TOKEN_BYTES)?;
        match obj.get("Payload") {
            None => return Err(DeclarationError::Missing("Payload")),
            Some(Json::Object(_)) => {}
            Some(_) => return Err(DeclarationError::WrongType { field: "Payload", expected: "an object" }),
        }
        Ok(Declaration { declaration_type, class, identifier, server_token, json: obj })
    }

    /// The JSON the device gets.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A map of JSON values always serialises.
        serde_json::to_vec(&self.json).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ok() -> Json {
        json!({
            "Type": "com.apple.configuration.passcode.settings",
            "Identifier": "passcode-1",
            "ServerToken": "v1",
            "Payload": {"MinimumLength": 6}
        })
    }

    #[test]
    fn accepts_a_declaration() {
        let d = Declaration::from_json(ok()).unwrap();
        assert_eq!(d.class, DeclarationClass::Configuration);
        assert_eq!(d.identifier, "passcode-1");
        assert_eq!(d.server_token, "v1");
        let back: Json = serde_json::from_slice(&d.to_bytes()).unwrap();
        assert_eq!(back, ok());
    }

    #[test]
    fn classes_from_types() {
        for (t, c) in [
            ("com.apple.activation.simple", Some(DeclarationClass::Activation)),
            ("com.apple.asset.credential.userpassword", Some(DeclarationClass::Asset)),
            ("com.apple.management.status-subscriptions", Some(DeclarationClass::Management)),
            ("com.apple.configuration.", None),
            ("com.apple.configuration", None),
            ("com.example.configuration.x", None),
            ("com.apple.profile.x", None),
        ] {
            assert_eq!(DeclarationClass::of_type(t), c, "{t}");
        }
    }

    #[test]
    fn refusals_name_the_key() {
        let with = |k: &str, v: Json| {
            let mut o = ok();
            o[k] = v;
            o
        };
        let without = |k: &str| {
            let mut o = ok();
            o.as_object_mut().unwrap().remove(k);
            o
        };
        let cases = [
            (json!([1]), DeclarationError::NotObject),
            (without("Payload"), DeclarationError::Missing("Payload")),
            (without("ServerToken"), DeclarationError::Missing("ServerToken")),
            (with("Payload", json!([])), DeclarationError::WrongType { field: "Payload", expected: "an object" }),
            (with("Identifier", json!(5)), DeclarationError::WrongType { field: "Identifier", expected: "a string" }),
            (with("Identifier", json!("")), DeclarationError::Empty("Identifier")),
            (with("Identifier", json!("a\nb")), DeclarationError::ControlCharacters("Identifier")),
            (with("ServerToken", json!("x".repeat(513))), DeclarationError::TooLong { field: "ServerToken", max: 512 }),
            (with("Type", json!("com.apple.profile.x")), DeclarationError::UnknownType("com.apple.profile.x".into())),
            (with("Paylod", json!({})), DeclarationError::UnknownKey("Paylod".into())),
        ];
        for (v, e) in cases {
            assert_eq!(Declaration::from_json(v.clone()), Err(e), "{v}");
        }
        assert!(matches!(Declaration::from_slice(b"{"), Err(DeclarationError::NotJson(_))));
    }
}
