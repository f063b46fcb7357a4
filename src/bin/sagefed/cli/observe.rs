//! `sagefed dashboard`, `--metrics ADDR` for `worker` and `ledger serve`, and the dashboard
//! `sagefed up` serves: each binds an address, installs the metrics recorder and serves
//! [`sage_federation::observe::server`] in the background.

use std::path::PathBuf;

use sage_federation::config::Config;
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::keys;
use sage_federation::nats::connection;
use sage_federation::observe::feed::Feed;
use sage_federation::observe::metrics;
use sage_federation::observe::server::{self, Canceller};
use sage_federation::protocol::envelope::Signer;

use crate::cli::{NatsArgs, shutdown_signal};

/// Where the dashboard listens unless told otherwise: loopback only.
pub const DASHBOARD_ADDR_DEFAULT: &str = "127.0.0.1:8080";

/// `--metrics ADDR` for long-running commands.
#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9101)
    #[arg(long = "metrics", value_name = "ADDR")]
    pub addr: Option<String>,
}

impl MetricsArgs {
    /// Starts the metrics server when asked; it stops with the process.
    pub async fn spawn(&self) -> anyhow::Result<()> {
        let Some(addr) = &self.addr else {
            return Ok(());
        };
        let handle = metrics::install()?;
        let listener = server::bind(addr).await?;
        eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = server::serve(listener, server::metrics_router(handle), shutdown_signal()).await {
                eprintln!("sagefed: the metrics server stopped: {e}");
            }
        });
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    /// A platform's config: connect as it, and offer to cancel the tasks it delegated
    /// [default: read-only, as the ledger admin, on --nats]
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsArgs,
    /// Address to serve the dashboard on (loopback by default)
    #[arg(long, value_name = "ADDR", default_value = DASHBOARD_ADDR_DEFAULT)]
    listen: String,
    /// The federation root's public key file, when no --config pins one
    #[arg(long, value_name = "FILE", default_value_os_t = crate::cli::default_root_public_key())]
    root: PathBuf,
}

/// `sagefed dashboard`: serves until Ctrl-C.
pub async fn dashboard(args: &DashboardArgs) -> anyhow::Result<()> {
    let (client, canceller, root) = match &args.config {
        // As the platform, like `delegate` and `cancel`: its config's credentials, or
        // --creds/--ca.
        Some(path) => {
            let mut config = Config::load(path)?;
            if let Some(creds) = &args.nats.creds {
                config.nats.creds = Some(std::path::absolute(creds)?);
            }
            if let Some(ca) = &args.nats.ca {
                config.nats.ca = Some(std::path::absolute(ca)?);
            }
            let name = format!("sagefed-dashboard-{}", config.platform());
            let client = connection::connect(&config.nats_access(), &name).await?;
            let signer = Signer::new(config.platform(), keys::read_secret(&config.keypair_path())?)?;
            let canceller = Canceller {
                client: client.clone(),
                signer,
            };
            (client, Some(canceller), config.root_public_key()?)
        }
        // Read-only, as the ledger admin, like `balances` and `audit`.
        None => {
            let root = crate::cli::read_root_public_key(&args.root)?;
            (
                args.nats.connect(crate::up::TREASURY, "sagefed-dashboard").await?,
                None,
                root,
            )
        }
    };
    let listener = server::bind(&args.listen).await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let router = router(client, canceller, &root).await?;
    eprintln!("dashboard on {url} (Ctrl-C stops it)");
    server::serve(listener, router, shutdown_signal()).await?;
    Ok(())
}

/// The dashboard's routes over a connected client.
pub async fn router(
    client: async_nats::Client,
    canceller: Option<Canceller>,
    root: &ed25519_dalek::VerifyingKey,
) -> anyhow::Result<axum::Router> {
    let handle = metrics::install()?;
    let cancel_as = canceller.as_ref().map(|c| c.signer.platform().to_owned());
    let keys = KeyDirectory::open(&async_nats::jetstream::new(client.clone()), root).await?;
    let feed = Feed::start(client, cancel_as, std::sync::Arc::new(keys)).await?;
    Ok(server::dashboard_router(feed, canceller, handle))
}
