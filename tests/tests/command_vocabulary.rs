//! The normalised command vocabulary beyond the basics (CONTRACT §6): `set_settings`,
//! `install_app` and `app_config` translated per platform, per-device placeholders filled in at
//! enqueue, and refusals with 422 — over real TLS, checked on what the emulated device received.

use mdm_tests::Harness;
use plist::Value;
use serde_json::json;

fn count(events: &[serde_json::Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apple_settings_apps_and_app_config_with_placeholders() {
    let h = Harness::start().await;
    let dev = h.device("A1B2C3D4-0000-4000-8000-00000000C0DE");
    let id = format!("apple:{}", dev.udid);
    dev.enroll().await.expect("enrolls");

    for command in [
        json!({ "type": "set_settings", "settings": { "camera_disabled": true, "password_min_length": 6 } }),
        json!({ "type": "install_app", "app": "com.example.mail",
                "managed_config": { "account": "{{SerialNumber}}@example.com" } }),
        json!({ "type": "app_config", "app": "com.example.app",
                "config": { "device": "{{DeviceId}}", "ids": ["{{UDID}}", "{{ SerialNumber }}"], "n": 3 } }),
    ] {
        let (code, body) = h.post("/v1/commands", &json!({ "device_id": id, "command": command })).await;
        assert_eq!(code, 202, "{command}: {body}");
    }

    // Refused at enqueue, nothing queued: an unknown token, a token this device has no value
    // for, and a command Apple cannot carry.
    let queued_before = count(&h.events().await, "command.queued");
    for (command, code) in [
        (
            json!({ "type": "app_config", "app": "com.example.app", "config": { "u": "{{UserName}}" } }),
            "invalid_command",
        ),
        (
            json!({ "type": "app_config", "app": "com.example.app", "config": { "u": "{{UserPrincipalName}}" } }),
            "invalid_command",
        ),
        (json!({ "type": "set_settings", "settings": {} }), "invalid_command"),
        (json!({ "type": "raw", "platform": "windows", "payload": "<Get/>" }), "invalid_command"),
    ] {
        let (status, body) = h.post("/v1/commands", &json!({ "device_id": id, "command": command })).await;
        assert_eq!(status, 422, "{command}: {body}");
        assert_eq!(body["error"]["code"], code, "{command}: {body}");
    }
    assert_eq!(count(&h.events().await, "command.queued"), queued_before, "refusals queue nothing");

    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    let types: Vec<&str> = handled.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, ["InstallProfile", "InstallApplication", "Settings"]);
    let received = dev.received_commands();

    // InstallProfile carries the settings profile.
    let profile_bytes = received[0]["Payload"].as_data().expect("profile data");
    let profile: plist::Dictionary = plist::from_bytes(profile_bytes).expect("profile plist");
    assert_eq!(profile["PayloadIdentifier"].as_string(), Some(mdm_apple::SETTINGS_PROFILE_IDENTIFIER));
    let payloads = profile["PayloadContent"].as_array().expect("payloads");
    let by_type = |t: &str| {
        payloads
            .iter()
            .filter_map(Value::as_dictionary)
            .find(|p| p["PayloadType"].as_string() == Some(t))
            .unwrap_or_else(|| panic!("no {t} payload"))
            .clone()
    };
    assert_eq!(by_type("com.apple.applicationaccess")["allowCamera"], Value::Boolean(false));
    assert_eq!(by_type("com.apple.mobiledevice.passwordpolicy")["minLength"], Value::Integer(6.into()));

    // The placeholders were filled with this device's values.
    let config = received[1]["Configuration"].as_dictionary().expect("managed config");
    assert_eq!(config["account"].as_string(), Some(format!("{}@example.com", dev.serial).as_str()));
    let item = received[2]["Settings"].as_array().expect("settings")[0].as_dictionary().expect("item").clone();
    assert_eq!(item["Item"].as_string(), Some("ApplicationConfiguration"));
    assert_eq!(item["Identifier"].as_string(), Some("com.example.app"));
    let config = item["Configuration"].as_dictionary().expect("config");
    assert_eq!(config["device"].as_string(), Some(id.as_str()));
    let ids: Vec<&str> = config["ids"].as_array().expect("ids").iter().filter_map(Value::as_string).collect();
    assert_eq!(ids, [dev.udid.as_str(), dev.serial.as_str()]);
    assert_eq!(config["n"], Value::Integer(3.into()));

    // The stored command keeps what the backend sent (placeholders included).
    let (_, status) = h.get(&format!("/v1/commands/{}", handled[2].0)).await;
    assert_eq!(status["status"], "acknowledged", "{status}");
    assert_eq!(status["command"]["config"]["device"], "{{DeviceId}}");
}
