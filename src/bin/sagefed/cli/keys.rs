//! `sagefed keys publish|list|rotate|revoke`: a platform's endorsed key records in the
//! registry, their rotation (the current key endorses its successor) and the root's
//! revocations.

use std::path::{Path, PathBuf};

use crate::cli::{FEDERATION_DIR_DEFAULT, NatsArgs};
use sage_federation::config::Config;
use sage_federation::identity::chain::{self, Endorser, Revocation, Succession};
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::federation::FederationDir;
use sage_federation::identity::keys::{self, KeyRecord};
use sage_federation::protocol::clock::Timestamp;
use std::time::Duration;

/// Default overlap of a rotation: the old key keeps verifying this long, in seconds.
pub const ROTATION_OVERLAP_SECONDS_DEFAULT: u64 = 3600;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Publish a platform's endorsed key records (beside its key file) to the registry
    Publish {
        #[command(flatten)]
        nats: NatsArgs,
        /// The platform's config
        #[arg(long)]
        config: PathBuf,
    },
    /// List every key the registry holds that chains to the root, and every revocation
    List {
        #[command(flatten)]
        nats: NatsArgs,
        /// The federation root's public key file
        #[arg(long, value_name = "FILE", default_value_os_t = crate::cli::default_root_public_key())]
        root: PathBuf,
    },
    /// Replace a platform's key: a new key endorsed by the current one, which keeps
    /// verifying for the overlap and then ends. Restart the platform's processes within the
    /// overlap so they sign with the new key.
    Rotate {
        #[command(flatten)]
        nats: NatsArgs,
        /// The platform's config (its keypair_path gets the new key)
        #[arg(long)]
        config: PathBuf,
        /// Seconds the old key keeps verifying
        #[arg(long, default_value_t = ROTATION_OVERLAP_SECONDS_DEFAULT)]
        overlap_seconds: u64,
    },
    /// Revoke a key, signed with the root key; it and every key it endorsed verify nothing
    /// from then on, in every verifier, including those started later
    Revoke {
        #[command(flatten)]
        nats: NatsArgs,
        /// The root's secret key file (kept offline; `root/root.key` of the federation)
        #[arg(long, value_name = "FILE", default_value_os_t = default_root_key())]
        root_key: PathBuf,
        /// The platform whose key is revoked
        #[arg(long)]
        platform: String,
        /// The key id to revoke (as `sagefed keys list` prints it)
        #[arg(long)]
        key_id: String,
        /// The admin identity that writes the revocation (only admins may)
        #[arg(long, default_value = crate::up::TREASURY)]
        admin: String,
    },
}

fn default_root_key() -> PathBuf {
    FederationDir::new(Path::new(FEDERATION_DIR_DEFAULT)).root_key()
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Publish { nats, config } => {
            let config = Config::load(&config)?;
            // A platform may write only its own keys: connect as the platform they belong to.
            let client = nats.connect(config.platform(), "sagefed-keys").await?;
            let js = async_nats::jetstream::new(client.clone());
            let directory = KeyDirectory::open(&js, &config.root_public_key()?).await?;
            for record in keys::read_records(&config.keypair_path())? {
                directory.publish(&record).await?;
                println!("published {}/{}", record.platform, record.key_id);
            }
            client.flush().await?;
        }
        KeysCommand::List { nats, root } => {
            let client = nats.connect(crate::up::TREASURY, "sagefed-keys").await?;
            let directory = KeyDirectory::open(
                &async_nats::jetstream::new(client),
                &crate::cli::read_root_public_key(&root)?,
            )
            .await?;
            print_registry(&directory.snapshot());
        }
        KeysCommand::Rotate {
            nats,
            config,
            overlap_seconds,
        } => rotate(&nats, &config, overlap_seconds).await?,
        KeysCommand::Revoke {
            nats,
            root_key,
            platform,
            key_id,
            admin,
        } => {
            let root = keys::read_secret(&root_key)?;
            let revocation = Revocation::signed(&platform, &key_id, Timestamp::now(), &root);
            let client = nats.connect(&admin, "sagefed-keys").await?;
            let directory =
                KeyDirectory::open(&async_nats::jetstream::new(client.clone()), &root.verifying_key()).await?;
            directory.publish_revocation(&revocation).await?;
            client.flush().await?;
            println!("revoked {platform}/{key_id}: it verifies nothing from now on");
        }
    }
    Ok(())
}

fn print_registry(registry: &keys::KeyRegistry) {
    let mut records: Vec<_> = registry.records().collect();
    records.sort_by(|a, b| {
        a.platform
            .cmp(&b.platform)
            .then(a.not_before.cmp(&b.not_before))
            .then(a.key_id.cmp(&b.key_id))
    });
    for r in records {
        let end = registry
            .successor(&r.platform, &r.key_id)
            .and_then(|s| s.replaces.as_ref())
            .map(|s| s.old_key_ends)
            .or(r.not_after)
            .map_or_else(|| "no end".to_owned(), |t| format!("{t:.0}"));
        let by = match r.endorsement.as_ref().map(|e| &e.endorser) {
            Some(Endorser::Key { key_id }) => format!("endorsed by {key_id}"),
            _ => "endorsed by the root".to_owned(),
        };
        let revoked = registry
            .revoked_at(&r.platform, &r.key_id)
            .map_or_else(String::new, |t| format!(" REVOKED at {t:.0}"));
        println!(
            "{:<12} {}  valid {:.0}..{end}  {by}{revoked}",
            r.platform, r.key_id, r.not_before
        );
    }
}

/// A new key for the platform `config` describes, endorsed by its current key: published
/// first, then written locally (the old key kept as `<keypair_path>.<key id>.retired`).
async fn rotate(nats: &NatsArgs, config: &Path, overlap_seconds: u64) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let key_path = config.keypair_path();
    let old = keys::read_secret(&key_path)?;
    let old_id = keys::key_id(&old.verifying_key());
    let mut records = keys::read_records(&key_path)?;
    let new = keys::generate()?;
    let now = Timestamp::now();
    let mut record = KeyRecord::new(config.platform(), &new.verifying_key(), now);
    // The successor holds what its endorser holds, never more.
    record.delegate = records.iter().any(|r| r.key_id == old_id && r.delegate);
    record.critical = records.iter().any(|r| r.key_id == old_id && r.critical);
    record.replaces = Some(Succession {
        key_id: old_id.clone(),
        old_key_ends: now + Duration::from_secs(overlap_seconds),
    });
    let record = chain::endorse(record, Endorser::Key { key_id: old_id.clone() }, &old);
    let client = nats.connect(config.platform(), "sagefed-keys").await?;
    let directory = KeyDirectory::open(&async_nats::jetstream::new(client.clone()), &config.root_public_key()?).await?;
    for earlier in &records {
        directory.publish(earlier).await?;
    }
    directory.publish(&record).await?;
    client.flush().await?;
    let mut retired = key_path.clone().into_os_string();
    retired.push(format!(".{old_id}.retired"));
    keys::write_secret(Path::new(&retired), &old, true)?;
    keys::write_secret(&key_path, &new, true)?;
    records.push(record.clone());
    keys::write_records(&key_path, &records)?;
    println!(
        "rotated {}: new key {} (endorsed by {old_id}); {old_id} verifies until {:.0} ({overlap_seconds} s)",
        config.platform(),
        record.key_id,
        now + Duration::from_secs(overlap_seconds)
    );
    Ok(())
}
