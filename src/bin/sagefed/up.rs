//! `sagefed up`: the whole federation on one machine.
//!
//! Starts a local `nats-server` (found or installed, see [`sage_federation::nats::server`]) with the
//! embedded `nats/dev.conf`, creates the streams and buckets, starts the ledger service and a
//! worker for each platform in `configs/`, grants each platform's ATP from its config
//! (idempotent), runs the seed's scenarios once ([`crate::demo`]), and serves until Ctrl-C.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_nats::Client;

use sage_federation::config::Config;
use sage_federation::delegation::client::FederationClient;
use sage_federation::gateway::{GATEWAY_PORT_BASE_DEFAULT, Gateway};
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::federation::{self, FederationDir, InitOptions, LEDGER_IDENTITY};
use sage_federation::identity::keys;
use sage_federation::ledger::client::LedgerClient;
use sage_federation::ledger::protocol::Outcome;
use sage_federation::ledger::service::{LedgerOptions, LedgerService};
use sage_federation::nats::connection::{self, NatsAccess};
use sage_federation::nats::permissions::Role;
use sage_federation::nats::server::{self as nats_server, NatsServer, ServerOptions};
use sage_federation::nats::{infra, subjects};
use sage_federation::observe::server as observe_server;
use sage_federation::protocol::envelope::Signer;
use sage_federation::worker::Worker;

/// The development server config, embedded so `sagefed up` works from any directory.
pub const DEV_CONF: &str = include_str!("../../../nats/dev.conf");

/// Client port `sagefed up` listens on unless told otherwise.
pub const UP_PORT_DEFAULT: u16 = 4222;
/// How long the server gets to shut down cleanly before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The ledger admin identity `sagefed up` creates to grant each platform's ATP.
pub const TREASURY: &str = "Treasury";
/// Platform configs `sagefed up` runs, in this order.
pub const PLATFORM_CONFIGS: [&str; 3] = ["legion.toml", "thor.toml", "sprout.toml"];

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Directory for the server's store and log and the treasury key
    #[arg(long, default_value = ".sagefed")]
    pub data_dir: PathBuf,
    /// Directory holding legion.toml, thor.toml and sprout.toml
    #[arg(long, default_value = "configs")]
    pub configs: PathBuf,
    /// NATS client port on 127.0.0.1 (0 picks a free one)
    #[arg(long, default_value_t = UP_PORT_DEFAULT)]
    pub port: u16,
    /// Where nats-server is installed when it is not found [default: $SAGE_TOOLS_DIR or ./.tools]
    #[arg(long)]
    pub tools_dir: Option<PathBuf>,
    /// Run the demo scenarios, print the results and exit (0 when every outcome is the one
    /// the seed expects)
    #[arg(long)]
    pub exit_after_demo: bool,
    /// Do not run the demo scenarios
    #[arg(long, conflicts_with = "exit_after_demo")]
    pub no_demo: bool,
    /// Address of the live dashboard and /metrics (loopback by default; port 0 picks a free one)
    #[arg(long, value_name = "ADDR", default_value = crate::cli::observe::DASHBOARD_ADDR_DEFAULT)]
    pub dashboard: String,
    /// Do not serve the dashboard
    #[arg(long)]
    pub no_dashboard: bool,
    /// Port of the first platform's HTTP gateway on 127.0.0.1; the others get the next ports
    /// (0 picks free ones). Each gateway writes <config>.gateway.json and its token
    /// <config>.gateway-token next to its config
    #[arg(long, default_value_t = GATEWAY_PORT_BASE_DEFAULT)]
    pub gateway_port: u16,
}

