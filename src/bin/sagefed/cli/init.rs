//! `sagefed init`: create a federation, or add a platform to one.

use std::path::PathBuf;

use sage_federation::identity::federation::{FederationDir, InitOptions, Manifest};
use sage_federation::identity::topology::{self as layout, TopologyPlan, init_topology};
use sage_federation::nats::permissions::Role;
use sage_federation::nats::topology::{self, Machine, Topology};

use crate::cli::FEDERATION_DIR_DEFAULT;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory to write the federation into
    #[arg(long, default_value = FEDERATION_DIR_DEFAULT)]
    out: PathBuf,
    /// A platform identity (repeat); default Legion, Thor, Sprout
    #[arg(long = "platform", value_name = "NAME")]
    platforms: Vec<String>,
    /// A platform the root does not grant federation:delegate: it may execute, not delegate
    /// (repeat; with --platform or --add-platform)
    #[arg(long = "executor-only", value_name = "NAME")]
    executors: Vec<String>,
    /// A platform the root grants federation:critical besides federation:delegate: its
    /// critical tasks overtake queued normal ones at the executor (repeat; with --platform
    /// or --add-platform)
    #[arg(long = "critical", value_name = "NAME")]
    critical: Vec<String>,
    /// A ledger admin identity (repeat)
    #[arg(long = "admin", value_name = "NAME", default_value = crate::up::TREASURY)]
    admins: Vec<String>,
    /// A host name or address the server certificate must cover besides loopback (repeat)
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// The NATS URL written into the platforms' bundles
    #[arg(long, default_value = sage_federation::config::NATS_URL_DEFAULT)]
    url: String,
    /// Add this platform to the existing federation in --out (nobody else is re-keyed; every
    /// server config of its topology is regenerated). In hub-leaf, `--node NAME=HOST[:PORT]`
    /// gives it a leaf server on a machine of its own; without it, it connects to the hub
    #[arg(long, value_name = "NAME", conflicts_with_all = ["platforms", "force", "topology"])]
    add_platform: Option<String>,
    /// Replace an existing federation (every key and certificate changes)
    #[arg(long)]
    force: bool,
    /// How the machines connect: single (one server), hub-leaf (a JetStream hub, a leaf
    /// server on each other platform's machine) or cluster (three nodes, R3)
    #[arg(long, default_value = "single", value_parser = parse_topology)]
    topology: Topology,
    /// A machine: NAME=HOST[:CLIENT_PORT[:LINK_PORT]] (repeat; hub-leaf: the hub first, each
    /// leaf named after its platform; cluster: three nodes). Default: Legion, Thor, Sprout
    /// at <name>.local
    #[arg(long = "node", value_name = "NAME=HOST")]
    nodes: Vec<String>,
    /// Where a machine's bundle is installed (the paths its server config names)
    #[arg(long, default_value = INSTALL_DIR_DEFAULT)]
    install_dir: PathBuf,
    /// Each server's JetStream store is <STORE_ROOT>/<machine in lower case>
    #[arg(long, default_value = STORE_ROOT_DEFAULT)]
    store_root: PathBuf,
}

/// Where `sagefed install` puts a machine's bundle.
pub const INSTALL_DIR_DEFAULT: &str = "/etc/sagefed";
/// Where deployed servers keep JetStream.
pub const STORE_ROOT_DEFAULT: &str = "/var/lib/sagefed/nats";

fn parse_topology(text: &str) -> Result<Topology, String> {
    text.parse()
}

/// The machines of `args`: `--node`s, or the seed's three at `<name>.local`.
fn plan(args: &InitArgs) -> anyhow::Result<TopologyPlan> {
    let link_port = match args.topology {
        Topology::Cluster => topology::ROUTE_PORT_DEFAULT,
        Topology::HubLeaf | Topology::Single => topology::LEAF_PORT_DEFAULT,
    };
    let specs: Vec<String> = if args.nodes.is_empty() && args.topology != Topology::Single {
        DEFAULT_PLATFORMS
            .iter()
            .map(|p| format!("{p}={}.local", p.to_lowercase()))
            .collect()
    } else {
        args.nodes.clone()
    };
    let machines = specs
        .iter()
        .map(|spec| Machine::parse(spec, link_port).map_err(|e| anyhow::anyhow!("--node {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(TopologyPlan {
        topology: args.topology,
        machines,
        install_dir: Some(args.install_dir.clone()),
        store_root: args.store_root.clone(),
    })
}

/// Platforms `sagefed init` creates when none is named: the seed's three.
pub const DEFAULT_PLATFORMS: [&str; 3] = ["Legion", "Thor", "Sprout"];

pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let manifest = if let Some(platform) = &args.add_platform {
        let role = Role::platform(!args.executors.contains(platform), args.critical.contains(platform));
        let machine = match args.nodes.as_slice() {
            [] => None,
            [spec] => {
                Some(Machine::parse(spec, topology::LEAF_PORT_DEFAULT).map_err(|e| anyhow::anyhow!("--node {e}"))?)
            }
            _ => anyhow::bail!("--add-platform takes at most one --node: the new platform's machine"),
        };
        let manifest = layout::add_platform(&args.out, platform, role, machine)?;
        println!(
            "added platform {platform}; install bundles/{platform} on its machine and reload the \
             server(s) whose config changed: nats-server --signal reload"
        );
        manifest
    } else {
        let platforms = if args.platforms.is_empty() {
            DEFAULT_PLATFORMS.iter().map(|p| (*p).to_owned()).collect()
        } else {
            args.platforms.clone()
        };
        let plan = plan(args)?;
        let mut hosts = args.hosts.clone();
        hosts.extend(plan.machines.iter().map(|m| m.host.clone()));
        init_topology(
            &InitOptions {
                dir: args.out.clone(),
                platforms,
                executors: args.executors.clone(),
                critical: args.critical.clone(),
                admins: args.admins.clone(),
                hosts,
                url: args.url.clone(),
                server_base: crate::up::DEV_CONF.to_owned(),
                force: args.force,
            },
            &plan,
        )?
    };
    print_summary(args, &FederationDir::new(&args.out), &manifest);
    Ok(())
}

fn print_summary(args: &InitArgs, fed: &FederationDir, manifest: &Manifest) {
    println!("federation in {}", fed.dir.display());
    println!("  root key      {} (keep it offline)", fed.root_key().display());
    println!("  root public   {}", manifest.root_public_key);
    println!("  server config {}", fed.server_config().display());
    println!("  CA            {}", fed.ca_cert().display());
    for identity in &manifest.identities {
        println!(
            "  {:<8} {:<12} {}  {}",
            format!("{:?}", identity.role).to_lowercase(),
            identity.name,
            identity.nkey,
            fed.creds(&identity.name).display()
        );
    }
    println!("  bundles       {}", fed.dir.join("bundles").display());
    if args.topology != Topology::Single {
        println!(
            "  topology      {} (install each machine's bundle in {}: docs/deployment.md)",
            args.topology.name(),
            args.install_dir.display()
        );
    }
}
