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
        // A setting Apple cannot express: refused, naming the key.
        (json!({ "type": "set_settings", "settings": { "extra": { "vendor_x": 1 } } }), "invalid_command"),
        (json!({ "type": "raw", "platform": "windows", "payload": "<Get/>" }), "invalid_command"),
    ] {
        let (status, body) = h.post("/v1/commands", &json!({ "device_id": id, "command": command })).await;
        assert_eq!(status, 422, "{command}: {body}");
        assert_eq!(body["error"]["code"], code, "{command}: {body}");
        if command["settings"]["extra"].is_object() {
            assert!(body["error"]["message"].as_str().unwrap_or_default().contains("vendor_x"), "{body}");
        }
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

    // The device carried the commands out: the profile is installed with the settings' values,
    // the app is managed, its configuration is the filled-in one.
    let installed = dev.profile(mdm_apple::SETTINGS_PROFILE_IDENTIFIER).expect("settings profile installed");
    assert_eq!(installed, profile);
    let state = dev.managed_state();
    assert_eq!(state.apps["com.example.mail"].status, "Managed");
    assert_eq!(state.app_configs["com.example.app"]["device"].as_string(), Some(id.as_str()));

    // A second set_settings replaces the profile (same identifier): settings left out go.
    let (code, body) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": id, "command": { "type": "set_settings", "settings": { "camera_disabled": false } } }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    // And the device's own answers, read back through the gateway.
    let mut queries = Vec::new();
    for payload in [
        json!({ "RequestType": "ProfileList" }),
        json!({ "RequestType": "ManagedApplicationList" }),
        json!({ "RequestType": "ManagedApplicationConfiguration", "Identifiers": ["com.example.app", "com.example.mail"] }),
    ] {
        let (code, body) = h
            .post(
                "/v1/commands",
                &json!({ "device_id": id, "command": { "type": "raw", "platform": "apple", "payload": payload } }),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        queries.push(body["command_id"].as_str().expect("id").to_owned());
    }
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    let statuses: Vec<&str> = handled.iter().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(statuses, ["Acknowledged"; 4]);
    let replaced = dev.profile(mdm_apple::SETTINGS_PROFILE_IDENTIFIER).expect("profile");
    let payloads = replaced["PayloadContent"].as_array().expect("payloads");
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    assert_eq!(payloads[0].as_dictionary().expect("payload")["allowCamera"], Value::Boolean(true));
    let result = |i: usize| {
        let id = queries[i].clone();
        let h = &h;
        async move {
            let (_, c) = h.get(&format!("/v1/commands/{id}")).await;
            assert_eq!(c["status"], "acknowledged", "{c}");
            c["result"]["payload"].clone()
        }
    };
    let list = result(0).await;
    assert_eq!(list["ProfileList"][0]["PayloadIdentifier"], mdm_apple::SETTINGS_PROFILE_IDENTIFIER, "{list}");
    assert_eq!(list["ProfileList"][0]["PayloadContent"][0]["PayloadType"], "com.apple.applicationaccess", "{list}");
    let apps = result(1).await;
    assert_eq!(apps["ManagedApplicationList"]["com.example.mail"]["Status"], "Managed", "{apps}");
    assert_eq!(apps["ManagedApplicationList"]["com.example.mail"]["HasConfiguration"], true, "{apps}");
    let configs = result(2).await;
    let configs = configs["ApplicationConfigurations"].as_array().expect("configurations").clone();
    assert_eq!(configs.len(), 2, "{configs:?}");
    assert_eq!(configs[0]["Identifier"], "com.example.app");
    assert_eq!(configs[0]["Configuration"]["device"], id);
    assert_eq!(configs[1]["Configuration"]["account"], format!("{}@example.com", dev.serial));

    // A profile the device cannot read is refused with its error, recorded as the command's.
    let junk = json!({ "RequestType": "InstallProfile", "Payload": { "$data": "bm90IGEgcGxpc3Q=" } });
    let (code, body) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": id, "command": { "type": "raw", "platform": "apple", "payload": junk } }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let bad = body["command_id"].as_str().expect("id").to_owned();
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled[0].2, "Error");
    let (_, c) = h.get(&format!("/v1/commands/{bad}")).await;
    assert_eq!(c["status"], "error", "{c}");
    assert_eq!(c["error"]["error_chain"][0]["error_domain"], "MCProfileErrorDomain", "{c}");
    assert_eq!(dev.managed_state().profiles.len(), 1, "the installed profile is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_settings_and_app_installs_reach_the_device() {
    use mdm_windows::syncml::settings as nodes;
    let h = Harness::start().await;
    let device = h.windows_device("VOCAB-0001").await;
    let id = device.gateway_id();
    let hash = "0f".repeat(32);
    let mut ids = Vec::new();
    for command in [
        json!({ "type": "set_settings", "settings": { "password_min_length": 8, "camera_disabled": true,
                "storage_encryption_required": true, "screen_lock_timeout_s": 300 } }),
        json!({ "type": "install_app", "app": "store:9WZDNCRFJ3PZ/Microsoft.CompanyPortal_8wekyb3d8bbwe" }),
        json!({ "type": "install_app",
                "app": format!("msi:{{23170F69-40C1-2702-1900-000001000000}}@https://apps.example.com/7z.msi#sha256={hash}") }),
    ] {
        let (code, body) = h.post("/v1/commands", &json!({ "device_id": id, "command": command })).await;
        assert_eq!(code, 202, "{command}: {body}");
        ids.push(body["command_id"].as_str().expect("id").to_owned());
    }
    for (command, code, needle) in [
        (json!({ "type": "app_config", "app": "x", "config": {} }), "unsupported_on_platform", "windows"),
        (json!({ "type": "install_app", "app": "com.example.app" }), "invalid_command", "app"),
        // A setting Windows cannot express: refused, naming the key.
        (json!({ "type": "set_settings", "settings": { "extra": { "vendor_x": 1 } } }), "invalid_command", "vendor_x"),
    ] {
        let (status, body) = h.post("/v1/commands", &json!({ "device_id": id, "command": command })).await;
        assert_eq!(status, 422, "{command}: {body}");
        assert_eq!(body["error"]["code"], code, "{command}: {body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains(needle), "{body}");
    }

    device.session().await.expect("session");
    for (uri, value) in [
        (nodes::DEVICE_PASSWORD_ENABLED, "0"),
        (nodes::MIN_DEVICE_PASSWORD_LENGTH, "8"),
        (nodes::MAX_INACTIVITY_TIME_DEVICE_LOCK, "5"),
        (nodes::ALLOW_CAMERA, "0"),
        (nodes::REQUIRE_DEVICE_ENCRYPTION, "1"),
    ] {
        assert_eq!(device.node(uri).as_deref(), Some(value), "{uri}");
    }
    let executed = device.executed();
    assert_eq!(
        executed,
        [
            "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation/Microsoft.CompanyPortal_8wekyb3d8bbwe/StoreInstall",
            "./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI/{23170F69-40C1-2702-1900-000001000000}/DownloadInstall",
        ]
    );
    for cid in &ids {
        let (_, c) = h.get(&format!("/v1/commands/{cid}")).await;
        assert_eq!(c["status"], "acknowledged", "{c}");
    }
    // The installs' job data reached the device, and the apps report themselves installed.
    let jobs = device.executed_with_data();
    assert!(jobs[0].1.contains(r#"<Application id="9WZDNCRFJ3PZ""#), "{jobs:?}");
    assert!(jobs[1].1.contains("https://apps.example.com/7z.msi"), "{jobs:?}");
    let store_status = "./Device/Vendor/MSFT/EnterpriseModernAppManagement/AppInstallation/Microsoft.CompanyPortal_8wekyb3d8bbwe/Status";
    let msi_status =
        "./Device/Vendor/MSFT/EnterpriseDesktopAppManagement/MSI/{23170F69-40C1-2702-1900-000001000000}/Status";
    assert_eq!(device.node(store_status).as_deref(), Some("3"));
    assert_eq!(device.node(msi_status).as_deref(), Some("70"));

    // Read back over the wire: a Get of the written nodes answers the values set_settings wrote.
    let gets: String = [nodes::MIN_DEVICE_PASSWORD_LENGTH, nodes::ALLOW_CAMERA, msi_status]
        .iter()
        .enumerate()
        .map(|(n, uri)| {
            format!("<Get><CmdID>{}</CmdID><Item><Target><LocURI>{uri}</LocURI></Target></Item></Get>", n + 1)
        })
        .collect();
    let (code, body) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": id, "command": { "type": "raw", "platform": "windows", "payload": gets } }),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let get = body["command_id"].as_str().expect("id").to_owned();
    device.session().await.expect("session");
    let (_, c) = h.get(&format!("/v1/commands/{get}")).await;
    assert_eq!(c["status"], "acknowledged", "{c}");
    let read: Vec<(&str, &str)> = c["result"]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| (r["uri"].as_str().unwrap_or_default(), r["data"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(read, [(nodes::MIN_DEVICE_PASSWORD_LENGTH, "8"), (nodes::ALLOW_CAMERA, "0"), (msi_status, "70")]);
    h.stop().await;
}
