//! Android helpers: Pub/Sub push bodies, posting them to `POST /android/pubsub` over TLS, and an
//! OIDC token signer (an RSA key and RS256 JWT signing with openssl, written here rather than
//! borrowed from the gateway's own code, so the gateway's verifier is checked against an
//! independent signer).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mdm_certs::{PKey, Private};
use serde_json::{Value, json};

use crate::{DeviceReply, Harness};

/// A push envelope as Google sends it (both id and time spellings). `data` is the notification
/// JSON (base64-encoded here); `None` for the data-less `test` message.
pub fn push_body(message_id: &str, publish_time: &str, notification_type: &str, data: Option<&Value>) -> Vec<u8> {
    let mut message = json!({
        "attributes": {"notificationType": notification_type},
        "messageId": message_id, "message_id": message_id,
        "publishTime": publish_time, "publish_time": publish_time,
    });
    if let Some(d) = data {
        message["data"] = STANDARD.encode(d.to_string()).into();
    }
    serde_json::to_vec(&json!({"message": message, "subscription": "projects/test/subscriptions/amapi-push"}))
        .expect("json")
}

/// An AMAPI `Device` resource for `enterprises/{e}/devices/{d}`.
pub fn device_json(enterprise: &str, device: &str, state: &str, applied_policy_version: i64) -> Value {
    json!({
        "name": format!("enterprises/{enterprise}/devices/{device}"),
        "managementMode": "DEVICE_OWNER", "ownership": "COMPANY_OWNED",
        "state": state, "appliedState": state, "policyCompliant": true,
        "policyName": format!("enterprises/{enterprise}/policies/default"),
        "appliedPolicyVersion": applied_policy_version.to_string(),
        "enrollmentTime": "2026-01-01T10:00:00Z",
        "enrollmentTokenName": format!("enterprises/{enterprise}/enrollmentTokens/tok1"),
        "hardwareInfo": {"brand": "google", "model": "Pixel 8", "serialNumber": format!("SN-{device}"), "manufacturer": "Google"},
        "softwareInfo": {"androidVersion": "15", "securityPatchLevel": "2026-01-05", "androidBuildNumber": "BP1A.250105.004"},
        "networkInfo": {"imei": "358240051111110", "wifiMacAddress": "02:00:00:00:00:01"},
        "securityPosture": {"devicePosture": "SECURE"},
    })
}

/// How a push authenticates.
#[derive(Debug, Clone, Default)]
pub struct PushCredentials {
    pub token: Option<String>,
    pub bearer: Option<String>,
}

impl PushCredentials {
    pub fn token(t: &str) -> Self {
        PushCredentials { token: Some(t.to_owned()), bearer: None }
    }

    pub fn bearer(b: &str) -> Self {
        PushCredentials { token: None, bearer: Some(b.to_owned()) }
    }
}

impl Harness {
    /// `<data_dir>/pubsub-token`.
    pub fn pubsub_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/pubsub-token")).expect("pubsub-token").trim().to_owned()
    }

    /// `POST /android/pubsub` over TLS with `application/json`.
    pub async fn post_pubsub_with(&self, body: Vec<u8>, creds: &PushCredentials) -> DeviceReply {
        let mut url = format!("{}/android/pubsub", self.device_url);
        if let Some(t) = &creds.token {
            url.push_str("?token=");
            url.push_str(&percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC).to_string());
        }
        let mut req = self.device_client(None).post(url).header("Content-Type", "application/json");
        if let Some(b) = &creds.bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        let resp = req.body(body).send().await.expect("pubsub push");
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("reply body");
        DeviceReply { status, body }
    }

    /// `POST /android/pubsub?token=<token>`.
    pub async fn post_pubsub(&self, body: Vec<u8>, token: &str) -> DeviceReply {
        self.post_pubsub_with(body, &PushCredentials::token(token)).await
    }

    /// Posts with the data directory's token and asserts a 2xx.
    pub async fn push_ok(&self, body: Vec<u8>) {
        let r = self.post_pubsub(body, &self.pubsub_token()).await;
        assert!((200..300).contains(&r.status), "push answered {}: {}", r.status, r.body);
    }

    /// The gateway's SQLite file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.dir.path().join("data/gateway.db")
    }

    /// The handled Pub/Sub message ids with their outcome, by id (read from the SQLite file).
    pub fn pubsub_messages(&self) -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(self.db_path()).expect("open db");
        let mut st = conn.prepare("SELECT message_id, outcome FROM pubsub_messages ORDER BY message_id").expect("sql");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).expect("query").collect::<Result<_, _>>().expect("rows")
    }

    /// The Android tables (Pub/Sub ids, watermarks, operations), as text for [`Harness::snapshot`].
    pub(crate) fn android_tables(&self) -> String {
        let path = self.db_path();
        if !path.exists() {
            return String::new();
        }
        let conn = rusqlite::Connection::open(path).expect("open db");
        let mut out = String::new();
        for sql in [
            "SELECT message_id || ' ' || received_at || ' ' || outcome FROM pubsub_messages ORDER BY 1",
            "SELECT device_id || ' ' || publish_time_ms || ' ' || message_id FROM android_watermarks ORDER BY 1",
            "SELECT operation || ' ' || device_id || ' ' || command_id FROM android_operations ORDER BY 1",
        ] {
            let mut st = conn.prepare(sql).expect("sql");
            let rows: Vec<String> =
                st.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
            out.push_str(&format!("{rows:?}\n"));
        }
        out
    }
}

