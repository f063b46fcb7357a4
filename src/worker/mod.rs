//! `sagefed worker`: a platform's worker process. Pulls the platform's tasks from its two
//! durable consumers (each shared by every worker process of the platform): the critical
//! lane's first, then the normal queue's. Checks and executes them, publishes signed proofs
//! and settles. Alongside: the platform's registry heartbeat, aborts of cancelled tasks,
//! the settler of proofs addressed to this platform, and the status service.
//!
//! - [`ops`]: the operation handlers.
//! - `checks`: the executor's checks.
//! - `admission`: rate limits, concurrency and budget caps.
//! - `run`: one task from message to acknowledgement; a task delivered more than
//!   `worker.max_deliver` times (its workers died or hung on it) is dead-lettered instead.

mod aborts;
mod admission;
mod checks;
#[cfg(test)]
mod checks_table;
pub mod ops;
mod run;
pub mod witness;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use async_nats::{Client, jetstream::consumer::AckPolicy};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::delegation::client::FederationClient;
use crate::identity::directory::KeyDirectory;
use crate::ledger::client::{LedgerClient, LedgerReader};
use crate::nats::subjects;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::Signer;
use crate::protocol::task::{Lane, TaskId};
use crate::state::registry::{HEARTBEAT_INTERVAL, PlatformRecord, Registry};
use crate::state::task_board::{TaskBoard, TaskState};
use crate::worker::admission::{Admissions, RateLimiter};
use crate::worker::ops::Operations;

pub use run::{DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER, PROGRESS_REPORTS_PER_ACK_WAIT};

/// How long a stopping worker lets running tasks finish before it leaves them to be
/// delivered again.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause before pulling again after the consumer's message stream failed.
const PULL_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Fewest tasks one pull asks for (and the consumers hand over before an ack). async-nats
/// 0.51's pull stream counts a pull as outstanding when its task arrived before the pull's
/// own acknowledgement; asking for one task at a time, it then waits out a whole pull expiry
/// (35 s) with tasks queued. Two keep it pulling; the extra one waits for a free place.
const PULL_BATCH_MIN: usize = 2;

/// Tasks one pull asks for, and the most a consumer hands this platform before an ack.
fn pull_batch(capacity: u32) -> usize {
    (capacity as usize).max(PULL_BATCH_MIN)
}

/// What every task handler of a worker process shares.
pub struct WorkerContext {
    pub config: Config,
    pub js: jetstream::Context,
    pub signer: Signer,
    pub keys: Arc<KeyDirectory>,
    pub ledger: LedgerClient,
    pub reader: LedgerReader,
    pub board: TaskBoard,
    pub registry: Registry,
    pub operations: Operations,
    pub limiter: RateLimiter,
    pub admissions: Admissions,
    /// Abort handles of the runs in flight now.
    pub aborts: aborts::Aborts,
    /// This process, as task status records name it.
    pub worker_id: String,
}

impl WorkerContext {
    /// Tasks this platform executes at once: the sum of its per-type maximums.
    pub fn capacity(&self) -> u32 {
        self.config
            .resources
            .values()
            .map(|r| r.max_concurrent)
            .sum::<u32>()
            .max(1)
    }

    fn record(&self) -> PlatformRecord {
        PlatformRecord {
            platform: self.config.platform().to_owned(),
            capabilities: self.config.resources.keys().map(|t| t.as_str().to_owned()).collect(),
            operations: self
                .config
                .permissions
                .execute
                .iter()
                .map(|o| o.as_str().to_owned())
                .filter(|o| self.operations.get(o).is_some())
                .collect(),
            delegate: self.config.permissions.delegate,
            key_id: self.signer.key_id().to_owned(),
            load: self.admissions.load(),
            capacity: self.capacity(),
            heartbeat_at: Timestamp::now(),
        }
    }
}

/// The operations `config` offers: the built-ins, with configured external programs on top.
pub fn operations_for(config: &Config) -> Operations {
    config.operations.iter().fold(Operations::builtin(), |ops, (name, op)| {
        ops.with_external(
            name.as_str(),
            op.command.clone(),
            &config.base_dir,
            op.atp_per_second.atp(),
            &op.run_as,
        )
    })
}

/// A running worker process's tasks.
pub struct Worker {
    ctx: Arc<WorkerContext>,
    tasks: Vec<JoinHandle<()>>,
    puller: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
    status: crate::delegation::status::StatusService,
}

