//! `FederationClient`: how a platform delegates (the seed's steps 1-4 and 9-13). Chooses a
//! target, locks the budget on the ledger, signs and publishes the task (its id is the
//! message id, so a retried publish is stored once), waits for the signed proof, verifies it,
//! settles by quality, and updates the executor's reputation.
//!
//! Proofs addressed to this platform also land in a durable stream: a delegator that was
//! away settles them when it comes back ([`FederationClient::settle_orphaned_proofs`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::delegation::placement::{self, Wanted};
use crate::identity::directory::KeyDirectory;
use crate::ledger::COMMIT_WINDOW;
use crate::ledger::client::{LedgerClient, LedgerReader, LockTerms};
use crate::ledger::model::{Lock, LockState, RollbackReason, WitnessSettlement};
use crate::ledger::protocol::{LedgerReply, Outcome, RejectCode, WitnessRequest};
use crate::ledger::witness::{WITNESS_CANDIDATES_MAX, WITNESS_HOLD_SECONDS_MAX};
use crate::nats::infra::WITNESSED_TASK_MAX_AGE;
use crate::nats::subjects;
use crate::observe::metrics;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{Signer, Verified};
use crate::protocol::lct::Lct;
use crate::protocol::limits::TASK_TIMEOUT_SECONDS_MAX;
use crate::protocol::proof::{ExecutionProof, ProofStatus};
pub use crate::protocol::task::Lane;
use crate::protocol::task::{FederationTask, TaskId, message_id as task_message_id};
use crate::state::registry::{PlatformRecord, Registry};
use crate::state::reputation::{Reputations, Standing};
use crate::state::task_board::{TaskBoard, TaskState, TaskStatus};
use crate::state::witnessed_tasks::{WitnessedTaskError, WitnessedTasks};

/// Time a task may wait in the queue before a worker starts it, on top of its timeout.
pub const QUEUE_WAIT: Duration = Duration::from_secs(30);
/// Time after a task's deadline in which its lock may still be settled (an executor whose
/// delegator vanished settles in this window), before the sweeper refunds it.
pub const SETTLE_GRACE: Duration = Duration::from_secs(60);
/// How long past the deadline and the executor's commit window the delegator waits for a
/// proof in flight (clock skew between it and the ledger).
const PROOF_WAIT_GRACE: Duration = Duration::from_secs(1);
/// Attempts at the timeout rollback, a second apart, while the ledger still counts the
/// executor's commit window open (its clock may lag the delegator's).
const TIMEOUT_ROLLBACK_ATTEMPTS_MAX: u32 = 5;
/// Deliveries of one proof to the settler before it gives up on it.
const SETTLE_DELIVERIES_MAX: i64 = 20;
/// How long the settler may keep a proof unacknowledged before the server redelivers it.
const SETTLE_ACK_WAIT: Duration = Duration::from_secs(30);
/// How often the settler tells the server it still works on a proof whose held task it
/// dispatches (well within [`SETTLE_ACK_WAIT`]).
const SETTLE_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// How long a proof the settler could not settle waits before it is delivered again.
const SETTLE_RETRY_PAUSE: Duration = Duration::from_secs(5);
// A kept witnessed task outlives its lock: the lock expires at most the queue wait, the
// longest timeout and the settle grace after the task was made, and the hold then lasts at
// most its maximum.
const _: () = assert!(
    QUEUE_WAIT.as_secs() as f64
        + TASK_TIMEOUT_SECONDS_MAX as f64
        + SETTLE_GRACE.as_secs() as f64
        + WITNESS_HOLD_SECONDS_MAX
        <= WITNESSED_TASK_MAX_AGE.as_secs() as f64
);
/// How long a listing of the platform registry is reused when placing tasks.
pub const REGISTRY_CACHE_TTL: Duration = Duration::from_secs(1);
/// How long a delegation keeps retrying its board entry and its publish before giving up and
/// refunding: long enough to ride out a JetStream leader election after a cluster node is
/// lost (nats-server elects a new leader within its 4-9 s election timeout). Retried only
/// while the server still reaches JetStream ([`FederationClient::jetstream_unreachable`]):
/// a leaf whose link to the hub is down fails at once.
const PUBLISH_RETRY_WINDOW: Duration = Duration::from_secs(10);
/// How long the check "does this platform's server reach JetStream at all" waits.
const JETSTREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a slow placement read re-checks that the server still reaches JetStream.
const JETSTREAM_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// First pause between publish attempts; doubles each time up to [`PUBLISH_RETRY_PAUSE_MAX`].
const PUBLISH_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between publish attempts.
const PUBLISH_RETRY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// What to delegate.
#[derive(Clone, Debug)]
pub struct DelegationRequest {
    /// The executor platform; `None` lets the client choose.
    pub to: Option<String>,
    pub task_type: String,
    pub operation: String,
    pub budget: f64,
    pub timeout_seconds: u64,
    pub parameters: Map<String, Value>,
    /// The task id to use (to follow or cancel it while it runs); `None` draws a random one.
    pub task_id: Option<TaskId>,
}

/// How a delegation ended.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct DelegationOutcome {
    pub task_id: TaskId,
    pub from: String,
    pub to: String,
    pub operation: String,
    /// What the executor's proof said (`None` when no proof arrived).
    pub proof_status: Option<ProofStatus>,
    pub reason: String,
    pub quality: Option<f64>,
    /// `committed`, `rolled_back` or `expired`, as the ledger has it.
    pub settlement: LockState,
    pub rollback_reason: Option<RollbackReason>,
    pub atp_consumed: f64,
    pub atp_refunded: f64,
    pub result: Map<String, Value>,
    /// From the first request to the settled outcome.
    pub latency_ms: f64,
    /// The executor's signed proof as it arrived (an envelope; `None` when no proof
    /// arrived), so that a caller can keep or re-verify what the executor signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof_envelope: Option<String>,
    /// The witness the ledger appointed when it sampled the task, what it was paid and
    /// whether it agreed (`agreed: None`: it did not answer before the hold expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessSettlement>,
}

