//! Event delivery to webhooks (our JSON and the MicroMDM shape) and the NanoMDM-compatible API.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use mdm_conformance::apns::ApnsEmulator;
use mdm_gateway::config::{WebhookConfig, WebhookFormat};
use mdm_tests::webhook::WebhookReceiver;
use mdm_tests::{Harness, eventually, vectors_dir};
use serde_json::{Value, json};
use sha2::Sha256;

fn vector(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn webhook(url: &str, format: WebhookFormat, secret: Option<PathBuf>) -> WebhookConfig {
    WebhookConfig { url: url.to_owned(), format, hmac_secret_file: secret, timeout_ms: 2_000, max_backoff_ms: 200 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_every_event_in_order_signed() {
    let receiver = WebhookReceiver::start(0).await;
    let secret_dir = tempfile::tempdir().expect("tmp");
    let secret_path = secret_dir.path().join("hook-secret");
    std::fs::write(&secret_path, "s3cret\n").expect("write secret");
    let url = receiver.url.clone();
    let h =
        Harness::start_with(|c| c.webhook = Some(webhook(&url, WebhookFormat::Event, Some(secret_path.clone())))).await;
    let dev = h.device("B1B2C3D4-0000-4000-8000-000000000001");
    dev.enroll().await.expect("enroll");
    let (_, r) = h
        .post(
            "/v1/commands",
            &json!({ "device_id": format!("apple:{}", dev.udid), "command": { "type": "device_info" } }),
        )
        .await;
    assert!(r["command_id"].is_string());
    dev.session(|_| "Acknowledged").await.expect("session");

    let logged = h.events().await;
    let delivered = eventually(Duration::from_secs(10), || async {
        let got = receiver.bodies();
        (got.len() >= logged.len()).then_some(got)
    })
    .await
    .expect("all events delivered");
    let logged_ids: Vec<&Value> = logged.iter().map(|e| &e["id"]).collect();
    let delivered_ids: Vec<&Value> = delivered.iter().map(|e| &e["id"]).collect();
    assert_eq!(delivered_ids, logged_ids, "same events, same order, same ids");
    assert_eq!(delivered, logged, "the webhook body is the event as the log serves it");

    for r in receiver.received.lock().expect("lock").iter() {
        let sig = r.headers.get("x-hmac-signature").expect("signed").to_str().expect("ascii");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").expect("key");
        mac.update(&r.body);
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(sig, expected);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_loses_nothing() {
    let receiver = WebhookReceiver::start(4).await;
    let url = receiver.url.clone();
    let h = Harness::start_with(|c| c.webhook = Some(webhook(&url, WebhookFormat::Event, None))).await;
    let dev = h.device("B1B2C3D4-0000-4000-8000-000000000002");
    dev.enroll().await.expect("enroll");
    let logged = h.events().await;
    let delivered = eventually(Duration::from_secs(15), || async {
        let got = receiver.bodies();
        (got.len() >= logged.len()).then_some(got)
    })
    .await
    .expect("delivered after the outage");
    assert_eq!(receiver.failed.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(
        delivered.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        logged.iter().map(|e| e["id"].clone()).collect::<Vec<_>>()
    );
    let (_, metrics) = {
        let resp = h.raw_api().get(format!("{}/metrics", h.api_url)).send().await.expect("metrics");
        (resp.status(), resp.text().await.expect("text"))
    };
    assert!(metrics.contains("mdm_sink_failures_total"), "{metrics}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_wait_in_the_log_across_restarts() {
    // Nothing listens at this address: every delivery fails while the first gateway runs.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_url = format!("http://{}/hook", dead.local_addr().expect("addr"));
    drop(dead);
    let h = Harness::start_with(|c| {
        c.webhook = Some(webhook(&dead_url, WebhookFormat::Event, None));
        c.shutdown.grace_period_s = 1;
    })
    .await;
    let dev = h.device("B1B2C3D4-0000-4000-8000-000000000003");
    dev.enroll().await.expect("enroll");
    let logged = h.events().await;
    let data_dir = h.dir.path().join("data");
    let mdm_tests::Harness { gateway, dir, .. } = h;
    gateway.expect("running").shutdown().await.expect("stop");

    let receiver = WebhookReceiver::start(0).await;
    let mut config = mdm_tests::config_on(data_dir);
    config.webhook = Some(webhook(&receiver.url, WebhookFormat::Event, None));
    let g = mdm_gateway::Gateway::start(config).await.expect("restart");
    let delivered = eventually(Duration::from_secs(10), || async {
        let got = receiver.bodies();
        (got.len() >= logged.len()).then_some(got)
    })
    .await
    .expect("delivered by the restarted gateway");
    assert_eq!(delivered, logged);
    g.shutdown().await.expect("stop");
    drop(dir);
}

/// Replays NanoMDM's captured Authenticate and DeviceInformation report through the gateway
/// and compares the MicroMDM-shaped webhook posts with NanoMDM's own output, field for field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn micromdm_webhook_matches_nanomdm_captures() {
    let Some(vectors) = vectors_dir() else {
        eprintln!("skipped: MDM_VECTORS not found");
        return;
    };
    let captures = vectors.join("apple/captures");
    let read = |n: &str| std::fs::read(captures.join(n)).expect("capture");
    let receiver = WebhookReceiver::start(0).await;
    let url = receiver.url.clone();
    let h = Harness::start_with(|c| c.webhook = Some(webhook(&url, WebhookFormat::Micromdm, None))).await;
    let dev = h.device("66ADE930-5FDF-5EC4-8429-15640684C489");

    let r = dev.send_checkin(read("nanomdm_Authenticate.2.plist")).await.expect("authenticate");
    assert_eq!(r.status, 200);
    let r = dev.send_checkin(dev.token_update_message(None)).await.expect("token update");
    assert_eq!(r.status, 200);
    let (code, result) = h
        .put_bytes(
            "/v1/enqueue/66ADE930-5FDF-5EC4-8429-15640684C489?nopush=1",
            vector("nanomdm/enqueue_device_information.plist"),
        )
        .await;
    assert_eq!(code, 200, "{result}");
    let idle = dev.send_report(dev.report_message("Idle", None, None, Default::default())).await.expect("idle");
    assert!(!idle.body.is_empty());
    let r = dev.send_report(read("nanomdm_DeviceInformation.1.plist")).await.expect("report");
    assert_eq!(r.status, 200);

    let posts = eventually(Duration::from_secs(10), || async {
        let got = receiver.bodies();
        (got.len() >= 4).then_some(got)
    })
    .await
    .expect("webhook posts");
    let topics: Vec<&str> = posts.iter().map(|p| p["topic"].as_str().unwrap_or_default()).collect();
    assert_eq!(topics, ["mdm.Authenticate", "mdm.TokenUpdate", "mdm.Connect", "mdm.Connect"], "{posts:#?}");

    let normalise = |mut v: Value| {
        v["event_id"] = json!("<id>");
        v["created_at"] = json!("<time>");
        v
    };
    let expected_auth: Value = serde_json::from_slice(&read("nanomdm_Authenticate.2.json")).expect("json");
    assert_eq!(normalise(posts[0].clone()), normalise(expected_auth));
    let expected_ack: Value = serde_json::from_slice(&read("nanomdm_DeviceInformation.1.json")).expect("json");
    assert_eq!(normalise(posts[3].clone()), normalise(expected_ack));
    assert_eq!(posts[2]["acknowledge_event"]["status"], "Idle");
    // created_at is RFC 3339.
    let t = posts[0]["created_at"].as_str().expect("time");
    assert!(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok(), "{t}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nanomdm_enqueue_replies_like_nanomdm() {
    let h = Harness::start().await;
    let dev = h.device("B1B2C3D4-0000-4000-8000-000000000004");
    dev.enroll().await.expect("enroll");
    let plist = vector("nanomdm/enqueue_device_information.plist");

    // All ids fine, no push: 200 and no per-id entries.
    let (code, r) = h.put_bytes(&format!("/v1/enqueue/{}?nopush=1", dev.udid), plist.clone()).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        r,
        json!({ "no_push": true, "command_uuid": "76eda240-5488-4989-8339-f2ae160113c4", "request_type": "DeviceInformation" })
    );
    let handled = dev.session(|_| "Acknowledged").await.expect("session");
    assert_eq!(handled[0].0, "76eda240-5488-4989-8339-f2ae160113c4");

    // One unknown id among two: 207 with its error in the status map.
    let mut second = plist.clone();
    let text = String::from_utf8(second.clone())
        .expect("utf8")
        .replace("76eda240-5488-4989-8339-f2ae160113c4", "11111111-2222-4333-8444-555555555555");
    second = text.into_bytes();
    let (code, r) = h.put_bytes(&format!("/v1/enqueue/{},UNKNOWN-UDID?nopush=1", dev.udid), second).await;
    assert_eq!(code, 207, "{r}");
    assert!(r["status"]["UNKNOWN-UDID"]["command_error"].is_string(), "{r}");
    assert!(r["status"].get(&dev.udid).is_none());

    // Every id unknown: 500.
    let (code, r) = h.put_bytes("/v1/enqueue/NOPE-1,NOPE-2?nopush=1", plist.clone()).await;
    assert_eq!(code, 500, "{r}");
    // A body that is not a command plist: 500 with command_error, nothing queued.
    let before = h.snapshot(&[]).await;
    let (code, r) = h.put_bytes(&format!("/v1/enqueue/{}", dev.udid), vector("nanomdm/enqueue_garbage.txt")).await;
    assert_eq!(code, 500);
    assert!(r["command_error"].as_str().expect("error").contains("decoding command"), "{r}");
    assert_eq!(h.snapshot(&[]).await, before);

    // With push requested: enqueued, but the push fails per id with a clear reason.
    let third = String::from_utf8(plist)
        .expect("utf8")
        .replace("76eda240-5488-4989-8339-f2ae160113c4", "33333333-2222-4333-8444-555555555555");
    let (code, r) = h.put_bytes(&format!("/v1/enqueue/{}", dev.udid), third.into_bytes()).await;
    assert_eq!(code, 500, "{r}");
    assert!(r["status"][&dev.udid]["push_error"].as_str().expect("push error").contains("no push certificate"), "{r}");
    let (_, status) = h.get("/v1/commands/33333333-2222-4333-8444-555555555555").await;
    assert_eq!(status["status"], "queued");

    // Basic auth as NanoMDM clients send it.
    let resp = h
        .raw_api()
        .get(format!("{}/v1/push/{}", h.api_url, dev.udid))
        .basic_auth("nanomdm", Some(&h.api_key))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status().as_u16(), 500);
    let body: Value = resp.json().await.expect("json");
    assert!(body["status"][&dev.udid]["push_error"].is_string(), "{body}");
    h.stop().await;
}

fn push_certificate(topic: &str) -> (String, String) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(openssl::nid::Nid::USERID, topic).expect("uid");
    name.append_entry_by_text("CN", &format!("APSP:{topic}")).expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("v3");
    b.set_serial_number(&BigNum::from_u32(7).expect("bn").to_asn1_integer().expect("serial")).expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("key");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("t")).expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(365).expect("t")).expect("na");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    let cert = b.build();
    (
        String::from_utf8(cert.to_pem().expect("pem")).expect("utf8"),
        String::from_utf8(key.private_key_to_pem_pkcs8().expect("pem")).expect("utf8"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_certificate_upload_and_read() {
    // A local APNs emulator stands in for Apple; its push CA issues the certificate.
    let (apns, _deliveries) = ApnsEmulator::start("127.0.0.1:0".parse().expect("addr")).await.expect("APNs emulator");
    let ca_dir = tempfile::tempdir().expect("tmp");
    let ca_path = ca_dir.path().join("apns-ca.pem");
    std::fs::write(&ca_path, apns.server_ca_pem()).expect("write CA");
    let url = apns.url();
    let h = Harness::start_with(|c| {
        c.apple.apns_url = url;
        c.apple.apns_ca = Some(ca_path.clone());
    })
    .await;
    let topic = "com.apple.mgmt.External.emulated";
    let (cert, key) =
        apns.issue_push_certificate(topic, mdm_tests::unix_now() + 365 * 86_400).expect("push certificate");
    let (code, r) = h.put_bytes("/v1/pushcert", format!("{cert}{key}").into_bytes()).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["topic"], topic);
    assert!(r["not_after"].is_string());
    let (code, got) = h.get("/v1/pushcert").await;
    assert_eq!(code, 200);
    assert_eq!(got["topic"], topic);
    assert_eq!(got["not_after"], r["not_after"]);

    // Refusals, NanoMDM-style (500 with `error`), and nothing stored.
    let (other_cert, other_key) = push_certificate("com.example.not-mdm");
    let (code, r) = h.put_bytes("/v1/pushcert", format!("{other_cert}{other_key}").into_bytes()).await;
    assert_eq!(code, 500);
    assert!(r["error"].as_str().expect("error").contains("not an MDM topic"), "{r}");
    let (code, r) = h.put_bytes("/v1/pushcert", format!("{cert}{other_key}").into_bytes()).await;
    assert_eq!(code, 500);
    assert!(r["error"].as_str().expect("error").contains("does not match"), "{r}");
    let (code, r) = h.put_bytes("/v1/pushcert", cert.clone().into_bytes()).await;
    assert_eq!(code, 500);
    assert!(r["error"].as_str().expect("error").contains("PRIVATE KEY"), "{r}");
    let (_, got) = h.get("/v1/pushcert").await;
    assert_eq!(got["push_certs"].as_array().map(Vec::len), Some(1));

    // With the certificate in place the push reaches APNs (the emulator) and reports its apns-id.
    let dev = h.device("B1B2C3D4-0000-4000-8000-000000000005");
    dev.enroll().await.expect("enroll");
    let (code, r) = h.get(&format!("/v1/push/{}", dev.udid)).await;
    assert_eq!(code, 200, "{r}");
    let seen = apns.control().recent();
    assert_eq!(seen.len(), 1);
    assert_eq!(r["status"][&dev.udid]["push_result"], seen[0].apns_id.as_str(), "{r}");
    let metrics =
        h.raw_api().get(format!("{}/metrics", h.api_url)).send().await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.contains("mdm_push_certificate_expiry_seconds{topic=\"com.apple.mgmt.External.emulated\"}"),
        "{metrics}"
    );
    h.stop().await;
    apns.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_sinks_unless_told_otherwise() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_url = format!("http://{}/hook", dead.local_addr().expect("addr"));
    drop(dead);
    for ignore in [false, true] {
        let url = dead_url.clone();
        let h = Harness::start_with(|c| {
            c.webhook = Some(webhook(&url, WebhookFormat::Event, None));
            c.events.readiness_ignores_sinks = ignore;
            c.shutdown.grace_period_s = 1;
        })
        .await;
        let ready = |h: &Harness| {
            let req = h.raw_api().get(format!("{}/readyz", h.api_url));
            async move {
                let resp = req.send().await.expect("readyz");
                (resp.status().as_u16(), resp.json::<Value>().await.expect("json"))
            }
        };
        let (code, _) = ready(&h).await;
        assert_eq!(code, 200, "nothing to deliver yet");
        h.device("B1B2C3D4-0000-4000-8000-00000000000F")
            .send_checkin(h.device("B1B2C3D4-0000-4000-8000-00000000000F").authenticate_message())
            .await
            .expect("auth");
        let seen = eventually(Duration::from_secs(10), || async {
            let (code, body) = ready(&h).await;
            (body["sinks"][0]["failing"] == true).then_some(code)
        })
        .await
        .expect("the failing sink shows in /readyz");
        assert_eq!(seen, if ignore { 200 } else { 503 });
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_events_to_sinks() {
    let receiver = WebhookReceiver::start(0).await;
    let url = receiver.url.clone();
    let h = Harness::start_with(|c| c.webhook = Some(webhook(&url, WebhookFormat::Event, None))).await;
    let dev = h.device("B1B2C3D4-0000-4000-8000-000000000010");
    dev.enroll().await.expect("enroll");
    let logged = h.events().await;
    // Stop at once: whatever the relay had not sent yet is sent during the drain.
    h.stop().await;
    let got = receiver.bodies();
    assert_eq!(got.len(), logged.len(), "every event delivered before exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_pruned_only_once_delivered() {
    // No sink: the log alone decides. Events older than 30 days go; newer ones stay.
    let h = Harness::start_with(|c| {
        c.events.retention_days = 30;
        c.events.prune_interval_s = 1;
    })
    .await;
    h.device("B1B2C3D4-0000-4000-8000-000000000020").enroll().await.expect("enroll");
    let old = h.events().await;
    assert!(!old.is_empty());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(h.events().await.len(), old.len(), "recent events are kept");
    h.clock.advance(31 * 86_400);
    h.device("B1B2C3D4-0000-4000-8000-000000000021").enroll().await.expect("enroll");
    let kept = eventually(Duration::from_secs(10), || async {
        let now = h.events().await;
        (!now.iter().any(|e| old.iter().any(|o| o["id"] == e["id"]))).then_some(now)
    })
    .await
    .expect("the old events are pruned");
    assert!(!kept.is_empty(), "the events of the second device (ids made after the cutoff) are kept");
    assert!(kept.iter().all(|e| e["device_id"] == "apple:B1B2C3D4-0000-4000-8000-000000000021"), "{kept:?}");
    let metrics = h.raw_api().get(format!("{}/metrics", h.api_url)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(metrics.contains("mdm_events_pruned_total"), "{metrics}");
    h.stop().await;

    // A sink that never takes them: old events are kept however old, so nothing is lost.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_url = format!("http://{}/hook", dead.local_addr().expect("addr"));
    drop(dead);
    let h = Harness::start_with(|c| {
        c.webhook = Some(webhook(&dead_url, WebhookFormat::Event, None));
        c.shutdown.grace_period_s = 1;
        c.events.retention_days = 30;
        c.events.prune_interval_s = 1;
    })
    .await;
    h.device("B1B2C3D4-0000-4000-8000-000000000022").enroll().await.expect("enroll");
    let undelivered = h.events().await;
    h.clock.advance(31 * 86_400);
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(h.events().await, undelivered, "undelivered events are never pruned");
    h.stop().await;
}
