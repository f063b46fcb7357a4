//! Status and cancel, as the NATS micro service `sagefed-status` (so `nats micro ls` lists
//! it): the seed's `GET /status/{lct_id}` and `POST /cancel/{task_id}`.
//!
//! - `sage.status.lct` (an LCT) -> active, ATP consumed and earned, balance, tasks running.
//! - `sage.status.task` (a task id) -> its status record and its lock.
//! - `sage.status.cancel` (a signed [`CancelRequest`]) -> cancelled, ATP refunded. Only the
//!   delegator may cancel. The delegator has marked its own part of the task's status
//!   cancelled ([`cancel_task`]; a queued task is then never executed, and only the delegator
//!   may write that part); the service checks the mark, tells the executor's workers to abort it, and waits for the executor's
//!   acknowledgement: its own rollback with its signed `cancelled` proof. The request's
//!   signed rollback is forwarded only when no acknowledgement came; the ledger accepts it
//!   after the deadline and the executor's commit window.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::identity::directory::KeyDirectory;
use crate::ledger::client::LedgerReader;
use crate::ledger::model::{Lock, LockState, RollbackReason};
use crate::ledger::protocol::{LedgerReply, LedgerRequest, Operation, REQUEST_TTL, RejectCode};
use crate::nats::subjects;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{Signable, Signer};
use crate::protocol::lct::{Lct, check_platform};
use crate::protocol::limits::ENVELOPE_BYTES_MAX;
use crate::protocol::task::TaskId;
use crate::state::registry::Registry;
use crate::state::reputation::{ReputationSummary, Reputations};
use crate::state::task_board::{TaskBoard, TaskState, TaskStatus};

/// How long a status or cancel request waits for its answer.
pub const STATUS_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cancel waits for the executor to acknowledge it (roll the lock back) before
/// answering; shorter than [`STATUS_REQUEST_TIMEOUT`], so the answer arrives.
const CANCEL_ACK_WAIT: Duration = Duration::from_secs(6);
/// Pause between reads of the lock while waiting for the acknowledgement.
const CANCEL_ACK_POLL: Duration = Duration::from_millis(100);
/// Attempts to forward the delegator's rollback while the ledger answers busy.
const FORWARD_ATTEMPTS_MAX: u32 = 4;
/// Requests one status service verifies or reads for at once, over all endpoints; past it,
/// a request is answered with [`status_busy_error`] at once instead of taking a task.
pub const STATUS_REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// The error answered past [`STATUS_REQUESTS_IN_FLIGHT_MAX`].
pub fn status_busy_error() -> String {
    format!("busy: the status service has {STATUS_REQUESTS_IN_FLIGHT_MAX} requests in flight (its limit); retry")
}

/// The seed's LCT status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LctStatus {
    pub lct: String,
    /// Its platform has a live worker.
    pub active: bool,
    /// ATP it paid executors.
    pub atp_consumed: f64,
    /// ATP it was paid as an executor.
    pub atp_earned: f64,
    pub balance: f64,
    pub locked: f64,
    /// Its tasks in flight (pending locks).
    pub tasks_running: u64,
    /// Its platform's reputation as an executor, per operation, as the ledger recorded it.
    #[serde(default)]
    pub reputation: Vec<ReputationSummary>,
}

/// A task's status and lock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_id: String,
    pub status: Option<TaskStatus>,
    pub lock: Option<Lock>,
}

/// The seed's cancel answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CancelReply {
    pub cancelled: bool,
    pub atp_refunded: f64,
    pub message: String,
}

/// A delegator's signed request to cancel its task.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub task_id: TaskId,
    pub requester: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    /// The requester's signed ledger rollback (reason `cancelled`) of the task.
    pub rollback: String,
}