/// Why a delegation could not be made. The budget is never left locked for good: an error
/// after the lock refunds it (an unpublished task's after its deadline, when the ledger
/// accepts the delegator's own rollback).
#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("{0} lacks the federation:delegate permission (permissions.delegate in its config)")]
    NotPermitted(String),
    #[error(
        "{0} lacks the federation:critical permission: the root grants it (`sagefed init --critical NAME`, or `critical = true` under [permissions] in the platform's config when `sagefed up` makes the federation)"
    )]
    CriticalNotPermitted(String),
    #[error("no platform can take this task: {0}")]
    NoPlatform(String),
    #[error("the ledger refused to lock the budget: {0}")]
    Lock(String),
    #[error(
        "the task could not be published ({0}); if the server stored it anyway (a lost acknowledgement) it runs and settles as usual, otherwise its budget is refunded after the task's deadline: `sagefed status <task-id>` tells which"
    )]
    Publish(#[source] async_nats::Error),
    #[error(
        "JetStream does not answer on this platform's server ({0}): on a machine with a leaf server, its link to the hub is down (docs/troubleshooting.md); if the task was stored before the link went down it runs and settles as usual, otherwise its budget is refunded after the task's deadline: `sagefed status <task-id>` tells which"
    )]
    LinkDown(#[source] async_nats::Error),
    #[error("invalid task: {0}")]
    Invalid(String),
    #[error("the proof does not verify: {0}")]
    BadProof(String),
    /// The platform registry could not be read (transient: a bucket's leader election, or
    /// the server busy).
    #[error("cannot read the platform registry ({0}); retry in a moment")]
    Registry(#[from] crate::state::registry::RegistryError),
    /// A registry read stalled past the retry window without an error (transient).
    #[error("the platform registry read stalled; retry in a moment")]
    RegistryStalled,
    /// The ledger did not answer or its answer was unreadable (transient: the budget is
    /// refunded after the task's deadline if it was locked).
    #[error("the ledger did not answer ({0}); `sagefed status <task-id>` shows whether the budget is locked")]
    Ledger(#[from] crate::ledger::client::LedgerClientError),
    /// The ledger keeps no lock for a task this platform settles.
    #[error("the ledger keeps no lock for task {task_id}: {message}")]
    NoLock { task_id: TaskId, message: String },
    #[error(
        "the ledger did not settle task {0}'s commit held for its witness by the hold's expiry: its sweeper may be down; `sagefed status <task-id>` shows the lock"
    )]
    WitnessUnsettled(TaskId),
    /// The signed task could not be kept for its witness (before any ATP moved), or read
    /// back by a restarted delegator (transient: the bucket's leader election, or the server
    /// busy).
    #[error(transparent)]
    WitnessedTask(#[from] WitnessedTaskError),
}

impl DelegateError {
    /// Whether the same request may succeed later: the bus or the ledger was unreachable or
    /// busy, as opposed to a refusal that repeats.
    pub fn is_transient(&self) -> bool {
        // Exhaustive, so that a new kind must say which it is.
        match self {
            Self::Publish(_)
            | Self::LinkDown(_)
            | Self::Registry(_)
            | Self::RegistryStalled
            | Self::WitnessUnsettled(_)
            | Self::WitnessedTask(_) => true,
            Self::Ledger(e) => e.is_transient(),
            Self::NotPermitted(_)
            | Self::CriticalNotPermitted(_)
            | Self::NoPlatform(_)
            | Self::Lock(_)
            | Self::Invalid(_)
            | Self::BadProof(_)
            | Self::NoLock { .. } => false,
        }
    }
}

/// The metric label for a delegation that failed after its budget was locked.
fn error_label(error: &DelegateError) -> &'static str {
    match error {
        DelegateError::NotPermitted(_) => "not_permitted",
        DelegateError::CriticalNotPermitted(_) => "critical_not_permitted",
        DelegateError::NoPlatform(_) => "no_platform",
        DelegateError::Lock(_) => "lock_refused",
        DelegateError::Publish(_) => "publish_failed",
        DelegateError::LinkDown(_) => "link_down",
        DelegateError::Invalid(_) => "invalid",
        DelegateError::BadProof(_) => "bad_proof",
        DelegateError::Registry(_) | DelegateError::RegistryStalled => "registry",
        DelegateError::Ledger(_) | DelegateError::NoLock { .. } => "ledger",
        DelegateError::WitnessUnsettled(_) => "witness_unsettled",
        DelegateError::WitnessedTask(_) => "witnessed_task",
    }
}

/// An outcome's ATP figure in micro-ATP, for metrics (0 for a figure the ledger would refuse).
fn micros(atp: f64) -> u64 {
    Atp::from_f64(atp, "ATP").map_or(0, Atp::micros)
}

/// The metric label for how a lock was settled.
fn settlement_label(state: LockState) -> &'static str {
    match state {
        LockState::Pending => "pending",
        LockState::AwaitingWitness => "awaiting_witness",
        LockState::Committed => "committed",
        LockState::RolledBack => "rolled_back",
        LockState::Expired => "expired",
    }
}

/// How often a delegator waiting for its witness reads the lock.
const WITNESS_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often a delegator sends its held task to the witness again while the lock stays held
/// (the request is not stored: a witness that was restarting gets the next one).
const WITNESS_RESEND_INTERVAL: Duration = Duration::from_secs(5);
/// How long past the hold's expiry the delegator waits for the ledger's sweeper to settle it.
const WITNESS_WAIT_GRACE: Duration = Duration::from_secs(5);

/// Proofs a waiting delegation may hold unread before the listener drops more: a flood of
/// forged proofs under one task id must not grow memory.
const PROOFS_QUEUED_PER_TASK_MAX: usize = 16;

type Waiters = Arc<Mutex<HashMap<TaskId, mpsc::Sender<Bytes>>>>;

/// A platform's delegation client.
pub struct FederationClient {
    config: Config,
    client: Client,
    js: jetstream::Context,
    signer: Signer,
    keys: Arc<KeyDirectory>,
    ledger: LedgerClient,
    reader: LedgerReader,
    registry: Registry,
    reputations: Reputations,
    board: TaskBoard,
    /// This platform's signed tasks whose locks name witness terms, for a restarted
    /// delegator's orphan settler.
    witnessed: WitnessedTasks,
    waiters: Waiters,
    listener: tokio::task::JoinHandle<()>,
    settled: SettledMarker,
    platforms: Mutex<Option<(Instant, Vec<PlatformRecord>)>>,
}

