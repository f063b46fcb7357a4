//! The `sagefed` command line. Parses arguments and calls the library; prints errors as one
//! line with their causes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod init;
mod install;
mod keygen;
mod keys;
mod ledger;
pub mod observe;
pub mod platform;

use sage_federation::config::Config;
use sage_federation::identity::federation::FederationDir;
use sage_federation::nats::connection::{self, NatsAccess};

/// Exit code of a command that failed (2, a usage error, is clap's own).
pub const EXIT_FAILURE: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "sagefed",
    version,
    about = "Delegate signed tasks between machines over NATS, settled on an escrow ATP ledger",
    after_help = "Exit codes: 0 success, 1 failure (the message says why), 2 bad arguments,\n\
                  3 `audit` found a broken invariant, 4 `delegate`/`cancel`: the task was not\n\
                  paid / not cancelled (the message says why).\n\
                  Logs go to stderr; set SAGE_LOG (e.g. SAGE_LOG=debug) to change the level."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole federation on this machine: NATS server, ledger, three platforms
    Up(crate::up::UpArgs),
    /// Create a federation: root key, NATS credentials per identity, TLS CA, server config, bundles
    Init(init::InitArgs),
    /// Install a machine's bundle where the systemd units expect it (/etc/sagefed, modes, owner)
    Install(install::InstallArgs),
    /// Write a new Ed25519 keypair for a platform and print its public key
    Keygen(keygen::KeygenArgs),
    /// Check configuration files
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a platform's worker: execute its tasks, settle its proofs, serve status and cancel
    Worker(platform::WorkerArgs),
    /// Delegate one task to another platform and print the settled outcome
    Delegate(platform::DelegateArgs),
    /// Status of an LCT (ATP consumed, tasks running) or of a task
    Status(platform::StatusArgs),
    /// Cancel a task you delegated: a queued one never runs, a running one is aborted, ATP refunded
    Cancel(platform::CancelArgs),
    /// Serve the seed's HTTP API on loopback for a platform (local token required)
    Gateway(platform::GatewayArgs),
    /// Publish or list platform public keys in the key registry
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Run the ATP ledger service
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Check the ledger's invariants (conservation, one settlement per lock); exit 3 on a violation
    Audit(ledger::AuditArgs),
    /// List ledger accounts with their balances and locked ATP
    Balances(ledger::BalancesArgs),
    /// Create ATP in an account (ledger admins only)
    Grant(ledger::GrantArgs),
    /// Measure latency and throughput on a local server, against a floor from the same run
    Bench(crate::bench::BenchArgs),
    /// Serve the live dashboard (and /metrics) for a running federation
    Dashboard(observe::DashboardArgs),
}

/// Where `sagefed up` and `sagefed init` keep the federation's credentials by default.
pub const FEDERATION_DIR_DEFAULT: &str = ".sagefed/federation";

/// How to reach NATS, for commands that talk to a running federation.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL
    #[arg(long = "nats", value_name = "URL", env = "SAGE_NATS__URL", default_value = sage_federation::config::NATS_URL_DEFAULT)]
    pub url: String,
    /// NATS credentials: an nkey seed file from `sagefed init`
    /// [default: the command's identity in .sagefed/federation/creds/, when it exists]
    #[arg(long, value_name = "FILE", env = "SAGE_NATS__CREDS")]
    pub creds: Option<PathBuf>,
    /// The federation's CA certificate; TLS is required when set
    /// [default: .sagefed/federation/ca/ca.pem, when it exists]
    #[arg(long, value_name = "FILE", env = "SAGE_NATS__CA")]
    pub ca: Option<PathBuf>,
}

/// The root public key of the federation `sagefed up` made here: what commands pin by default.
pub fn default_root_public_key() -> PathBuf {
    FederationDir::new(std::path::Path::new(FEDERATION_DIR_DEFAULT)).root_public_key()
}

