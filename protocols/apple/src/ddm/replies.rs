//! The JSON bodies of the `tokens` and `declaration-items` answers.

use serde_json::{Map, Value as Json, json};

use super::DeclarationClass;

/// The server's synchronization tokens (Apple's `SynchronizationTokens`): an opaque token that
/// changes whenever the channel's declaration set changes, and when that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncTokens {
    /// At most 256 bytes (Apple's limit).
    pub declarations_token: String,
    /// RFC 3339, e.g. `2024-05-01T10:00:00Z`.
    pub timestamp: String,
}

impl SyncTokens {
    pub fn to_json(&self) -> Json {
        json!({ "DeclarationsToken": self.declarations_token, "Timestamp": self.timestamp })
    }
}

/// One declaration in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestItem {
    pub class: DeclarationClass,
    pub identifier: String,
    pub server_token: String,
}

/// `{"SyncTokens": {"DeclarationsToken", "Timestamp"}}`: the answer to `tokens`, and also the
/// `Data` of a `DeclarativeManagement` command that carries tokens.
pub fn tokens_response(tokens: &SyncTokens) -> Vec<u8> {
    serde_json::to_vec(&json!({ "SyncTokens": tokens.to_json() })).unwrap_or_default()
}

/// `{"Declarations": {"Activations", "Assets", "Configurations", "Management"}, "DeclarationsToken"}`
/// with every class present (empty when it has no declaration), items in the given order.
pub fn declaration_items_response(declarations_token: &str, items: &[ManifestItem]) -> Vec<u8> {
    let mut by_class = Map::new();
    for class in DeclarationClass::ALL {
        let list: Vec<Json> = items
            .iter()
            .filter(|i| i.class == class)
            .map(|i| json!({ "Identifier": i.identifier, "ServerToken": i.server_token }))
            .collect();
        by_class.insert(class.manifest_key().into(), Json::Array(list));
    }
    serde_json::to_vec(&json!({ "Declarations": by_class, "DeclarationsToken": declarations_token }))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_shape() {
        let t = SyncTokens { declarations_token: "abc".into(), timestamp: "2024-05-01T10:00:00Z".into() };
        let v: Json = serde_json::from_slice(&tokens_response(&t)).unwrap();
        assert_eq!(v, json!({"SyncTokens": {"DeclarationsToken": "abc", "Timestamp": "2024-05-01T10:00:00Z"}}));
    }

    #[test]
    fn items_shape() {
        let items = [
            ManifestItem { class: DeclarationClass::Configuration, identifier: "c1".into(), server_token: "1".into() },
            ManifestItem { class: DeclarationClass::Activation, identifier: "a1".into(), server_token: "2".into() },
            ManifestItem { class: DeclarationClass::Configuration, identifier: "c0".into(), server_token: "3".into() },
        ];
        let v: Json = serde_json::from_slice(&declaration_items_response("tok", &items)).unwrap();
        assert_eq!(
            v,
            json!({
                "Declarations": {
                    "Activations": [{"Identifier": "a1", "ServerToken": "2"}],
                    "Assets": [],
                    "Configurations": [{"Identifier": "c1", "ServerToken": "1"}, {"Identifier": "c0", "ServerToken": "3"}],
                    "Management": []
                },
                "DeclarationsToken": "tok"
            })
        );
    }
}