impl Drop for FederationClient {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Marks settled tasks on the board (the delegator's `settled` flag, which `sagefed status`
/// shows) off the delegation's path: settlements queue here and a background task writes
/// them. A crash loses at most the queue: a display flag, not ATP. (Reputation is the
/// ledger's to record, from the settlements it applies: see `state::reputation`.)
#[derive(Clone)]
struct SettledMarker {
    tx: tokio::sync::mpsc::Sender<TaskId>,
}

/// Settlements waiting to be marked before new ones are dropped (with a warning).
const SETTLED_QUEUE_MAX: usize = 10_000;

impl SettledMarker {
    fn start(board: TaskBoard, delegator: String) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<TaskId>(SETTLED_QUEUE_MAX);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, SETTLED_QUEUE_MAX).await > 0 {
                for task_id in batch.drain(..) {
                    if let Err(e) = board.mark_settled(&task_id, &delegator).await {
                        tracing::warn!(task = %task_id, error = %e, "task not marked settled");
                    }
                }
            }
        });
        Self { tx }
    }

    fn mark(&self, task_id: &TaskId) {
        if self.tx.try_send(task_id.clone()).is_err() {
            tracing::warn!(task = %task_id, "settled queue full; this task is not marked settled");
        }
    }
}

/// Why a platform's client could not start: which bucket or subscription failed, with the
/// server's cause.
#[derive(Debug, thiserror::Error)]
pub enum ClientStartError {
    #[error("cannot open the key directory: {0}")]
    Keys(#[from] crate::identity::directory::DirectoryError),
    #[error("cannot use the platform registry: {0}")]
    Registry(#[from] crate::state::registry::RegistryError),
    #[error("cannot subscribe to this platform's proofs: {0}")]
    Proofs(#[from] async_nats::SubscribeError),
    #[error("cannot open the task board: {0}")]
    Board(#[from] crate::state::task_board::StatusError),
    #[error("cannot open the reputation bucket: {0}")]
    Reputation(#[from] crate::state::reputation::ReputationError),
    #[error("cannot open the ledger bucket: {0}")]
    Ledger(#[from] crate::ledger::client::LedgerClientError),
    #[error("cannot open the witnessed-task bucket: {0}")]
    WitnessedTasks(#[from] WitnessedTaskError),
}

impl FederationClient {
    /// Connects the platform `config` describes: publishes its keys, makes sure the registry
    /// knows it (so executors can check its permission), and listens for its proofs.
    pub async fn new(config: Config, client: Client) -> Result<Self, ClientStartError> {
        let js = jetstream::new(client.clone());
        let (signer, keys) = KeyDirectory::open_as(&config, &js).await?;
        let keys = Arc::new(keys);
        let registry = Registry::open(&js, Arc::clone(&keys)).await?;
        if registry.get(config.platform()).await?.is_none() {
            // Known as a delegator; not healthy as an executor until a worker heartbeats.
            registry
                .register_platform(
                    &signer,
                    &PlatformRecord {
                        platform: config.platform().to_owned(),
                        capabilities: Vec::new(),
                        operations: Vec::new(),
                        delegate: config.permissions.delegate,
                        key_id: signer.key_id().to_owned(),
                        load: 0,
                        capacity: 0,
                        heartbeat_at: Timestamp::EPOCH,
                    },
                )
                .await?;
        }
        let waiters: Waiters = Arc::default();
        let mut proofs = client.subscribe(subjects::proofs_for(config.platform())).await?;
        let listener = {
            let waiters = Arc::clone(&waiters);
            tokio::spawn(async move {
                while let Some(message) = proofs.next().await {
                    let Some(task_id) = subjects::proof_subject_parts(&message.subject)
                        .and_then(|(_, task_id)| task_id.parse::<TaskId>().ok())
                    else {
                        continue;
                    };
                    // Every proof under the task goes to its waiter, which believes only the
                    // assigned executor's: another platform may publish under its own name.
                    let waiter = waiters.lock().ok().and_then(|w| w.get(&task_id).cloned());
                    if let Some(waiter) = waiter
                        && waiter.try_send(message.payload).is_err()
                    {
                        tracing::warn!(subject = %message.subject, "dropping a proof: the task's waiter is full");
                    }
                }
            })
        };
        let board = TaskBoard::open(&js).await?;
        let reputations = Reputations::open(&js).await?;
        Ok(Self {
            ledger: LedgerClient::new(client.clone(), signer.clone()),
            reader: LedgerReader::open(&js).await?,
            witnessed: WitnessedTasks::open(&js, config.platform()).await?,
            settled: SettledMarker::start(board.clone(), signer.platform().to_owned()),
            platforms: Mutex::new(None),
            reputations,
            board,
            registry,
            signer,
            keys,
            js,
            client,
            config,
            waiters,
            listener,
        })
    }

    pub fn platform(&self) -> &str {
        self.config.platform()
    }

    /// The platform registry, read through this platform's key directory.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The connection as this platform (a cancel writes the platform's own part of the
    /// task's status through it).
    pub fn nats(&self) -> &Client {
        &self.client
    }

    /// Records a platform in the registry (the seed's `register_platform`).
    pub async fn register_platform(
        &self,
        record: &PlatformRecord,
    ) -> Result<(), crate::state::registry::RegistryError> {
        self.registry.register_platform(&self.signer, record).await
    }

    /// Chooses where `request` goes by the rule in `placement`: the named platform when
    /// there is one, else the least loaded eligible platform, better reputation first.
    pub async fn choose_target(&self, request: &DelegationRequest) -> Result<PlatformRecord, DelegateError> {
        let now = Timestamp::now();
        let wanted = Wanted {
            delegator: self.platform(),
            task_type: &request.task_type,
            operation: &request.operation,
        };
        let no_platform = |e: placement::NoPlatform| DelegateError::NoPlatform(e.to_string());
        if let Some(to) = &request.to {
            let record = self.registry.get(to).await?;
            return placement::named(to, record, &wanted, now).map_err(no_platform);
        }
        let candidates = placement::candidates(&self.platforms().await?, &wanted, now).map_err(no_platform)?;
        let scored = self.scored(candidates, &request.operation, now).await;
        placement::best(scored).ok_or_else(|| DelegateError::NoPlatform("no candidate".into()))
    }

    /// `candidates` with their reputation standing for `operation`.
    async fn scored(
        &self,
        candidates: Vec<PlatformRecord>,
        operation: &str,
        now: Timestamp,
    ) -> Vec<(PlatformRecord, Standing)> {
        let mut scored = Vec::with_capacity(candidates.len());
        for record in candidates {
            // An unreadable record ranks the platform as unknown rather than failing the task.
            let standing = match self.reputations.get(&record.platform, operation).await {
                Ok(reputation) => Standing::of(&reputation, now),
                Err(e) => {
                    tracing::warn!(platform = %record.platform, error = %e, "reputation unreadable; ranked as unknown");
                    Standing::UNKNOWN
                }
            };
            scored.push((record, standing));
        }
        scored
    }

    /// The witness terms for a task of `request` run by `executor`: for an operation without
    /// a cheap check, the live platforms that hold it, neither this one nor the executor,
    /// best first by the placement ranking, at most [`WITNESS_CANDIDATES_MAX`]; the share
    /// and the hold from `[settlement]`, the tolerance as this platform declares the
    /// operation. `None` (the task runs unwitnessed) for a checked operation or without a
    /// candidate.
    pub async fn witness_terms(
        &self,
        request: &DelegationRequest,
        executor: &str,
        budget: Atp,
    ) -> Result<Option<WitnessRequest>, DelegateError> {
        if crate::worker::ops::has_check(&request.operation) {
            return Ok(None);
        }
        let now = Timestamp::now();
        let wanted = Wanted {
            delegator: self.platform(),
            task_type: &request.task_type,
            operation: &request.operation,
        };
        let others: Vec<PlatformRecord> = match placement::candidates(&self.platforms().await?, &wanted, now) {
            Ok(records) => records.into_iter().filter(|r| r.platform != executor).collect(),
            Err(_) => Vec::new(),
        };
        let mut candidates: Vec<String> = placement::ranked(self.scored(others, &request.operation, now).await)
            .into_iter()
            .map(|r| r.platform)
            .collect();
        candidates.truncate(WITNESS_CANDIDATES_MAX);
        if candidates.is_empty() {
            tracing::info!(
                operation = %request.operation,
                executor,
                "no other platform holds the operation: the task runs unwitnessed"
            );
            return Ok(None);
        }
        let settlement = &self.config.settlement;
        Ok(Some(WitnessRequest {
            candidates,
            share: budget.as_f64() * settlement.witness_share.get(),
            tolerance: self.config.witness_tolerance(&request.operation),
            hold_seconds: settlement.witness_hold_seconds,
        }))
    }

    /// Every registered platform, read at most once per [`REGISTRY_CACHE_TTL`]: listing the
    /// bucket costs a consumer, too much for every delegation.
    async fn platforms(&self) -> Result<Vec<PlatformRecord>, crate::state::registry::RegistryError> {
        if let Ok(cache) = self.platforms.lock()
            && let Some((at, records)) = cache.as_ref()
            && at.elapsed() < REGISTRY_CACHE_TTL
        {
            return Ok(records.clone());
        }
        let records = self.registry.all().await?;
        if let Ok(mut cache) = self.platforms.lock() {
            *cache = Some((Instant::now(), records.clone()));
        }
        Ok(records)
    }

    /// Delegates one task and returns its settled outcome.
    pub async fn delegate_task(&self, request: DelegationRequest) -> Result<DelegationOutcome, DelegateError> {
        self.delegate_on(request, Lane::Normal).await
    }

    /// Delegates one critical task (on the executor's critical lane, which its workers drain
    /// before queued normal tasks) and returns its settled outcome. Needs
    /// `federation:critical`: the server refuses the publish otherwise, and a worker refuses
    /// a critical task signed by a key without it.
    pub async fn delegate_critical_task(&self, request: DelegationRequest) -> Result<DelegationOutcome, DelegateError> {
        self.delegate_on(request, Lane::Critical).await
    }

    /// Delegates one task on `lane`.
    pub async fn delegate_on(
        &self,
        request: DelegationRequest,
        lane: Lane,
    ) -> Result<DelegationOutcome, DelegateError> {
        let started = Instant::now();
        if !self.config.permissions.delegate {
            return Err(DelegateError::NotPermitted(self.platform().to_owned()));
        }
        // Refused before any ATP moves; the server and the worker refuse it anyway.
        let own_key = self.keys.record(self.platform(), self.signer.key_id());
        if lane == Lane::Critical && own_key.is_some_and(|record| !record.critical) {
            return Err(DelegateError::CriticalNotPermitted(self.platform().to_owned()));
        }
        let target = self.choose_target_unless_link_down(&request).await?;
        let budget = Atp::from_f64(request.budget, "budget").map_err(|e| DelegateError::Invalid(e.to_string()))?;
        let witness = self.witness_terms(&request, &target.platform, budget).await?;
        let task = self.task_for(request, &target.platform, lane)?;
        let task_id = task.task_id.clone();
        // Sign first: an invalid task is refused before any ATP moves.
        let wire = self
            .signer
            .sign(&task)
            .map_err(|e| DelegateError::Invalid(e.to_string()))?;
        self.lock(&task, &wire, witness).await?;
        let (tx, rx) = mpsc::channel(PROOFS_QUEUED_PER_TASK_MAX);
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(task_id.clone(), tx);
        }
        let result = self.publish_and_wait(&task, wire, rx).await;
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.remove(&task_id);
        }
        let mut outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                metrics::delegation_failed(error_label(&e));
                return Err(e);
            }
        };
        outcome.operation = task.operation.clone();
        outcome.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        metrics::delegation_settled(
            settlement_label(outcome.settlement),
            outcome.rollback_reason.map(|r| r.to_string()).as_deref().unwrap_or(""),
            started.elapsed(),
            micros(outcome.atp_consumed),
            micros(outcome.atp_refunded),
        );
        Ok(outcome)
    }

    /// Locks the budget of the signed `task` (`wire`), with `witness` terms when it may be
    /// sampled.
    async fn lock(
        &self,
        task: &FederationTask,
        wire: &Bytes,
        witness: Option<WitnessRequest>,
    ) -> Result<(), DelegateError> {
        let budget = task.budget().map_err(DelegateError::Invalid)?;
        let threshold = self.config.settlement.quality_threshold.get();
        // The lock names the signed task, so the ledger pays by its own check of the result.
        let terms = LockTerms {
            task_id: task.task_id.clone(),
            delegator: task.source_lct.clone(),
            executor: task.target_lct.clone(),
            amount: budget,
            quality_threshold: threshold,
            deadline: task.expires_at,
            expires_at: task.expires_at + SETTLE_GRACE,
        };
        let reply = match witness {
            Some(witness) => {
                // Before the lock, so that no held lock lacks its task: a delegator restarted
                // while the commit is held reads it back to dispatch it (an unwitnessed
                // delegation pays no such write).
                self.witnessed.keep(&task.task_id, wire.clone()).await?;
                self.ledger
                    .lock_with_witness(&terms, wire, &task.operation, witness)
                    .await
            }
            None => self.ledger.lock_for_task(&terms, wire, &task.operation).await,
        }?;
        if reply.outcome == Outcome::Rejected {
            return Err(DelegateError::Lock(reply.message));
        }
        Ok(())
    }

    /// The task `request` asks of `target` on `lane`, created now (not signed yet).
    fn task_for(&self, request: DelegationRequest, target: &str, lane: Lane) -> Result<FederationTask, DelegateError> {
        let invalid = |e: &dyn std::fmt::Display| DelegateError::Invalid(e.to_string());
        let source_lct = self.config.lct(&request.task_type).map_err(|e| invalid(&e))?;
        let target_lct = source_lct.with_platform(target).map_err(|e| invalid(&e))?;
        let task_id = match request.task_id {
            Some(task_id) => task_id,
            None => TaskId::random().map_err(|e| invalid(&e))?,
        };
        let created_at = Timestamp::now();
        Ok(FederationTask {
            reply_to: subjects::proof(self.platform(), target_lct.platform(), task_id.as_str()),
            task_id,
            source_lct,
            target_lct,
            task_type: request.task_type,
            operation: request.operation,
            atp_budget: request.budget,
            timeout_seconds: request.timeout_seconds,
            parameters: request.parameters,
            created_at,
            expires_at: created_at + QUEUE_WAIT + Duration::from_secs(request.timeout_seconds),
            critical: lane == Lane::Critical,
        })
    }

    async fn publish_and_wait(
        &self,
        task: &FederationTask,
        wire: Bytes,
        mut rx: mpsc::Receiver<Bytes>,
    ) -> Result<DelegationOutcome, DelegateError> {
        let status = TaskStatus::for_task(task, TaskState::Queued);
        // Bytes clone by reference count: the task is kept for a commit this delegator makes.
        let task_wire = wire.clone();
        if let Err(e) = self.publish(task, &status, wire).await {
            self.refund_unpublished(task).await;
            return Err(e);
        }
        let wait = Timestamp::now().until(task.expires_at + COMMIT_WINDOW) + PROOF_WAIT_GRACE;
        let deadline = tokio::time::Instant::now() + wait;
        let proof = loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(wire)) => match self.check_proof(task, &wire).await {
                    Ok(()) => break Some(wire),
                    Err(why) => tracing::warn!(
                        task = %task.task_id,
                        "ignoring a proof: {why}; still waiting for {}'s",
                        task.target_lct.platform()
                    ),
                },
                // The live message may have been missed (a reconnect): the stream keeps it.
                _ => break self.stored_proof(task).await,
            }
        };
        let outcome = match proof {
            Some(proof) => self.settle_with_task(&proof, Some(&task_wire)).await?,
            None => return self.time_out(task).await,
        };
        if outcome.settlement == LockState::AwaitingWitness {
            return self.await_witness(task, &task_wire, outcome).await;
        }
        Ok(outcome)
    }

