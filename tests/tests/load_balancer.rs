//! The gateway behind a load balancer, as a real process: the plain-HTTP device listener
//! (`device.plain_listen`) that serves only trusted proxies and takes device identities from
//! their certificate header, the client address from `X-Forwarded-For` (believed only from
//! trusted proxies, and what the logs show), and SIGTERM: unready at once while requests are
//! still served for `shutdown.drain_delay_s`, then in-flight requests finish before exit 0.
//!
//! Loopback has a whole /8: the "balancer" connects from 127.0.0.2 (trusted), strangers from
//! 127.0.0.3.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use mdm_conformance::apple::{AppleDevice, IdentityMode};
use mdm_tests::process::{Api, DataDirCa, GatewayProcess, free_addr, process_config, secret};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BALANCER: &str = "127.0.0.2";
const STRANGER: &str = "127.0.0.3";
const CHECKIN: &str = "application/x-apple-aspen-mdm-checkin";

struct Setup {
    gw: GatewayProcess,
    api: Api,
    ca: DataDirCa,
    _dir: tempfile::TempDir,
}

async fn start(adjust: impl FnOnce(&mut mdm_gateway::config::Config)) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut c = process_config(&data, "https://mdm.example.com");
    c.device.plain_listen = Some(free_addr());
    c.device.trusted_proxies = vec![format!("{BALANCER}/32").parse().expect("net")];
    adjust(&mut c);
    let mut gw = GatewayProcess::spawn("gw", dir.path(), c, "info,mdm_gateway=debug");
    gw.wait_up().await;
    let api = Api::new(&gw.api_url(), &secret(&data, "api-key"));
    let ca = DataDirCa::read(&data);
    Setup { gw, api, ca, _dir: dir }
}

fn rfc9440(cert: &mdm_certs::X509) -> String {
    format!(":{}:", base64::engine::general_purpose::STANDARD.encode(cert.to_der().expect("der")))
}

/// A client whose connections come from `from`.
fn client_from(from: &str, ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().expect("ip"))
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("ca"))
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// An emulated device: used here for its messages; its own URL is not used.
fn device(s: &Setup, udid: &str) -> AppleDevice {
    let (key, cert) = s.ca.issue(udid);
    AppleDevice::new(udid, key, cert, IdentityMode::TlsClientCertificate, "https://127.0.0.1:1", &s.ca.pem)
        .expect("device")
}

async fn put_checkin(client: &reqwest::Client, url: String, body: Vec<u8>, headers: &[(&str, String)]) -> u16 {
    let mut req = client.put(url).header("Content-Type", CHECKIN).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.expect("request").status().as_u16()
}

