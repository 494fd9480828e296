//! Bootstrap tokens and `GetToken` over the real wire: a Mac's bootstrap token is stored sealed
//! (checked in the SQLite file itself) and returned only to that Mac's device channel; token
//! services answer `GetToken` from a file or a backend hook (a local HTTP server here).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mdm_conformance::apple::{AppleDevice, IdentityMode, UserChannel};
use mdm_gateway::Gateway;
use mdm_gateway::config::TokenServiceConfig;
use mdm_tests::{Harness, config_on, unix_now};
use plist::{Dictionary, Value};
use serde_json::json;
use sha2::Sha256;

const SECRET: &[u8] = b"bootstrap-secret-of-mac-A-0123456789";

fn user() -> UserChannel {
    UserChannel {
        user_id: "B1B2C3D4-1111-2222-3333-444455556666".into(),
        short_name: "ann".into(),
        long_name: "Ann".into(),
    }
}

async fn set_bootstrap(dev: &AppleDevice, token: Option<&[u8]>, user: Option<&UserChannel>) -> (u16, String) {
    let mut extra = Dictionary::new();
    if let Some(t) = token {
        extra.insert("BootstrapToken".into(), Value::Data(t.to_vec()));
    }
    let r = dev.send_checkin(dev.checkin_message("SetBootstrapToken", user, extra)).await.expect("set");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

/// The status and, on 200, the returned token (`None` for the empty "no token" dictionary).
async fn get_bootstrap(dev: &AppleDevice, user: Option<&UserChannel>) -> (u16, Option<Vec<u8>>, String) {
    let r = dev.send_checkin(dev.checkin_message("GetBootstrapToken", user, Dictionary::new())).await.expect("get");
    if r.status != 200 {
        return (r.status, None, String::from_utf8_lossy(&r.body).into_owned());
    }
    let d: Dictionary = plist::from_bytes(&r.body).expect("plist answer");
    let token = d.get("BootstrapToken").and_then(|v| v.as_data()).map(<[u8]>::to_vec);
    assert!(token.is_some() || d.is_empty(), "{d:?}");
    (200, token, String::new())
}

fn db_path(h: &Harness) -> std::path::PathBuf {
    h.dir.path().join("data/gateway.db")
}

/// The stored (sealed) column, read from the SQLite file.
fn stored_bootstrap(h: &Harness, device_id: &str) -> Option<Vec<u8>> {
    let conn = rusqlite::Connection::open(db_path(h)).expect("open db");
    conn.query_row("SELECT bootstrap_token FROM enrollments WHERE device_id = ?", [device_id], |r| r.get(0))
        .expect("row")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_token_is_sealed_and_returned_only_to_its_mac() {
    let mut h = Harness::start().await;
    let now = unix_now();
    let (key_a, cert_a) = h.issue("BOOT0000-0000-4000-8000-00000000000A", now - 3600, now + 86_400);
    let mac_a = h.device_from(
        "BOOT0000-0000-4000-8000-00000000000A",
        key_a.clone(),
        cert_a.clone(),
        IdentityMode::SignMessages,
    );
    let (key_b, cert_b) = h.issue("BOOT0000-0000-4000-8000-00000000000B", now - 3600, now + 86_400);
    let mac_b = h.device_from(
        "BOOT0000-0000-4000-8000-00000000000B",
        key_b.clone(),
        cert_b.clone(),
        IdentityMode::SignMessages,
    );
    mac_a.enroll().await.expect("A enrolls");
    mac_b.enroll().await.expect("B enrolls");
    let u = user();
    assert_eq!(mac_a.send_checkin(mac_a.token_update_message(Some(&u))).await.expect("user").status, 200);
    let (id_a, id_b) = (format!("apple:{}", mac_a.udid), format!("apple:{}", mac_b.udid));

    assert_eq!(set_bootstrap(&mac_a, Some(SECRET), None).await.0, 200);
    // The same Mac gets it back; another Mac gets "no token"; a user channel is refused.
    assert_eq!(get_bootstrap(&mac_a, None).await, (200, Some(SECRET.to_vec()), String::new()));
    assert_eq!(get_bootstrap(&mac_b, None).await, (200, None, String::new()));
    let (status, token, body) = get_bootstrap(&mac_a, Some(&u)).await;
    assert_eq!((status, token), (400, None));
    assert!(body.contains("device_channel_only"), "{body}");
    let before = h.snapshot(&[]).await;
    let (status, body) = set_bootstrap(&mac_a, Some(b"from-user-channel"), Some(&u)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(h.snapshot(&[]).await, before, "a refused SetBootstrapToken stored nothing");

    // At rest: sealed, never the plaintext, anywhere in the database files (events included).
    let sealed = stored_bootstrap(&h, &id_a).expect("stored");
    assert_ne!(sealed, SECRET);
    assert_eq!(sealed.len(), 1 + 12 + SECRET.len() + 16, "version, nonce, ciphertext, tag");
    assert!(!contains(&sealed, SECRET));
    for file in ["gateway.db", "gateway.db-wal"] {
        let bytes = std::fs::read(h.dir.path().join("data").join(file)).unwrap_or_default();
        assert!(!contains(&bytes, SECRET), "{file} holds the plaintext token");
        assert!(!contains(&bytes, B64.encode(SECRET).as_bytes()), "{file} holds the token in base64");
    }
    let set_events = h.events_of(&id_a, "device.bootstrap_token_set").await;
    assert_eq!(set_events.len(), 1);
    assert_eq!(set_events[0]["data"]["escrowed"], true);
    assert!(set_events[0].get("raw").is_none(), "the message carries the token: no raw copy");
    let (_, device) = h.get(&format!("/v1/devices/{id_a}")).await;
    assert_eq!(device["enrollment"]["bootstrap_token_escrowed"], true);

    // A's sealed value copied into B's row does not open for B: the device id is bound in.
    {
        let conn = rusqlite::Connection::open(db_path(&h)).expect("open db");
        conn.busy_timeout(std::time::Duration::from_secs(5)).expect("timeout");
        conn.execute("UPDATE enrollments SET bootstrap_token = ? WHERE device_id = ?", rusqlite::params![sealed, id_b])
            .expect("copy");
    }
    let (status, token, body) = get_bootstrap(&mac_b, None).await;
    assert_eq!((status, token), (500, None));
    assert!(body.contains("bootstrap_token_unreadable"), "{body}");

    // Empty data and absent data both clear it.
    assert_eq!(set_bootstrap(&mac_a, Some(b""), None).await.0, 200);
    assert_eq!(get_bootstrap(&mac_a, None).await, (200, None, String::new()));
    assert_eq!(stored_bootstrap(&h, &id_a), None);
    assert_eq!(set_bootstrap(&mac_a, Some(b"second"), None).await.0, 200);
    assert_eq!(get_bootstrap(&mac_a, None).await.1.as_deref(), Some(&b"second"[..]));
    assert_eq!(set_bootstrap(&mac_a, None, None).await.0, 200);
    assert_eq!(get_bootstrap(&mac_a, None).await.1, None);
    let (_, device) = h.get(&format!("/v1/devices/{id_a}")).await;
    assert_eq!(device["enrollment"]["bootstrap_token_escrowed"], false);
    let cleared = h.events_of(&id_a, "device.bootstrap_token_set").await;
    assert_eq!(
        cleared.iter().map(|e| e["data"]["escrowed"].as_bool()).collect::<Vec<_>>(),
        [Some(true), Some(false), Some(true), Some(false)]
    );

    // A token an older version stored in plaintext is sealed when the gateway starts, and still
    // reaches its Mac.
    let gateway = h.gateway.take().expect("running");
    gateway.shutdown().await.expect("stop");
    {
        let conn = rusqlite::Connection::open(db_path(&h)).expect("open db");
        conn.execute(
            "UPDATE enrollments SET bootstrap_token = NULL, bootstrap_token_plaintext = ? WHERE device_id = ?",
            rusqlite::params![&b"legacy-plaintext-token"[..], id_b],
        )
        .expect("legacy value");
    }
    let mut config = config_on(h.dir.path().join("data"));
    config.apple.checked_in_event_interval_s = 0;
    let gateway = Gateway::start(config).await.expect("restart");
    let url = format!("https://localhost:{}", gateway.device_addr.port());
    let mac_b = AppleDevice::new(&mac_b.udid, key_b, cert_b, IdentityMode::SignMessages, &url, &h.ca_pem).expect("B");
    let sealed_b = stored_bootstrap(&h, &id_b).expect("sealed at start");
    assert!(!contains(&sealed_b, b"legacy-plaintext-token"));
    let conn = rusqlite::Connection::open(db_path(&h)).expect("open db");
    let plain: Option<Vec<u8>> = conn
        .query_row("SELECT bootstrap_token_plaintext FROM enrollments WHERE device_id = ?", [&id_b], |r| r.get(0))
        .expect("row");
    assert_eq!(plain, None);
    assert_eq!(get_bootstrap(&mac_b, None).await.1.as_deref(), Some(&b"legacy-plaintext-token"[..]));
    let mac_a = AppleDevice::new(&mac_a.udid, key_a, cert_a, IdentityMode::SignMessages, &url, &h.ca_pem).expect("A");
    assert_eq!(get_bootstrap(&mac_a, None).await.1, None);
    gateway.shutdown().await.expect("stop");
}

/// A token hook on a real socket: `/ok` answers a token, `/fail` 500, `/garbage` non-JSON.
#[derive(Debug, Clone)]
struct Hook {
    base: String,
    received: Arc<Mutex<Vec<(String, http::HeaderMap, Bytes)>>>,
}

impl Hook {
    async fn start() -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let r = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let r = r.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let r = r.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let path = parts.uri.path().to_owned();
                            r.lock().expect("lock").push((path.clone(), parts.headers, body.clone()));
                            let (status, answer) = match path.as_str() {
                                "/ok" => {
                                    let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                                    let token = format!("token-for-{}", asked["device_id"].as_str().unwrap_or("?"));
                                    (200, json!({ "token": B64.encode(token) }).to_string())
                                }
                                "/garbage" => (200, "<html>not json</html>".to_owned()),
                                _ => (500, "{\"error\": \"down\"}".to_owned()),
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(answer)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Hook { base, received }
    }
}

fn hook_service(url: String, secret_file: Option<std::path::PathBuf>) -> TokenServiceConfig {
    TokenServiceConfig { file: None, url: Some(url), timeout_ms: 5_000, hmac_secret_file: secret_file }
}

async fn get_token(
    dev: &AppleDevice,
    service: &str,
    params: Option<Dictionary>,
    user: Option<&UserChannel>,
) -> (u16, Bytes) {
    let mut extra = Dictionary::new();
    extra.insert("TokenServiceType".into(), service.into());
    if let Some(p) = params {
        extra.insert("TokenParameters".into(), Value::Dictionary(p));
    }
    let r = dev.send_checkin(dev.checkin_message("GetToken", user, extra)).await.expect("get token");
    (r.status, r.body)
}

fn token_data(body: &[u8]) -> Vec<u8> {
    let d: Dictionary = plist::from_bytes(body).expect("plist answer");
    d.get("TokenData").and_then(|v| v.as_data()).expect("TokenData is data").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_from_a_file_and_from_a_hook() {
    let hook = Hook::start().await;
    let files = tempfile::tempdir().expect("tmp");
    let maid = files.path().join("maid-token");
    std::fs::write(&maid, b"maid-token-\x00\x01\xff").expect("write");
    let secret = files.path().join("hook-secret");
    std::fs::write(&secret, "hook-hmac-secret\n").expect("write");
    let base = hook.base.clone();
    let h = Harness::start_with(|c| {
        c.apple.tokens.insert(
            "com.apple.maid".into(),
            TokenServiceConfig { file: Some(maid.clone()), url: None, timeout_ms: 10_000, hmac_secret_file: None },
        );
        c.apple
            .tokens
            .insert("com.apple.watch.pairing".into(), hook_service(format!("{base}/ok"), Some(secret.clone())));
        c.apple.tokens.insert("com.example.failing".into(), hook_service(format!("{base}/fail"), None));
        c.apple.tokens.insert("com.example.garbage".into(), hook_service(format!("{base}/garbage"), None));
    })
    .await;
    let dev = h.device("TOKN0000-0000-4000-8000-000000000001");
    dev.enroll().await.expect("enrolls");
    let u = user();
    assert_eq!(dev.send_checkin(dev.token_update_message(Some(&u))).await.expect("user").status, 200);
    let id = format!("apple:{}", dev.udid);
    let user_id = format!("{id}:{}", u.user_id);

    // A static token, read at each request.
    let (status, body) = get_token(&dev, "com.apple.maid", None, None).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(token_data(&body), b"maid-token-\x00\x01\xff");
    std::fs::write(&maid, b"rotated").expect("rotate");
    assert_eq!(token_data(&get_token(&dev, "com.apple.maid", None, None).await.1), b"rotated");

    // The hook gets the device, the service type and every parameter, signed; its token goes
    // to the device as data.
    let mut params = Dictionary::new();
    params.insert("SecurityToken".into(), "watch-security-token".into());
    params.insert("PhoneUDID".into(), dev.udid.clone().into());
    params.insert("WatchUDID".into(), "00008301-00AA11BB22CC33DD".into());
    let (status, body) = get_token(&dev, "com.apple.watch.pairing", Some(params), None).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(token_data(&body), format!("token-for-{id}").into_bytes());
    let (path, headers, sent) = hook.received.lock().expect("lock")[0].clone();
    assert_eq!(path, "/ok");
    let sent_json: serde_json::Value = serde_json::from_slice(&sent).expect("JSON");
    assert_eq!(
        sent_json,
        json!({
            "device_id": id,
            "token_service_type": "com.apple.watch.pairing",
            "token_parameters": {
                "SecurityToken": "watch-security-token",
                "PhoneUDID": dev.udid,
                "WatchUDID": "00008301-00AA11BB22CC33DD"
            }
        })
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hook-hmac-secret").expect("hmac");
    mac.update(&sent);
    assert_eq!(
        headers.get("X-Hmac-Signature").and_then(|v| v.to_str().ok()),
        Some(B64.encode(mac.finalize().into_bytes()).as_str())
    );

    // A user channel asks for itself.
    let (status, body) = get_token(&dev, "com.apple.watch.pairing", None, Some(&u)).await;
    assert_eq!(status, 200);
    assert_eq!(token_data(&body), format!("token-for-{user_id}").into_bytes());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&hook.received.lock().expect("lock")[1].2).expect("json")["token_parameters"],
        json!({})
    );

    // Not configured: 501 naming the type; a failing hook: 502 with the reason. Never 401.
    let (status, body) = get_token(&dev, "com.apple.unknown-service", None, None).await;
    assert_eq!(status, 501);
    assert!(String::from_utf8_lossy(&body).contains("com.apple.unknown-service"));
    let (status, body) = get_token(&dev, "com.example.failing", None, None).await;
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("token_hook_refused"), "{body:?}");
    let (status, body) = get_token(&dev, "com.example.garbage", None, None).await;
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("token_hook_bad_answer"), "{body:?}");

    let events = h.events_of(&id, "device.token_requested").await;
    let outcomes: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["data"]["token_service_type"].as_str().unwrap_or(""), e["data"]["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("com.apple.maid", "served"),
            ("com.apple.maid", "served"),
            ("com.apple.watch.pairing", "served"),
            ("com.apple.unknown-service", "not_configured"),
            ("com.example.failing", "failed"),
            ("com.example.garbage", "failed"),
        ]
    );
    assert_eq!(events[4]["data"]["reason"], "token_hook_refused");
    for e in &events {
        assert!(e.get("raw").is_none(), "TokenParameters may hold a secret: no raw copy");
        assert!(!e.to_string().contains("watch-security-token"), "{e}");
        assert!(!e.to_string().contains("token-for-"), "the token itself is not in events: {e}");
    }
    assert_eq!(h.events_of(&user_id, "device.token_requested").await.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_storage_key_is_the_one_used() {
    use mdm_gateway::sealing::{Purpose, Sealer};

    let keys = tempfile::tempdir().expect("tmp");
    let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(31).wrapping_add(7));
    let key_file = keys.path().join("storage.key");
    std::fs::write(&key_file, B64.encode(key)).expect("write");
    let kf = key_file.clone();
    let h = Harness::start_with(move |c| c.store.encryption_key_file = Some(kf)).await;
    let mac = h.device("KEYS0000-0000-4000-8000-000000000001");
    mac.enroll().await.expect("enrolls");
    let id = format!("apple:{}", mac.udid);
    assert_eq!(set_bootstrap(&mac, Some(SECRET), None).await.0, 200);

    let sealed = stored_bootstrap(&h, &id).expect("stored");
    let device_id: mdm_core::DeviceId = id.parse().expect("id");
    assert_eq!(Sealer::new(key).open(Purpose::BootstrapToken, &device_id, &sealed).expect("opens"), SECRET);
    // Not the generated data-directory key.
    let generated = std::fs::read_to_string(h.dir.path().join("data/storage-key")).expect("storage-key");
    let generated = mdm_gateway::pki::parse_storage_key(&generated).expect("key");
    assert!(Sealer::new(generated).open(Purpose::BootstrapToken, &device_id, &sealed).is_err());
    h.stop().await;

    // A key file that is not 32 bytes stops the start as a configuration error (exit 64).
    std::fs::write(&key_file, "00112233").expect("write");
    let mut config = config_on(keys.path().join("data"));
    config.store.encryption_key_file = Some(key_file);
    let e = Gateway::start(config).await.expect_err("short key");
    assert_eq!(e.exit_code(), 64, "{e}");
    assert!(e.to_string().contains("store.encryption_key_file"), "{e}");
}
