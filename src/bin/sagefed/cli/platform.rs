//! `sagefed worker`, `sagefed delegate`, `sagefed status`, `sagefed cancel`, `sagefed gateway`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{NatsArgs, shutdown_signal};
use sage_federation::config::Config;
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest, FederationClient};
use sage_federation::delegation::status;
use sage_federation::gateway::Gateway;
use sage_federation::identity::keys;
use sage_federation::ledger::model::LockState;
use sage_federation::nats::{connection, subjects};
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::task::{Lane, TaskId};

/// Exit code of `sagefed delegate` when the task ran but was not paid (rolled back).
pub const EXIT_NOT_COMMITTED: u8 = 4;

/// A config file and an optional NATS URL that overrides the config's.
#[derive(clap::Args, Debug)]
pub struct PlatformArgs {
    /// The platform's config file (configs/thor.toml, ...)
    #[arg(long)]
    config: PathBuf,
    /// NATS server URL [default: the config's nats.url]
    #[arg(long = "nats", value_name = "URL")]
    nats: Option<String>,
    /// NATS credentials (nkey seed file) [default: the config's nats.creds]
    #[arg(long, value_name = "FILE")]
    creds: Option<PathBuf>,
    /// The federation's CA certificate [default: the config's nats.ca]
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

impl PlatformArgs {
    async fn open(&self, name: &str) -> anyhow::Result<(Config, async_nats::Client)> {
        let mut config = Config::load(&self.config)?;
        if let Some(url) = &self.nats {
            config.nats.url = url.clone();
        }
        if let Some(creds) = &self.creds {
            config.nats.creds = Some(std::path::absolute(creds)?);
        }
        if let Some(ca) = &self.ca {
            config.nats.ca = Some(std::path::absolute(ca)?);
        }
        let client = connection::connect(&config.nats_access(), &format!("{name}-{}", config.platform())).await?;
        Ok((config, client))
    }
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    #[command(flatten)]
    metrics: crate::cli::observe::MetricsArgs,
}

pub async fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let (config, client) = args.platform.open("sagefed-worker").await?;
    args.metrics.spawn().await?;
    eprintln!("sagefed worker for {} on {}", config.platform(), config.nats.url);
    Ok(sage_federation::worker::serve(config, client, shutdown_signal()).await?)
}

#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// Loopback address to listen on (port 0 picks a free one)
    #[arg(long, default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], sage_federation::gateway::GATEWAY_PORT_BASE_DEFAULT)))]
    listen: std::net::SocketAddr,
}

pub async fn gateway(args: &GatewayArgs) -> anyhow::Result<()> {
    let (config, client) = args.platform.open("sagefed-gateway").await?;
    let gateway = Gateway::start(config, &args.platform.config, client, args.listen).await?;
    let address = gateway.address();
    println!(
        "gateway for {} on {} (token in {}, address in {})",
        address.platform,
        address.url,
        address.token_file.display(),
        sage_federation::gateway::address_path(&args.platform.config).display()
    );
    shutdown_signal().await;
    gateway.stop().await;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct DelegateArgs {
    #[command(flatten)]
    platform: PlatformArgs,
    /// The executor platform [default: the least loaded healthy platform that offers it]
    #[arg(long)]
    to: Option<String>,
    /// perception, planning, execution, or a configured operation
    #[arg(long)]
    operation: String,
    /// ATP to lock for the task; the executor is paid what it consumes, the rest comes back
    #[arg(long, allow_negative_numbers = true)]
    budget: f64,
    /// consciousness or consciousness.sage
    #[arg(long, default_value = "consciousness")]
    task_type: String,
    /// Longest the execution may take, in seconds
    #[arg(long = "timeout", default_value_t = 30)]
    timeout_seconds: u64,
    /// Operation parameters, a JSON object
    #[arg(long, default_value = "{}")]
    params: String,
    /// Print the outcome as JSON
    #[arg(long)]
    json: bool,
    /// A critical task: it overtakes the normal tasks queued at the executor (needs the
    /// federation:critical permission, granted by the root)
    #[arg(long)]
    critical: bool,
}

pub async fn delegate(args: &DelegateArgs) -> anyhow::Result<ExitCode> {
    delegate_once(args).await.map_err(unreachable_hint)
}

async fn delegate_once(args: &DelegateArgs) -> anyhow::Result<ExitCode> {
    // Refuse a bad budget before connecting to anything.
    sage_federation::protocol::atp::Atp::positive_from_f64(args.budget, "--budget")?;
    let parameters: serde_json::Value =
        serde_json::from_str(&args.params).map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))?;
    let serde_json::Value::Object(parameters) = parameters else {
        anyhow::bail!("--params must be a JSON object, like '{{\"width\": 8}}'");
    };
    let (config, client) = args.platform.open("sagefed-delegate").await?;
    let federation = FederationClient::new(config, client.clone()).await?;
    let outcome = federation
        .delegate_on(
            DelegationRequest {
                to: args.to.clone(),
                task_type: args.task_type.clone(),
                operation: args.operation.clone(),
                budget: args.budget,
                timeout_seconds: args.timeout_seconds,
                parameters,
                task_id: None,
            },
            Lane::of(args.critical),
        )
        .await?;
    client.flush().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", describe(&outcome));
        println!("{}", serde_json::to_string_pretty(&outcome.result)?);
    }
    Ok(if outcome.settlement == LockState::Committed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_COMMITTED)
    })
}

