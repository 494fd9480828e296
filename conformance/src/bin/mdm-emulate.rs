//! `mdm-emulate apple`: a fleet of emulated Apple devices against a running gateway.
//!
//! ```sh
//! mdm-emulate apple --devices 5000 --gateway https://localhost:8443 --ca-dir ./mdm-data \
//!     --api http://127.0.0.1:8080 --commands 2 --ack 0.9 --error 0.05 --notnow 0.05 --checkout
//! ```
//!
//! With `--apns-listen 127.0.0.1:2197` an APNs emulator runs in this process: its server CA is
//! kept in `--apns-dir` (so the gateway's `apple.apns_ca` stays valid across runs; also written
//! to `--apns-ca-out`), a push certificate for the fleet's topic is uploaded to the gateway
//! (`PUT /v1/pushcert`), and devices wake on the pushes the gateway sends instead of polling.
//!
//! With `--enroll profile` every device enrolls the real way (ticket, signed profile checked
//! against `<ca-dir>/ca.pem`, SCEP, then the profile's URLs) instead of getting a certificate
//! issued directly from the CA.
//!
//! `mdm-emulate windows`: emulated Windows devices, each enrolling the real way (MS-MDE2
//! discovery, MS-XCEP policy, MS-WSTEP with its own RSA key and CSR, OnPremise secret, a UPN per
//! device), then OMA-DM sessions over mutual TLS on a poll schedule, answering what the gateway
//! queued, and unenrolling (Alert 1226) at the end:
//!
//! ```sh
//! mdm-emulate windows --devices 50 --gateway https://localhost:8443 --ca-dir ./mdm-data \
//!     --api http://127.0.0.1:8080 --commands 2 --poll 5s --duration 30s
//! ```
//!
//! `mdm-emulate android`: an Android Management API emulator (REST + token endpoint) with
//! simulated devices that enroll, send status reports and carry out the commands the gateway
//! issues; notifications go through Google's Pub/Sub emulator or straight to the gateway:
//!
//! ```sh
//! mdm-emulate android --listen 127.0.0.1:8444 --key-out ./amapi/key.json --devices 100 \
//!     --push-endpoint "https://localhost:8443/android/pubsub?token=$(cat mdm-data/pubsub-token)" \
//!     --push-ca mdm-data/ca.pem --status-interval 30s
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mdm_conformance::apns::{ApnsEmulator, PushCa};
use mdm_conformance::apple::fleet::{
    ApiClient, FLEET_TOPIC, Fleet, FleetConfig, FleetEnroll, Issuer, Ratios, sample_command,
};
use mdm_conformance::cli::parse_duration;
use mdm_conformance::windows::fleet::{self as wfleet, WindowsFleet, WindowsFleetConfig};

#[derive(Debug, Parser)]
#[command(name = "mdm-emulate", version, about = "Emulated device fleets for an MDM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Apple devices: enroll, answer commands, optionally check out.
    Apple(AppleArgs),
    /// Windows devices: enroll (discovery, policy, WSTEP), OMA-DM sessions on a poll schedule,
    /// answer commands, unenroll.
    Windows(WindowsArgs),
    /// Android: an AMAPI emulator (REST, token endpoint) with simulated devices that enroll,
    /// report status and carry out commands until Ctrl-C; notifications through Google's
    /// Pub/Sub emulator or pushed straight to the gateway.
    Android(AndroidArgs),
}