impl Signable for CancelRequest {
    const DOMAIN: &'static [u8] = b"sagefed/cancel/v1\0";
    const KIND: &'static str = "cancel";
    fn signer_platform(&self) -> &str {
        &self.requester
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
    fn expires_at(&self) -> Option<Timestamp> {
        Some(self.expires_at)
    }
    fn validate(&self) -> Result<(), String> {
        check_platform(&self.requester).map_err(|e| e.to_string())?;
        if self.rollback.len() > ENVELOPE_BYTES_MAX {
            return Err("the rollback is larger than an envelope may be".to_owned());
        }
        Ok(())
    }
}

/// An error answer of the service, as JSON `{"error": ...}`.
#[derive(Serialize, Deserialize)]
struct ErrorReply {
    error: String,
}

/// The running status service.
pub struct StatusService {
    service: async_nats::service::Service,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Shared {
    client: Client,
    keys: Arc<KeyDirectory>,
    reader: LedgerReader,
    board: TaskBoard,
    registry: Registry,
    reputations: Reputations,
}

/// Why the status service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatusStartError {
    #[error("the status service cannot read the key directory: {0}")]
    Keys(#[from] crate::identity::directory::DirectoryError),
    #[error("the status service cannot open the ledger bucket: {0}")]
    Ledger(#[from] crate::ledger::client::LedgerClientError),
    #[error("the status service cannot open the task board: {0}")]
    Board(#[from] crate::state::task_board::StatusError),
    #[error("the status service cannot open the platform registry: {0}")]
    Registry(#[from] crate::state::registry::RegistryError),
    #[error("the status service cannot open the reputation bucket: {0}")]
    Reputation(#[from] crate::state::reputation::ReputationError),
    #[error("cannot start the sagefed-status micro service: {0}")]
    Service(#[source] async_nats::Error),
    #[error("cannot add the status endpoint {name}: {source}")]
    Endpoint {
        name: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

/// Why a status query or a cancel failed. `Timeout` and `Unreachable` are transient (no
/// status service answered: start a worker or `sagefed up`, or retry); `Refused` is the
/// service's own answer and repeats if asked again.
#[derive(Debug, thiserror::Error)]
pub enum StatusQueryError {
    #[error("the status service did not answer in {0:?}; is a `sagefed worker` (or `sagefed up`) running?")]
    Timeout(Duration),
    #[error("the status service is unreachable ({0}); is a `sagefed worker` (or `sagefed up`) running?")]
    Unreachable(#[source] async_nats::RequestError),
    /// The service's answer: what it refused and why.
    #[error("{0}")]
    Refused(String),
    #[error("the status service's {endpoint} answer does not decode: {source}")]
    Malformed {
        endpoint: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot mark the task cancelled on the task board: {0}")]
    Board(#[from] crate::state::task_board::StatusError),
    #[error("cannot sign the cancel: {0}")]
    Sign(#[from] crate::protocol::envelope::EnvelopeError),
}

impl StatusQueryError {
    /// Whether asking again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unreachable(_) | Self::Board(_))
    }
}

impl StatusService {
    /// Starts answering on `client`, trusting the keys that chain to `root`.
    pub async fn start(client: Client, root: &ed25519_dalek::VerifyingKey) -> Result<Self, StatusStartError> {
        let js = jetstream::new(client.clone());
        let keys = Arc::new(KeyDirectory::open(&js, root).await?);
        let shared = Arc::new(Shared {
            keys: Arc::clone(&keys),
            reader: LedgerReader::open(&js).await?,
            board: TaskBoard::open(&js).await?,
            registry: Registry::open(&js, keys).await?,
            reputations: Reputations::open(&js).await?,
            client: client.clone(),
        });
        let service = client
            .service_builder()
            .description("sagefed status of LCTs and tasks, and cancel")
            .queue_group(subjects::STATUS_SERVICE)
            .start(subjects::STATUS_SERVICE, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(StatusStartError::Service)?;
        let group = service.group(subjects::STATUS_ENDPOINT_PREFIX);
        let mut tasks = Vec::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(STATUS_REQUESTS_IN_FLIGHT_MAX));
        for name in ["lct", "task", "cancel"] {
            let mut endpoint = group
                .endpoint(name)
                .await
                .map_err(|source| StatusStartError::Endpoint { name, source })?;
            let shared = Arc::clone(&shared);
            let slots = Arc::clone(&slots);
            tasks.push(tokio::spawn(async move {
                while let Some(request) = endpoint.next().await {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        let error = status_busy_error();
                        let body = serde_json::to_vec(&ErrorReply { error }).unwrap_or_default();
                        let _ = request.respond(Ok(Bytes::from(body))).await;
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let body = match answer(name, &request.message.payload, &shared).await {
                            Ok(body) => body,
                            Err(error) => serde_json::to_vec(&ErrorReply { error }).unwrap_or_default(),
                        };
                        drop(slot);
                        let _ = request.respond(Ok(Bytes::from(body))).await;
                    });
                }
            }));
        }
        Ok(Self { service, tasks })
    }

    pub async fn stop(self) {
        let _ = self.service.stop().await;
        for task in self.tasks {
            task.abort();
        }
    }
}

async fn answer(endpoint: &str, payload: &Bytes, shared: &Shared) -> Result<Vec<u8>, String> {
    let text = || {
        std::str::from_utf8(payload)
            .map(str::trim)
            .map_err(|_| "the request is not UTF-8".to_owned())
    };
    let json = |value: serde_json::Result<Vec<u8>>| value.map_err(|e| e.to_string());
    match endpoint {
        "lct" => {
            let lct: Lct = text()?
                .parse()
                .map_err(|e: crate::protocol::lct::LctError| e.to_string())?;
            json(serde_json::to_vec(&lct_status(&lct, shared).await?))
        }
        "task" => {
            let task_id: TaskId = text()?.parse()?;
            let status = shared
                .board
                .get(&task_id)
                .await
                .map_err(|e| e.to_string())?
                .map(|(s, _)| s);
            let lock = shared.reader.lock(&task_id).await.map_err(|e| e.to_string())?;
            json(serde_json::to_vec(&TaskReport {
                task_id: task_id.to_string(),
                status,
                lock,
            }))
        }
        _ => json(serde_json::to_vec(&cancel(payload, shared).await?)),
    }
}

async fn lct_status(lct: &Lct, shared: &Shared) -> Result<LctStatus, String> {
    let account = shared.reader.account(lct).await.map_err(|e| e.to_string())?;
    let record = shared.registry.get(lct.platform()).await.map_err(|e| e.to_string())?;
    let now = Timestamp::now();
    let active = record.is_some_and(|r| r.is_healthy(now));
    let reputation = shared
        .reputations
        .of_platform(lct.platform())
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| ReputationSummary::of(r, now))
        .collect();
    Ok(match account {
        Some(a) => LctStatus {
            lct: lct.to_string(),
            active,
            atp_consumed: a.spent_uatp.as_f64(),
            atp_earned: a.earned_uatp.as_f64(),
            balance: a.balance_uatp.as_f64(),
            locked: a.locked_uatp.as_f64(),
            tasks_running: a.pending_locks,
            reputation,
        },
        None => LctStatus {
            lct: lct.to_string(),
            active,
            atp_consumed: 0.0,
            atp_earned: 0.0,
            balance: 0.0,
            locked: 0.0,
            tasks_running: 0,
            reputation,
        },
    })
}

/// Checks that the signed rollback a cancel carries is its requester's rollback, reason
/// `cancelled`, of the very task being cancelled: the service forwards nothing else.
async fn check_enclosed_rollback(request: &CancelRequest, shared: &Shared) -> Result<(), String> {
    let rollback = shared
        .keys
        .verify::<LedgerRequest>(&Bytes::from(request.rollback.clone()))
        .await
        .map_err(|e| format!("cancel refused: its rollback does not verify: {e}"))?;
    let for_this_task = matches!(
        &rollback.operation,
        Operation::Rollback { task_id, reason: RollbackReason::Cancelled, .. } if *task_id == request.task_id
    );
    if rollback.requester != request.requester || !for_this_task {
        return Err(format!(
            "cancel refused: its rollback is not {}'s cancel of task {}",
            request.requester, request.task_id
        ));
    }
    Ok(())
}

/// Waits (at most [`CANCEL_ACK_WAIT`]) for the task's lock to be settled, and returns it.
async fn settled_lock(task_id: &TaskId, shared: &Shared) -> Result<Option<Lock>, String> {
    let deadline = tokio::time::Instant::now() + CANCEL_ACK_WAIT;
    loop {
        let lock = shared.reader.lock(task_id).await.map_err(|e| e.to_string())?;
        let pending = lock.as_ref().is_some_and(|l| l.state == LockState::Pending);
        if !pending || tokio::time::Instant::now() >= deadline {
            return Ok(lock);
        }
        tokio::time::sleep(CANCEL_ACK_POLL).await;
    }
}

/// Forwards the delegator's own rollback, retrying while the ledger is busy. The ledger
/// accepts it only once the deadline and the executor's commit window have passed.
async fn forward_rollback(request: &CancelRequest, shared: &Shared) -> Result<LedgerReply, String> {
    let mut pause = CANCEL_ACK_POLL;
    for attempt in 1..=FORWARD_ATTEMPTS_MAX {
        let answer = shared
            .client
            .request(
                subjects::ledger_endpoint("rollback"),
                Bytes::from(request.rollback.clone()),
            )
            .await;
        match answer {
            Ok(message) => {
                let reply: LedgerReply = serde_json::from_slice(&message.payload).map_err(|e| e.to_string())?;
                if reply.code != Some(RejectCode::Busy) || attempt == FORWARD_ATTEMPTS_MAX {
                    return Ok(reply);
                }
            }
            Err(e) if attempt == FORWARD_ATTEMPTS_MAX => {
                return Err(format!(
                    "the ledger did not answer the refund ({e}); the lock is refunded when the executor acknowledges the cancel, or when it expires"
                ));
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    Err("the ledger stayed busy; the lock is refunded when the executor acknowledges the cancel".to_owned())
}

/// A cancel, as the protocol in ARCHITECTURE.md ("Cancel") has it: the service finds the
/// delegator's request on the task board (its own part; a queued task is then never run) and tells the
/// executor's workers to stop it; the executor acknowledges by rolling the lock back itself
/// with its signed `cancelled` proof. The delegator's own rollback settles nothing before the
/// deadline and the executor's commit window: the ledger refuses it, so a delegator cannot
/// cancel a running task, keep its result and the ATP.
async fn cancel(payload: &Bytes, shared: &Shared) -> Result<CancelReply, String> {
    let request = shared
        .keys
        .verify::<CancelRequest>(payload)
        .await
        .map_err(|e| format!("cancel refused: {e}"))?;
    check_enclosed_rollback(&request, shared).await?;
    let Some((status, _)) = shared.board.get(&request.task_id).await.map_err(|e| e.to_string())? else {
        return Err(format!("no task {} is known", request.task_id));
    };
    if status.delegator.platform() != request.requester {
        return Err(format!(
            "only the delegator ({}) may cancel task {}",
            status.delegator.platform(),
            request.task_id
        ));
    }
    let lock = shared.reader.lock(&request.task_id).await.map_err(|e| e.to_string())?;
    if let Some(lock) = lock.filter(|l| l.state.is_terminal()) {
        return Ok(CancelReply {
            cancelled: false,
            atp_refunded: 0.0,
            message: format!("task {} already ended: its lock is {:?}", request.task_id, lock.state),
        });
    }
    // The cancel mark is the delegator's own part of the task's status (only it may write
    // it: `cancel_task` writes it before asking); the executor's workers believe nothing else.
    match status.state {
        TaskState::Cancelled => {}
        state if state.is_terminal() => {
            return Ok(CancelReply {
                cancelled: false,
                atp_refunded: 0.0,
                message: format!("task {} already ended: {state:?}", request.task_id),
            });
        }
        _ => {
            return Err(format!(
                "cancel refused: task {} is not marked cancelled in {}'s part of its status; `sagefed cancel` marks it first",
                request.task_id, request.requester
            ));
        }
    }
    // Stop it if it runs; a queued one is skipped when a worker claims it. Either way the
    // executor acknowledges by rolling the lock back.
    let _ = shared
        .client
        .publish(
            subjects::abort(status.executor.platform()),
            Bytes::from(request.task_id.to_string()),
        )
        .await;
    let mut lock = settled_lock(&request.task_id, shared).await?;
    let mut message = String::new();
    if lock.as_ref().is_some_and(|l| l.state == LockState::Pending) {
        let reply = forward_rollback(&request, shared).await?;
        message = reply.message;
        lock = match reply.lock {
            Some(lock) => Some(*lock),
            None => shared.reader.lock(&request.task_id).await.map_err(|e| e.to_string())?,
        };
    }
    Ok(cancel_reply(&request.task_id, lock.as_ref(), message))
}

/// What a cancel did, as the ledger has it.
fn cancel_reply(task_id: &TaskId, lock: Option<&Lock>, message: String) -> CancelReply {
    let refunded = lock.filter(|l| l.state == LockState::RolledBack || l.state == LockState::Expired);
    match (lock, refunded) {
        (_, Some(lock)) => CancelReply {
            cancelled: true,
            atp_refunded: lock.settlement.as_ref().map_or(0.0, |s| s.refunded_uatp.as_f64()),
            message: format!("task {task_id} cancelled and refunded"),
        },
        (Some(lock), None) if lock.state == LockState::Committed => CancelReply {
            cancelled: false,
            atp_refunded: 0.0,
            message: format!("task {task_id} finished before the cancel reached it, and was paid"),
        },
        _ => CancelReply {
            cancelled: false,
            atp_refunded: 0.0,
            message: format!(
                "the cancel of task {task_id} is recorded; its lock is refunded when the executor acknowledges it, or after the deadline ({message})"
            ),
        },
    }
}

async fn request_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    endpoint: &str,
    body: Bytes,
) -> Result<T, StatusQueryError> {
    let subject = format!("{}.{endpoint}", subjects::STATUS_ENDPOINT_PREFIX);
    let message = tokio::time::timeout(STATUS_REQUEST_TIMEOUT, client.request(subject, body))
        .await
        .map_err(|_| StatusQueryError::Timeout(STATUS_REQUEST_TIMEOUT))?
        .map_err(StatusQueryError::Unreachable)?;
    if let Ok(error) = serde_json::from_slice::<ErrorReply>(&message.payload) {
        return Err(StatusQueryError::Refused(error.error));
    }
    serde_json::from_slice(&message.payload).map_err(|source| StatusQueryError::Malformed {
        endpoint: endpoint.to_owned(),
        source,
    })
}

/// Asks the status service about an LCT.
pub async fn lct(client: &Client, lct: &Lct) -> Result<LctStatus, StatusQueryError> {
    request_json(client, "lct", Bytes::from(lct.to_string())).await
}

/// Asks the status service about a task.
pub async fn task(client: &Client, task_id: &TaskId) -> Result<TaskReport, StatusQueryError> {
    request_json(client, "task", Bytes::from(task_id.to_string())).await
}

/// Cancels `task_id` as its delegator `signer`: marks its own part of the task's status
/// cancelled (a queued task is then never run; only the delegator may write that part), then
/// asks the status service to stop it and settle the lock.
pub async fn cancel_task(client: &Client, signer: &Signer, task_id: &TaskId) -> Result<CancelReply, StatusQueryError> {
    let board = TaskBoard::open(&jetstream::new(client.clone())).await?;
    // Nothing marked (not this signer's task, or no such task): the service says which.
    board
        .cancel(task_id, signer.platform(), "cancelled by the delegator")
        .await?;
    let now = Timestamp::now();
    let rollback = LedgerRequest {
        requester: signer.platform().to_owned(),
        created_at: now,
        expires_at: now + REQUEST_TTL,
        operation: Operation::Rollback {
            task_id: task_id.clone(),
            reason: RollbackReason::Cancelled,
            evidence: None,
        },
    };
    // A signed envelope is JSON, so always UTF-8.
    let rollback = String::from_utf8_lossy(&signer.sign(&rollback)?).into_owned();
    let request = CancelRequest {
        task_id: task_id.clone(),
        requester: signer.platform().to_owned(),
        created_at: now,
        expires_at: now + REQUEST_TTL,
        rollback,
    };
    request_json(client, "cancel", signer.sign(&request)?).await
}