    /// The ledger sampled the executor's commit and holds it for a witness: this delegator,
    /// the party that wants the check (the executor would rather the hold expired and paid
    /// it), sends its signed task to the appointed witness, again every
    /// [`WITNESS_RESEND_INTERVAL`], and waits until the lock settles: by the witness's answer
    /// or by the hold's expiry (plus [`WITNESS_WAIT_GRACE`] for the sweeper).
    /// Follows this platform's signed task `task_wire` (of `task`) whose commit the ledger
    /// holds for a witness, as a delegation does: sends it to the witness and returns the
    /// settled outcome (for a caller that locked and published the task itself).
    pub async fn follow_held_task(
        &self,
        task: &FederationTask,
        task_wire: &Bytes,
    ) -> Result<DelegationOutcome, DelegateError> {
        let lock = self.read_lock(&task.task_id).await?;
        let mut outcome = self
            .await_witness(task, task_wire, outcome_of(&lock, None, "held for a witness"))
            .await?;
        outcome.operation = task.operation.clone();
        Ok(outcome)
    }

    async fn await_witness(
        &self,
        task: &FederationTask,
        task_wire: &Bytes,
        held: DelegationOutcome,
    ) -> Result<DelegationOutcome, DelegateError> {
        let mut sent: Option<Instant> = None;
        loop {
            let lock = self.read_lock(&task.task_id).await?;
            let hold = match (lock.state, lock.hold.as_deref()) {
                (LockState::AwaitingWitness, Some(hold)) => hold,
                (state, _) if state.is_terminal() => return self.witnessed_outcome(task, &lock, held).await,
                _ => return Ok(held),
            };
            if Timestamp::now() > hold.until + WITNESS_WAIT_GRACE {
                return Err(DelegateError::WitnessUnsettled(task.task_id.clone()));
            }
            if sent.is_none_or(|at| at.elapsed() >= WITNESS_RESEND_INTERVAL) {
                tracing::info!(task = %task.task_id, witness = %hold.witness, "the ledger holds the commit for a witness; sending it the task");
                if let Err(e) = self
                    .client
                    .publish(subjects::witness_request(&hold.witness), task_wire.clone())
                    .await
                {
                    tracing::warn!(task = %task.task_id, error = %e, "could not send the task to its witness; retrying");
                }
                sent = Some(Instant::now());
            }
            tokio::time::sleep(WITNESS_POLL_INTERVAL).await;
        }
    }