#[derive(Debug, Args)]
struct AndroidArgs {
    /// The emulator's HTTPS listener (the gateway's `android.api_base_url`).
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: SocketAddr,
    /// Also serve plain HTTP here.
    #[arg(long)]
    plain_listen: Option<SocketAddr>,
    /// Google Cloud project of the service account and of the Pub/Sub topic.
    #[arg(long, default_value = "emulated-project")]
    project: String,
    /// Where to write the service-account key file (the gateway's
    /// `android.service_account_key`); its token_uri is this emulator's /token.
    #[arg(long, default_value = "./amapi-emulator/service-account.json")]
    key_out: PathBuf,
    /// Where to write the CA of the emulator's TLS certificate (for the gateway to trust).
    #[arg(long, default_value = "./amapi-emulator/ca.pem")]
    ca_out: PathBuf,
    /// Publish notifications to this Pub/Sub emulator (`host:port`); the topic is created.
    /// With --push-endpoint, a push subscription to it is created too (the emulator must
    /// trust the endpoint's CA: started with JAVA_TOOL_OPTIONS=-Djavax.net.ssl.trustStore=…).
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pubsub_emulator: Option<String>,
    /// The gateway's push endpoint (`https://localhost:8443/android/pubsub?token=…`). Without
    /// --pubsub-emulator, notifications are pushed to it directly.
    #[arg(long)]
    push_endpoint: Option<String>,
    /// CA to trust for direct pushes (the gateway's `ca.pem`).
    #[arg(long, default_value = "./mdm-data/ca.pem")]
    push_ca: PathBuf,
    /// Pub/Sub topic name (`projects/<project>/topics/<this>`).
    #[arg(long, default_value = "amapi")]
    topic: String,
    /// Pub/Sub push subscription name (with --pubsub-emulator and --push-endpoint).
    #[arg(long, default_value = "gateway-push")]
    subscription: String,
    /// Simulated devices to enroll at start (in an enterprise the emulator makes; its name is
    /// printed for `android.enterprise`).
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Share of devices enrolled as personally owned work profiles.
    #[arg(long, default_value_t = 0.0)]
    work_profile: f64,
    /// Every device sends a status report this often (0: never).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    status_interval: Duration,
    /// Time a device takes to carry out a command.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    command_delay: Duration,
    /// Stop after this long instead of at Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Write the summary as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// How the devices get their identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EnrollHow {
    /// Certificates issued before the run from the CA in --ca-dir (or --issuer-cert): fast, for load.
    Direct,
    /// Each device: ticket (POST /enroll/session), signed profile (GET /mdm/enroll) checked against
    /// <ca-dir>/ca.pem, an RSA key and certificate through SCEP, then the profile's URLs and topic.
    Profile,
}