/// Runs the federation until `shutdown` resolves.
pub async fn run(mut args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Absolute: credential paths under it are handed to configs, which resolve relative paths
    // against their own directory (`.sagefed/...` would become `configs/.sagefed/...`).
    args.data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("resolving --data-dir {}", args.data_dir.display()))?;
    let configs = load_configs(&args.configs)?;
    let tools_dir = args.tools_dir.clone().unwrap_or_else(nats_server::default_tools_dir);
    let binary = nats_server::find_or_install(&tools_dir)?;
    let version = nats_server::check_version(&binary)?;
    let nats_dir = args.data_dir.join("nats");
    std::fs::create_dir_all(&nats_dir).with_context(|| format!("creating {}", nats_dir.display()))?;
    let fed = ensure_federation(&args.data_dir, &configs)?;
    let config_file = fed.server_config();
    if args.port != 0 && std::net::TcpListener::bind(("127.0.0.1", args.port)).is_err() {
        anyhow::bail!(
            "port {} on 127.0.0.1 is in use (another `sagefed up` or nats-server?); stop it or pass --port",
            args.port
        );
    }
    let mut server = NatsServer::start(
        &binary,
        ServerOptions {
            config_file: Some(config_file),
            store_dir: nats_dir.join("store"),
            port: (args.port != 0).then_some(args.port),
            log_file: nats_dir.join("server.log"),
        },
    )
    .await?;
    println!(
        "nats-server {}.{}.{} ({}) listening on {} (log {})",
        version.0,
        version.1,
        version.2,
        binary.display(),
        server.url(),
        server.log_file().display()
    );
    let result = serve(&server.url(), &fed, &args, configs, shutdown).await;
    server.stop(SERVER_STOP_TIMEOUT).await;
    println!("stopped");
    result
}

/// Loads the three platform configs from `dir`.
pub fn load_configs(dir: &Path) -> anyhow::Result<Vec<Config>> {
    PLATFORM_CONFIGS
        .iter()
        .map(|name| {
            let path = dir.join(name);
            Config::load(&path).with_context(|| {
                format!(
                    "run from the repository root, or pass --configs (looked in {})",
                    dir.display()
                )
            })
        })
        .collect()
}

/// The federation in `<data_dir>/federation`: made by `sagefed init` on first run, with a
/// platform added for each config it does not know yet.
pub fn ensure_federation(data_dir: &Path, configs: &[Config]) -> anyhow::Result<FederationDir> {
    let dir = data_dir.join("federation");
    let fed = FederationDir::new(&dir);
    if !fed.exists() {
        federation::init(&InitOptions {
            dir: dir.clone(),
            platforms: configs.iter().map(|c| c.platform().to_owned()).collect(),
            executors: configs
                .iter()
                .filter(|c| !c.permissions.delegate)
                .map(|c| c.platform().to_owned())
                .collect(),
            admins: vec![TREASURY.to_owned()],
            hosts: Vec::new(),
            url: sage_federation::config::NATS_URL_DEFAULT.to_owned(),
            server_base: DEV_CONF.to_owned(),
            force: false,
        })?;
        println!(
            "init       {}: credentials, TLS CA and server config (root key: keep {} offline)",
            dir.display(),
            fed.root_key().display()
        );
    }
    let known = fed.load()?;
    for config in configs {
        if !known.identities.iter().any(|i| i.name == config.platform()) {
            let role = if config.permissions.delegate {
                Role::Platform
            } else {
                Role::Executor
            };
            federation::add_platform(&dir, config.platform(), role)?;
            println!("init       added platform {}", config.platform());
        }
    }
    Ok(fed)
}

/// Everything but the server: ledger, workers, one delegation client per platform.
pub struct Federation {
    pub client: Client,
    pub ledger: LedgerService,
    pub workers: Vec<Worker>,
    pub clients: BTreeMap<String, FederationClient>,
}