    /// The outcome of a witnessed task, settled as `lock`: the result from the executor's
    /// proof the ledger paid (verified again here), or none when the witness disagreed.
    async fn witnessed_outcome(
        &self,
        task: &FederationTask,
        lock: &Lock,
        held: DelegationOutcome,
    ) -> Result<DelegationOutcome, DelegateError> {
        self.settled.mark(&task.task_id);
        let paid = self.reader.paid_proof(&task.task_id).await?.map(|paid| paid.wire());
        let (proof, envelope) = match paid {
            Some(wire) => {
                self.check_proof(task, &wire).await.map_err(DelegateError::BadProof)?;
                let proof: Verified<ExecutionProof> = self
                    .keys
                    .verify_ignoring_expiry(&wire)
                    .await
                    .map_err(|e| DelegateError::BadProof(e.to_string()))?;
                (Some(proof), Some(String::from_utf8_lossy(&wire).into_owned()))
            }
            None => (None, held.proof_envelope.clone()),
        };
        let witness = lock.settlement.as_ref().and_then(|s| s.witness.as_ref());
        let reason = match witness {
            Some(w) if w.agreed == Some(true) => format!("witness {} agreed", w.witness),
            Some(w) if w.agreed == Some(false) => format!("witness {} disagreed: refunded but its share", w.witness),
            Some(w) => format!(
                "witness {} did not answer before the hold expired: paid as claimed",
                w.witness
            ),
            None => held.reason.clone(),
        };
        let mut outcome = outcome_of(lock, proof.as_deref(), &reason);
        if proof.is_none() {
            outcome.proof_status = held.proof_status;
            outcome.quality = held.quality;
        }
        outcome.proof_envelope = envelope;
        Ok(outcome)
    }

