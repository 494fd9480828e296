//! The AMAPI emulator over real sockets: token grants, bearer checks, every REST method,
//! faults, paging, simulated devices, and notifications pushed through Google's real Pub/Sub
//! emulator to an HTTPS push endpoint.

use std::time::Duration;

use base64::Engine;
use mdm_conformance::android::{
    ANDROID_MANAGEMENT_SCOPE, AmapiEmulator, CommandFailure, CommandSettings, DeviceSpec, DirectPublisher,
    EmulatorConfig, Fault, FaultRule, JWT_BEARER_GRANT, PubSubEmulator, Publisher, PushMessage, PushSink,
    ServiceAccountKey,
};
use serde_json::{Value, json};

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A bare AMAPI client: what the gateway does, written out.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(emu: &AmapiEmulator) -> Client {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(emu.ca_pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Client { http, base: emu.url(), token: None }
    }

    async fn grant(&self, token_uri: &str, assertion: &str) -> (u16, Value) {
        let form = [("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)];
        let r = self.http.post(token_uri).form(&form).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn login(&mut self, emu: &AmapiEmulator) {
        let key = emu.service_account_key();
        let (status, body) =
            self.grant(&key.token_uri, &key.assertion(ANDROID_MANAGEMENT_SCOPE, now(), 3600).unwrap()).await;
        assert_eq!(status, 200, "{body}");
        self.token = Some(body["access_token"].as_str().unwrap().to_owned());
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

async fn emulator() -> (AmapiEmulator, Client) {
    let emu = AmapiEmulator::start(EmulatorConfig::default()).await.unwrap();
    let mut c = Client::new(&emu);
    c.login(&emu).await;
    (emu, c)
}

/// Signup through the API: signup URL, the admin's redirect, enterprises.create.
async fn signup(emu: &AmapiEmulator, c: &Client, topic: Option<&str>) -> String {
    let (s, url) = c
        .call(
            "POST",
            "/v1/signupUrls?projectId=emulated-project&callbackUrl=https%3A%2F%2Fgw.example%2Fcb%3Fx%3D1",
            None,
        )
        .await;
    assert_eq!(s, 200, "{url}");
    assert!(url["name"].as_str().unwrap().starts_with("signupUrls/C"));
    assert!(url["url"].as_str().unwrap().starts_with("https://"));
    let redirect = emu.complete_signup(url["name"].as_str().unwrap()).unwrap();
    assert!(redirect.starts_with("https://gw.example/cb?x=1&enterpriseToken="), "{redirect}");
    let token = redirect.split("enterpriseToken=").nth(1).unwrap();
    let mut body = json!({"enabledNotificationTypes": ["ENROLLMENT", "STATUS_REPORT", "COMMAND", "USAGE_LOGS"]});
    if let Some(t) = topic {
        body["pubsubTopic"] = json!(t);
    }
    let path = format!(
        "/v1/enterprises?projectId=emulated-project&signupUrlName={}&enterpriseToken={token}",
        url["name"].as_str().unwrap()
    );
    let (s, e) = c.call("POST", &path, Some(body.clone())).await;
    assert_eq!(s, 200, "{e}");
    let name = e["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("enterprises/LC"));
    // An enterprise token works once.
    let (s, err) = c.call("POST", &path, Some(body)).await;
    assert_eq!((s, err["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")), "{err}");
    assert_eq!(emu.enterprise(&name).unwrap()["enabledNotificationTypes"][3], "USAGE_LOGS");
    name
}

#[tokio::test]
async fn token_grants_are_checked_like_google() {
    let emu = AmapiEmulator::start(EmulatorConfig::default()).await.unwrap();
    let c = Client::new(&emu);
    let key = emu.service_account_key();
    let (s, body) = c.grant(&key.token_uri, &key.assertion(ANDROID_MANAGEMENT_SCOPE, now(), 3600).unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert!(body["access_token"].as_str().unwrap().len() > 20);

    // Same account and key id, another key: the signature does not verify.
    let mut forged = ServiceAccountKey::generate(&key.project_id, &key.token_uri).unwrap();
    forged.client_email = key.client_email.clone();
    forged.private_key_id = key.private_key_id.clone();
    let (s, body) = c.grant(&key.token_uri, &forged.assertion(ANDROID_MANAGEMENT_SCOPE, now(), 3600).unwrap()).await;
    assert_eq!(
        (s, body["error"].as_str(), body["error_description"].as_str()),
        (400, Some("invalid_grant"), Some("Invalid JWT Signature."))
    );

    let expired = key.assertion(ANDROID_MANAGEMENT_SCOPE, now() - 7200, 3600).unwrap();
    let (s, body) = c.grant(&key.token_uri, &expired).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    let wrong_aud = key
        .with_token_uri("https://oauth2.googleapis.com/token")
        .assertion(ANDROID_MANAGEMENT_SCOPE, now(), 60)
        .unwrap();
    let (s, body) = c.grant(&key.token_uri, &wrong_aud).await;
    assert_eq!((s, body["error_description"].as_str()), (400, Some("Invalid JWT: Failed audience check.")));

    let (s, body) =
        c.grant(&key.token_uri, &key.assertion("https://www.googleapis.com/auth/pubsub", now(), 60).unwrap()).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_scope")));

    assert_eq!(emu.grants(), 1, "only the good assertion got a token");
    assert_eq!(emu.requests_matching("POST", "/token").len(), 5);
}

#[tokio::test]
async fn every_api_call_needs_a_live_bearer_token() {
    let (emu, mut c) = emulator().await;
    let good = c.token.clone();
    for token in [None, Some("ya29.not-issued".to_owned())] {
        c.token = token;
        let (s, body) = c.call("GET", "/v1/enterprises/LCx/devices", None).await;
        assert_eq!(s, 401);
        assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(body["error"]["code"], 401);
    }
    // Tokens expire after expires_in.
    emu.set_token_lifetime(Duration::from_secs(1));
    c.login(&emu).await;
    let short = c.token.clone();
    let (s, _) = c.call("GET", "/v1/enterprises/LCx", None).await;
    assert_eq!(s, 404, "valid token, unknown enterprise");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.token = short;
    assert_eq!(c.call("GET", "/v1/enterprises/LCx", None).await.0, 401);
    c.token = good;
    assert_eq!(c.call("GET", "/v1/enterprises/LCx", None).await.0, 404);
    emu.revoke_access_tokens();
    assert_eq!(c.call("GET", "/v1/enterprises/LCx", None).await.0, 401);
    assert_eq!(emu.grants(), 2);
}

#[tokio::test]
async fn rest_surface_tokens_policies_devices_paging_delete() {
    let (emu, c) = emulator().await;
    // Wrong project: permission denied.
    let (s, body) = c.call("POST", "/v1/signupUrls?projectId=someone-else&callbackUrl=https://x/cb", None).await;
    assert_eq!((s, body["error"]["status"].as_str()), (403, Some("PERMISSION_DENIED")));
    let e = signup(&emu, &c, None).await;

    // Policies: versions count up, masks merge, history kept.
    let policy = format!("{e}/policies/default");
    let (s, p) = c
        .call("PATCH", &format!("/v1/{policy}"), Some(json!({"cameraDisabled": true, "screenCaptureDisabled": true})))
        .await;
    assert_eq!((s, p["version"].as_str()), (200, Some("1")), "{p}");
    let (_, p) = c
        .call("PATCH", &format!("/v1/{policy}?updateMask=cameraDisabled"), Some(json!({"cameraDisabled": false})))
        .await;
    assert_eq!(
        (p["version"].as_str(), &p["cameraDisabled"], &p["screenCaptureDisabled"]),
        (Some("2"), &json!(false), &json!(true))
    );
    assert_eq!(emu.policy_patches(), 2);
    assert_eq!(emu.policy_history(&policy).len(), 2);
    let (s, _) = c.call("PATCH", "/v1/enterprises/LCnope/policies/x", Some(json!({}))).await;
    assert_eq!(s, 404);

    // Enrollment tokens: fully managed and work profile, with the QR payload.
    let (s, t) = c
        .call(
            "POST",
            &format!("/v1/{e}/enrollmentTokens"),
            Some(json!({"policyName": policy, "duration": "600s", "additionalData": "{\"tenant\":\"t1\"}", "oneTimeOnly": false})),
        )
        .await;
    assert_eq!(s, 200, "{t}");
    let value = t["value"].as_str().unwrap().to_owned();
    assert!(t["name"].as_str().unwrap().starts_with(&format!("{e}/enrollmentTokens/")));
    assert!(t["expirationTimestamp"].as_str().unwrap().ends_with('Z'));
    let qr: Value = serde_json::from_str(t["qrCode"].as_str().unwrap()).unwrap();
    assert_eq!(
        qr["android.app.extra.PROVISIONING_ADMIN_EXTRAS_BUNDLE"]["com.google.android.apps.work.clouddpc.EXTRA_ENROLLMENT_TOKEN"],
        value.as_str()
    );
    let (s, byod) = c
        .call("POST", &format!("/v1/{e}/enrollmentTokens"), Some(json!({"allowPersonalUsage": "PERSONAL_USAGE_ALLOWED", "oneTimeOnly": true, "user": {"accountIdentifier": "alice"}})))
        .await;
    assert_eq!(s, 200);
    let (s, bad) =
        c.call("POST", &format!("/v1/{e}/enrollmentTokens"), Some(json!({"allowPersonalUsage": "SOMETIMES"}))).await;
    assert_eq!((s, bad["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));

    // Devices enroll; the BYOD token is one-time.
    let mut names = Vec::new();
    for n in 0..23 {
        names.push(emu.enroll_device(&value, &DeviceSpec::numbered(n)).unwrap());
    }
    let personal = emu.enroll_device(byod["value"].as_str().unwrap(), &DeviceSpec::numbered(99)).unwrap();
    assert!(emu.enroll_device(byod["value"].as_str().unwrap(), &DeviceSpec::numbered(98)).is_err());
    let (s, d) = c.call("GET", &format!("/v1/{personal}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (d["managementMode"].as_str(), d["ownership"].as_str()),
        (Some("PROFILE_OWNER"), Some("PERSONALLY_OWNED"))
    );
    assert!(d["userName"].as_str().unwrap().starts_with(&format!("{e}/users/")));
    let (_, d) = c.call("GET", &format!("/v1/{}", names[0]), None).await;
    assert_eq!(d["managementMode"], "DEVICE_OWNER");
    assert_eq!(d["appliedPolicyVersion"], "2");
    assert_eq!(d["enrollmentTokenData"], "{\"tenant\":\"t1\"}");
    assert_eq!(d["networkInfo"]["imei"].as_str().unwrap().len(), 15);
    assert_eq!(d["policyName"], policy.as_str());

    // Paging: default 10, pageSize honoured, every device once.
    let (_, page) = c.call("GET", &format!("/v1/{e}/devices"), None).await;
    assert_eq!(page["devices"].as_array().unwrap().len(), 10);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (s, page) = c.call("GET", &format!("/v1/{e}/devices?pageSize=7&pageToken={token}"), None).await;
        assert_eq!(s, 200);
        seen.extend(page["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_owned()));
        match page["nextPageToken"].as_str() {
            Some(t) => token = t.to_owned(),
            None => break,
        }
    }
    seen.sort();
    let mut all = names.clone();
    all.push(personal.clone());
    all.sort();
    assert_eq!(seen, all);
    assert_eq!(c.call("GET", &format!("/v1/{e}/devices?pageToken=garbage"), None).await.0, 400);

    // Delete: gone from get and list; a bad flag is refused; unknown devices 404.
    let (s, _) = c.call("DELETE", &format!("/v1/{}?wipeDataFlags=WIPE_EVERYTHING", names[0]), None).await;
    assert_eq!(s, 400);
    let (s, body) = c
        .call("DELETE", &format!("/v1/{}?wipeDataFlags=WIPE_EXTERNAL_STORAGE&wipeReasonMessage=lost", names[0]), None)
        .await;
    assert_eq!((s, body), (200, json!({})));
    let (s, body) = c.call("GET", &format!("/v1/{}", names[0]), None).await;
    assert_eq!((s, body["error"]["status"].as_str()), (404, Some("NOT_FOUND")));
    assert_eq!(emu.device(&names[0]).unwrap()["state"], "DELETED");
    assert_eq!(c.call("DELETE", &format!("/v1/{}", names[0]), None).await.0, 404);
    assert_eq!(c.call("GET", &format!("/v1/{e}/devices/0123456789abcdef"), None).await.0, 404);
    let del = emu.requests_matching("DELETE", &names[1][..names[1].len() - 16]);
    assert_eq!(del[1].query_param("wipeReasonMessage").as_deref(), Some("lost"));
}

#[tokio::test]
async fn injected_faults_answer_in_googles_shape_then_clear() {
    let (emu, c) = emulator().await;
    let e = emu.create_enterprise(None, &[]).unwrap();
    let t = emu.create_enrollment_token(&e, &json!({})).unwrap();
    let d = emu.enroll_device(t["value"].as_str().unwrap(), &DeviceSpec::numbered(1)).unwrap();
    let get = format!("/v1/{d}");
    let cases = [
        (Fault::TooManyRequests, 429, "RESOURCE_EXHAUSTED"),
        (Fault::InternalNotFound, 500, "INTERNAL"),
        (Fault::InvalidArgument("Policy is invalid.".into()), 400, "INVALID_ARGUMENT"),
        (Fault::PermissionDenied("Caller lacks permission.".into()), 403, "PERMISSION_DENIED"),
        (Fault::Unavailable, 503, "UNAVAILABLE"),
    ];
    for (fault, code, status) in cases {
        emu.inject(FaultRule::new(&d, fault.clone()).method("GET").times(2));
        for _ in 0..2 {
            let (s, body) = c.call("GET", &get, None).await;
            assert_eq!(
                (s, body["error"]["status"].as_str(), body["error"]["code"].as_u64()),
                (code, Some(status), Some(code as u64)),
                "{fault:?}"
            );
            if fault == Fault::InternalNotFound {
                assert_eq!(body["error"]["message"], "Requested entity was not found.");
            }
        }
        assert_eq!(c.call("GET", &get, None).await.0, 200, "used up after two");
    }
    // A fault on another method or path does not fire.
    emu.inject_fault("POST", ":issueCommand", Fault::TooManyRequests, 1);
    assert_eq!(c.call("GET", &get, None).await.0, 200);
    let (s, _) = c.call("POST", &format!("{get}:issueCommand"), Some(json!({"type": "LOCK"}))).await;
    assert_eq!(s, 429);
    assert!(emu.pending_faults().is_empty());
    // The token endpoint can fail too.
    emu.inject(FaultRule::new("/token", Fault::Unavailable));
    let key = emu.service_account_key();
    let (s, _) = c.grant(&key.token_uri, &key.assertion(ANDROID_MANAGEMENT_SCOPE, now(), 60).unwrap()).await;
    assert_eq!(s, 503);
    // A delay longer than the client's timeout is a timeout.
    emu.inject(FaultRule::new(&d, Fault::Delay(Duration::from_millis(1500))));
    let r = c
        .http
        .get(format!("{}{get}", c.base))
        .bearer_auth(c.token.as_deref().unwrap())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    let faulted = emu.requests().iter().filter(|r| r.faulted).count();
    assert_eq!(faulted, 12);
}

#[tokio::test]
async fn commands_become_operations_and_command_notifications() {
    let (emu, c) = emulator().await;
    let sink = PushSink::start().await.unwrap();
    let direct = DirectPublisher::new(&sink.url("/android/pubsub?token=abc"), Some(sink.ca_pem())).unwrap();
    emu.set_publisher(Some(Publisher::Direct(direct)));
    emu.set_command_settings(CommandSettings {
        delay: Duration::from_millis(100),
        failures: vec![CommandFailure::of_type(
            "REBOOT",
            "MANAGEMENT_MODE",
            "Command not supported for this management mode.",
        )],
        ..CommandSettings::default()
    });
    let e = emu
        .create_enterprise(Some("projects/emulated-project/topics/amapi"), &["ENROLLMENT", "COMMAND", "STATUS_REPORT"])
        .unwrap();
    let t = emu.create_enrollment_token(&e, &json!({})).unwrap();
    let d = emu.enroll_device(t["value"].as_str().unwrap(), &DeviceSpec::numbered(7)).unwrap();

    let (s, op) = c
        .call(
            "POST",
            &format!("/v1/{d}:issueCommand"),
            Some(json!({"type": "RESET_PASSWORD", "newPassword": "2468", "resetPasswordFlags": ["LOCK_NOW"]})),
        )
        .await;
    assert_eq!(s, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with(&format!("{d}/operations/")));
    assert_eq!(op["metadata"]["@type"], "type.googleapis.com/google.android.devicemanagement.v1.Command");
    assert!(op.get("done").is_none() && op["metadata"].get("newPassword").is_none());
    let (_, reboot) = c.call("POST", &format!("/v1/{d}:issueCommand"), Some(json!({"type": "REBOOT"}))).await;
    let (s, bad) = c.call("POST", &format!("/v1/{d}:issueCommand"), Some(json!({"type": "EXPLODE"}))).await;
    assert_eq!((s, bad["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
    assert_eq!(
        c.call("POST", &format!("/v1/{e}/devices/ffffffffffffffff:issueCommand"), Some(json!({"type": "LOCK"})))
            .await
            .0,
        404
    );

    // test + ENROLLMENT + 2 COMMAND
    let got = sink.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].attribute("notificationType"), Some("test"));
    assert!(got[0].body["message"].get("data").is_none());
    assert_eq!(got[1].attribute("notificationType"), Some("ENROLLMENT"));
    assert_eq!(got[1].data_json().unwrap()["name"], d.as_str());
    let commands: Vec<Value> = got[2..].iter().map(|p| p.data_json().unwrap()).collect();
    let ok = commands.iter().find(|o| o["name"] == name.as_str()).unwrap();
    assert_eq!(ok["done"], true);
    assert!(ok.get("error").is_none());
    let failed = commands.iter().find(|o| o["name"] == reboot["name"]).unwrap();
    assert_eq!(failed["error"]["code"], 9);
    assert_eq!(failed["metadata"]["errorCode"], "MANAGEMENT_MODE");
    for p in &got {
        assert_eq!(p.target, "/android/pubsub?token=abc");
        assert_eq!(p.body["message"]["message_id"], p.body["message"]["messageId"]);
        assert!(p.publish_time().unwrap().ends_with('Z'));
    }
    // operations.get agrees.
    let (s, op) = c.call("GET", &format!("/v1/{name}"), None).await;
    assert_eq!((s, &op["done"]), (200, &json!(true)));
    assert_eq!(c.call("GET", &format!("/v1/{d}/operations/1"), None).await.0, 404);

    // Status reports and the final DELETED report.
    emu.status_report(&d).unwrap();
    assert_eq!(c.call("DELETE", &format!("/v1/{d}"), None).await.0, 200);
    let got = sink.wait_for(6, Duration::from_secs(10)).await;
    assert_eq!(got[4].attribute("notificationType"), Some("STATUS_REPORT"));
    assert_eq!(got[5].attribute("notificationType"), Some("STATUS_REPORT"));
    assert_eq!(got[5].data_json().unwrap()["state"], "DELETED");
    assert!(emu.published().iter().all(|p| p.result.is_ok()));
    sink.stop().await;
}

#[tokio::test]
async fn direct_publisher_chooses_ids_times_and_bearer() {
    let sink = PushSink::start().await.unwrap();
    let p = DirectPublisher::new(&sink.url("/push"), Some(sink.ca_pem())).unwrap().with_bearer("eyJ.oidc.token");
    let msg = PushMessage::notification("STATUS_REPORT", &json!({"name": "enterprises/LC1/devices/1"}));
    let (s, _, id) = p.push(&msg.clone().with_id("42").with_publish_time("2026-01-01T00:00:00.000Z")).await.unwrap();
    assert_eq!((s, id.as_str()), (200, "42"));
    sink.set_status(503);
    let (s, _, _) = p.push(&msg.clone().published_at(0)).await.unwrap();
    assert_eq!(s, 503);
    let (s, _) = p.post_raw(b"{not json".to_vec()).await.unwrap();
    assert_eq!(s, 503);
    let got = sink.received();
    assert_eq!(got.len(), 3);
    assert_eq!((got[0].message_id(), got[0].publish_time()), (Some("42"), Some("2026-01-01T00:00:00.000Z")));
    assert_eq!(got[1].publish_time(), Some("1970-01-01T00:00:00.000Z"));
    assert_eq!(got[0].header("authorization"), Some("Bearer eyJ.oidc.token"));
    assert_eq!(got[2].body, Value::Null);
    sink.stop().await;
}

/// The whole way: AMAPI emulator → Google's Pub/Sub emulator (a JVM trusting the push
/// endpoint's CA) → HTTPS push endpoint.
#[tokio::test]
async fn notifications_go_through_the_real_pubsub_emulator_over_https() {
    let sink = PushSink::start().await.unwrap();
    let pubsub = match PubSubEmulator::start_trusting(0, &[sink.ca_pem()]).await {
        Ok(p) => p,
        Err(e) => panic!("this test needs Google's Pub/Sub emulator and Java 17 (CI installs them): {e}"),
    };
    eprintln!("Pub/Sub emulator answered after {:?}", pubsub.started_in());
    let topic = "projects/emulated-project/topics/amapi";
    let sub = "projects/emulated-project/subscriptions/gateway-push";
    pubsub.client().create_topic(topic).await.unwrap();
    pubsub
        .client()
        .create_push_subscription(sub, topic, &sink.url("/android/pubsub?token=s3cret"), None)
        .await
        .unwrap();

    let (emu, c) = emulator().await;
    emu.set_publisher(Some(Publisher::PubSub(pubsub.client().clone())));
    let e = signup(&emu, &c, Some(topic)).await;
    let (_, t) = c.call("POST", &format!("/v1/{e}/enrollmentTokens"), Some(json!({"duration": "120s"}))).await;
    let d = emu.enroll_device(t["value"].as_str().unwrap(), &DeviceSpec::numbered(3)).unwrap();
    let (s, op) = c.call("POST", &format!("/v1/{d}:issueCommand"), Some(json!({"type": "LOCK"}))).await;
    assert_eq!(s, 200);

    let got = sink.wait_for(3, Duration::from_secs(60)).await;
    assert!(got.len() >= 3, "pushed {got:?}\nemulator log:\n{}", pubsub.log());
    let of_type = |t: &str| got.iter().find(|p| p.attribute("notificationType") == Some(t)).cloned();
    let test = of_type("test").expect("test message");
    assert!(test.data_json().is_none());
    let enrolled = of_type("ENROLLMENT").expect("ENROLLMENT");
    assert_eq!(enrolled.data_json().unwrap()["name"], d.as_str());
    let command = of_type("COMMAND").expect("COMMAND");
    let data = command.data_json().unwrap();
    assert_eq!((&data["name"], &data["done"]), (&op["name"], &json!(true)));
    // The envelope as Pub/Sub writes it.
    let m = &command.body["message"];
    assert_eq!(command.body["subscription"], sub);
    assert_eq!(command.target, "/android/pubsub?token=s3cret");
    assert!(m["messageId"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(m["message_id"], m["messageId"]);
    assert_eq!(m["publish_time"], m["publishTime"]);
    let raw = base64::engine::general_purpose::STANDARD.decode(m["data"].as_str().unwrap()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&raw).unwrap(), data);
    let published = emu.published();
    let ids: Vec<&str> = published.iter().filter_map(|p| p.result.as_deref().ok()).collect();
    assert!(ids.contains(&command.message_id().unwrap()));
    sink.stop().await;
}

/// `mdm-emulate android` enrolls its devices and pushes their notifications, then exits after
/// `--duration` with a summary.
#[tokio::test]
async fn mdm_emulate_android_pushes_enrollments() {
    let sink = PushSink::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("push-ca.pem");
    std::fs::write(&ca, sink.ca_pem()).unwrap();
    let key = dir.path().join("key.json");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mdm-emulate"));
    cmd.args([
        "android",
        "--listen",
        "127.0.0.1:0",
        "--devices",
        "3",
        "--duration",
        "1500ms",
        "--status-interval",
        "1s",
    ])
    .args(["--quiet", "--json", "-", "--push-endpoint", &sink.url("/android/pubsub?token=t")])
    .arg("--push-ca")
    .arg(&ca)
    .arg("--key-out")
    .arg(&key)
    .arg("--ca-out")
    .arg(dir.path().join("ca.pem"))
    .env_remove("PUBSUB_EMULATOR_HOST");
    // On a blocking thread: this test's runtime keeps serving the push endpoint meanwhile.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("mdm-emulate android: summary"), "{stdout}");
    let summary: Value = serde_json::from_str(&stdout[stdout.find("{\n").unwrap()..]).unwrap();
    assert_eq!(summary["enrolled"], 3);
    assert_eq!(summary["by_type"]["ENROLLMENT"], 3);
    assert_eq!(summary["notifications_failed"], 0);
    let got = sink.received();
    let enrolled = got.iter().filter(|p| p.attribute("notificationType") == Some("ENROLLMENT")).count();
    let reports = got.iter().filter(|p| p.attribute("notificationType") == Some("STATUS_REPORT")).count();
    assert_eq!(enrolled, 3);
    assert_eq!(reports as u64, summary["by_type"]["STATUS_REPORT"].as_u64().unwrap_or(0));
    let k = ServiceAccountKey::from_json(&std::fs::read_to_string(&key).unwrap()).unwrap();
    assert!(k.token_uri.ends_with("/token"));
    sink.stop().await;
}

/// Without the trust store, the Pub/Sub emulator's Java push client refuses the endpoint's
/// self-signed CA: the reason `start_trusting` exists.
#[tokio::test]
async fn pubsub_emulator_without_the_trust_store_cannot_push_over_https() {
    let sink = PushSink::start().await.unwrap();
    let pubsub = PubSubEmulator::start(0)
        .await
        .unwrap_or_else(|e| panic!("this test needs Google's Pub/Sub emulator and Java 17 (CI installs them): {e}"));
    let topic = "projects/emulated-project/topics/untrusted";
    pubsub.client().create_topic(topic).await.unwrap();
    let sub = "projects/emulated-project/subscriptions/untrusted-push";
    pubsub.client().create_push_subscription(sub, topic, &sink.url("/push"), None).await.unwrap();
    pubsub.client().publish(topic, Some(b"{}"), &[("notificationType".into(), "test".into())]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pubsub.log().contains("PKIX path building failed") {
        assert!(std::time::Instant::now() < deadline, "no PKIX failure logged:\n{}", pubsub.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sink.received().is_empty());
    sink.stop().await;
}
