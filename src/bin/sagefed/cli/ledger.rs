//! `sagefed ledger serve`, `sagefed audit`, `sagefed balances`, `sagefed grant`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::cli::{NatsArgs, shutdown_signal};
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::federation::{LEDGER_IDENTITY, ROOT_PUBLIC_KEY_FILE};
use sage_federation::identity::keys;
use sage_federation::identity::unknown_keys::UNKNOWN_KEY_RECHECK_INTERVAL;
use sage_federation::ledger::audit::audit;
use sage_federation::ledger::client::LedgerClient;
use sage_federation::ledger::protocol::{Outcome, RejectCode};
use sage_federation::ledger::service::{LedgerOptions, serve};
use sage_federation::ledger::snapshot::LedgerSnapshot;
use sage_federation::nats::{infra, subjects};
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::lct::Lct;

/// Exit code of `sagefed audit` when an invariant is broken.
pub const EXIT_AUDIT_VIOLATION: u8 = 3;

#[derive(clap::Subcommand, Debug)]
pub enum LedgerCommand {
    /// Serve ledger requests (any number of instances share the work)
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Platform allowed to grant ATP (repeat for several)
    #[arg(long = "admin", value_name = "PLATFORM", default_value = "Treasury")]
    admins: Vec<String>,
    /// An admin public key (base64, as `keygen` prints it) pinned for grants: when given,
    /// only requests signed by a pinned key may grant (repeat for several)
    #[arg(long = "admin-key", value_name = "PUBLIC_KEY")]
    admin_keys: Vec<String>,
    /// The federation root's public key file (`root.pub` of the hub bundle): every key the
    /// ledger verifies must chain to it
    #[arg(long = "root", value_name = "FILE", default_value_os_t = crate::cli::default_root_public_key())]
    root: PathBuf,
    /// Do not sweep expired locks in this instance
    #[arg(long)]
    no_sweep: bool,
    /// How fast executors' reputation forgets, in seconds: a settlement counts half as much
    /// after this long (the default is a week)
    #[arg(long, value_name = "SECONDS", env = "SAGE_REPUTATION_HALF_LIFE_SECONDS",
          default_value_t = sage_federation::state::reputation::HALF_LIFE_SECONDS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    reputation_half_life: u64,
    /// Replicas for streams and buckets this instance creates when missing (3 on a cluster)
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    #[command(flatten)]
    metrics: crate::cli::observe::MetricsArgs,
}

/// Attempts to create the streams and buckets before giving up: on a cluster that is still
/// electing leaders (every node starting at once) a JetStream request times out.
const INFRA_ATTEMPTS_MAX: u32 = 10;
/// Pause between those attempts.
const INFRA_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

