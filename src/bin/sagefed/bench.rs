//! `sagefed bench`: latency and throughput against a real nats-server, each figure next to a
//! floor measured in the same run on the same server, so the ratios mean something on any
//! machine.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use bytes::Bytes;
use futures::future::join_all;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::Semaphore;

use sage_federation::identity::chain::{self, Endorser};
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::federation::{Grants, endorse_key_file, throwaway_server};
use sage_federation::identity::keys::{self, KeyRecord};
use sage_federation::ledger::batch::{self, BatchMessage};
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::protocol::{LedgerReply, Outcome};
use sage_federation::ledger::service::{LedgerOptions, LedgerService};
use sage_federation::nats::connection::NatsAccess;
use sage_federation::nats::server::{self as nats_server, NatsServer, ServerOptions};
use sage_federation::nats::subjects;
use sage_federation::nats::{connection, infra, server_config};
use sage_federation::protocol::atp::{Atp, MICROS_PER_ATP};
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::lct::Lct;
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::TaskId;

/// The bench's own server config: the test config (sync_interval: always).
const BENCH_CONF: &str = include_str!("../../../nats/test.conf");

/// Latency distribution of one measured operation.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub count: usize,
    pub in_flight: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub per_second: f64,
    /// p50 of this figure over the p50 of the run's floor.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

/// Records latencies and turns them into a [`Figure`].
fn figure(name: &str, mut samples: Vec<Duration>, in_flight: usize, wall: Duration) -> Figure {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len().max(1)) - 1;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Figure {
        name: name.to_owned(),
        count: samples.len(),
        in_flight,
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: at(1.0),
        per_second: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
        p50_ratio: 0.0,
        p99_ratio: 0.0,
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure
    #[arg(value_enum)]
    pub target: BenchTarget,
    /// Tasks per scenario
    #[arg(long, default_value_t = 2000)]
    pub tasks: usize,
    /// Operations in flight in the concurrent scenarios
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,
    /// Where nats-server is installed when it is not found [default: $SAGE_TOOLS_DIR or ./.tools]
    #[arg(long)]
    pub tools_dir: Option<PathBuf>,
    /// The server's durability: fsync before every ack (`always`, what sagefed ships) or the
    /// JetStream default (fsync every 2 minutes)
    #[arg(long, value_enum, default_value_t = Durability::Always)]
    pub durability: Durability,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// sync_interval: always
    Always,
    /// JetStream's default sync interval (2 minutes)
    Default,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTarget {
    /// Ledger lock + commit, many accounts and one hot account, against raw KV CAS
    Ledger,
    /// Whole signed, settled delegations, against the bare task round trip
    Delegation,
}

/// Runs the bench on a fresh local server and prints the figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let tools = args.tools_dir.clone().unwrap_or_else(nats_server::default_tools_dir);
    let binary = nats_server::find_or_install(&tools)?;
    let dir = std::env::temp_dir().join(format!("sagefed-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("bench.conf");
    let conf = match args.durability {
        Durability::Always => BENCH_CONF.to_owned(),
        Durability::Default => BENCH_CONF.replace("sync_interval: always", ""),
    };
    // Credentials and TLS made for this run: nobody else on the machine can connect to the
    // bench's server, and the figures include the TLS a federation pays.
    let secured = throwaway_server(&dir.join("secrets"))?;
    let conf = format!(
        "{conf}\n{}\n{}",
        server_config::single_user_block(&secured.nkey),
        server_config::tls_block(&secured.server_cert, &secured.server_key)
    );
    std::fs::write(&config, conf)?;
    let mut server = NatsServer::start(
        &binary,
        ServerOptions {
            config_file: Some(config),
            store_dir: dir.join("store"),
            port: None,
            log_file: dir.join("server.log"),
        },
    )
    .await?;
    let access = NatsAccess::secure(&server.url(), &secured.creds, &secured.ca_cert);
    let progress = progress_bar(args.json);
    let result = match args.target {
        BenchTarget::Ledger => ledger(&access, &args, &progress).await,
        BenchTarget::Delegation => delegation(&access, &args, &dir, &progress).await,
    };
    progress.finish_and_clear();
    server.stop(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
    let figures = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print_table(&figures);
    }
    Ok(())
}

/// How often the progress line redraws, in times per second.
const PROGRESS_REDRAWS_PER_SECOND: u8 = 4;

/// A progress line on stderr: the scenario running and the operations done in it. Hidden when
/// stderr is not a terminal (indicatif checks) and with `--json`, so scripts see only results.
fn progress_bar(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(PROGRESS_REDRAWS_PER_SECOND));
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}: {pos} done");
    bar.set_style(style.unwrap_or_else(|_| ProgressStyle::default_spinner()));
    bar.set_message("starting a server");
    bar.enable_steady_tick(Duration::from_millis(1000 / u64::from(PROGRESS_REDRAWS_PER_SECOND)));
    bar
}

