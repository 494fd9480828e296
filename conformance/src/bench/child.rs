//! Servers under test as child processes on loopback ports, so their CPU time and peak RSS can
//! be read from `/proc` without counting the load generator.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proc::{self, ProcSample};

/// A free loopback port (bound then released; fine on a quiet machine).
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The `mdm-gateway` binary next to the running executable (same target directory and
/// profile), when there is one.
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    // target/<profile>/mdm-bench, or target/<profile>/deps/<test>-hash for tests.
    [dir.join(&file), dir.parent()?.join(&file)].into_iter().find(|p| p.is_file())
}

/// A running child server.
#[derive(Debug)]
pub struct ChildServer {
    child: Option<Child>,
    pub pid: u32,
    pub name: &'static str,
    pub log: PathBuf,
}

impl ChildServer {
    pub fn sample(&self) -> Option<ProcSample> {
        proc::sample(self.pid)
    }

    /// SIGTERM, then wait (at most `grace`), then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Result<(), String> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        // std has no SIGTERM and the workspace forbids unsafe code (libc::kill): use kill(1).
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{} did not stop within {grace:?}; killed", self.name));
                }
            }
        }
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `cmd` with stdout and stderr to `log`.
pub fn spawn(mut cmd: Command, name: &'static str, log: &Path) -> Result<ChildServer, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child =
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(ChildServer { pid: child.id(), child: Some(child), name, log: log.to_owned() })
}

/// A gateway child process and where it listens.
#[derive(Debug)]
pub struct GatewayChild {
    pub server: ChildServer,
    pub data_dir: PathBuf,
    pub device_addr: SocketAddr,
    pub api_addr: SocketAddr,
}

impl GatewayChild {
    /// `mdm-gateway serve` on `data_dir` with both listeners on free loopback ports; returns
    /// once `/healthz` answers. `config` is an optional TOML file passed with `--config`.
    pub async fn start(bin: &Path, data_dir: &Path, config: Option<&Path>) -> Result<GatewayChild, String> {
        GatewayChild::start_with_env(bin, data_dir, config, &[]).await
    }

    /// Like [`GatewayChild::start`], with extra environment variables for the child (e.g.
    /// `MDM_GATEWAY_APPLE__APNS_URL`); these override the configuration file.
    pub async fn start_with_env(
        bin: &Path,
        data_dir: &Path,
        config: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<GatewayChild, String> {
        let device_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().map_err(|e| format!("{e}"))?;
        let api_addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse().map_err(|e| format!("{e}"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--device-listen", &device_addr.to_string(), "--api-listen", &api_addr.to_string()])
            .args(["--public-url", &format!("https://localhost:{}", device_addr.port())]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MDM_GATEWAY_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Refusals are logged at warn; a benchmark should not measure log formatting of
        // successes, but keep warnings so a broken run explains itself.
        cmd.env("MDM_LOG", std::env::var("MDM_BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()));
        let log = data_dir.with_extension("log");
        let mut server = spawn(cmd, "mdm-gateway", &log)?;
        let health = format!("http://{api_addr}/healthz");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.exited() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("mdm-gateway exited at start ({status}):\n{text}"));
            }
            if let Ok(r) = client.get(&health).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("mdm-gateway did not become healthy in 60 s; log: {}", log.display()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(GatewayChild { server, data_dir: data_dir.to_owned(), device_addr, api_addr })
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    pub fn device_url(&self) -> String {
        format!("https://localhost:{}", self.device_addr.port())
    }

    pub fn api_key(&self) -> Result<String, String> {
        std::fs::read_to_string(self.data_dir.join("api-key"))
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("api-key: {e}"))
    }

    pub fn stop(&mut self) -> Result<(), String> {
        self.server.stop(Duration::from_secs(40))
    }
}
