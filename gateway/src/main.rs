//! `mdm-gateway`: the command-line entry point.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mdm_gateway::config::{Config, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "mdm-gateway",
    version,
    about = "MDM protocol gateway: Apple, Windows and Android devices to one backend API"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the gateway. With no flags: the embedded default (SQLite in ./mdm-data).
    Serve(ServeArgs),
    /// Print the effective configuration (after file, environment and flags) as TOML and exit.
    Config(ServeArgs),
    /// Apply the store's schema migrations (SQLite or PostgreSQL, per `store.url`) and exit.
    Migrate(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (SQLite database, development CA, secrets).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Device listener address (TLS).
    #[arg(long, value_name = "ADDR")]
    device_listen: Option<String>,
    /// Backend API listener address.
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Public base URL devices use to reach the device listener.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Extra CA (PEM) accepted for Apple device identities; repeatable.
    #[arg(long, value_name = "FILE")]
    device_ca: Vec<PathBuf>,
}

impl ServeArgs {
    fn load(&self) -> Result<Config, mdm_gateway::config::ConfigError> {
        let flags = Overrides {
            data_dir: self.data_dir.clone(),
            public_url: self.public_url.clone(),
            device_listen: self.device_listen.clone(),
            api_listen: self.api_listen.clone(),
            device_ca: self.device_ca.clone(),
        };
        Config::load(self.config.as_deref(), &flags)
    }
}

/// sysexits(3) EX_USAGE / EX_CONFIG family: 64 is what operators' tooling expects for bad usage.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, print_only, migrate_only) = match &cli.command {
        Cmd::Serve(a) => (a, false, false),
        Cmd::Config(a) => (a, true, false),
        Cmd::Migrate(a) => (a, false, true),
    };
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mdm-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if print_only {
        match toml::to_string_pretty(&config) {
            Ok(s) => {
                print!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("mdm-gateway: cannot print configuration: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    mdm_gateway::telemetry::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mdm-gateway: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if migrate_only {
        return runtime.block_on(migrate(config));
    }
    runtime.block_on(async move {
        let gateway = match mdm_gateway::Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "startup failed");
                eprintln!("mdm-gateway: {e}");
                return ExitCode::from(e.exit_code());
            }
        };
        mdm_gateway::shutdown::wait_for_signal().await;
        tracing::info!("signal received, draining (signal again to skip the drain delay)");
        match gateway.shutdown_or(mdm_gateway::shutdown::wait_for_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "unclean shutdown");
                ExitCode::FAILURE
            }
        }
    })
}

/// `mdm-gateway migrate`: the configuration is checked as `serve` checks it, then the store's
/// migrations are applied; exit 0 when the schema is up to date.
async fn migrate(config: Config) -> ExitCode {
    if let Err(e) = config.validate() {
        eprintln!("mdm-gateway: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match mdm_gateway::migrate_store(&config).await {
        Ok(kind) => {
            tracing::info!(database = kind, "store migrations applied");
            println!("mdm-gateway: {kind} store schema is up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "migration failed");
            eprintln!("mdm-gateway: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