/// What the errors say when nothing serves JetStream or the ledger: the server's "no
/// responders", and what async-nats makes of it when opening a bucket.
const UNANSWERED: [&str; 2] = ["no responders", "JetStream resource does not exist"];

/// `e`, with what to check when it says JetStream or the ledger does not answer: on a
/// Jetson, its leaf link to the hub (the delegation failed before locking anything).
fn unreachable_hint(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if UNANSWERED.iter().any(|u| text.contains(u)) {
        e.context(
            "the federation's JetStream or ledger does not answer; on a machine with a leaf \
             server, its link to the hub is down; elsewhere, is the ledger (which creates the \
             streams) running? (docs/troubleshooting.md)",
        )
    } else {
        e
    }
}

/// One line about a delegation.
pub fn describe(o: &DelegationOutcome) -> String {
    let settled = match (o.settlement, o.rollback_reason) {
        (LockState::Committed, _) => "committed".to_owned(),
        (state, Some(reason)) => format!("{state:?} ({reason})"),
        (state, None) => format!("{state:?}"),
    };
    let quality = o.quality.map_or_else(|| "-".to_owned(), |q| format!("{q:.2}"));
    format!(
        "task {} {} -> {} {}: {settled}, quality {quality}, {} ATP consumed, {} ATP refunded ({:.1} ms){}",
        o.task_id,
        o.from,
        o.to,
        o.operation,
        o.atp_consumed,
        o.atp_refunded,
        o.latency_ms,
        if o.reason.is_empty() {
            String::new()
        } else {
            format!("; {}", o.reason)
        }
    )
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// An LCT (lct:web4:agent:dp@Thor#consciousness) or a task id (t-...)
    target: String,
    #[command(flatten)]
    nats: NatsArgs,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub async fn status_command(args: &StatusArgs) -> anyhow::Result<()> {
    let client = args.nats.connect(crate::up::TREASURY, subjects::STATUS_SERVICE).await?;
    let value = if args.target.starts_with(sage_federation::protocol::lct::LCT_PREFIX) {
        serde_json::to_value(status::lct(&client, &args.target.parse()?).await?)?
    } else {
        let task_id: TaskId = args
            .target
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{e} (expected an LCT or a task id)"))?;
        serde_json::to_value(status::task(&client, &task_id).await?)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if let serde_json::Value::Object(map) = value {
        for (key, value) in map {
            println!(
                "{key:<14} {}",
                if value.is_object() {
                    serde_json::to_string(&value)?
                } else {
                    value.to_string()
                }
            );
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The task id
    task_id: String,
    #[command(flatten)]
    platform: PlatformArgs,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub async fn cancel(args: &CancelArgs) -> anyhow::Result<ExitCode> {
    let task_id: TaskId = args.task_id.parse().map_err(anyhow::Error::msg)?;
    let (config, client) = args.platform.open("sagefed-cancel").await?;
    let signer = Signer::new(config.platform(), keys::read_secret(&config.keypair_path())?)?;
    let reply = status::cancel_task(&client, &signer, &task_id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        println!(
            "cancelled: {}, {} ATP refunded: {}",
            reply.cancelled, reply.atp_refunded, reply.message
        );
    }
    Ok(if reply.cancelled {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_COMMITTED)
    })
}
