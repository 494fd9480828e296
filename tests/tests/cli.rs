//! The real `mdm-gateway` binary: configuration errors (exit 64 naming the key, before any
//! port or data directory), the embedded default's data directory, health, SIGTERM, restart.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `<target>/<profile>/mdm-gateway`, built (or brought up to date) once per test process.
fn gateway_binary() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.get_or_insert_with(|| mdm_tests::workspace_binary("mdm-gateway", "mdm-gateway")).clone()
}

/// A command for the binary with a clean environment (no stray `MDM_GATEWAY_*`), run in `cwd`.
fn gateway(cwd: &Path) -> Command {
    let mut cmd = Command::new(gateway_binary());
    cmd.current_dir(cwd).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MDM_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Runs to completion (bounded), returning the output.
fn run(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn gateway");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("gateway did not exit on a bad configuration: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks a configuration refusal: exit 64, stderr names every string in `names`, no data
/// directory was created, and the API port (which we hold) was never tried.
fn assert_config_refused(out: &Output, data_dir: &Path, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "exit status {:?}, stderr: {stderr}", out.status);
    for n in names {
        assert!(stderr.contains(n), "stderr should name {n:?}: {stderr}");
    }
    assert!(!stderr.contains("cannot listen"), "it tried to bind: {stderr}");
    assert!(!data_dir.exists(), "data directory created before the configuration was checked");
}

/// Holds a port so a gateway that got as far as binding would fail differently (exit 1).
struct HeldPort {
    _listener: TcpListener,
    port: u16,
}

fn hold_port() -> HeldPort {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    HeldPort { _listener: l, port }
}

#[test]
fn unknown_key_in_config_file_exits_64() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let held = hold_port();
    let file = tmp.path().join("gateway.toml");
    std::fs::write(&file, "[device]\nlsten = \"127.0.0.1:9443\"\n").expect("write config");
    let mut cmd = gateway(tmp.path());
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-listen", &format!("127.0.0.1:{}", held.port)]);
    assert_config_refused(&run(cmd), &data, &["device.lsten"]);

    // Top-level typo too.
    std::fs::write(&file, "pubilc_url = \"https://mdm.example.com\"\n").expect("write config");
    let mut cmd = gateway(tmp.path());
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-listen", &format!("127.0.0.1:{}", held.port)]);
    assert_config_refused(&run(cmd), &data, &["pubilc_url"]);

    // `config` (print the effective configuration) refuses the same way.
    std::fs::write(&file, "[apple]\nallow_cert_renewall = true\n").expect("write config");
    let mut cmd = gateway(tmp.path());
    cmd.arg("config").arg("--config").arg(&file).arg("--data-dir").arg(&data);
    assert_config_refused(&run(cmd), &data, &["apple.allow_cert_renewall"]);
}

#[test]
fn invalid_values_exit_64() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let held = hold_port();
    let api = format!("127.0.0.1:{}", held.port);
    let file = tmp.path().join("gateway.toml");
    for (toml, key) in [
        ("public_url = \"http://x\"\n", "public_url"),
        ("[device]\nlisten = \"nope\"\n", "device.listen"),
        ("[device]\nmax_body_bytes = \"lots\"\n", "device.max_body_bytes"),
        ("[device]\ntrusted_proxies = [\"not-a-network\"]\n", "device.trusted_proxies"),
        ("[store]\nread_connections = 0\n", "store.read_connections"),
    ] {
        std::fs::write(&file, toml).expect("write config");
        let mut cmd = gateway(tmp.path());
        cmd.arg("serve").arg("--config").arg(&file).arg("--data-dir").arg(&data).args(["--api-listen", &api]);
        assert_config_refused(&run(cmd), &data, &[key]);
    }
    // The same values as flags.
    let mut cmd = gateway(tmp.path());
    cmd.arg("serve").arg("--data-dir").arg(&data).args(["--public-url", "http://x", "--api-listen", &api]);
    assert_config_refused(&run(cmd), &data, &["public_url"]);
    let mut cmd = gateway(tmp.path());
    cmd.arg("serve").arg("--data-dir").arg(&data).args(["--device-listen", "nope", "--api-listen", &api]);
    assert_config_refused(&run(cmd), &data, &["device.listen"]);
    // A missing config file.
    let mut cmd = gateway(tmp.path());
    cmd.arg("serve")
        .arg("--config")
        .arg(tmp.path().join("absent.toml"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-listen", &api]);
    assert_config_refused(&run(cmd), &data, &["--config"]);
}

#[test]
fn unknown_environment_variable_exits_64() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let held = hold_port();
    let mut cmd = gateway(tmp.path());
    cmd.env("MDM_GATEWAY_DEVICE__LSTEN", "1")
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-listen", &format!("127.0.0.1:{}", held.port)]);
    assert_config_refused(&run(cmd), &data, &["device.lsten", "MDM_GATEWAY_DEVICE__LSTEN"]);
    // An invalid value from the environment names its key too.
    let mut cmd = gateway(tmp.path());
    cmd.env("MDM_GATEWAY_DEVICE__LISTEN", "nope")
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-listen", &format!("127.0.0.1:{}", held.port)]);
    assert_config_refused(&run(cmd), &data, &["device.listen"]);
}