/// Reads a root public key file (`root.pub`, `root/root.key.pub`).
pub fn read_root_public_key(path: &std::path::Path) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| format!("root public key {}", path.display()))?;
    sage_federation::identity::keys::parse_public_key(&text)
        .with_context(|| format!("root public key {}", path.display()))
}

impl NatsArgs {
    /// The access this command uses: the given files, else those `sagefed up` made for
    /// `identity`, else none (a server without authorization).
    pub fn access(&self, identity: &str) -> NatsAccess {
        let fed = FederationDir::new(std::path::Path::new(FEDERATION_DIR_DEFAULT));
        let existing = |p: PathBuf| p.is_file().then_some(p);
        NatsAccess {
            url: self.url.clone(),
            creds: self.creds.clone().or_else(|| existing(fed.creds(identity))),
            ca: self.ca.clone().or_else(|| existing(fed.ca_cert())),
        }
    }

    /// Connects as `identity`, or says what to do when no server answers.
    pub async fn connect(&self, identity: &str, name: &str) -> anyhow::Result<async_nats::Client> {
        connection::connect(&self.access(identity), name)
            .await
            .map_err(anyhow::Error::from)
    }
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a platform config file and print what it resolves to
    Check {
        /// The config file (TOML or YAML)
        file: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    // `up` reports in its own words; its components log warnings only, unless asked.
    init_logging(if matches!(cli.command, Command::Up(_)) {
        "warn"
    } else {
        "info,async_nats=warn"
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sagefed: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sagefed: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Rust ignores SIGPIPE, so `sagefed balances | head` would panic on a closed pipe; restore
/// the default, and the process ends quietly like any Unix tool.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SAGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => crate::up::run(args, shutdown_signal()).await?,
        Command::Init(args) => init::run(&args)?,
        Command::Install(args) => install::run(&args)?,
        Command::Keygen(args) => keygen::run(&args)?,
        Command::Config(ConfigCommand::Check { file }) => config_check(&file)?,
        Command::Keys(command) => keys::run(command).await?,
        Command::Worker(args) => platform::worker(&args).await?,
        Command::Delegate(args) => return platform::delegate(&args).await,
        Command::Status(args) => platform::status_command(&args).await?,
        Command::Cancel(args) => return platform::cancel(&args).await,
        Command::Gateway(args) => platform::gateway(&args).await?,
        Command::Ledger(command) => ledger::run(command).await?,
        Command::Audit(args) => return ledger::audit_command(&args).await,
        Command::Balances(args) => ledger::balances_command(&args).await?,
        Command::Grant(args) => return ledger::grant_command(&args).await,
        Command::Bench(args) => crate::bench::run(args).await?,
        Command::Dashboard(args) => observe::dashboard(&args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!("{}: ok", file.display());
    println!("  platform      {}", config.platform());
    println!("  nats          {}", config.nats.url);
    let access = config.nats_access();
    let shown = |p: Option<PathBuf>| p.map_or_else(|| "none".to_owned(), |p| p.display().to_string());
    println!("  nats creds    {}", shown(access.creds));
    println!("  nats CA       {}", shown(access.ca));
    println!("  keypair       {}", config.keypair_path().display());
    for (task_type, resource) in &config.resources {
        let lct = config.lct(task_type.as_str())?;
        println!(
            "  resource      {lct}: budget {} ATP, max {} concurrent",
            resource.atp_budget.atp(),
            resource.max_concurrent
        );
    }
    println!(
        "  permissions   delegate={} execute=[{}] {} req/min per delegator",
        config.permissions.delegate,
        config
            .permissions
            .execute
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        config.permissions.requests_per_minute
    );
    for known in &config.platforms {
        let caps: Vec<&str> = known.capabilities.iter().map(|c| c.as_str()).collect();
        println!("  knows         {} [{}]", known.name, caps.join(", "));
    }
    Ok(())
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM). The handlers are
/// installed when this is called, not when it is first awaited: a Ctrl-C during start-up is
/// kept and stops the process cleanly once it is up, instead of killing it half-started.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