impl Worker {
    /// Starts a worker for the platform `config` describes. The streams and buckets must
    /// exist (`sagefed up` or `sagefed ledger serve` create them).
    pub async fn start(config: Config, client: Client) -> Result<Self, WorkerStartError> {
        let js = jetstream::new(client.clone());
        let (signer, keys) = KeyDirectory::open_as(&config, &js).await?;
        let keys = Arc::new(keys);
        let ctx = Arc::new(WorkerContext {
            limiter: RateLimiter::new(config.permissions.requests_per_minute),
            operations: operations_for(&config),
            ledger: LedgerClient::new(client.clone(), signer.clone()),
            reader: LedgerReader::open(&js).await?,
            board: TaskBoard::open(&js).await?,
            registry: Registry::open(&js, Arc::clone(&keys)).await?,
            admissions: Admissions::default(),
            aborts: aborts::Aborts::default(),
            worker_id: format!("{}-{}", config.platform(), std::process::id()),
            keys: Arc::clone(&keys),
            signer,
            js: js.clone(),
            config,
        });
        ctx.registry.register_platform(&ctx.signer, &ctx.record()).await?;
        let lanes = Lanes {
            critical: ensure_consumer(&ctx, Lane::Critical).await?,
            normal: ensure_consumer(&ctx, Lane::Normal).await?,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(heartbeat(Arc::clone(&ctx))),
            tokio::spawn(listen_for_aborts(Arc::clone(&ctx), client.clone())),
            tokio::spawn(witness::listen(Arc::clone(&ctx), client.clone())),
        ];
        let settler = FederationClient::new(ctx.config.clone(), client.clone()).await?;
        tasks.push(tokio::spawn(async move { settler.settle_orphaned_proofs().await }));
        let status =
            crate::delegation::status::StatusService::start(client.clone(), &ctx.config.root_public_key()?).await?;
        let puller = tokio::spawn(pull(Arc::clone(&ctx), lanes, stopped));
        tracing::info!(
            platform = ctx.config.platform(),
            capacity = ctx.capacity(),
            "worker ready"
        );
        Ok(Self {
            ctx,
            tasks,
            puller,
            stop,
            status,
        })
    }

    pub fn platform(&self) -> &str {
        self.ctx.config.platform()
    }

    /// Stops pulling, lets running tasks finish (up to a grace period), stops the rest.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), self.puller).await;
        for task in &self.tasks {
            task.abort();
        }
        self.status.stop().await;
    }
}

/// Runs a worker until `shutdown` resolves.
pub async fn serve(config: Config, client: Client, shutdown: impl Future<Output = ()>) -> Result<(), WorkerStartError> {
    let worker = Worker::start(config, client.clone()).await?;
    shutdown.await;
    worker.stop().await;
    client.flush().await?;
    Ok(())
}