struct Running {
    child: Child,
    api: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only if a test failed half way: never leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(tmp: &Path, data: &Path, log: &str) -> Running {
    let port = free_port();
    let log = std::fs::File::create(tmp.join(log)).expect("log file");
    let mut cmd = gateway(tmp);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--device-listen", "127.0.0.1:0", "--api-listen", &format!("127.0.0.1:{port}")])
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let child = cmd.spawn().expect("spawn gateway");
    Running { child, api: format!("http://127.0.0.1:{port}") }
}

async fn wait_healthy(r: &mut Running) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = r.child.try_wait().expect("try_wait") {
            panic!("gateway exited during start: {status:?}");
        }
        if let Ok(resp) = client.get(format!("{}/healthz", r.api)).send().await {
            assert_eq!(resp.status().as_u16(), 200);
            return;
        }
        assert!(Instant::now() < deadline, "no /healthz within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then the exit status within `limit`.
fn terminate(r: &mut Running, limit: Duration) -> std::process::ExitStatus {
    let status = Command::new("kill").arg("-TERM").arg(r.child.id().to_string()).status().expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = r.child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "gateway still running {limit:?} after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_creates_data_dir_answers_health_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    assert!(!data.exists());

    let mut first = start(tmp.path(), &data, "first.log");
    wait_healthy(&mut first).await;
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "api-key",
        "enroll-secret",
        "pubsub-token",
        "scep-ra.pem",
        "scep-ra-key.pem",
        "scep-challenge",
        "gateway.db",
    ] {
        let p = data.join(f);
        assert!(p.is_file(), "{f} missing from the data directory");
        assert!(std::fs::metadata(&p).expect("meta").len() > 0, "{f} is empty");
    }
    let ca = std::fs::read(data.join("ca.pem")).expect("ca");
    assert!(String::from_utf8_lossy(&ca).starts_with("-----BEGIN CERTIFICATE-----"));
    let api_key = std::fs::read_to_string(data.join("api-key")).expect("api-key").trim().to_owned();
    assert!(api_key.len() >= 32, "api key too short: {api_key:?}");
    let scep_ra = std::fs::read(data.join("scep-ra.pem")).expect("scep-ra.pem");
    let scep_challenge = std::fs::read(data.join("scep-challenge")).expect("scep-challenge");

    // The API answers with the generated key, and only with it.
    let client = reqwest::Client::new();
    let ok = client.get(format!("{}/v1/devices", first.api)).bearer_auth(&api_key).send().await.expect("devices");
    assert_eq!(ok.status().as_u16(), 200);
    let no = client.get(format!("{}/v1/devices", first.api)).send().await.expect("devices");
    assert_eq!(no.status().as_u16(), 401);
    let ready = client.get(format!("{}/readyz", first.api)).send().await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);

