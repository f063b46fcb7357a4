//! `sagefed up`: the whole federation on one machine.
//!
//! Starts a local `nats-server` (found or installed, see [`crate::nats_server`]) with the
//! embedded `nats/dev.conf`, creates the streams and buckets, and reports them; then serves
//! until Ctrl-C, and stops everything cleanly.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::infra;
use crate::nats_server::{self, NatsServer, ServerOptions};

/// The development server config, embedded so `sagefed up` works from any directory.
const DEV_CONF: &str = include_str!("../nats/dev.conf");

/// Client port `sagefed up` listens on unless told otherwise.
pub const UP_PORT_DEFAULT: u16 = 4222;
/// How long the server gets to shut down cleanly before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Directory for the server's store, logs and generated keys
    #[arg(long, default_value = ".sagefed")]
    pub data_dir: PathBuf,
    /// NATS client port on 127.0.0.1 (0 picks a free one)
    #[arg(long, default_value_t = UP_PORT_DEFAULT)]
    pub port: u16,
    /// Where nats-server is installed when it is not found [default: $SAGE_TOOLS_DIR or ./.tools]
    #[arg(long)]
    pub tools_dir: Option<PathBuf>,
    /// Run the demo scenarios, print the results and exit instead of serving
    #[arg(long)]
    pub exit_after_demo: bool,
}

/// Runs the federation until `shutdown` resolves.
pub async fn run(args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let tools_dir = args.tools_dir.clone().unwrap_or_else(nats_server::default_tools_dir);
    let binary = nats_server::find_or_install(&tools_dir)?;
    let version = nats_server::check_version(&binary)?;
    let nats_dir = args.data_dir.join("nats");
    std::fs::create_dir_all(&nats_dir).with_context(|| format!("creating {}", nats_dir.display()))?;
    let config_file = nats_dir.join("dev.conf");
    std::fs::write(&config_file, DEV_CONF).with_context(|| format!("writing {}", config_file.display()))?;
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
    let result = serve(&server, &args, shutdown).await;
    server.stop(SERVER_STOP_TIMEOUT);
    println!("stopped");
    result
}

async fn serve(server: &NatsServer, args: &UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .name("sagefed-up")
        .connect(server.url())
        .await
        .with_context(|| format!("connecting to {}", server.url()))?;
    let js = async_nats::jetstream::new(client.clone());
    for resource in infra::ensure(&js, 1).await? {
        println!("{:<10} {:<16} {}", resource.kind, resource.name, resource.detail);
    }
    if args.exit_after_demo {
        client.flush().await?;
        return Ok(());
    }
    println!("serving on {}; press Ctrl-C to stop", server.url());
    shutdown.await;
    // Flush before exit, or buffered publishes may be lost.
    client.flush().await?;
    Ok(())
}