/// Why a worker could not start (or flush its last messages when it stopped): which part,
/// with the server's cause.
#[derive(Debug, thiserror::Error)]
pub enum WorkerStartError {
    #[error("cannot open the key directory: {0}")]
    Keys(#[from] crate::identity::directory::DirectoryError),
    #[error("cannot open the ledger bucket: {0}")]
    Ledger(#[from] crate::ledger::client::LedgerClientError),
    #[error("cannot open the task board: {0}")]
    Board(#[from] crate::state::task_board::StatusError),
    #[error("cannot register in the platform registry: {0}")]
    Registry(#[from] crate::state::registry::RegistryError),
    #[error("the config's root key: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("stream {stream} is missing: start `sagefed up` or `sagefed ledger serve` first ({source})")]
    Stream {
        stream: &'static str,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create consumer {name}: {source}")]
    Consumer {
        name: String,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    #[error("the proof settler: {0}")]
    Settler(#[from] crate::delegation::client::ClientStartError),
    #[error("the status service: {0}")]
    Status(#[from] crate::delegation::status::StatusStartError),
    #[error("cannot flush the last messages to the server: {0}")]
    Flush(#[from] async_nats::client::FlushError),
}

/// A durable pull consumer of the tasks stream.
type TaskConsumer = jetstream::consumer::Consumer<pull::Config>;

/// The platform's two consumers: its critical lane and its normal queue.
struct Lanes {
    critical: TaskConsumer,
    normal: TaskConsumer,
}

/// Creates (or updates) the platform's durable consumer of `lane`.
async fn ensure_consumer(ctx: &WorkerContext, lane: Lane) -> Result<TaskConsumer, WorkerStartError> {
    let platform = ctx.config.platform();
    let stream = ctx
        .js
        .get_stream(subjects::TASKS_STREAM)
        .await
        .map_err(|source| WorkerStartError::Stream {
            stream: subjects::TASKS_STREAM,
            source,
        })?;
    let name = lane.consumer(platform);
    let description = match lane {
        Lane::Normal => format!("Tasks for {platform}, shared by all its workers"),
        Lane::Critical => format!("Critical tasks for {platform}, served first by all its workers"),
    };
    let config = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(description),
        filter_subject: lane.subject(platform),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(ctx.config.worker.ack_wait_seconds),
        // Unlimited: the worker counts the deliveries itself and dead-letters a task past
        // `worker.max_deliver` (it holds the message then), so no platform needs the stream
        // API's read and delete by sequence, which the server cannot confine to its subject.
        max_deliver: -1,
        max_ack_pending: i64::try_from(pull_batch(ctx.capacity())).unwrap_or(i64::MAX),
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|source| WorkerStartError::Consumer { name, source })
}

/// Hands `message` to a task of its own, which releases `permit` when it is done.
fn spawn_handler(ctx: &Arc<WorkerContext>, message: jetstream::Message, permit: OwnedSemaphorePermit) {
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move {
        run::handle(ctx, message).await;
        drop(permit);
    });
}

/// Starts every critical task waiting now, one per free place, before the normal queue is
/// pulled at all: at start-up both lanes' first deliveries would otherwise race. Returns
/// false when the worker is stopping.
async fn drain_critical(
    ctx: &Arc<WorkerContext>,
    critical: &TaskConsumer,
    permits: &Arc<Semaphore>,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(permits).acquire_owned() => match permit { Ok(p) => p, Err(_) => return false },
            _ = stopped.changed() => return false,
        };
        // A fetch answers at once with what the lane holds (nothing when it is empty).
        let next = match critical.fetch().max_messages(1).messages().await {
            Ok(mut batch) => batch.next().await,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look at the critical lane; pulling both lanes");
                return true;
            }
        };
        match next {
            Some(Ok(message)) => spawn_handler(ctx, message, permit),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "critical lane fetch interrupted; pulling both lanes");
                return true;
            }
            None => return true,
        }
    }
}

/// Pulls both lanes, one task per free place: whenever a place frees, a critical task the
/// worker holds goes first (a biased select), so a critical task never waits behind a
/// queued normal one. Both lanes' consumers cap what the server hands over before a place
/// is free (`max_ack_pending`: the capacity, at least [`PULL_BATCH_MIN`]).
async fn pull(ctx: Arc<WorkerContext>, lanes: Lanes, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let capacity = ctx.capacity() as usize;
    let permits = Arc::new(Semaphore::new(capacity));
    'outer: while !*stopped.borrow() {
        if !drain_critical(&ctx, &lanes.critical, &permits, &mut stopped).await {
            break;
        }
        let batch = pull_batch(ctx.capacity());
        let critical = lanes.critical.stream().max_messages_per_batch(batch).messages().await;
        let normal = lanes.normal.stream().max_messages_per_batch(batch).messages().await;
        let (mut critical, mut normal) = match (critical, normal) {
            (Ok(critical), Ok(normal)) => (critical, normal),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot pull tasks; retrying");
                tokio::time::sleep(PULL_RETRY_PAUSE).await;
                continue;
            }
        };
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit { Ok(p) => p, Err(_) => break 'outer },
                _ = stopped.changed() => break 'outer,
            };
            let next = tokio::select! {
                biased;
                next = critical.next() => next,
                next = normal.next() => next,
                _ = stopped.changed() => break 'outer,
            };
            match next {
                Some(Ok(message)) => spawn_handler(&ctx, message, permit),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pull interrupted; continuing");
                }
                None => {
                    tokio::time::sleep(PULL_RETRY_PAUSE).await;
                    continue 'outer;
                }
            }
        }
    }
    // Let running tasks finish: each holds a permit.
    let _ = tokio::time::timeout(STOP_GRACE, permits.acquire_many(capacity as u32)).await;
}

async fn heartbeat(ctx: Arc<WorkerContext>) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tick.tick().await;
        if let Err(e) = ctx.registry.register_platform(&ctx.signer, &ctx.record()).await {
            tracing::warn!(error = %e, "heartbeat not recorded");
        }
    }
}

/// Aborts a running task when the status service says it was cancelled. The message only
/// names the task (any platform may publish one); the cancel itself is checked against the
/// delegator's own part of the task's status, the delegator named by the ledger's lock.
async fn listen_for_aborts(ctx: Arc<WorkerContext>, client: Client) {
    let Ok(mut subscription) = client.subscribe(subjects::abort(ctx.config.platform())).await else {
        tracing::error!("cannot subscribe to aborts; cancels will not stop running tasks");
        return;
    };
    while let Some(message) = subscription.next().await {
        let Ok(task_id) = std::str::from_utf8(&message.payload)
            .unwrap_or_default()
            .parse::<TaskId>()
        else {
            continue;
        };
        let cancelled =
            matches!(ctx.board.get(&task_id).await, Ok(Some((status, _))) if status.state == TaskState::Cancelled);
        if !cancelled {
            continue;
        }
        if ctx.aborts.abort(&task_id) > 0 {
            tracing::info!(task = %task_id, "aborting a cancelled task");
        }
    }
}
