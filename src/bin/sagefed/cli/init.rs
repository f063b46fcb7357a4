//! `sagefed init`: create a federation, or add a platform to one.

use std::path::PathBuf;

use sage_federation::identity::federation::{self, FederationDir, InitOptions, Manifest};
use sage_federation::nats::permissions::Role;

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
    /// A ledger admin identity (repeat)
    #[arg(long = "admin", value_name = "NAME", default_value = crate::up::TREASURY)]
    admins: Vec<String>,
    /// A host name or address the server certificate must cover besides loopback (repeat)
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// The NATS URL written into the platforms' bundles
    #[arg(long, default_value = sage_federation::config::NATS_URL_DEFAULT)]
    url: String,
    /// Add this platform to the existing federation in --out (nobody else is re-keyed)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["platforms", "force"])]
    add_platform: Option<String>,
    /// Replace an existing federation (every key and certificate changes)
    #[arg(long)]
    force: bool,
}

/// Platforms `sagefed init` creates when none is named: the seed's three.
pub const DEFAULT_PLATFORMS: [&str; 3] = ["Legion", "Thor", "Sprout"];

pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let manifest = if let Some(platform) = &args.add_platform {
        let role = if args.executors.contains(platform) {
            Role::Executor
        } else {
            Role::Platform
        };
        let manifest = federation::add_platform(&args.out, platform, role)?;
        println!("added platform {platform}; reload the server: nats-server --signal reload");
        manifest
    } else {
        let platforms = if args.platforms.is_empty() {
            DEFAULT_PLATFORMS.iter().map(|p| (*p).to_owned()).collect()
        } else {
            args.platforms.clone()
        };
        federation::init(&InitOptions {
            dir: args.out.clone(),
            platforms,
            executors: args.executors.clone(),
            admins: args.admins.clone(),
            hosts: args.hosts.clone(),
            url: args.url.clone(),
            server_base: crate::up::DEV_CONF.to_owned(),
            force: args.force,
        })?
    };
    print_summary(&FederationDir::new(&args.out), &manifest);
    Ok(())
}

fn print_summary(fed: &FederationDir, manifest: &Manifest) {
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
}