impl Federation {
    /// Starts the federation on the server at `url`, each part connecting as its own
    /// identity of `fed`: streams and buckets, the treasury, the ledger service, each
    /// platform's keys (created when missing), grants and worker.
    pub async fn start(
        url: &str,
        fed: &FederationDir,
        data_dir: &Path,
        mut configs: Vec<Config>,
    ) -> anyhow::Result<Self> {
        let access = |identity: &str| NatsAccess::secure(url, &fed.creds(identity), &fed.ca_cert());
        let ledger_client = connection::connect(&access(LEDGER_IDENTITY), subjects::LEDGER_SERVICE).await?;
        for resource in infra::ensure(&async_nats::jetstream::new(ledger_client.clone()), 1).await? {
            println!("{:<10} {:<16} {}", resource.kind, resource.name, resource.detail);
        }
        // `up` holds the root (it ran `init`): it endorses the keys it makes.
        let root = federation::read_root(fed)?;
        let treasury_key = data_dir.join("keys/treasury.key");
        let treasury_record = federation::endorse_identity_key(fed, TREASURY, &treasury_key)?;
        let treasury = Signer::new(TREASURY, keys::read_secret(&treasury_key)?)?;
        let client = connection::connect(&access(TREASURY), "sagefed-up").await?;
        let js = async_nats::jetstream::new(client.clone());
        let directory = KeyDirectory::open(&js, &root.verifying_key()).await?;
        directory.publish(&treasury_record).await?;
        let ledger = LedgerService::start(
            ledger_client,
            LedgerOptions {
                admins: [TREASURY.to_owned()].into_iter().collect(),
                // The treasury key is pinned: a Treasury key record someone else wrote
                // cannot grant.
                admin_keys: [keys::key_id(&treasury.verifying_key())].into_iter().collect(),
                root: root.verifying_key(),
                sweep: true,
                reputation_half_life: std::time::Duration::from_secs(
                    sage_federation::state::reputation::HALF_LIFE_SECONDS_DEFAULT,
                ),
            },
        )
        .await?;
        println!("service    sagefed-ledger   admins: {TREASURY}");
        let treasury = LedgerClient::new(client.clone(), treasury);
        let mut workers = Vec::new();
        let mut clients = BTreeMap::new();
        for config in &mut configs {
            join(config, url, fed);
            federation::endorse_identity_key(fed, config.platform(), &config.keypair_path())?;
            grant(&treasury, config).await?;
            let worker = Worker::start(
                config.clone(),
                connection::connect(&config.nats_access(), &format!("sagefed-worker-{}", config.platform())).await?,
            )
            .await?;
            println!(
                "worker     {:<16} capacity {}",
                config.platform(),
                config.resources.values().map(|r| r.max_concurrent).sum::<u32>()
            );
            workers.push(worker);
            let federation = FederationClient::new(
                config.clone(),
                connection::connect(&config.nats_access(), &format!("sagefed-client-{}", config.platform())).await?,
            )
            .await?;
            clients.insert(config.platform().to_owned(), federation);
        }
        Ok(Self {
            client,
            ledger,
            workers,
            clients,
        })
    }

    pub async fn stop(self) {
        for worker in self.workers {
            worker.stop().await;
        }
        drop(self.clients);
        self.ledger.stop().await;
        let _ = self.client.flush().await;
    }
}

/// Points `config` at this federation: the server at `url`, the platform's credentials, the
/// CA, and the root every verifier of the platform pins.
fn join(config: &mut Config, url: &str, fed: &FederationDir) {
    config.nats.url = url.to_owned();
    config.nats.creds = Some(fed.creds(config.platform()));
    config.nats.ca = Some(fed.ca_cert());
    config.federation.root_public_key_path = Some(fed.root_public_key());
}

/// Grants a platform the ATP its config gives each task type, once (idempotent by grant id).
async fn grant(treasury: &LedgerClient, config: &Config) -> anyhow::Result<()> {
    for (task_type, resource) in &config.resources {
        let lct = config.lct(task_type.as_str())?;
        let grant_id = format!("genesis-{}-{}", config.platform(), task_type.as_str().replace('.', "_"));
        let reply = treasury
            .grant(&grant_id, &lct, resource.atp_budget.atp().as_f64())
            .await?;
        match reply.outcome {
            Outcome::Applied => println!("grant      {lct}: {} ATP", resource.atp_budget.atp()),
            Outcome::AlreadyApplied => {}
            Outcome::Rejected => anyhow::bail!("granting {lct} failed: {}", reply.message),
        }
    }
    Ok(())
}