/// Names the next scenario on the progress line and restarts its count.
fn start_scenario(progress: &ProgressBar, name: &str) {
    progress.set_message(name.to_owned());
    progress.set_position(0);
}

fn print_table(figures: &[Figure]) {
    println!(
        "{:<52} {:>6} {:>9} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8}",
        "scenario", "n", "in flight", "p50 us", "p99 us", "max us", "per s", "p50 x", "p99 x"
    );
    for f in figures {
        println!(
            "{:<52} {:>6} {:>9} {:>10.0} {:>10.0} {:>10.0} {:>9.0} {:>8.1} {:>8.1}",
            f.name, f.count, f.in_flight, f.p50_us, f.p99_us, f.max_us, f.per_second, f.p50_ratio, f.p99_ratio
        );
    }
    println!("ratios: over the floor named in the first row with the same in-flight count, measured in this run");
    println!("{}", BENCH_SERVER_NOTE);
}

/// Why the bench's server is open, printed under every table (see the README).
const BENCH_SERVER_NOTE: &str = "server: TLS and one nkey user, both made for this run (nobody else \
     can connect); its synthetic platforms are not identities of a federation, so the figures leave \
     out the per-identity permission checks that `sagefed up`'s server makes";

/// Everything the ledger scenarios need: a service, signers, funded accounts.
struct LedgerBench {
    client: async_nats::Client,
    signers: Vec<Signer>,
    executor: Signer,
    service: LedgerService,
    progress: ProgressBar,
}

const BENCH_TASK_TYPE: &str = "consciousness";
const EXECUTOR_TASK_TYPE: &str = "consciousness.sage";

async fn ledger_setup(
    access: &NatsAccess,
    accounts: usize,
    atp_each: f64,
    progress: &ProgressBar,
) -> anyhow::Result<LedgerBench> {
    start_scenario(progress, "setting up accounts");
    let client = connection::connect(access, "sagefed-bench").await?;
    let js = jetstream::new(client.clone());
    infra::ensure(&js, 1).await?;
    // The bench's own federation root, vouching for every key it makes.
    let root = keys::generate()?;
    let directory = KeyDirectory::open(&js, &root.verifying_key()).await?;
    let treasury = Signer::new("Treasury", keys::generate()?)?;
    let executor = Signer::new("Executor", keys::generate()?)?;
    let mut signers = Vec::new();
    for i in 0..accounts {
        signers.push(Signer::new(&format!("P{i}"), keys::generate()?)?);
    }
    for signer in signers.iter().chain([&treasury, &executor]) {
        directory
            .publish(&chain::endorse(
                KeyRecord {
                    delegate: true,
                    ..KeyRecord::new(signer.platform(), &signer.verifying_key(), Timestamp::EPOCH)
                },
                Endorser::Root,
                &root,
            ))
            .await?;
    }
    let service = LedgerService::start(
        client.clone(),
        LedgerOptions {
            admins: BTreeSet::from(["Treasury".to_owned()]),
            admin_keys: BTreeSet::new(),
            root: root.verifying_key(),
            sweep: true,
            reputation_half_life: std::time::Duration::from_secs(
                sage_federation::state::reputation::HALF_LIFE_SECONDS_DEFAULT,
            ),
        },
    )
    .await?;
    let treasury = LedgerClient::new(client.clone(), treasury);
    for signer in &signers {
        let lct = Lct::new("bench", signer.platform(), BENCH_TASK_TYPE)?;
        let reply = treasury
            .grant(&format!("bench-{}", signer.platform()), &lct, atp_each)
            .await?;
        anyhow::ensure!(reply.outcome != Outcome::Rejected, "grant refused: {}", reply.message);
    }
    Ok(LedgerBench {
        client,
        signers,
        executor,
        service,
        progress: progress.clone(),
    })
}

