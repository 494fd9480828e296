//! The whole intake path with Google's own Pub/Sub emulator in front of the gateway: the AMAPI
//! emulator's simulated device publishes ENROLLMENT, STATUS_REPORT, COMMAND and the final
//! DELETED STATUS_REPORT to a topic; the Pub/Sub emulator (Java, trusting the gateway's CA) pushes
//! them over HTTPS to `POST /android/pubsub?token=…`; the gateway stores them.
//! Needs `/usr/lib/google-cloud-sdk/platform/pubsub-emulator` and Java 17 (CI installs them).

use std::time::Duration;

use mdm_conformance::android::{
    ANDROID_MANAGEMENT_SCOPE, AmapiEmulator, CommandSettings, DeviceSpec, EmulatorConfig, PubSubEmulator, Publisher,
};
use mdm_core::{CommandStatus, DeviceId};
use mdm_gateway::store::{AndroidOperation, CommandUpdate, EnrollmentState, NewCommand};
use mdm_tests::{Harness, eventually, unix_now};
use serde_json::{Value, json};

/// An AMAPI REST call to the emulator with a freshly granted access token.
async fn amapi(emu: &AmapiEmulator, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).expect("ca"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let key = emu.service_account_key();
    let assertion = key.assertion(ANDROID_MANAGEMENT_SCOPE, unix_now(), 3600).expect("assertion");
    let grant: Value = http
        .post(&key.token_uri)
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())])
        .send()
        .await
        .expect("grant")
        .json()
        .await
        .expect("grant json");
    let token = grant["access_token"].as_str().expect("access token");
    let mut req = http.request(method, format!("{}/v1/{path}", emu.url())).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("amapi call");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn pushes_from_google_pubsub_emulator_are_stored() {
    let h = Harness::start().await;
    let ca = String::from_utf8(h.ca_pem.clone()).expect("pem");
    let pubsub = PubSubEmulator::start_trusting(0, &[&ca])
        .await
        .unwrap_or_else(|e| panic!("this test needs Google's Pub/Sub emulator and Java 17 (CI installs them): {e}"));
    let topic = "projects/gw-test/topics/amapi";
    let sub = "projects/gw-test/subscriptions/gateway";
    pubsub.client().create_topic(topic).await.expect("topic");
    let endpoint = format!("{}/android/pubsub?token={}", h.device_url, h.pubsub_token());
    pubsub.client().create_push_subscription(sub, topic, &endpoint, None).await.expect("subscription");

    let emu = AmapiEmulator::start(EmulatorConfig::default()).await.expect("AMAPI emulator");
    emu.set_publisher(Some(Publisher::PubSub(pubsub.client().clone())));
    emu.set_command_settings(CommandSettings { never_finish: true, ..CommandSettings::default() });
    let enterprise =
        emu.create_enterprise(Some(topic), &["ENROLLMENT", "STATUS_REPORT", "COMMAND"]).expect("enterprise");
    let token = emu.create_enrollment_token(&enterprise, &json!({"duration": "300s"})).expect("enrollment token");
    let name = emu.enroll_device(token["value"].as_str().expect("value"), &DeviceSpec::numbered(7)).expect("enroll");
    let parts: Vec<&str> = name.split('/').collect();
    let id: DeviceId = format!("android:{}:{}", parts[1], parts[3]).parse().expect("device id");
    let store = h.gateway().state.store.clone();
    let wait = Duration::from_secs(60);

    let enrolled = eventually(wait, || {
        let store = store.clone();
        let id = id.clone();
        async move { store.enrollment(&id).await.ok().flatten().filter(|e| e.state == EnrollmentState::Enrolled) }
    })
    .await
    .unwrap_or_else(|| panic!("no enrollment stored; emulator log:\n{}", pubsub.log()));
    let device = emu.device(&name).expect("device");
    assert_eq!(enrolled.inventory.imei.as_deref(), device["networkInfo"]["imei"].as_str());
    assert_eq!(enrolled.attributes["name"], name.as_str());
    assert_eq!(enrolled.attributes["enrollment_token_name"], token["name"]);

    emu.status_report(&name).expect("status report");
    eventually(wait, || async { (!h.events_of(id.as_str(), "device.status_report").await.is_empty()).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("no status report event; emulator log:\n{}", pubsub.log()));

    // A command the gateway "issued": bound to its operation, then the device carries it out.
    let op = amapi(&emu, reqwest::Method::POST, &format!("{name}:issueCommand"), Some(json!({"type": "LOCK"}))).await;
    let op_name = op["name"].as_str().expect("operation name").to_owned();
    let cmd = NewCommand {
        command_id: "lock-1".into(),
        device_id: id.clone(),
        request_type: "LOCK".into(),
        normalised: Some(json!({"type": "lock"})),
        payload: br#"{"type":"LOCK"}"#.to_vec(),
        priority: 0,
        expires_at: None,
        idempotency_key: None,
        created_at: unix_now(),
    };
    store.enqueue(&[cmd], &[]).await.expect("enqueue");
    let binding = AndroidOperation {
        operation: op_name.clone(),
        device_id: id.clone(),
        command_id: "lock-1".into(),
        created_at: unix_now(),
    };
    let sent = CommandUpdate {
        device_id: &id,
        command_id: "lock-1",
        from: &[CommandStatus::Queued],
        to: CommandStatus::Sent,
        result: None,
        error: None,
        now: unix_now(),
    };
    store.record_android_operation(&binding, Some(sent), &[]).await.expect("bind");
    emu.finish_operation(&op_name);
    let acked = eventually(wait, || {
        let store = store.clone();
        let id = id.clone();
        async move {
            store
                .command_for_device(&id, "lock-1")
                .await
                .ok()
                .flatten()
                .filter(|c| c.status == CommandStatus::Acknowledged)
        }
    })
    .await
    .unwrap_or_else(|| panic!("command not acknowledged; emulator log:\n{}", pubsub.log()));
    assert_eq!(acked.result.as_ref().expect("result")["operation"], op_name.as_str());
    let ack = h.events_of(id.as_str(), "command.acknowledged").await;
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0]["command_id"], "lock-1");

    // devices.delete: the final DELETED status report unenrolls it.
    amapi(&emu, reqwest::Method::DELETE, &name, None).await;
    eventually(wait, || {
        let store = store.clone();
        let id = id.clone();
        async move { store.enrollment(&id).await.ok().flatten().filter(|e| e.state == EnrollmentState::Unenrolled) }
    })
    .await
    .unwrap_or_else(|| panic!("not unenrolled; emulator log:\n{}", pubsub.log()));
    assert_eq!(h.events_of(id.as_str(), "device.unenrolled").await.len(), 1);

    // Every message Pub/Sub delivered is handled exactly once, with Pub/Sub's own message ids.
    let handled = h.pubsub_messages();
    assert!(handled.len() >= 5, "test, ENROLLMENT, STATUS_REPORT, COMMAND, DELETED: {handled:?}");
    assert!(handled.iter().all(|(m, o)| m.parse::<u64>().is_ok() && o == "applied"), "{handled:?}");
    assert!(h.gateway().state.store.dead_letters(10).await.expect("dead letters").is_empty());
    emu.stop().await;
    drop(pubsub);
    h.stop().await;
}
