//! Everything translate() emits exists in Apple's schemas (shared vectors): each RequestType
//! is some commands/*.yaml `payload: requesttype:`, and each default DeviceInformation query is
//! a documented query key. Skipped when the shared vectors are absent.

mod common;

use std::collections::BTreeSet;

use mdm_apple::{DEFAULT_DEVICE_INFORMATION_QUERIES, request_type};

fn schema_request_types() -> Option<BTreeSet<String>> {
    let dir = common::shared_dir()?.join("apple/device-management/mdm/commands");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("skipping: no {}", dir.display());
        return None;
    };
    let mut found = BTreeSet::new();
    for e in entries {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        // `payload:` then, at the next indentation level, `requesttype: X`.
        let mut in_payload = false;
        for line in text.lines() {
            if line == "payload:" {
                in_payload = true;
            } else if in_payload && let Some(rt) = line.strip_prefix("  requesttype: ") {
                found.insert(rt.trim().to_owned());
                in_payload = false;
            } else if !line.starts_with(' ') {
                in_payload = false;
            }
        }
    }
    Some(found)
}

#[test]
fn emitted_request_types_exist() {
    let Some(known) = schema_request_types() else {
        return;
    };
    assert!(known.len() > 30, "parsed too few request types: {known:?}");
    for rt in request_type::EMITTED {
        assert!(known.contains(rt), "{rt} not in Apple's command schemas");
    }
}

#[test]
fn default_queries_exist() {
    let Some(dir) = common::shared_dir() else {
        return;
    };
    let p = dir.join("apple/device-management/mdm/commands/information.device.yaml");
    let Ok(text) = std::fs::read_to_string(&p) else {
        println!("skipping: no {}", p.display());
        return;
    };
    for q in DEFAULT_DEVICE_INFORMATION_QUERIES {
        assert!(text.contains(&format!("- key: {q}\n")), "query {q} not in {}", p.display());
    }
}