/// One lock and its commit; returns the two latencies.
async fn lock_commit(
    delegator: &LedgerClient,
    executor: &Signer,
    task_id: TaskId,
) -> anyhow::Result<(Duration, Duration)> {
    let from = Lct::new("bench", delegator.platform(), BENCH_TASK_TYPE)?;
    let to = Lct::new("bench", executor.platform(), EXECUTOR_TASK_TYPE)?;
    let now = Timestamp::now();
    let start = Instant::now();
    let reply = delegator
        .lock(&LockTerms {
            task_id: task_id.clone(),
            delegator: from.clone(),
            executor: to.clone(),
            amount: Atp::from_micros(MICROS_PER_ATP),
            quality_threshold: 0.7,
            deadline: now + Duration::from_secs(60),
            expires_at: now + Duration::from_secs(120),
        })
        .await?;
    let locked = start.elapsed();
    expect_applied(&reply)?;
    let proof = ExecutionProof {
        task_id: task_id.clone(),
        executor_lct: to,
        delegator_lct: from,
        status: ProofStatus::Completed,
        reason: String::new(),
        atp_consumed: 0.5,
        execution_time: 0.0,
        quality_score: 0.9,
        result: serde_json::Map::new(),
        created_at: Timestamp::now(),
    };
    let proof = executor.sign(&proof)?;
    let start = Instant::now();
    let reply = delegator.commit(&task_id, &proof).await?;
    let committed = start.elapsed();
    expect_applied(&reply)?;
    Ok((locked, committed))
}

fn expect_applied(reply: &LedgerReply) -> anyhow::Result<()> {
    anyhow::ensure!(
        reply.outcome == Outcome::Applied,
        "ledger refused: {:?} {}",
        reply.code,
        reply.message
    );
    Ok(())
}

/// Raw KV compare-and-swap on distinct keys, sequential: the floor.
async fn kv_cas_floor(js: &jetstream::Context, count: usize) -> anyhow::Result<Figure> {
    let kv = js.get_key_value(subjects::PLATFORMS_BUCKET).await?;
    let mut revision = kv.put(subjects::BENCH_CAS_FLOOR_KEY, Bytes::from_static(b"0")).await?;
    let mut samples = Vec::with_capacity(count);
    let wall = Instant::now();
    for i in 0..count {
        let start = Instant::now();
        revision = kv
            .update(subjects::BENCH_CAS_FLOOR_KEY, Bytes::from(i.to_string()), revision)
            .await?;
        samples.push(start.elapsed());
    }
    Ok(figure(
        "floor: raw KV compare-and-swap, 1 writer",
        samples,
        1,
        wall.elapsed(),
    ))
}

