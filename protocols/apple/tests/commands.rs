//! translate() for every normalised command (table in vectors/command/translate_cases.json),
//! parse_command_plist() happy and error paths, check-in replies and the push payload.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{own, own_json, parse_plist, tagged_json, to_binary};
use mdm_apple::{
    TranslateContext, encode_bootstrap_token_response, encode_digest_challenge, encode_get_token_response,
    parse_command_plist, push_payload, translate,
};
use mdm_core::Command;
use serde_json::{Value as Json, json};

const UUID: &str = "0190a3c4-7b1e-7c2d-9e3f-4a5b6c7d8e9f";

#[test]
fn translate_table() {
    let cases = own_json("command/translate_cases.json");
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut command = case["command"].clone();
        if let Some(file) = case["payload_file"].as_str() {
            let xml = String::from_utf8(own(&format!("command/{file}"))).unwrap();
            command["payload"] = Json::String(xml);
        }
        let command: Command = serde_json::from_value(command).unwrap_or_else(|e| panic!("{name}: {e}"));
        let token = case["unlock_token_b64"].as_str().map(|t| B64.decode(t).unwrap());
        let ctx = TranslateContext { unlock_token: token.as_deref(), os_name: None };
        let got = translate(&command, UUID, &ctx);
        if let Some(err) = case.get("error") {
            let e = got.expect_err(name);
            assert_eq!(e.code(), err["code"], "{name}: {e}");
            if let (Some(field), mdm_core::CommandError::Invalid { field: f, .. }) = (err["field"].as_str(), &e) {
                assert_eq!(*f, field, "{name}");
            }
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let expect = &case["expect"];
        assert_eq!(got.command_uuid, UUID, "{name}");
        assert_eq!(got.request_type, expect["request_type"], "{name}");
        let plist = parse_plist(&got.plist);
        assert!(got.plist.starts_with(b"<?xml"), "{name}: XML plist expected");
        let top = plist.as_dictionary().unwrap();
        assert_eq!(top.get("CommandUUID").and_then(|v| v.as_string()), Some(UUID), "{name}");
        // Cases whose payload is checked elsewhere (the settings profile: unit tests) give only the type.
        if let Some(command) = expect.get("command") {
            assert_eq!(&tagged_json(top.get("Command").unwrap()), command, "{name}");
        }
        // What we emit is what a NanoMDM-style parser accepts.
        let reparsed = parse_command_plist(&got.plist).unwrap();
        assert_eq!(reparsed, got, "{name}");
    }
}

#[test]
fn parse_command_plist_table() {
    let cases = own_json("command/parse_cases.json");
    for case in cases.as_array().unwrap() {
        let file = case["file"].as_str().unwrap();
        let body = own(&format!("command/{file}"));
        match (case.get("ok"), case.get("err")) {
            (Some(ok), _) => {
                let c = parse_command_plist(&body).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(c.command_uuid, ok["command_uuid"], "{file}");
                assert_eq!(c.request_type, ok["request_type"], "{file}");
                assert_eq!(c.plist, body, "{file}: XML kept byte for byte");
            }
            (None, Some(err)) => {
                let e = parse_command_plist(&body).expect_err(file);
                assert_eq!(e.reason(), err["reason"], "{file}: {e}");
                if let Some(field) = err["field"].as_str() {
                    assert!(e.to_string().contains(&format!("`{field}`")), "{file}: {e}");
                }
            }
            _ => panic!("{file}: case needs ok or err"),
        }
    }
}

#[test]
fn parse_command_plist_binary_becomes_xml() {
    let xml = own("command/full_command.plist");
    let c = parse_command_plist(&to_binary(&xml)).unwrap();
    assert!(c.plist.starts_with(b"<?xml"));
    assert_eq!(parse_plist(&c.plist), parse_plist(&xml));
}

#[test]
fn empty_command_id_refused() {
    let e = translate(&Command::Restart {}, "", &TranslateContext::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_command");
}

#[test]
fn bootstrap_token_response() {
    let with = parse_plist(&encode_bootstrap_token_response(Some(b"tok")));
    assert_eq!(tagged_json(&with), json!({"BootstrapToken": {"$data": "dG9r"}}));
    let without = parse_plist(&encode_bootstrap_token_response(None));
    assert_eq!(tagged_json(&without), json!({}));
}

#[test]
fn other_replies() {
    assert_eq!(tagged_json(&parse_plist(&encode_get_token_response(b"abc"))), json!({"TokenData": {"$data": "YWJj"}}));
    assert_eq!(tagged_json(&parse_plist(&encode_digest_challenge(""))), json!({"DigestChallenge": ""}));
}

#[test]
fn push_payload_is_mdm_json() {
    let p: Json = serde_json::from_slice(&push_payload("CEFDF0BD-E342-4A27-8742-E930EA116B0A")).unwrap();
    assert_eq!(p, json!({"mdm": "CEFDF0BD-E342-4A27-8742-E930EA116B0A"}));
    let p: Json = serde_json::from_slice(&push_payload("a\"b")).unwrap();
    assert_eq!(p["mdm"], "a\"b");
}

#[test]
fn declarative_management_command_with_and_without_tokens() {
    use mdm_apple::ddm::SyncTokens;
    use mdm_apple::declarative_management_command;

    let tokens = SyncTokens { declarations_token: "tok-1".into(), timestamp: "2024-05-01T10:00:00Z".into() };
    let with = declarative_management_command(UUID, Some(&tokens));
    assert_eq!(with.request_type, "DeclarativeManagement");
    let top = parse_plist(&with.plist);
    let command = top.as_dictionary().unwrap().get("Command").unwrap().as_dictionary().unwrap();
    let data = command.get("Data").and_then(|v| v.as_data()).expect("Data is plist data");
    let sync: Json = serde_json::from_slice(data).unwrap();
    assert_eq!(sync, json!({"SyncTokens": {"DeclarationsToken": "tok-1", "Timestamp": "2024-05-01T10:00:00Z"}}));
    // What the gateway queues is what a NanoMDM-style parser (the /v1/enqueue path) accepts.
    assert_eq!(parse_command_plist(&with.plist).unwrap(), with);

    let without = declarative_management_command(UUID, None);
    let top = parse_plist(&without.plist);
    assert_eq!(tagged_json(&top), json!({"CommandUUID": UUID, "Command": {"RequestType": "DeclarativeManagement"}}));
}
