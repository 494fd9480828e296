//! `mdm-conformance`: replays the transcripts (organised by spec section) against a running
//! gateway, or checks them in process through the protocol crates, and decodes raw captures.
//! The transcript format is documented in `docs/conformance.md`.
//!
//! ```sh
//! # Over the wire; --data-dir fills in ca.pem, api-key, enroll-secret and pubsub-token.
//! mdm-conformance run --gateway https://localhost:8443 --api http://127.0.0.1:8080 \
//!     --data-dir ./mdm-data conformance/transcripts --junit conformance.xml
//! # Without sockets: every request (and recorded reply) through the protocol crates.
//! mdm-conformance run --in-process conformance/transcripts
//! # Raw captures (decode and round trip), with the project's skip list.
//! mdm-conformance captures ../shared/vectors --skip conformance/captures-skip.toml
//! ```
//!
//! Exit status 0 when nothing failed, 1 when something did, 2 on a usage or setup error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mdm_conformance::suite::{self, Report, SkipList, WireTarget};

#[derive(Debug, Parser)]
#[command(name = "mdm-conformance", about = "Conformance suite for MDM gateways (Apple, Windows, Android)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay transcript directories (over the wire, or --in-process).
    Run(RunArgs),
    /// Decode (and round-trip) every raw capture file under the directories.
    Captures(CommonArgs),
}

#[derive(Debug, Args)]
struct CommonArgs {
    /// Directories to read.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Skip list (TOML, `[[skip]] id = "..." reason = "..."`); an entry without a reason is an error.
    #[arg(long)]
    skip: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long)]
    junit: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Check requests and recorded replies through the protocol crates, without sockets.
    #[arg(long)]
    in_process: bool,
    /// The gateway's device listener, e.g. https://localhost:8443.
    #[arg(long, env = "MDM_GATEWAY", required_unless_present = "in_process")]
    gateway: Option<String>,
    /// The backend API, e.g. http://127.0.0.1:8080 (for flows that queue commands).
    #[arg(long, env = "MDM_API")]
    api: Option<String>,
    #[arg(long, env = "MDM_API_KEY")]
    api_key: Option<String>,
    /// The CA (PEM) devices trust for the gateway's TLS certificate and profile signature.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The Windows OnPremise enrollment secret (MS-WSTEP), for Windows flows.
    #[arg(long, env = "MDM_ENROLL_SECRET")]
    enroll_secret: Option<String>,
    /// The Pub/Sub push `?token=`, for Android flows.
    #[arg(long, env = "MDM_PUBSUB_TOKEN")]
    pubsub_token: Option<String>,
    /// A gateway data directory: `ca.pem`, `api-key`, `enroll-secret` and `pubsub-token` are read
    /// from it when not given otherwise.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn read_opt(dir: &Option<PathBuf>, name: &str) -> Option<String> {
    let d = dir.as_ref()?;
    std::fs::read_to_string(d.join(name)).ok().map(|s| s.trim().to_owned())
}

fn skips(path: &Option<PathBuf>) -> Result<SkipList, String> {
    match path {
        Some(p) => SkipList::load(p),
        None => Ok(SkipList::default()),
    }
}

fn finish(report: &Report, junit: &Option<PathBuf>) -> ExitCode {
    print!("{}", report.text());
    if let Some(path) = junit
        && let Err(e) = std::fs::write(path, report.junit())
    {
        eprintln!("mdm-conformance: {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if report.failed() > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

async fn run(args: RunArgs) -> Result<Report, String> {
    let skip = skips(&args.common.skip)?;
    let flows = suite::load_all(&args.common.dirs)?;
    let mut report = Report::default();
    if args.in_process {
        suite::run_in_process(&flows, &skip, &mut report);
        return Ok(report);
    }
    let ca_path: Option<PathBuf> = args.ca.clone().or_else(|| args.data_dir.as_ref().map(|d| d.join("ca.pem")));
    let ca_pem = match &ca_path {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => return Err("--ca (or --data-dir) is needed over the wire".into()),
    };
    let target = WireTarget {
        gateway: args.gateway.clone().unwrap_or_default(),
        api: args.api.clone(),
        api_key: args.api_key.clone().or_else(|| read_opt(&args.data_dir, "api-key")),
        ca_pem,
        enroll_secret: args.enroll_secret.clone().or_else(|| read_opt(&args.data_dir, "enroll-secret")),
        pubsub_token: args.pubsub_token.clone().or_else(|| read_opt(&args.data_dir, "pubsub-token")),
    };
    suite::run_wire(&flows, &target, &skip, &mut report).await;
    Ok(report)
}

fn captures(args: &CommonArgs) -> Result<Report, String> {
    let skip = skips(&args.skip)?;
    let mut report = Report::default();
    for d in &args.dirs {
        suite::run_captures(Path::new(d), &skip, &mut report)?;
    }
    Ok(report)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (result, junit) = match cli.command {
        Command::Run(args) => {
            let junit = args.common.junit.clone();
            (run(args).await, junit)
        }
        Command::Captures(args) => (captures(&args), args.junit.clone()),
    };
    match result {
        Ok(report) => finish(&report, &junit),
        Err(e) => {
            eprintln!("mdm-conformance: {e}");
            ExitCode::from(2)
        }
    }
}