/// Raw KV CAS by `writers` concurrent writers on ONE key, blind retry: what the ledger avoids.
async fn kv_cas_hot(js: &jetstream::Context, count: usize, writers: usize) -> anyhow::Result<Figure> {
    let kv = js.get_key_value(subjects::PLATFORMS_BUCKET).await?;
    kv.put(subjects::BENCH_CAS_HOT_KEY, Bytes::from_static(b"0")).await?;
    let per_writer = count / writers.max(1);
    let wall = Instant::now();
    let runs = join_all((0..writers).map(|_| {
        let kv = kv.clone();
        async move {
            let mut samples = Vec::with_capacity(per_writer);
            for _ in 0..per_writer {
                let start = Instant::now();
                loop {
                    let Some(entry) = kv.entry(subjects::BENCH_CAS_HOT_KEY).await? else {
                        anyhow::bail!("key vanished")
                    };
                    if kv
                        .update(subjects::BENCH_CAS_HOT_KEY, entry.value.clone(), entry.revision)
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
                samples.push(start.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        }
    }))
    .await;
    let mut samples = Vec::new();
    for run in runs {
        samples.extend(run?);
    }
    Ok(figure(
        &format!("raw KV CAS, {writers} writers on 1 key, blind retry"),
        samples,
        writers,
        wall.elapsed(),
    ))
}

/// One atomic batch of `size` creates, sequential: the server's own cost (3 is a lock's shape,
/// 150 a busy group's).
async fn batch_floor(client: &async_nats::Client, count: usize, size: usize) -> anyhow::Result<Figure> {
    let mut samples = Vec::with_capacity(count);
    let subject = |key: String| subjects::kv_subject(subjects::LEDGER_BUCKET, &key);
    let payload = Bytes::from(vec![b'x'; 300]);
    let wall = Instant::now();
    for i in 0..count {
        let messages = (0..size)
            .map(|k| {
                BatchMessage::new(subject(subjects::bench_floor_key(size, i, k)), payload.clone())
                    .expect_last_subject_sequence(0)
            })
            .collect();
        let start = Instant::now();
        batch::publish_atomic(client, &batch::new_batch_id(client), messages).await?;
        samples.push(start.elapsed());
    }
    Ok(figure(
        &format!("raw atomic batch of {size} creates, 1 in flight"),
        samples,
        1,
        wall.elapsed(),
    ))
}

/// Runs lock+commit for `tasks` tasks, `in_flight` at a time, delegators chosen by `pick`.
async fn lock_commit_scenario(
    bench: &LedgerBench,
    name: &str,
    tasks: usize,
    in_flight: usize,
    pick: impl Fn(usize) -> usize,
) -> anyhow::Result<Vec<Figure>> {
    let clients: Vec<LedgerClient> = bench
        .signers
        .iter()
        .map(|s| LedgerClient::new(bench.client.clone(), s.clone()))
        .collect();
    start_scenario(&bench.progress, &format!("ledger lock + commit, {name}"));
    let gate = Arc::new(Semaphore::new(in_flight));
    let wall = Instant::now();
    let runs = join_all((0..tasks).map(|i| {
        let client = clients[pick(i) % clients.len()].clone();
        let executor = bench.executor.clone();
        let gate = Arc::clone(&gate);
        let progress = bench.progress.clone();
        async move {
            let _permit = gate.acquire().await?;
            let task_id: TaskId = format!("t-bench-{}-{i}", name.replace(' ', "-"))
                .parse()
                .map_err(anyhow::Error::msg)?;
            let start = Instant::now();
            let (lock, commit) = lock_commit(&client, &executor, task_id).await?;
            progress.inc(1);
            Ok::<_, anyhow::Error>((lock, commit, start.elapsed()))
        }
    }))
    .await;
    let wall = wall.elapsed();
    let (mut locks, mut commits, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for run in runs {
        let (lock, commit, total) = run?;
        locks.push(lock);
        commits.push(commit);
        both.push(total);
    }
    Ok(vec![
        figure(&format!("ledger lock, {name}"), locks, in_flight, wall),
        figure(&format!("ledger commit (settlement), {name}"), commits, in_flight, wall),
        figure(&format!("ledger lock + commit, {name}"), both, in_flight, wall),
    ])
}

async fn ledger(access: &NatsAccess, args: &BenchArgs, progress: &ProgressBar) -> anyhow::Result<Vec<Figure>> {
    let accounts = args.concurrency.max(1);
    let bench = ledger_setup(access, accounts, 1e9, progress).await?;
    start_scenario(progress, "floors: raw KV compare-and-swap, batches");
    let js = jetstream::new(bench.client.clone());
    let sequential = (args.tasks / 4).max(50);
    let floor = kv_cas_floor(&js, sequential).await?;
    let mut figures = vec![floor.clone()];
    figures.push(batch_floor(&bench.client, sequential, 3).await?);
    figures.push(batch_floor(&bench.client, (sequential / 5).max(20), 150).await?);
    figures.push(kv_cas_hot(&js, sequential, 10).await?);
    figures.extend(lock_commit_scenario(&bench, "1 in flight", sequential, 1, |i| i).await?);
    let name = format!("{} accounts", accounts);
    figures.extend(lock_commit_scenario(&bench, &name, args.tasks, args.concurrency, |i| i).await?);
    figures.extend(lock_commit_scenario(&bench, "one hot account", args.tasks, args.concurrency, |_| 0).await?);
    bench.service.stop().await;
    for f in &mut figures {
        f.p50_ratio = f.p50_us / floor.p50_us.max(1e-9);
        f.p99_ratio = f.p99_us / floor.p50_us.max(1e-9);
    }
    Ok(figures)
}

/// The bare task round trip: publish to a work-queue stream, a worker pulls it, replies on a
/// core subject and acks; what a delegation costs without signing, checks, ledger or proofs.
async fn task_round_trip(client: &async_nats::Client, count: usize, in_flight: usize) -> anyhow::Result<Figure> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: subjects::BENCH_ROUND_TRIP_STREAM.to_owned(),
            subjects: vec![subjects::BENCH_ROUND_TRIP_SUBJECT.to_owned()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            subjects::BENCH_ROUND_TRIP_CONSUMER,
            jetstream::consumer::pull::Config {
                durable_name: Some(subjects::BENCH_ROUND_TRIP_CONSUMER.to_owned()),
                max_ack_pending: 1000,
                ..Default::default()
            },
        )
        .await?;
    let worker_client = client.clone();
    let worker = tokio::spawn(async move {
        let Ok(mut messages) = consumer.messages().await else {
            return;
        };
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let Some(reply) = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Bench-Reply"))
                .map(|v| v.to_string())
            {
                let _ = worker_client.publish(reply, message.payload.clone()).await;
            }
            let _ = message.ack().await;
        }
    });
    // One reply subscription for all requests, as a real client has.
    let prefix = client.new_inbox();
    let mut replies = client.subscribe(format!("{prefix}.*")).await?;
    let waiting: Arc<std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<()>>>> =
        Arc::default();
    let dispatcher = {
        let waiting = Arc::clone(&waiting);
        tokio::spawn(async move {
            while let Some(reply) = futures::StreamExt::next(&mut replies).await {
                if let Some(tx) = waiting.lock().ok().and_then(|mut w| w.remove(reply.subject.as_str())) {
                    let _ = tx.send(());
                }
            }
        })
    };
    let gate = Arc::new(Semaphore::new(in_flight));
    let payload = Bytes::from(vec![b'x'; 512]);
    let wall = Instant::now();
    let runs = join_all((0..count).map(|i| {
        let (js, gate, payload, waiting) = (js.clone(), Arc::clone(&gate), payload.clone(), Arc::clone(&waiting));
        let reply = format!("{prefix}.{i}");
        async move {
            let _permit = gate.acquire().await?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiting
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(reply.clone(), tx);
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Bench-Reply", reply.as_str());
            let start = Instant::now();
            js.publish_with_headers(subjects::BENCH_ROUND_TRIP_SUBJECT, headers, payload)
                .await?
                .await?;
            rx.await?;
            Ok::<_, anyhow::Error>(start.elapsed())
        }
    }))
    .await;
    let wall = wall.elapsed();
    worker.abort();
    dispatcher.abort();
    js.delete_stream(subjects::BENCH_ROUND_TRIP_STREAM).await?;
    let samples = runs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(figure(
        &format!("floor: bare task round trip, {in_flight} in flight"),
        samples,
        in_flight,
        wall,
    ))
}

/// The delegation bench's root key file, in its directory.
const BENCH_ROOT_FILE: &str = "root.key";

/// A platform config for the delegation bench: generous limits, a key in `dir`.
fn bench_config(
    dir: &std::path::Path,
    platform: &str,
    url: &str,
    capacity: u32,
) -> anyhow::Result<sage_federation::config::Config> {
    let path = dir.join(format!("{}.toml", platform.to_lowercase()));
    let text = format!(
        "[federation]\nplatform_name = \"{platform}\"\nlct_context = \"{platform}\"\nkeypair_path = \"{platform}.key\"\n\
         root_public_key_path = \"{root}.pub\"\n\
         [nats]\nurl = \"{url}\"\n[resources.consciousness]\natp_budget = 1000000.0\nmax_concurrent = {capacity}\n\
         [permissions]\nrequests_per_minute = 10000000\n",
        root = BENCH_ROOT_FILE
    );
    std::fs::write(&path, text)?;
    let root = keys::read_secret(&dir.join(BENCH_ROOT_FILE))?;
    endorse_key_file(
        &root,
        platform,
        &dir.join(format!("{platform}.key")),
        Grants {
            delegate: true,
            critical: false,
        },
    )?;
    Ok(sage_federation::config::Config::load(&path)?)
}

async fn delegation(
    access: &NatsAccess,
    args: &BenchArgs,
    dir: &std::path::Path,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Figure>> {
    start_scenario(progress, "floor: bare task round trips");
    let url = access.url.clone();
    let client = connection::connect(access, "sagefed-bench").await?;
    let js = jetstream::new(client.clone());
    infra::ensure(&js, 1).await?;
    let sequential = (args.tasks / 10).max(50);
    let mut figures = vec![task_round_trip(&client, sequential, 1).await?];
    figures.push(task_round_trip(&client, args.tasks, args.concurrency).await?);

    let root = keys::generate()?;
    keys::write_secret(&dir.join(BENCH_ROOT_FILE), &root, true)?;
    let treasury = Signer::new("Treasury", keys::generate()?)?;
    KeyDirectory::open(&js, &root.verifying_key())
        .await?
        .publish(&chain::endorse(
            KeyRecord::new("Treasury", &treasury.verifying_key(), Timestamp::EPOCH),
            Endorser::Root,
            &root,
        ))
        .await?;
    let service = LedgerService::start(
        connection::connect(access, "sagefed-bench-ledger").await?,
        LedgerOptions {
            admins: BTreeSet::from(["Treasury".to_owned()]),
            admin_keys: BTreeSet::new(),
            root: root.verifying_key(),
            sweep: true,
            reputation_half_life: std::time::Duration::from_secs(
                sage_federation::state::reputation::HALF_LIFE_SECONDS_DEFAULT,
            ),
        },
    )
    .await?;
    let capacity = u32::try_from(args.concurrency).unwrap_or(u32::MAX).max(1);
    let executor = bench_config(dir, "Legion", &url, capacity)?;
    let delegator = bench_config(dir, "Thor", &url, 1)?;
    let treasury = LedgerClient::new(client.clone(), treasury);
    let lct = delegator.lct("consciousness")?;
    let reply = treasury.grant("bench-Thor", &lct, 1e6).await?;
    anyhow::ensure!(reply.is_ok(), "grant refused: {}", reply.message);
    let worker =
        sage_federation::worker::Worker::start(executor, connection::connect(access, "sagefed-bench-worker").await?)
            .await?;
    let federation =
        Arc::new(sage_federation::delegation::client::FederationClient::new(delegator, client.clone()).await?);

    start_scenario(progress, "signed, settled delegations, 1 in flight");
    let one = delegations(&federation, sequential, 1, progress).await?;
    figures.push(figure("signed, settled delegation, 1 in flight", one.0, 1, one.1));
    start_scenario(
        progress,
        &format!("signed, settled delegations, {} in flight", args.concurrency),
    );
    let many = delegations(&federation, args.tasks, args.concurrency, progress).await?;
    figures.push(figure(
        &format!("signed, settled delegation, {} in flight", args.concurrency),
        many.0,
        args.concurrency,
        many.1,
    ));

    let report = sage_federation::ledger::audit::audit(
        &sage_federation::ledger::snapshot::LedgerSnapshot::read(&js).await?,
        Timestamp::now(),
    );
    anyhow::ensure!(
        report.is_clean(),
        "the audit failed after the bench: {:?}",
        report.violations
    );
    worker.stop().await;
    service.stop().await;
    let floors = [figures[0].p50_us, figures[1].p50_us];
    for f in &mut figures {
        let floor = if f.in_flight == 1 { floors[0] } else { floors[1] };
        f.p50_ratio = f.p50_us / floor.max(1e-9);
        f.p99_ratio = f.p99_us / floor.max(1e-9);
    }
    // A summary for people: stderr, so that `--json` output stays pure JSON.
    eprintln!(
        "{} delegations committed, none lost; audit clean (supply {} ATP)",
        sequential + args.tasks,
        report.supply_uatp as f64 / 1e6
    );
    Ok(figures)
}

/// Runs `count` delegations, `in_flight` at a time; every one must be committed.
async fn delegations(
    federation: &Arc<sage_federation::delegation::client::FederationClient>,
    count: usize,
    in_flight: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let gate = Arc::new(Semaphore::new(in_flight));
    let wall = Instant::now();
    let runs = join_all((0..count).map(|_| {
        let (federation, gate) = (Arc::clone(federation), Arc::clone(&gate));
        let progress = progress.clone();
        async move {
            let _permit = gate.acquire().await?;
            let start = Instant::now();
            let outcome = federation
                .delegate_task(sage_federation::delegation::client::DelegationRequest {
                    to: Some("Legion".to_owned()),
                    task_type: "consciousness".to_owned(),
                    operation: "execution".to_owned(),
                    budget: 1.0,
                    timeout_seconds: 30,
                    parameters: serde_json::json!({"steps": [{"op": "add", "args": [1, 2]}]})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    task_id: None,
                })
                .await?;
            anyhow::ensure!(
                outcome.settlement == sage_federation::ledger::model::LockState::Committed,
                "not committed: {outcome:?}"
            );
            progress.inc(1);
            Ok::<_, anyhow::Error>(start.elapsed())
        }
    }))
    .await;
    let wall = wall.elapsed();
    Ok((runs.into_iter().collect::<anyhow::Result<Vec<_>>>()?, wall))
}