#[derive(Debug, Args)]
struct AppleArgs {
    /// How many devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// The gateway's device listener.
    #[arg(long, default_value = "https://localhost:8443")]
    gateway: String,
    /// The gateway's data directory: `ca.pem` (trusted for the server and used as issuer) and
    /// `ca-key.pem` (not needed with --enroll profile).
    #[arg(long, default_value = "./mdm-data")]
    ca_dir: PathBuf,
    /// How devices get their identities: `direct` or `profile` (the real way: enrollment profile
    /// and SCEP; the gateway needs an uploaded push certificate, and for large fleets a higher
    /// apple.enrollment.requests_per_minute).
    #[arg(long, value_enum, default_value_t = EnrollHow::Direct)]
    enroll: EnrollHow,
    /// With --enroll profile: download /mdm/enroll without a ticket (no POST /enroll/session).
    #[arg(long)]
    no_ticket: bool,
    /// Issue device identities from this CA instead (give it to the gateway with --device-ca).
    #[arg(long, requires = "issuer_key")]
    issuer_cert: Option<PathBuf>,
    #[arg(long, requires = "issuer_cert")]
    issuer_key: Option<PathBuf>,
    /// The backend API, for queueing commands (`--commands`).
    #[arg(long)]
    api: Option<String>,
    /// File with the API key; default `<ca-dir>/api-key`.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Commands to queue per device after enrollment (DeviceInformation and SecurityInfo
    /// alternately); needs --api.
    #[arg(long, default_value_t = 0)]
    commands: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Share of commands answered Acknowledged.
    #[arg(long, default_value_t = 1.0)]
    ack: f64,
    /// Share answered Error.
    #[arg(long, default_value_t = 0.0)]
    error: f64,
    /// Share answered NotNow.
    #[arg(long = "notnow", default_value_t = 0.0)]
    not_now: f64,
    /// Seed of the answer RNG and of the UDIDs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// UDID prefix.
    #[arg(long, default_value = "EMU")]
    prefix: String,
    /// Also enroll a user channel per device.
    #[arg(long)]
    user_channel: bool,
    /// Each device runs an Idle session this often (e.g. `30s`); off by default.
    #[arg(long, value_parser = parse_duration)]
    poll_interval: Option<Duration>,
    /// How long to keep polling (with --poll-interval), or at most to wait for the commands'
    /// answers (with --apns-listen).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Check every device out at the end.
    #[arg(long)]
    checkout: bool,
    /// Run an APNs emulator on this address (e.g. `127.0.0.1:2197`): the gateway pushes to it
    /// and devices wake on its deliveries. Needs --api; the gateway must be configured with the
    /// `apple.apns_url` / `apple.apns_ca` lines this prints.
    #[arg(long)]
    apns_listen: Option<SocketAddr>,
    /// Where the APNs emulator keeps its CAs (created on first use, reused after).
    #[arg(long, default_value = "./apns-emulator")]
    apns_dir: PathBuf,
    /// Also write the APNs emulator's server CA (the gateway's `apple.apns_ca`) to this file.
    #[arg(long, requires = "apns_listen")]
    apns_ca_out: Option<PathBuf>,
    /// Only make the APNs emulator's CA (in --apns-dir, and --apns-ca-out), print the gateway
    /// configuration lines and exit: for configuring the gateway before the first run.
    #[arg(long, requires = "apns_listen")]
    apns_print_config: bool,
    /// Upload the push certificate with `?add=1` (the gateway already has another topic).
    #[arg(long, requires = "apns_listen")]
    apns_add_topic: bool,
    /// Write the summary as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct WindowsArgs {
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Where discovery goes (stands in for https://EnterpriseEnrollment.<domain>); policy,
    /// enrollment and management follow the URLs the gateway answers with (its public URL).
    #[arg(long, default_value = "https://localhost:8443")]
    gateway: String,
    /// The gateway's data directory: `ca.pem` (trusted for the server), and by default
    /// `enroll-secret` and `api-key`.
    #[arg(long, default_value = "./mdm-data")]
    ca_dir: PathBuf,
    /// The OnPremise enrollment secret (the password sent with every UPN).
    #[arg(long, conflicts_with = "enroll_secret_file")]
    enroll_secret: Option<String>,
    /// File with the enrollment secret; default `<ca-dir>/enroll-secret`.
    #[arg(long)]
    enroll_secret_file: Option<PathBuf>,
    /// UPN of each device; `{n}` is replaced by the device's zero-padded index (without `{n}`,
    /// every device enrolls as the same user).
    #[arg(long, default_value = "emu{n}@example.com")]
    upn: String,
    /// DeviceIDs are `<prefix>-<seed>-<index>` (letters, digits, `-`, `_`, `.`).
    #[arg(long, default_value = "WINEMU")]
    prefix: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The backend API, for queueing commands (`--commands`) and reading their outcome.
    #[arg(long)]
    api: Option<String>,
    /// File with the API key; default `<ca-dir>/api-key`.
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Commands to queue per device after enrollment (device_info and lock alternately); needs
    /// --api. They are delivered at the devices' next polls.
    #[arg(long, default_value_t = 0)]
    commands: usize,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Each device opens a session this often (the DMClient poll), besides its first session
    /// right after enrollment.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    poll: Duration,
    /// How long to keep polling.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Leave the devices enrolled at the end (no Alert 1226).
    #[arg(long)]
    no_unenroll: bool,
    /// Write the summary as JSON to this file (`-` for stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn progress(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Updates `bar` from `value()` every 100 ms until dropped.
fn follow(bar: &ProgressBar, value: impl Fn() -> u64 + Send + 'static) -> tokio::task::JoinHandle<()> {
    let bar = bar.clone();
    tokio::spawn(async move {
        loop {
            bar.set_position(value());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The emulator's push CA and server CA from `dir`, made and saved there on first use.
fn apns_cas(dir: &Path) -> Result<(PushCa, PushCa), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let load = |name: &str, cn: &str| -> Result<PushCa, String> {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        if cert.is_file() && key.is_file() {
            let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            return PushCa::from_pem(&read(&cert)?, &read(&key)?).map_err(|e| format!("{}: {e}", cert.display()));
        }
        let ca = PushCa::generate(cn).map_err(|e| e.to_string())?;
        std::fs::write(&cert, ca.cert_pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
        std::fs::write(&key, ca.key_pem()).map_err(|e| format!("{}: {e}", key.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", key.display()))?;
        }
        Ok(ca)
    };
    Ok((load("push-ca", "Emulated Apple Push CA")?, load("server-ca", "Emulated APNs Server CA")?))
}

/// Sends one push to `udid` through the gateway (`GET /v1/push`) to check it reaches the
/// emulator, with an explanation when it does not.
async fn probe_push(api: &ApiClient, udid: &str, url: &str, ca_file: &Path) -> Result<(), String> {
    let (code, body) = api.push(&[udid]).await.map_err(|e| format!("GET /v1/push: {e}"))?;
    if code == 200 {
        return Ok(());
    }
    let why = body["status"][udid]["push_error"].as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
    Err(format!(
        "the gateway could not push through the APNs emulator ({why}); start the gateway with\n  [apple]\n  apns_url = \"{url}\"\n  apns_ca = \"{}\"\n(or MDM_GATEWAY_APPLE__APNS_URL / MDM_GATEWAY_APPLE__APNS_CA) and run again",
        ca_file.display()
    ))
}

async fn run(a: AppleArgs) -> Result<bool, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let key_file = a.api_key_file.clone().unwrap_or_else(|| a.ca_dir.join("api-key"));
    let api = match &a.api {
        Some(url) => {
            let key = std::fs::read_to_string(&key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
            Some(ApiClient::new(url, key.trim()))
        }
        None => None,
    };
    let mut apns = None;
    if let Some(listen) = a.apns_listen {
        let (push_ca, server_ca) = apns_cas(&a.apns_dir)?;
        if a.apns_print_config {
            let mut ca_file = std::path::absolute(a.apns_dir.join("server-ca.pem")).map_err(|e| e.to_string())?;
            if let Some(out) = &a.apns_ca_out {
                std::fs::write(out, server_ca.cert_pem()).map_err(|e| format!("{}: {e}", out.display()))?;
                ca_file = std::path::absolute(out).map_err(|e| e.to_string())?;
            }
            println!("[apple]\napns_url = \"https://{listen}\"\napns_ca = \"{}\"", ca_file.display());
            return Ok(true);
        }
        let Some(api) = &api else {
            return Err("--apns-listen needs --api (the push certificate is uploaded through it)".into());
        };
        let (emulator, rx) = ApnsEmulator::start_with_cas(listen, push_ca, server_ca)
            .await
            .map_err(|e| format!("APNs emulator on {listen}: {e}"))?;
        let mut ca_file = std::path::absolute(a.apns_dir.join("server-ca.pem")).map_err(|e| e.to_string())?;
        if let Some(out) = &a.apns_ca_out {
            std::fs::write(out, emulator.server_ca_pem()).map_err(|e| format!("{}: {e}", out.display()))?;
            ca_file = std::path::absolute(out).map_err(|e| e.to_string())?;
        }
        println!("APNs emulator listening on {}; the gateway needs:", emulator.url());
        println!("  [apple]");
        println!("  apns_url = \"{}\"", emulator.url());
        println!("  apns_ca = \"{}\"", ca_file.display());
        let not_after =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
                + 365 * 86_400;
        let (cert, key) =
            emulator.issue_push_certificate(FLEET_TOPIC, not_after).map_err(|e| format!("push certificate: {e}"))?;
        let query = if a.apns_add_topic { "?add=1" } else { "" };
        api.put_pushcert(format!("{cert}{key}"), query).await?;
        println!("push certificate for {FLEET_TOPIC} uploaded");
        apns = Some((emulator, rx, ca_file));
    }
    let server_ca = read(&a.ca_dir.join("ca.pem"))?;
    if a.no_ticket && a.enroll != EnrollHow::Profile {
        return Err("--no-ticket goes with --enroll profile".into());
    }
    let enroll = match (a.enroll, &a.issuer_cert, &a.issuer_key) {
        (EnrollHow::Profile, Some(_), _) => return Err("--issuer-cert goes with --enroll direct".into()),
        (EnrollHow::Profile, ..) => FleetEnroll::Profile {
            ticket: !a.no_ticket,
            // With our own APNs emulator, the profile must name the topic we uploaded.
            topic: a.apns_listen.map(|_| FLEET_TOPIC.to_owned()),
        },
        (EnrollHow::Direct, Some(c), Some(k)) => FleetEnroll::Issued(Issuer {
            cert: mdm_certs::X509::from_pem(&read(c)?).map_err(|e| format!("{}: {e}", c.display()))?,
            key: mdm_certs::PKey::private_key_from_pem(&read(k)?).map_err(|e| format!("{}: {e}", k.display()))?,
        }),
        (EnrollHow::Direct, ..) => FleetEnroll::Issued(Issuer::from_data_dir(&a.ca_dir).map_err(|e| e.to_string())?),
    };
    let mut config = FleetConfig::with_enroll(a.devices, &a.gateway, server_ca, enroll);
    config.concurrency = a.concurrency;
    config.ratios = Ratios { ack: a.ack, error: a.error, not_now: a.not_now };
    config.seed = a.seed;
    config.udid_prefix = a.prefix.clone();
    config.user_channel = a.user_channel;

    if !a.quiet {
        match a.enroll {
            EnrollHow::Direct => eprintln!("issuing {} device identities (P-256)…", a.devices),
            EnrollHow::Profile => eprintln!(
                "{} devices enroll through the enrollment profile and SCEP (keys as the profile asks)…",
                a.devices
            ),
        }
    }
    let fleet = Arc::new(Fleet::build(&config).map_err(|e| e.to_string())?);

    let bar = progress(a.quiet, a.devices as u64, "enrolling");
    let f = fleet.clone();
    let ticker = follow(&bar, move || f.counters().enrolled.load(Ordering::Relaxed) + f.counters().errors.count());
    fleet.enroll_all().await;
    ticker.abort();
    bar.set_position(fleet.counters().enrolled.load(Ordering::Relaxed));
    bar.finish();

    // Push mode: devices wake on the emulator's deliveries from now on.
    let mut pusher = None;
    let mut emulator = None;
    if let Some((emu, rx, ca_file)) = apns.take() {
        let f = fleet.clone();
        pusher = Some(tokio::spawn(async move { f.run_push(rx, None).await }));
        if let (Some(api), Some(i)) = (&api, fleet.first_enrolled()) {
            probe_push(api, fleet.udid(i), &emu.url(), &ca_file).await?;
        }
        emulator = Some(emu);
    }

    let mut queued = 0u64;
    if a.commands > 0 {
        let Some(api) = api.clone() else { return Err("--commands needs --api".into()) };
        let total = (a.devices * a.commands) as u64;
        let bar = progress(a.quiet, total, "queueing");
        let ids = fleet.device_ids();
        let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..a.commands {
            for id in &ids {
                let (api, id, sem, bar) = (api.clone(), id.clone(), sem.clone(), bar.clone());
                let permit = sem.acquire_owned().await.expect("open");
                tasks.spawn(async move {
                    let _p = permit;
                    let r = api.enqueue(&id, sample_command(n)).await;
                    bar.inc(1);
                    r
                });
                while let Some(r) = tasks.try_join_next() {
                    match r {
                        Ok(Ok(_)) => queued += 1,
                        Ok(Err(e)) => eprintln!("queue: {e}"),
                        Err(e) => eprintln!("queue task: {e}"),
                    }
                }
            }
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(_)) => queued += 1,
                Ok(Err(e)) => eprintln!("queue: {e}"),
                Err(e) => eprintln!("queue task: {e}"),
            }
        }
        bar.finish();
    }

    let answered = |f: &Fleet| f.counters().answered();
    let mut all_answered = true;
    if emulator.is_some() {
        // The gateway pushed each device when its commands were queued; wait for the answers
        // (NotNow ones stay queued and are not pushed again: answered once is enough here).
        let bar = progress(a.quiet, queued, "answering");
        let f = fleet.clone();
        let ticker = follow(&bar, move || answered(&f));
        let poll = a.poll_interval.map(|interval| {
            let f = fleet.clone();
            let until = tokio::time::Instant::now() + a.duration;
            tokio::spawn(async move { f.run_poll(interval, until).await })
        });
        let deadline = tokio::time::Instant::now() + a.duration;
        while answered(&fleet) < queued && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(p) = poll {
            let _ = p.await;
        }
        ticker.abort();
        bar.set_position(answered(&fleet));
        bar.finish();
        all_answered = answered(&fleet) >= queued;
        if !all_answered {
            eprintln!(
                "mdm-emulate: {} of {queued} commands answered within {:?} (--duration)",
                answered(&fleet),
                a.duration
            );
        }
    } else if let Some(interval) = a.poll_interval {
        let bar = progress(a.quiet, queued, "answering");
        let f = fleet.clone();
        let ticker = follow(&bar, move || answered(&f));
        fleet.run_poll(interval, tokio::time::Instant::now() + a.duration).await;
        ticker.abort();
        bar.finish();
    } else if queued > 0 {
        // No push without an APNs emulator: each device runs one session to fetch its queue.
        let bar = progress(a.quiet, queued, "answering");
        let f = fleet.clone();
        let ticker = follow(&bar, move || answered(&f));
        fleet.session_all().await;
        ticker.abort();
        bar.set_position(answered(&fleet));
        bar.finish();
    }

    if a.checkout {
        fleet.checkout_all().await;
    }
    if let Some(p) = pusher {
        p.abort();
    }
    let apns_stats = emulator.as_ref().map(|e| e.control().stats());
    let summary = fleet.summary();
    println!("mdm-emulate apple: summary");
    print!("{}", summary.table());
    if queued > 0 {
        println!("  commands queued      {queued}");
    }
    if let Some(s) = &apns_stats {
        println!(
            "  APNs emulator        {} pushes accepted, {} refused {:?}, {} connections",
            s.accepted,
            s.refused.values().sum::<u64>(),
            s.refused,
            s.connections
        );
    }
    if let Some(path) = &a.json {
        let mut value = serde_json::to_value(&summary).map_err(|e| e.to_string())?;
        value["commands_queued"] = queued.into();
        if let Some(s) = &apns_stats {
            value["apns"] = serde_json::json!({
                "accepted": s.accepted, "requests": s.requests, "connections": s.connections, "refused": s.refused,
            });
        }
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if let Some(e) = emulator {
        e.stop().await;
    }
    Ok(summary.errors == 0 && summary.enrolled == a.devices as u64 && all_answered)
}

/// Final statuses of queued commands, as the gateway has them.
#[derive(Debug, Default, serde::Serialize)]
struct CommandOutcomes {
    queued: u64,
    acknowledged: u64,
    error: u64,
    /// Still `queued` or `sent` (or `not_now`) at the end.
    pending: u64,
    /// Could not be read back.
    unknown: u64,
}

async fn run_windows(a: WindowsArgs) -> Result<bool, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let server_ca = read(&a.ca_dir.join("ca.pem"))?;
    let secret = match (&a.enroll_secret, &a.enroll_secret_file) {
        (Some(s), _) => s.clone(),
        (None, file) => {
            let file = file.clone().unwrap_or_else(|| a.ca_dir.join("enroll-secret"));
            String::from_utf8_lossy(&read(&file)?).trim().to_owned()
        }
    };
    if secret.is_empty() {
        return Err("the enrollment secret is empty".into());
    }
    let api = match &a.api {
        Some(url) => {
            let file = a.api_key_file.clone().unwrap_or_else(|| a.ca_dir.join("api-key"));
            let key = String::from_utf8_lossy(&read(&file)?).trim().to_owned();
            Some(ApiClient::new(url, &key))
        }
        None if a.commands > 0 => return Err("--commands needs --api".into()),
        None => None,
    };
    if a.poll.is_zero() {
        return Err("--poll must be more than 0".into());
    }
    let mut config = WindowsFleetConfig::new(a.devices, &a.gateway, server_ca, &secret);
    config.upn_template = a.upn.clone();
    config.device_prefix = a.prefix.clone();
    config.seed = a.seed;
    config.concurrency = a.concurrency;
    let fleet = Arc::new(WindowsFleet::new(config));

    if !a.quiet {
        eprintln!(
            "{} Windows devices enroll (discovery, policy, WSTEP with an RSA 2048 key each) at {}…",
            a.devices, a.gateway
        );
    }
    let bar = progress(a.quiet, a.devices as u64, "enrolling");
    let f = fleet.clone();
    let ticker = follow(&bar, move || f.counters().enrolled.load(Ordering::Relaxed) + f.counters().errors.count());
    fleet.enroll_all().await;
    ticker.abort();
    bar.set_position(fleet.counters().enrolled.load(Ordering::Relaxed));
    bar.finish();

    let mut command_ids = Vec::new();
    if let (Some(api), true) = (&api, a.commands > 0) {
        let ids = fleet.device_ids();
        let bar = progress(a.quiet, (ids.len() * a.commands) as u64, "queueing");
        let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..a.commands {
            for id in &ids {
                let (api, id, sem, bar) = (api.clone(), id.clone(), sem.clone(), bar.clone());
                let permit = sem.acquire_owned().await.expect("open");
                tasks.spawn(async move {
                    let _p = permit;
                    let r = api.enqueue(&id, wfleet::sample_command(n)).await;
                    bar.inc(1);
                    r
                });
            }
        }
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(id)) => command_ids.push(id),
                Ok(Err(e)) => eprintln!("queue: {e}"),
                Err(e) => eprintln!("queue task: {e}"),
            }
        }
        bar.finish();
    }

    // Polling: a bar over the duration, with the sessions so far.
    let secs = a.duration.as_secs().max(1);
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(secs);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} s").expect("template").progress_chars("=> "),
        );
        bar
    };
    let started = tokio::time::Instant::now();
    let ticker = {
        let (bar, f) = (bar.clone(), fleet.clone());
        tokio::spawn(async move {
            loop {
                bar.set_position(started.elapsed().as_secs().min(secs));
                let c = f.counters();
                bar.set_message(format!(
                    "polling: {} sessions, {} answered",
                    c.sessions.load(Ordering::Relaxed),
                    c.answered()
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    fleet.run_poll(a.poll, started + a.duration).await;
    ticker.abort();
    bar.set_position(secs);
    bar.finish();

    if !a.no_unenroll {
        let bar = progress(a.quiet, fleet.device_ids().len() as u64, "unenrolling");
        let f = fleet.clone();
        let ticker = follow(&bar, move || f.counters().unenrolled.load(Ordering::Relaxed));
        fleet.unenroll_all().await;
        ticker.abort();
        bar.set_position(fleet.counters().unenrolled.load(Ordering::Relaxed));
        bar.finish();
    }

    let mut outcomes = CommandOutcomes { queued: command_ids.len() as u64, ..CommandOutcomes::default() };
    if let Some(api) = &api {
        for id in &command_ids {
            match api.command(id).await {
                Ok(c) => match c["status"].as_str() {
                    Some("acknowledged") => outcomes.acknowledged += 1,
                    Some("error") => outcomes.error += 1,
                    _ => outcomes.pending += 1,
                },
                Err(e) => {
                    outcomes.unknown += 1;
                    eprintln!("{e}");
                }
            }
        }
    }

    let summary = fleet.summary();
    println!("mdm-emulate windows: summary");
    print!("{}", summary.table());
    if outcomes.queued > 0 {
        println!(
            "  commands queued      {} (gateway: {} acknowledged, {} error, {} pending)",
            outcomes.queued, outcomes.acknowledged, outcomes.error, outcomes.pending
        );
    }
    if let Some(path) = &a.json {
        let mut value = serde_json::to_value(&summary).map_err(|e| e.to_string())?;
        value["commands"] = serde_json::to_value(&outcomes).map_err(|e| e.to_string())?;
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let enrolled = summary.enrolled == a.devices as u64;
    let unenrolled = a.no_unenroll || summary.unenrolled == summary.enrolled;
    let answered = outcomes.pending == 0 && outcomes.unknown == 0;
    if !answered {
        eprintln!(
            "mdm-emulate: {} of {} commands still pending after {:?} (--duration; polls every {:?})",
            outcomes.pending, outcomes.queued, a.duration, a.poll
        );
    }
    Ok(summary.errors == 0 && enrolled && unenrolled && answered)
}

async fn run_android(a: AndroidArgs) -> Result<bool, String> {
    use mdm_conformance::android::{
        AmapiEmulator, CommandSettings, DeviceSpec, DirectPublisher, EmulatorConfig, PubSubClient, Publisher,
    };
    let write = |p: &Path, text: &str| -> Result<(), String> {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let config = EmulatorConfig {
        listen: a.listen,
        plain_listen: a.plain_listen,
        project_id: a.project.clone(),
        commands: CommandSettings { delay: a.command_delay, ..CommandSettings::default() },
        ..EmulatorConfig::default()
    };
    let emu = AmapiEmulator::start(config).await.map_err(|e| format!("AMAPI emulator on {}: {e}", a.listen))?;
    write(&a.ca_out, emu.ca_pem())?;
    if let Some(dir) = a.key_out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    emu.write_key(&a.key_out).map_err(|e| format!("{}: {e}", a.key_out.display()))?;

    let topic = format!("projects/{}/topics/{}", a.project, a.topic);
    let publisher = match (&a.pubsub_emulator, &a.push_endpoint) {
        (Some(host), endpoint) => {
            let client = PubSubClient::new(host);
            if !client.ready().await {
                return Err(format!("no Pub/Sub emulator answers at {host}"));
            }
            client.create_topic(&topic).await.map_err(|e| e.to_string())?;
            if let Some(url) = endpoint {
                let sub = format!("projects/{}/subscriptions/{}", a.project, a.subscription);
                client.create_push_subscription(&sub, &topic, url, None).await.map_err(|e| e.to_string())?;
                eprintln!("Pub/Sub: {topic} pushes to {url} ({sub})");
            }
            Some(Publisher::PubSub(client))
        }
        (None, Some(url)) => {
            let ca = if a.push_ca.is_file() {
                Some(std::fs::read_to_string(&a.push_ca).map_err(|e| format!("{}: {e}", a.push_ca.display()))?)
            } else if url.starts_with("https://") {
                return Err(format!("{} not found: the CA to trust for {url} (--push-ca)", a.push_ca.display()));
            } else {
                None
            };
            let direct = DirectPublisher::new(url, ca.as_deref()).map_err(|e| e.to_string())?;
            Some(Publisher::Direct(
                direct.with_subscription(&format!("projects/{}/subscriptions/{}", a.project, a.subscription)),
            ))
        }
        (None, None) => None,
    };
    if publisher.is_none() && !a.quiet {
        eprintln!("no --pubsub-emulator or --push-endpoint: notifications are only counted");
    }
    emu.set_publisher(publisher);

    let all = ["ENROLLMENT", "STATUS_REPORT", "COMMAND", "USAGE_LOGS", "ENTERPRISE_UPGRADE"];
    let enterprise = emu.create_enterprise(Some(&topic), &all).map_err(|e| e.to_string())?;
    println!("AMAPI emulator listening on {}; the gateway needs:", emu.url());
    println!("  [android]");
    println!("  api_base_url = \"{}\"", emu.url());
    println!("  service_account_key = \"{}\"", std::path::absolute(&a.key_out).map_err(|e| e.to_string())?.display());
    println!("  enterprise = \"{enterprise}\"");
    println!(
        "  (and trust {} for the API's TLS certificate)",
        std::path::absolute(&a.ca_out).map_err(|e| e.to_string())?.display()
    );

    let token = |personal: bool| {
        let usage = if personal { "PERSONAL_USAGE_ALLOWED" } else { "PERSONAL_USAGE_DISALLOWED" };
        emu.create_enrollment_token(
            &enterprise,
            &serde_json::json!({"allowPersonalUsage": usage, "duration": "86400s", "policyName": "default"}),
        )
        .map(|t| t["value"].as_str().unwrap_or_default().to_owned())
        .map_err(|e| e.to_string())
    };
    let (managed, personal) = (token(false)?, token(true)?);
    let bar = progress(a.quiet, a.devices as u64, "enrolling");
    let mut enroll_errors = 0u64;
    let profiles = (a.devices as f64 * a.work_profile.clamp(0.0, 1.0)).round() as usize;
    for n in 0..a.devices {
        let value = if n < profiles { &personal } else { &managed };
        if let Err(e) = emu.enroll_device(value, &DeviceSpec::numbered(n as u64)) {
            enroll_errors += 1;
            bar.println(format!("device {n}: {e}"));
        }
        bar.inc(1);
        // Let the publisher keep up, so the bar shows delivered enrollments, not just queued ones.
        if n % 64 == 63 {
            emu.flush(Duration::from_secs(30)).await;
        }
    }
    emu.flush(Duration::from_secs(60)).await;
    bar.finish();
    if !a.status_interval.is_zero() {
        emu.start_status_reports(a.status_interval);
    }
    if !a.quiet {
        eprintln!("serving; devices report status every {:?}; Ctrl-C to stop", a.status_interval);
    }
    match a.duration {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    emu.flush(Duration::from_secs(10)).await;

    let published = emu.published();
    let failed = published.iter().filter(|p| p.result.is_err()).count();
    let mut by_type = std::collections::BTreeMap::<String, u64>::new();
    for p in &published {
        *by_type.entry(p.notification_type.clone()).or_default() += 1;
    }
    let requests = emu.requests();
    let operations = emu.operations();
    let done = operations.iter().filter(|o| o["done"] == true).count();
    println!("mdm-emulate android: summary");
    println!("  {:<20} {}", "devices", a.devices);
    println!("  {:<20} {}", "enrolled", a.devices as u64 - enroll_errors);
    println!("  {:<20} {} ({} not delivered) {:?}", "notifications", published.len(), failed, by_type);
    println!("  {:<20} {} ({} token grants)", "API requests", requests.len(), emu.grants());
    println!("  {:<20} {} ({} done)", "commands", operations.len(), done);
    println!("  {:<20} {}", "policy patches", emu.policy_patches());
    if let Some(first) = published.iter().find_map(|p| p.result.as_ref().err()) {
        eprintln!("first delivery error: {first}");
    }
    if let Some(path) = &a.json {
        let value = serde_json::json!({
            "devices": a.devices, "enrolled": a.devices as u64 - enroll_errors,
            "notifications": published.len(), "notifications_failed": failed, "by_type": by_type,
            "requests": requests.len(), "grants": emu.grants(), "commands": operations.len(), "commands_done": done,
            "policy_patches": emu.policy_patches(), "enterprise": enterprise,
        });
        let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    emu.stop().await;
    Ok(enroll_errors == 0 && failed == 0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mdm-emulate: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Apple(a) => run(a).await,
            Cmd::Windows(a) => run_windows(a).await,
            Cmd::Android(a) => run_android(a).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("mdm-emulate: {e}");
            ExitCode::FAILURE
        }
    }
}