async fn enrollment_state(api: &Api, id: &str) -> Option<String> {
    let (code, d) = api.get(&format!("/v1/devices/{id}")).await;
    (code == 200).then(|| d["enrollment"]["state"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_takes_identity_and_client_address_from_trusted_proxies_only() {
    let s = start(|_| {}).await;
    let plain = format!("http://{}/mdm", s.gw.config.device.plain_listen.expect("plain"));
    let balancer = client_from(BALANCER, &s.ca.pem);
    let stranger = client_from(STRANGER, &s.ca.pem);

    // Through the balancer: the certificate header is the identity, the device enrolls.
    let dev = device(&s, "1B000000-0000-4000-8000-00000000B001");
    let id = format!("apple:{}", dev.udid);
    let cert = [("Client-Cert", rfc9440(&dev.cert)), ("X-Forwarded-For", "198.51.100.7".into())];
    assert_eq!(put_checkin(&balancer, plain.clone(), dev.authenticate_message(), &cert).await, 200);
    assert_eq!(put_checkin(&balancer, plain.clone(), dev.token_update_message(None), &cert).await, 200);
    assert_eq!(enrollment_state(&s.api, &id).await.as_deref(), Some("enrolled"));

    // A stranger on the plain listener is refused whatever it sends; nothing is stored.
    let other = device(&s, "1B000000-0000-4000-8000-00000000B002");
    let other_id = format!("apple:{}", other.udid);
    let cert = [("Client-Cert", rfc9440(&other.cert))];
    assert_eq!(put_checkin(&stranger, plain.clone(), other.authenticate_message(), &cert).await, 403);
    // On the TLS listener its certificate header is not believed either (no TLS identity: 400).
    let tls = format!("https://127.0.0.1:{}/mdm", s.gw.device_addr().port());
    assert_eq!(put_checkin(&stranger, tls.clone(), other.authenticate_message(), &cert).await, 400);
    assert_eq!(enrollment_state(&s.api, &other_id).await, None, "nothing stored for the stranger");

    // The client address in the logs: from the balancer, the rightmost address it appended (a
    // forged left part is skipped); from a stranger, its own address, the header ignored.
    let forged = [("X-Forwarded-For", "6.6.6.6, 198.51.100.42".to_owned())];
    assert_eq!(put_checkin(&balancer, plain.clone(), other.authenticate_message(), &forged).await, 400);
    let forwarded = [("Forwarded", "for=\"[2001:db8::77]:4711\";proto=https".to_owned())];
    assert_eq!(put_checkin(&balancer, plain.clone(), other.authenticate_message(), &forwarded).await, 400);
    let spoofed = [("X-Forwarded-For", "203.0.113.99".to_owned())];
    assert_eq!(put_checkin(&stranger, tls, other.authenticate_message(), &spoofed).await, 400);
    let log = s.gw.log_text();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("device request refused")).collect();
    assert!(refused.iter().any(|l| l.contains("client=Some(198.51.100.42)")), "{refused:#?}");
    assert!(refused.iter().any(|l| l.contains("client=Some(2001:db8::77)")), "{refused:#?}");
    assert!(refused.iter().any(|l| l.contains(&format!("client=Some({STRANGER})"))), "{refused:#?}");
    assert!(!log.contains("6.6.6.6") && !log.contains("203.0.113.99"), "untrusted addresses never logged as clients");
    assert!(log.contains("forwarding headers from a peer that is not a trusted proxy"), "ignored at debug");
    assert!(log.contains("plain-HTTP device request from a peer that is not a trusted proxy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_without_trusted_proxies_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = process_config(&dir.path().join("data"), "https://mdm.example.com");
    c.device.plain_listen = Some(free_addr());
    let mut gw = GatewayProcess::spawn("gw", dir.path(), c, "info");
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(64), "{}", gw.log_text());
    assert!(gw.log_text().contains("device.plain_listen"), "{}", gw.log_text());
    assert!(!dir.path().join("data").exists(), "refused before the data directory is created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_unready_at_once_and_serves_until_the_drain_delay_is_over() {
    let mut s = start(|c| c.shutdown.drain_delay_s = 3).await;
    assert_eq!(s.gw.readyz().await.map(|r| r.0), Some(200));
    let dev = {
        let (key, cert) = s.ca.issue("1B000000-0000-4000-8000-00000000D001");
        let url = format!("https://127.0.0.1:{}", s.gw.device_addr().port());
        AppleDevice::new("1B000000-0000-4000-8000-00000000D001", key, cert, IdentityMode::SignMessages, &url, &s.ca.pem)
            .expect("device")
    };

    let signalled = Instant::now();
    s.gw.terminate();
    // Unready at once (the balancer's health check takes the instance out)...
    let gw = &s.gw;
    let unready =
        mdm_tests::eventually(Duration::from_secs(1), || async { gw.readyz().await.filter(|(code, _)| *code == 503) })
            .await;
    let (_, body) = unready.expect("/readyz answers 503 within a second of SIGTERM");
    assert_eq!(body["draining"], true, "{body}");
    // ...while devices are still served, on new connections too.
    dev.enroll().await.expect("a device enrolls during the drain delay");
    assert_eq!(enrollment_state(&s.api, &format!("apple:{}", dev.udid)).await.as_deref(), Some("enrolled"));
    // Replies ask HTTP/1.1 clients to reconnect (through the balancer, to another instance).
    let http1 = reqwest::Client::builder()
        .http1_only()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&s.ca.pem).expect("ca"))
        .build()
        .expect("client");
    let caps = http1
        .get(format!("https://127.0.0.1:{}/scep?operation=GetCACaps", s.gw.device_addr().port()))
        .send()
        .await
        .expect("GetCACaps during the drain delay");
    assert_eq!(caps.status().as_u16(), 200);
    assert_eq!(caps.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"));
    assert!(signalled.elapsed() < Duration::from_secs(3), "the checks above ran inside the delay");

    let status = s.gw.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", s.gw.log_text());
    assert!(signalled.elapsed() >= Duration::from_millis(2900), "stopped before the drain delay was over");
    let log = s.gw.log_text();
    let draining = log.find("draining: unready").expect("drain logged");
    let stopping = log.find("stopping: no new connections").expect("stop logged");
    assert!(draining < stopping, "{log}");
}

/// A device request whose body is still arriving when SIGTERM comes is answered (and its effect
/// stored) before the process exits 0; new connections are refused meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_after_sigterm() {
    let mut s = start(|c| c.device.trusted_proxies.push("127.0.0.1/32".parse().expect("net"))).await;
    let plain: SocketAddr = s.gw.config.device.plain_listen.expect("plain");
    let dev = device(&s, "1B000000-0000-4000-8000-00000000F001");
    let body = dev.authenticate_message();
    let head = format!(
        "PUT /mdm HTTP/1.1\r\nHost: mdm.example.com\r\nContent-Type: {CHECKIN}\r\nClient-Cert: {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        rfc9440(&dev.cert),
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(plain).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("head");
    let half = body.len() / 2;
    conn.write_all(&body[..half]).await.expect("first half");
    conn.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(300)).await;

    s.gw.terminate();
    // The listeners stop accepting (no drain delay here) while our request is still open.
    let refused = async {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(plain).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(refused.await, "new connections still accepted after SIGTERM");
    assert!(s.gw.pid().is_some());
    conn.write_all(&body[half..]).await.expect("second half");
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await.expect("reply");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let status = s.gw.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", s.gw.log_text());
    // What the answer acknowledged is stored: visible after a restart.
    s.gw.restart().await;
    let (code, d): (u16, Value) = s.api.get(&format!("/v1/devices/apple:{}", dev.udid)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["enrollment"]["state"], "authenticated", "{d}");
}