    async fn read_lock(&self, task_id: &TaskId) -> Result<Lock, DelegateError> {
        self.reader.lock(task_id).await?.ok_or_else(|| DelegateError::NoLock {
            task_id: task_id.clone(),
            message: "no lock record under its key".to_owned(),
        })
    }

    /// A task whose publish failed may still have been stored. Marking it cancelled keeps a
    /// worker from running it (a worker that finds it acknowledges the cancel and refunds);
    /// otherwise the delegator's own rollback is accepted after the deadline and the
    /// executor's commit window, and a background task sends it then.
    async fn refund_unpublished(&self, task: &FederationTask) {
        if let Err(e) = self
            .board
            .cancel(&task.task_id, task.source_lct.platform(), "its publish failed")
            .await
        {
            tracing::warn!(task = %task.task_id, error = %e, "could not mark an unpublished task cancelled");
        }
        let ledger = self.ledger.clone();
        let task_id = task.task_id.clone();
        let due = Timestamp::now().until(task.expires_at + COMMIT_WINDOW) + PROOF_WAIT_GRACE;
        tokio::spawn(async move {
            tokio::time::sleep(due).await;
            match rollback_timed_out(&ledger, &task_id).await {
                Ok(reply) if reply.outcome != Outcome::Rejected => {}
                Ok(reply) => {
                    tracing::warn!(task = %task_id, "the unpublished task was not refunded: {}; its lock expires", reply.message)
                }
                Err(e) => {
                    tracing::warn!(task = %task_id, error = %e, "the unpublished task was not refunded; its lock expires")
                }
            }
        });
    }