/// A background task that ends when this is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(
    url: &str,
    fed: &FederationDir,
    args: &UpArgs,
    configs: Vec<Config>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The federation does not need its dashboard: a busy address is reported, not fatal
    // (another `sagefed up` on this machine holds 8080).
    let listener = if args.no_dashboard {
        None
    } else {
        match observe_server::bind(&args.dashboard).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!("sagefed: no dashboard: {e} (pass --dashboard ADDR, or --no-dashboard)");
                None
            }
        }
    };
    let federation = Federation::start(url, fed, &args.data_dir, configs.clone()).await?;
    let gateways = match start_gateways(url, fed, args, configs).await {
        Ok(gateways) => gateways,
        Err(e) => {
            federation.stop().await;
            return Err(e);
        }
    };
    // Stops serving when `serve` returns, whichever way.
    let _dashboard = match listener {
        Some(listener) => {
            // Read-only: `up` holds every platform's key, and a page should cancel as one
            // platform only (`sagefed dashboard --config F`).
            let root = federation::read_root(fed)?.verifying_key();
            let router = crate::cli::observe::router(federation.client.clone(), None, &root).await?;
            println!("dashboard  http://{}/ (and /metrics)", listener.local_addr()?);
            Some(AbortOnDrop(tokio::spawn(observe_server::serve(
                listener,
                router,
                std::future::pending(),
            ))))
        }
        None => None,
    };
    let demo = if args.no_demo {
        Ok(true)
    } else {
        crate::demo::run(&federation, url).await
    };
    if args.exit_after_demo {
        stop_gateways(gateways).await;
        federation.stop().await;
        return match demo {
            Ok(true) => Ok(()),
            Ok(false) => anyhow::bail!("a scenario did not end as the seed expects (see the table)"),
            Err(e) => Err(e),
        };
    }
    if let Err(e) = demo {
        eprintln!("sagefed: the demo failed: {e:#}");
    }
    println!();
    println!("serving on {url}; press Ctrl-C to stop. From another terminal:");
    println!("  sagefed delegate --config configs/thor.toml --to Legion --operation planning --budget 10 \\");
    println!(
        "      --params '{{\"width\":16,\"height\":16,\"start\":[0,0],\"goal\":[15,15],\"obstacle_density\":0.2,\"seed\":1}}'"
    );
    println!("  sagefed balances    sagefed audit    sagefed status lct:web4:agent:dp@Thor#consciousness");
    println!("  the HTTP API for Python: see python/README.md (FederationClient(\"Thor\"))");
    shutdown.await;
    println!("stopping");
    stop_gateways(gateways).await;
    federation.stop().await;
    Ok(())
}

/// One HTTP gateway per platform on loopback, on consecutive ports from `--gateway-port`.
async fn start_gateways(
    url: &str,
    fed: &FederationDir,
    args: &UpArgs,
    configs: Vec<Config>,
) -> anyhow::Result<Vec<Gateway>> {
    let mut gateways = Vec::new();
    for (index, (name, mut config)) in PLATFORM_CONFIGS.iter().zip(configs).enumerate() {
        // The gateway acts as the platform: its credentials, like the platform's worker.
        join(&mut config, url, fed);
        let port = match args.gateway_port {
            0 => 0,
            base => u16::try_from(index)
                .ok()
                .and_then(|i| base.checked_add(i))
                .context("--gateway-port is too high for three consecutive ports")?,
        };
        let path = args.configs.join(name);
        let client =
            connection::connect(&config.nats_access(), &format!("sagefed-gateway-{}", config.platform())).await?;
        let started = Gateway::start(
            config,
            &path,
            client,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .await;
        let gateway = match started {
            Ok(gateway) => gateway,
            Err(e) => {
                stop_gateways(gateways).await;
                return Err(e.into());
            }
        };
        println!(
            "gateway    {:<16} {} (token {})",
            gateway.address().platform,
            gateway.address().url,
            gateway.address().token_file.display()
        );
        gateways.push(gateway);
    }
    Ok(gateways)
}

async fn stop_gateways(gateways: Vec<Gateway>) {
    for gateway in gateways {
        gateway.stop().await;
    }
}