async fn ensure_infra(js: &async_nats::jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        match infra::ensure(js, replicas).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < INFRA_ATTEMPTS_MAX => {
                eprintln!("sagefed: {e}; trying again ({attempt}/{INFRA_ATTEMPTS_MAX})");
                attempt += 1;
                tokio::time::sleep(INFRA_RETRY_PAUSE).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn run(command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Serve(args) => {
            let client = args.nats.connect(LEDGER_IDENTITY, subjects::LEDGER_SERVICE).await?;
            let js = async_nats::jetstream::new(client.clone());
            ensure_infra(&js, args.replicas).await?;
            args.metrics.spawn().await?;
            let admins: BTreeSet<String> = args.admins.into_iter().collect();
            let admin_keys = args
                .admin_keys
                .iter()
                .map(|text| keys::parse_public_key(text).map(|key| keys::key_id(&key)))
                .collect::<Result<BTreeSet<String>, _>>()
                .context("--admin-key")?;
            let root = crate::cli::read_root_public_key(&args.root)?;
            eprintln!(
                "sagefed ledger serving on {} (admins: {})",
                args.nats.url,
                admins.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            serve(
                client,
                LedgerOptions {
                    admins,
                    admin_keys,
                    root,
                    sweep: !args.no_sweep,
                    reputation_half_life: std::time::Duration::from_secs(args.reputation_half_life),
                },
                shutdown_signal(),
            )
            .await?;
            Ok(())
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

/// Runs the audit; exit code 3 when an invariant is broken.
pub async fn audit_command(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let client = args.nats.connect(crate::up::TREASURY, "sagefed-audit").await?;
    let snapshot = LedgerSnapshot::read(&async_nats::jetstream::new(client)).await?;
    let report = audit(&snapshot, Timestamp::now());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let atp = |micros: u128| micros as f64 / 1e6;
        println!("ledger as of revision {}", report.revision);
        println!("  accounts       {}", report.accounts);
        println!(
            "  locks          {} pending, {} settled",
            report.locks_pending, report.locks_settled
        );
        println!("  balances       {} ATP", atp(report.balance_uatp));
        println!("  locked         {} ATP", atp(report.locked_uatp));
        println!(
            "  supply         {} ATP (grants: {} ATP)",
            atp(report.supply_uatp),
            atp(report.granted_uatp)
        );
        if report.is_clean() {
            println!("ok: balances + locked = supply, every lock live or settled once");
        }
        for violation in &report.violations {
            println!("VIOLATION {}: {}", violation.key, violation.problem);
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_AUDIT_VIOLATION)
    })
}

#[derive(clap::Args, Debug)]
pub struct BalancesArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Print the accounts as JSON
    #[arg(long)]
    json: bool,
}

pub async fn balances_command(args: &BalancesArgs) -> anyhow::Result<()> {
    let client = args.nats.connect(crate::up::TREASURY, "sagefed-balances").await?;
    let snapshot = LedgerSnapshot::read(&async_nats::jetstream::new(client)).await?;
    if args.json {
        let accounts: Vec<_> = snapshot
            .accounts
            .values()
            .map(|a| {
                serde_json::json!({
                    "lct": a.lct.to_string(),
                    "balance": a.balance_uatp.as_f64(),
                    "locked": a.locked_uatp.as_f64(),
                    "balance_uatp": a.balance_uatp.micros(),
                    "locked_uatp": a.locked_uatp.micros(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&accounts)?);
        return Ok(());
    }
    println!("{:<48} {:>16} {:>16}", "account", "balance ATP", "locked ATP");
    for account in snapshot.accounts.values() {
        println!(
            "{:<48} {:>16} {:>16}",
            account.lct.to_string(),
            account.balance_uatp.to_string(),
            account.locked_uatp.to_string()
        );
    }
    println!(
        "{} accounts; supply {} ATP",
        snapshot.accounts.len(),
        snapshot.supply.total_uatp
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct GrantArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The admin's secret key file
    #[arg(long)]
    key: PathBuf,
    /// The admin platform the key belongs to (must be a ledger admin)
    #[arg(long = "as", value_name = "PLATFORM", default_value = "Treasury")]
    admin: String,
    /// The account (LCT) that receives the ATP
    #[arg(long)]
    to: String,
    /// ATP to create
    #[arg(long, allow_negative_numbers = true)]
    amount: f64,
    /// Idempotency key: granting twice with the same id grants once [default: random]
    #[arg(long)]
    grant_id: Option<String>,
    /// The federation root's public key file, which the admin's key records (beside the key,
    /// `<key>.records.json`) chain to [default: `root.pub` beside the key, else
    /// .sagefed/federation/root/root.key.pub]
    #[arg(long, value_name = "FILE")]
    root: Option<PathBuf>,
}

/// The root public key `grant` checks the admin's records against: `--root`, else the
/// bundle's `root.pub` beside the key, else the one `sagefed up` made here.
fn grant_root(args: &GrantArgs) -> PathBuf {
    if let Some(root) = &args.root {
        return root.clone();
    }
    let beside = args.key.with_file_name(ROOT_PUBLIC_KEY_FILE);
    if beside.is_file() {
        beside
    } else {
        crate::cli::default_root_public_key()
    }
}

/// Publishes the admin's root-endorsed key records (`<key>.records.json`, from the bundle) to
/// the key directory, so that the ledger can verify the grant's signature. A key without
/// records (one `sagefed up` endorses and publishes itself) is left as it is.
async fn publish_admin_records(args: &GrantArgs, client: &async_nats::Client) -> anyhow::Result<bool> {
    if !keys::records_path(&args.key).is_file() {
        return Ok(false);
    }
    let records = keys::read_records(&args.key)?;
    let root = grant_root(args);
    let directory = KeyDirectory::open(
        &async_nats::jetstream::new(client.clone()),
        &crate::cli::read_root_public_key(&root)?,
    )
    .await
    .context("open the key directory to publish the admin's key record")?;
    for record in records.iter().filter(|r| r.platform == args.admin) {
        directory.publish(record).await.with_context(|| {
            format!(
                "publish {}'s key record {} (does it chain to {}?)",
                record.platform,
                record.key_id,
                root.display()
            )
        })?;
    }
    Ok(true)
}

/// How long `grant` keeps retrying a grant refused for its signature right after it
/// published the admin's key record: a ledger that looked the key up and missed it (an
/// earlier grant before the record existed) does not read it again for the key directory's
/// negative-cache interval, unless its watch delivers the record first.
const GRANT_KEY_WAIT: Duration = UNKNOWN_KEY_RECHECK_INTERVAL.saturating_add(Duration::from_secs(2));
const GRANT_RETRY_PAUSE: Duration = Duration::from_millis(500);

pub async fn grant_command(args: &GrantArgs) -> anyhow::Result<ExitCode> {
    let lct: Lct = args.to.parse()?;
    let key = keys::read_secret(&args.key)?;
    let signer = Signer::new(&args.admin, key)?;
    let grant_id = match &args.grant_id {
        Some(id) => id.clone(),
        None => format!(
            "g-{}",
            sage_federation::protocol::task::TaskId::random()
                .context("random grant id")?
                .as_str()
                .trim_start_matches("t-")
        ),
    };
    // Connect as the admin named by `--as` (its credentials unless `--creds` says otherwise).
    let client = args.nats.connect(&args.admin, "sagefed-grant").await?;
    let published = publish_admin_records(args, &client).await?;
    let ledger = LedgerClient::new(client, signer);
    let deadline = tokio::time::Instant::now() + GRANT_KEY_WAIT;
    let reply = loop {
        // Idempotent by grant id: a retry never grants twice.
        let reply = ledger.grant(&grant_id, &lct, args.amount).await?;
        if !(published && reply.code == Some(RejectCode::BadSignature) && tokio::time::Instant::now() < deadline) {
            break reply;
        }
        tokio::time::sleep(GRANT_RETRY_PAUSE).await;
    };
    println!("{:?}: {}", reply.outcome, reply.message);
    Ok(if reply.outcome == Outcome::Rejected {
        ExitCode::from(crate::cli::EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}
