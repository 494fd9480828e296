//! A real `nats-server` with JetStream for one test: its own free port and store directory,
//! killed on drop. Missing binary: the test fails, unless `MDM_SKIP_NATS=1` (then it is skipped
//! with a message).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped, for restart) nats-server.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsServer {
    /// Starts a server; `None` only when it is missing and `MDM_SKIP_NATS=1`.
    pub fn start() -> Option<NatsServer> {
        let Some(binary) = find_binary() else {
            if std::env::var("MDM_SKIP_NATS").as_deref() == Ok("1") {
                eprintln!("nats-server not found; skipped (MDM_SKIP_NATS=1)");
                return None;
            }
            panic!(
                "nats-server not found (PATH, /usr/sbin, or $NATS_SERVER): install it (`apt-get install nats-server`, \
                 .ci/nats-setup.sh) or set MDM_SKIP_NATS=1 to skip the NATS tests"
            );
        };
        let port = TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let store = tempfile::tempdir().expect("store dir");
        let mut server = NatsServer { binary, port, store, child: None };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {} within 15 s", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (SIGKILL: as abrupt as a crash); the store directory is kept.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A client for the test's own publishing and reading.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("test client connects to nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message on `stream` from the first, read with an ephemeral consumer, as
/// `(subject, Nats-Msg-Id, JSON body)`; none when the stream does not exist.
pub async fn read_all(js: &async_nats::jetstream::Context, stream: &str) -> Vec<(String, String, serde_json::Value)> {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
    // Not created yet (the gateway creates it before its first delivery): nothing on it.
    let Ok(stream) = js.get_stream(stream).await else { return Vec::new() };
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut out = Vec::new();
    loop {
        let mut batch =
            consumer.batch().max_messages(500).expires(Duration::from_millis(300)).messages().await.expect("fetch");
        let mut got = 0;
        while let Some(m) = batch.next().await {
            let m = m.expect("message");
            m.ack().await.expect("ack");
            got += 1;
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let body = serde_json::from_slice(&m.payload).expect("JSON body");
            out.push((m.subject.to_string(), id, body));
        }
        if got == 0 {
            return out;
        }
    }
}