    let status = terminate(&mut first, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status:?}\n{}",
        std::fs::read_to_string(tmp.path().join("first.log")).unwrap_or_default()
    );
    assert!(client.get(format!("{}/healthz", first.api)).send().await.is_err(), "still answering after exit");

    // Second start on the same directory reuses the CA and the secrets.
    let mut second = start(tmp.path(), &data, "second.log");
    wait_healthy(&mut second).await;
    assert_eq!(std::fs::read(data.join("ca.pem")).expect("ca"), ca, "ca.pem changed on restart");
    assert_eq!(
        std::fs::read_to_string(data.join("api-key")).expect("api-key").trim(),
        api_key,
        "api-key changed on restart"
    );
    assert_eq!(std::fs::read(data.join("scep-ra.pem")).expect("ra"), scep_ra, "scep-ra.pem changed on restart");
    assert_eq!(std::fs::read(data.join("scep-challenge")).expect("c"), scep_challenge, "scep-challenge changed");
    let ok = client.get(format!("{}/v1/devices", second.api)).bearer_auth(&api_key).send().await.expect("devices");
    assert_eq!(ok.status().as_u16(), 200);
    let status = terminate(&mut second, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status:?}");
}

/// `mdm-gateway migrate` on the default SQLite store: creates the database (and its directory)
/// at the latest schema and exits 0, nothing else; a second run finds nothing to do.
#[test]
fn migrate_creates_the_sqlite_schema_and_exits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    for round in 0..2 {
        let mut cmd = gateway(tmp.path());
        cmd.arg("migrate").arg("--data-dir").arg(&data);
        let out = run(cmd);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("SQLite store schema is up to date"), "{stdout}");
    }
    let conn = rusqlite::Connection::open(data.join("gateway.db")).expect("open");
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    // Every migration file of the build, applied.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/migrations/sqlite");
    let mut files: Vec<i64> = std::fs::read_dir(&dir)
        .expect("migrations dir")
        .filter_map(|e| e.expect("entry").file_name().to_str()?.split('_').next()?.parse().ok())
        .collect();
    files.sort_unstable();
    assert!(files.len() >= 7, "{files:?}");
    assert_eq!(versions, files);
    // Only the database: no certificates or secrets (that is `serve`'s job).
    assert!(!data.join("ca.pem").exists());
}

/// `mdm-gateway migrate` with `store.url = "postgres://…"` (from the environment): applies the
/// PostgreSQL migrations and exits 0; a second run finds nothing to do. A bad URL is exit 64.
#[tokio::test]
async fn migrate_applies_the_postgres_schema() {
    use sqlx_core::connection::Connection as _;
    use sqlx_core::row::Row as _;
    let Some(schema) = mdm_gateway::store::suite::PostgresSchema::create().await else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    for round in 0..2 {
        let mut cmd = gateway(tmp.path());
        cmd.arg("migrate").arg("--data-dir").arg(tmp.path().join("data"));
        cmd.env("MDM_GATEWAY_STORE__URL", &schema.url);
        let out = tokio::task::spawn_blocking(move || run(cmd)).await.expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("PostgreSQL store schema is up to date"), "{stdout}");
    }
    assert!(!tmp.path().join("data").exists(), "no data directory for a PostgreSQL store");
    let mut conn = sqlx_postgres::PgConnection::connect(&schema.url).await.expect("connect");
    let row = sqlx_core::query::query(
        "SELECT count(*), bool_and(success), (SELECT last_seq FROM event_log_head) FROM _sqlx_migrations",
    )
    .fetch_one(&mut conn)
    .await
    .expect("bookkeeping");
    assert!(row.get::<i64, _>(0) >= 1);
    assert!(row.get::<bool, _>(1));
    assert_eq!(row.get::<i64, _>(2), 0);
    let _ = conn.close().await;

    let mut cmd = gateway(tmp.path());
    cmd.arg("migrate").env("MDM_GATEWAY_STORE__URL", "postgres://u:secret@h/db?sslmode=sometimes");
    let out = tokio::task::spawn_blocking(move || run(cmd)).await.expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("store.url") && !stderr.contains("secret"), "{stderr}");
}
