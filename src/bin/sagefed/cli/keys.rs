//! `sagefed keys publish|list`.

use std::path::PathBuf;

use crate::cli::NatsArgs;
use sage_federation::config::Config;
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::keys::{self, KeyRecord};
use sage_federation::protocol::envelope::Signer;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Publish a platform's public keys (from its config, or one key file) to the registry
    Publish(PublishArgs),
    /// List every key in the registry with its validity window
    List {
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Publish the keys of the platform this config describes
    #[arg(long, conflicts_with_all = ["platform", "key"])]
    config: Option<PathBuf>,
    /// Platform of a single key file (with --key)
    #[arg(long, requires = "key")]
    platform: Option<String>,
    /// A secret key file written by `sagefed keygen` (with --platform)
    #[arg(long, requires = "platform")]
    key: Option<PathBuf>,
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Publish(args) => {
            let records = match (&args.config, &args.platform, &args.key) {
                (Some(path), _, _) => {
                    let config = Config::load(path)?;
                    let key = keys::read_secret(&config.keypair_path())?;
                    config.key_records(&key.verifying_key())
                }
                (None, Some(platform), Some(path)) => {
                    let signer = Signer::new(platform, keys::read_secret(path)?)?;
                    vec![KeyRecord::new(platform, &signer.verifying_key(), 0.0)]
                }
                _ => anyhow::bail!("pass --config FILE, or --platform NAME with --key FILE"),
            };
            // A platform may write only its own keys: connect as the platform they belong to.
            let identity = records.first().map_or(crate::up::TREASURY, |r| r.platform.as_str());
            let client = args.nats.connect(identity, "sagefed-keys").await?;
            let directory = KeyDirectory::open(&async_nats::jetstream::new(client.clone())).await?;
            for record in &records {
                directory.publish(record).await?;
                println!("published {}/{}", record.platform, record.key_id);
            }
            client.flush().await?;
        }
        KeysCommand::List { nats } => {
            let client = nats.connect(crate::up::TREASURY, "sagefed-keys").await?;
            let directory = KeyDirectory::open(&async_nats::jetstream::new(client)).await?;
            let registry = directory.snapshot();
            let mut records: Vec<_> = registry.records().collect();
            records.sort_by(|a, b| (&a.platform, &a.key_id).cmp(&(&b.platform, &b.key_id)));
            for r in records {
                let end = r.not_after.map_or_else(|| "no end".to_owned(), |t| format!("{t:.0}"));
                let revoked = r.revoked_at.map_or_else(String::new, |t| format!(" REVOKED at {t:.0}"));
                println!(
                    "{:<12} {}  valid {:.0}..{end}{revoked}",
                    r.platform, r.key_id, r.not_before
                );
            }
        }
    }
    Ok(())
}