    /// Enters the task on the board and publishes it, retrying while an election may be
    /// under way; a server that no longer reaches JetStream at all fails at once.
    async fn publish(&self, task: &FederationTask, status: &TaskStatus, wire: Bytes) -> Result<(), DelegateError> {
        let give_up = Instant::now() + PUBLISH_RETRY_WINDOW;
        let mut pause = PUBLISH_RETRY_PAUSE;
        loop {
            match self.board.queue(status).await {
                Ok(()) => break,
                // Someone else's entry under this id is final; anything else may be an election.
                Err(e @ crate::state::task_board::StatusError::TaskIdInUse(_)) => {
                    return Err(DelegateError::Publish(e.into()));
                }
                Err(e) => self.retry_or_fail(task, give_up, e.into()).await?,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PUBLISH_RETRY_PAUSE_MAX);
        }
        let message_id = task_message_id(&wire);
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
            let sent = self
                .js
                .publish_with_headers(task.queue_subject(), headers, wire.clone())
                .await;
            let failed = match sent {
                Ok(ack) => match ack.await {
                    // The id is the digest of these bytes: a `duplicate` ack means they are
                    // stored (an earlier attempt whose ack was lost), whoever sent them.
                    Ok(_) => return Ok(()),
                    Err(e) => async_nats::Error::from(e),
                },
                Err(e) => e.into(),
            };
            self.retry_or_fail(task, give_up, failed).await?;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PUBLISH_RETRY_PAUSE_MAX);
        }
    }

    /// After a failed board entry or publish: `Ok` to retry (a leader election may be under
    /// way and the window is open), else why the delegation fails.
    async fn retry_or_fail(
        &self,
        task: &FederationTask,
        give_up: Instant,
        failed: async_nats::Error,
    ) -> Result<(), DelegateError> {
        if self.jetstream_unreachable().await {
            return Err(DelegateError::LinkDown(failed));
        }
        if Instant::now() >= give_up {
            return Err(DelegateError::Publish(failed));
        }
        tracing::debug!(task = %task.task_id, error = %failed, "task board or stream busy; retrying");
        Ok(())
    }

    /// Chooses the target like [`FederationClient::choose_target`], riding out a leader
    /// election of the registry's bucket (a failed read is retried within
    /// [`PUBLISH_RETRY_WINDOW`]; it changes nothing, so it may be repeated or abandoned),
    /// but failing at once with [`DelegateError::LinkDown`] when this platform's server
    /// reaches no JetStream, instead of waiting out the read's timeouts.
    async fn choose_target_unless_link_down(
        &self,
        request: &DelegationRequest,
    ) -> Result<PlatformRecord, DelegateError> {
        let give_up = Instant::now() + PUBLISH_RETRY_WINDOW;
        let mut pause = PUBLISH_RETRY_PAUSE;
        loop {
            let link_lost = async {
                loop {
                    tokio::time::sleep(JETSTREAM_PROBE_INTERVAL).await;
                    if self.jetstream_unreachable().await {
                        break;
                    }
                }
            };
            let failed = tokio::select! {
                result = self.choose_target(request) => match result {
                    Err(e @ DelegateError::Registry(_)) => e,
                    decided => return decided,
                },
                () = link_lost => DelegateError::RegistryStalled,
            };
            if self.jetstream_unreachable().await {
                return Err(DelegateError::LinkDown(Box::new(failed)));
            }
            if Instant::now() >= give_up {
                return Err(failed);
            }
            tracing::debug!(error = %failed, "platform registry busy; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(PUBLISH_RETRY_PAUSE_MAX);
        }
    }

    /// Whether this platform's server reaches no JetStream at all: its JetStream API has no
    /// responder. Every JetStream server subscribes to the API, so on a single server or a
    /// cluster (even while a stream elects a leader) someone answers; on a leaf server, which
    /// runs no JetStream, nobody does while its link to the hub is down.
    async fn jetstream_unreachable(&self) -> bool {
        let probe = tokio::time::timeout(
            JETSTREAM_PROBE_TIMEOUT,
            self.client.request(subjects::JS_API_INFO, Bytes::new()),
        )
        .await;
        matches!(probe, Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders)
    }

    /// The task's proof from its executor's slot in the stream, if it holds one that checks.
    async fn stored_proof(&self, task: &FederationTask) -> Option<Bytes> {
        let stream = self.js.get_stream(subjects::PROOFS_STREAM).await.ok()?;
        // A direct get names the subject in the API subject, so the server's permissions can
        // confine each platform to its own proofs (a `STREAM.MSG.GET` body could name any).
        let slot = subjects::proof(self.platform(), task.target_lct.platform(), task.task_id.as_str());
        let message = stream.direct_get_last_for_subject(slot).await.ok()?;
        match self.check_proof(task, &message.payload).await {
            Ok(()) => Some(message.payload),
            Err(why) => {
                tracing::warn!(task = %task.task_id, "ignoring the stored proof: {why}");
                None
            }
        }
    }

    /// Whether `wire` is a proof of `task` signed by its assigned executor, for this platform.
    async fn check_proof(&self, task: &FederationTask, wire: &Bytes) -> Result<(), String> {
        let proof: Verified<ExecutionProof> = self.keys.verify(wire).await.map_err(|e| e.to_string())?;
        if proof.task_id != task.task_id {
            return Err(format!("it is about task {}", proof.task_id));
        }
        if proof.executor_lct.platform() != task.target_lct.platform() {
            return Err(format!(
                "it comes from {}, not the assigned executor",
                proof.executor_lct
            ));
        }
        if proof.delegator_lct.platform() != self.platform() {
            return Err(format!("it is addressed to {}", proof.delegator_lct));
        }
        Ok(())
    }

    /// No proof by the deadline: refund, and report what the ledger says.
    async fn time_out(&self, task: &FederationTask) -> Result<DelegationOutcome, DelegateError> {
        let reply = rollback_timed_out(&self.ledger, &task.task_id).await?;
        let _ = self
            .board
            .end_delegation(
                &task.task_id,
                self.platform(),
                TaskState::TimedOut,
                "no proof by the deadline",
            )
            .await;
        let lock = self.final_lock(&task.task_id, &reply).await?;
        Ok(outcome_of(&lock, None, "no proof arrived before the deadline"))
    }

    /// Verifies a proof addressed to this platform and settles its lock by quality: commit
    /// when the task completed at or above the threshold, otherwise roll back with the proof
    /// as evidence. Marks the task settled on the board once.
    pub async fn settle(&self, wire: &Bytes) -> Result<DelegationOutcome, DelegateError> {
        self.settle_with_task(wire, None).await
    }

    /// [`Self::settle`], with the signed task the proof answers when this delegator still
    /// holds it: a commit of a lock that names its task must carry it (without it, only the
    /// executor's own commit, which it makes before publishing, can pay).
    async fn settle_with_task(&self, wire: &Bytes, task: Option<&Bytes>) -> Result<DelegationOutcome, DelegateError> {
        let proof: Verified<ExecutionProof> = self
            .keys
            .verify(wire)
            .await
            .map_err(|e| DelegateError::BadProof(e.to_string()))?;
        if proof.delegator_lct.platform() != self.platform() {
            return Err(DelegateError::Invalid(format!(
                "proof of task {} is for {}",
                proof.task_id, proof.delegator_lct
            )));
        }
        let lock = self.reader.lock(&proof.task_id).await?;
        if let Some(lock) = &lock
            && lock.executor.platform() != proof.executor_lct.platform()
        {
            // Any platform may sign a proof about any task id; only the lock's executor counts.
            return Err(DelegateError::Invalid(format!(
                "proof of task {} comes from {}, not its executor {}",
                proof.task_id, proof.executor_lct, lock.executor
            )));
        }
        // The executor settles before it publishes, so the lock is usually settled already:
        // then there is nothing to ask the ledger.
        let lock = match lock {
            // Held for a witness: the executor's commit is in; the witness settles it.
            Some(lock) if lock.state.is_terminal() || lock.state == LockState::AwaitingWitness => lock,
            lock => {
                let threshold = lock
                    .as_ref()
                    .map_or(self.config.settlement.quality_threshold.get(), |l| l.quality_threshold);
                let reply = if proof.status == ProofStatus::Completed && proof.quality_score >= threshold {
                    match task {
                        Some(task) => self.ledger.commit_with_task(&proof.task_id, wire, task).await,
                        None => self.ledger.commit(&proof.task_id, wire).await,
                    }
                } else {
                    self.ledger
                        .rollback(&proof.task_id, RollbackReason::for_proof(proof.status), Some(wire))
                        .await
                }?;
                self.final_lock(&proof.task_id, &reply).await?
            }
        };
        if lock.state.is_terminal() {
            self.settled.mark(&proof.task_id);
        }
        let mut outcome = outcome_of(&lock, Some(&proof), &proof.reason);
        outcome.proof_envelope = Some(String::from_utf8_lossy(wire).into_owned());
        Ok(outcome)
    }

    async fn final_lock(&self, task_id: &TaskId, reply: &LedgerReply) -> Result<Lock, DelegateError> {
        if let Some(lock) = &reply.lock {
            return Ok((**lock).clone());
        }
        self.reader.lock(task_id).await?.ok_or_else(|| DelegateError::NoLock {
            task_id: task_id.clone(),
            message: reply.message.clone(),
        })
    }

    /// Settles every proof addressed to this platform that nobody settled: the durable
    /// consumer `settle-<platform>` keeps them while this platform is away. Runs until
    /// aborted.
    pub async fn settle_orphaned_proofs(&self) {
        loop {
            if let Err(e) = self.settle_stream().await {
                tracing::warn!(error = %e, "proof settler interrupted; restarting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn settle_stream(&self) -> Result<(), async_nats::Error> {
        let stream = self.js.get_stream(subjects::PROOFS_STREAM).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(subjects::settle_consumer(self.platform())),
                description: Some(format!("Proofs addressed to {}, settled by it", self.platform())),
                filter_subject: subjects::proofs_for(self.platform()),
                ack_wait: SETTLE_ACK_WAIT,
                // A proof that keeps failing to settle (its lock gone) stops coming back; the
                // lock itself expires and is refunded by the ledger.
                max_deliver: SETTLE_DELIVERIES_MAX,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        // Held tasks being dispatched to their witnesses, each until its lock settles, while
        // the settler goes on with the next proofs.
        let mut following = FuturesUnordered::new();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let message = message?;
                    if let Some(held) = self.settle_message(&message).await {
                        following.push(self.follow_orphaned(message, held));
                    }
                }
                Some(()) = following.next(), if !following.is_empty() => {}
            }
        }
        while following.next().await.is_some() {}
        Ok(())
    }

    /// Settles one stored proof and acknowledges it; returns the outcome, unacknowledged,
    /// when the lock is held for a witness and no delegation of this client follows it:
    /// then this settler dispatches the task ([`Self::follow_orphaned`]).
    async fn settle_message(&self, message: &jetstream::Message) -> Option<DelegationOutcome> {
        match self.settle(&message.payload).await {
            Ok(outcome) if outcome.settlement == LockState::AwaitingWitness && !self.is_waiting(&outcome.task_id) => {
                Some(outcome)
            }
            Ok(outcome) => {
                tracing::debug!(task = %outcome.task_id, settlement = ?outcome.settlement, "settled a proof");
                let _ = message.ack().await;
                None
            }
            Err(e @ (DelegateError::BadProof(_) | DelegateError::Invalid(_))) => {
                tracing::warn!(subject = %message.subject, error = %e, "dropping a proof that does not verify");
                let _ = message.ack_with(AckKind::Term).await;
                None
            }
            Err(e) => {
                tracing::warn!(subject = %message.subject, error = %e, "could not settle a proof; retrying later");
                let _ = message.ack_with(AckKind::Nak(Some(SETTLE_RETRY_PAUSE))).await;
                None
            }
        }
    }

    /// Whether a delegation of this client waits for `task_id` (it dispatches its own task).
    fn is_waiting(&self, task_id: &TaskId) -> bool {
        self.waiters.lock().is_ok_and(|w| w.contains_key(task_id))
    }

    /// A proof whose commit the ledger holds for a witness, found by the orphan settler (this
    /// delegator was away, or another process of it delegated): reads the signed task this
    /// platform kept at lock time and dispatches it as a live delegation does
    /// ([`Self::await_witness`]) until the lock settles, keeping the proof unacknowledged
    /// meanwhile (a settler that stops hands it to the next one).
    async fn follow_orphaned(&self, message: jetstream::Message, held: DelegationOutcome) {
        let task_id = held.task_id.clone();
        let followed = async {
            let Some(wire) = self.witnessed.get(&task_id).await? else {
                // Delegated by a version that kept no task: nothing to send, the hold expires.
                tracing::warn!(task = %task_id, "no kept task to hand to the witness; the hold expires and pays the executor");
                return Ok(None);
            };
            let task: Verified<FederationTask> = self
                .keys
                .verify_ignoring_expiry(&wire)
                .await
                .map_err(|e| DelegateError::Invalid(format!("the kept task {task_id} does not verify: {e}")))?;
            if task.task_id != task_id || task.source_lct.platform() != self.platform() {
                return Err(DelegateError::Invalid(format!(
                    "the task kept under {task_id} is {}'s task {}",
                    task.source_lct, task.task_id
                )));
            }
            self.await_witness(&task, &wire, held).await.map(Some)
        };
        tokio::pin!(followed);
        let mut progress = tokio::time::interval(SETTLE_PROGRESS_INTERVAL);
        progress.tick().await;
        let result = loop {
            tokio::select! {
                result = &mut followed => break result,
                _ = progress.tick() => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        };
        match result {
            Ok(settled) => {
                if let Some(outcome) = settled {
                    tracing::info!(task = %task_id, settlement = ?outcome.settlement, "settled a held task after dispatching it to its witness");
                }
                let _ = message.ack().await;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(task = %task_id, error = %e, "could not follow a held task; retrying later");
                let _ = message.ack_with(AckKind::Nak(Some(SETTLE_RETRY_PAUSE))).await;
            }
            Err(e) => {
                tracing::warn!(task = %task_id, error = %e, "cannot dispatch a held task; the hold expires and pays the executor");
                let _ = message.ack().await;
            }
        }
    }

    /// This platform's LCT of `task_type`.
    pub fn lct(&self, task_type: &str) -> Result<Lct, crate::protocol::lct::LctError> {
        self.config.lct(task_type)
    }
}

/// The delegator's timeout rollback, repeated (a second apart, a bounded number of times)
/// while the ledger's clock still counts the executor's commit window open.
async fn rollback_timed_out(
    ledger: &LedgerClient,
    task_id: &TaskId,
) -> Result<LedgerReply, crate::ledger::client::LedgerClientError> {
    let mut attempt = 1;
    loop {
        let reply = ledger.rollback(task_id, RollbackReason::Timeout, None).await?;
        if reply.code != Some(RejectCode::EvidenceRequired) || attempt >= TIMEOUT_ROLLBACK_ATTEMPTS_MAX {
            return Ok(reply);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn outcome_of(lock: &Lock, proof: Option<&ExecutionProof>, reason: &str) -> DelegationOutcome {
    let settlement = lock.settlement.as_ref();
    DelegationOutcome {
        task_id: lock.task_id.clone(),
        from: lock.delegator.platform().to_owned(),
        to: lock.executor.platform().to_owned(),
        operation: String::new(),
        proof_status: proof.map(|p| p.status),
        reason: reason.to_owned(),
        quality: proof.map(|p| p.quality_score),
        settlement: lock.state,
        rollback_reason: settlement.and_then(|s| s.reason),
        atp_consumed: settlement.map_or(0.0, |s| s.paid_uatp.as_f64()),
        atp_refunded: settlement.map_or(0.0, |s| s.refunded_uatp.as_f64()),
        result: proof.map(|p| p.result.clone()).unwrap_or_default(),
        latency_ms: 0.0,
        proof_envelope: None,
        witness: settlement.and_then(|s| s.witness.clone()),
    }
}
