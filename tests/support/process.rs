//! Gateway instances as real processes (the `mdm-gateway` binary, built by cargo first), so a
//! test can stop one with SIGTERM or kill it with SIGKILL like an operator or a crash would. Each
//! instance gets its configuration as a TOML file written from a [`Config`], fixed ports (so a
//! restart comes back on the same addresses) and a log file the test can read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mdm_gateway::config::Config;
use serde_json::Value;

/// `<target>/<profile>/mdm-gateway`, brought up to date once per test process.
pub fn gateway_binary() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.get_or_insert_with(|| crate::workspace_binary("mdm-gateway", "mdm-gateway")).clone()
}

/// A free loopback address (bound then released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

/// A configuration for a process: data directory, the three listeners on fixed free ports, no
/// drain delay, the given public URL.
pub fn process_config(data_dir: &Path, public_url: &str) -> Config {
    let mut c = crate::config_on(data_dir.to_path_buf());
    c.device.listen = free_addr();
    c.api.listen = free_addr();
    c.public_url = public_url.to_owned();
    c.apple.checked_in_event_interval_s = 0;
    c.shutdown.grace_period_s = 10;
    c
}

#[derive(Debug)]
pub struct GatewayProcess {
    pub name: String,
    pub config: Config,
    pub config_path: PathBuf,
    pub log: PathBuf,
    log_level: String,
    child: Option<Child>,
    http: reqwest::Client,
}

impl GatewayProcess {
    /// Writes `config` to `<dir>/<name>.toml` and starts `mdm-gateway serve` on it, logging to
    /// `<dir>/<name>.log` at `log_level` (`MDM_LOG`). The listen addresses must be fixed ports.
    pub fn spawn(name: &str, dir: &Path, config: Config, log_level: &str) -> GatewayProcess {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, toml::to_string_pretty(&config).expect("config as TOML")).expect("write config");
        let mut p = GatewayProcess {
            name: name.to_owned(),
            config,
            config_path,
            log: dir.join(format!("{name}.log")),
            log_level: log_level.to_owned(),
            child: None,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
        };
        p.start();
        p
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(gateway_binary());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MDM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("MDM_LOG", &self.log_level)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn mdm-gateway"));
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.config.api.listen)
    }

    pub fn device_addr(&self) -> SocketAddr {
        self.config.device.listen
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/healthz` answers (the listeners are bound); panics with the log if the
    /// process exits or takes longer than 60 s.
    pub async fn wait_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("{} exited during start ({status:?}):\n{}", self.name, self.log_text());
            }
            if let Ok(r) = self.http.get(format!("{}/healthz", self.api_url())).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "{} not up within 60 s:\n{}", self.name, self.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /readyz`: status and body; `None` when nothing answers.
    pub async fn readyz(&self) -> Option<(u16, Value)> {
        let r = self.http.get(format!("{}/readyz", self.api_url())).send().await.ok()?;
        let code = r.status().as_u16();
        Some((code, r.json().await.unwrap_or(Value::Null)))
    }

    /// SIGTERM (std has no SIGTERM and the workspace forbids unsafe code: kill(1)).
    pub fn terminate(&self) {
        let pid = self.pid().expect("running");
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill(1)");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// SIGKILL, as abrupt as a crash; waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit, at most `limit`; panics (after killing it) if it does not.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("{} still running {limit:?} later:\n{}", self.name, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the same configuration again (after [`GatewayProcess::kill`] or an exit).
    pub async fn restart(&mut self) {
        self.kill();
        self.start();
        self.wait_up().await;
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A backend API client for one instance.
#[derive(Debug, Clone)]
pub struct Api {
    pub url: String,
    pub key: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str, key: &str) -> Api {
        Api {
            url: url.to_owned(),
            key: key.to_owned(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("client"),
        }
    }

    /// `GET`; `None` when the instance does not answer.
    pub async fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        let r = self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.key).send().await.ok()?;
        Some(crate::decode(r).await)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path).await.unwrap_or_else(|| panic!("{} does not answer GET {path}", self.url))
    }

    /// `POST` with a JSON body; `None` when the instance does not answer.
    pub async fn try_post(&self, path: &str, body: &Value) -> Option<(u16, Value)> {
        let r = self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.key).json(body).send().await.ok()?;
        Some(crate::decode(r).await)
    }

    /// Every event of the log, oldest first.
    pub async fn events(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = "0".to_owned();
        loop {
            let (code, page) = self.get(&format!("/v1/events?after={after}&limit=1000")).await;
            assert_eq!(code, 200, "events: {page}");
            let events = page["events"].as_array().expect("events").clone();
            if events.is_empty() {
                return all;
            }
            after = page["next"].as_str().expect("next").to_owned();
            all.extend(events);
        }
    }
}

/// The CA of a data directory (written by the first instance that started on it), for issuing
/// device certificates as the gateway's own enrollment would.
#[derive(Debug)]
pub struct DataDirCa {
    pub cert: mdm_certs::X509,
    pub key: mdm_certs::PKey<mdm_certs::Private>,
    pub pem: Vec<u8>,
}

impl DataDirCa {
    pub fn read(data_dir: &Path) -> DataDirCa {
        let pem = std::fs::read(data_dir.join("ca.pem")).expect("ca.pem");
        let cert = mdm_certs::X509::from_pem(&pem).expect("ca parses");
        let key = mdm_certs::PKey::private_key_from_pem(&std::fs::read(data_dir.join("ca-key.pem")).expect("ca key"))
            .expect("ca key parses");
        DataDirCa { cert, key, pem }
    }

    /// A key and a client-auth certificate for `common_name`, valid for a year.
    pub fn issue(&self, common_name: &str) -> (mdm_certs::PKey<mdm_certs::Private>, mdm_certs::X509) {
        let now = crate::unix_now();
        let key = mdm_certs::devpki::generate_key().expect("key");
        let cert = mdm_certs::devpki::issue_device_certificate(
            &self.cert,
            &self.key,
            &key,
            common_name,
            now - 3600,
            now + 365 * 86_400,
            &crate::random_serial(),
        )
        .expect("device certificate");
        (key, cert)
    }
}

/// A secret file of a data directory (`api-key`, `enroll-secret`, `pubsub-token`).
pub fn secret(data_dir: &Path, name: &str) -> String {
    std::fs::read_to_string(data_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).trim().to_owned()
}
