//! Declarations (vectors/ddm/declarations.json: realistic Apple declarations of each class, and
//! refusals) and the manifest built from them.

mod common;

use common::own_json;
use mdm_apple::ddm::{Declaration, DeclarationClass, DeclarationError, ManifestItem, declaration_items_response};
use serde_json::Value as Json;

fn error_name(e: &DeclarationError) -> &'static str {
    match e {
        DeclarationError::NotJson(_) => "not_json",
        DeclarationError::NotObject => "not_object",
        DeclarationError::Missing(_) => "missing",
        DeclarationError::WrongType { .. } => "wrong_type",
        DeclarationError::Empty(_) => "empty",
        DeclarationError::TooLong { .. } => "too_long",
        DeclarationError::ControlCharacters(_) => "control_characters",
        DeclarationError::UnknownType(_) => "unknown_type",
        DeclarationError::UnknownKey(_) => "unknown_key",
    }
}

#[test]
fn declaration_table() {
    let cases = own_json("ddm/declarations.json");
    let mut items = Vec::new();
    for case in cases.as_array().unwrap() {
        let v = case["declaration"].clone();
        match case["error"].as_str() {
            Some(expected) => {
                let e = Declaration::from_json(v.clone()).expect_err(&v.to_string());
                assert_eq!(error_name(&e), expected, "{v}: {e}");
            }
            None => {
                let d = Declaration::from_json(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"));
                assert_eq!(Some(d.class), DeclarationClass::from_path(case["class"].as_str().unwrap()), "{v}");
                // Served byte for byte as what was given (as JSON).
                assert_eq!(serde_json::from_slice::<Json>(&d.to_bytes()).unwrap(), v);
                items.push(ManifestItem { class: d.class, identifier: d.identifier, server_token: d.server_token });
            }
        }
    }
    let manifest: Json = serde_json::from_slice(&declaration_items_response("T", &items)).unwrap();
    assert_eq!(manifest["DeclarationsToken"], "T");
    let count = |k: &str| manifest["Declarations"][k].as_array().unwrap().len();
    assert_eq!((count("Activations"), count("Assets"), count("Configurations"), count("Management")), (1, 1, 1, 2));
    assert_eq!(
        manifest["Declarations"]["Management"][1],
        serde_json::json!({"Identifier": "props", "ServerToken": "p"})
    );
}