/// An OIDC token issuer standing in for Google: an RSA key pair and RS256 signing.
#[derive(Debug)]
pub struct OidcIssuer {
    key: PKey<Private>,
}

impl OidcIssuer {
    pub fn generate() -> Self {
        OidcIssuer { key: PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("pkey") }
    }

    /// The public key, PEM `PUBLIC KEY` (what an operator saves from Google's certs endpoint).
    pub fn public_pem(&self) -> Vec<u8> {
        self.key.public_key_to_pem().expect("pem")
    }

    /// The public key as a JWKS document with `kid`.
    pub fn jwks(&self, kid: &str) -> Vec<u8> {
        let rsa = self.key.rsa().expect("rsa");
        serde_json::to_vec(&json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(rsa.n().to_vec()), "e": URL_SAFE_NO_PAD.encode(rsa.e().to_vec())}]}))
        .expect("json")
    }

    /// A JWS compact RS256 token over `claims`.
    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = k.into();
        }
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &self.key).expect("signer");
        let sig = signer.sign_oneshot_to_vec(input.as_bytes()).expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Claims as Google puts them in a push token.
    pub fn claims(audience: &str, email: &str, iat: i64) -> Value {
        json!({"iss": "https://accounts.google.com", "aud": audience, "azp": "1234567890", "sub": "1234567890",
               "email": email, "email_verified": true, "iat": iat, "exp": iat + 3600})
    }
}

/// The Pub/Sub topic the AMAPI tests' enterprises publish to.
pub const AMAPI_TOPIC: &str = "projects/emulated-project/topics/amapi";

/// The AMAPI emulator, with its service-account key and TLS CA written to files, as the
/// gateway's configuration takes them.
#[derive(Debug)]
pub struct AmapiFixture {
    pub emu: mdm_conformance::android::AmapiEmulator,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl AmapiFixture {
    pub async fn start(config: mdm_conformance::android::EmulatorConfig) -> AmapiFixture {
        let emu = mdm_conformance::android::AmapiEmulator::start(config).await.expect("emulator starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("sa.json");
        let ca = dir.path().join("amapi-ca.pem");
        emu.write_key(&key).expect("key");
        std::fs::write(&ca, emu.ca_pem()).expect("ca");
        AmapiFixture { emu, key, ca, _dir: dir }
    }

    /// Points the gateway's AMAPI client at the emulator, for `enterprise`, with waits short
    /// enough for tests (reconcile after 1 s).
    pub fn configure(&self, c: &mut mdm_gateway::config::Config, enterprise: Option<&str>) {
        let android = &mut c.android;
        android.api_base_url = self.emu.url();
        android.api_ca = Some(self.ca.clone());
        android.service_account_key = Some(self.key.clone());
        android.enterprise = enterprise.map(str::to_owned);
        android.pubsub_topic = Some(AMAPI_TOPIC.into());
        android.request_timeout_ms = 2_000;
        android.rate_limited_wait_ms = 300;
        android.retry_base_ms = 50;
        android.retry_max_ms = 200;
        android.max_attempts = 4;
        android.reconcile_after_s = 1;
        android.policy_merge_ms = 50;
    }
}
