//! `sagefed ledger serve`: the ledger authority. Any number of instances share one queue
//! group; each verifies signed requests, turns them into commands, and hands them to its
//! sequencer. It is the only writer of the ledger bucket.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use async_nats::Client;
use async_nats::jetstream;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;

use crate::fault;
use crate::identity::directory::KeyDirectory;
use crate::ledger::model::{Lock, LockState, WitnessTerms};
use crate::ledger::protocol::{LedgerReply, LedgerRequest, Operation, Outcome, RejectCode, WitnessRequest};
use crate::ledger::reputation_writer::ReputationWriter;
use crate::ledger::rules::{CheckedWork, Command};
use crate::ledger::sequencer::{self, SequencerHandle};
use crate::ledger::store::LedgerStore;
use crate::ledger::sweeper;
use crate::ledger::witness::Draw;
use crate::nats::subjects;
use crate::observe::metrics::{self, RefusalReason, Refuser};
use crate::protocol::atp::Atp;
use crate::protocol::envelope::{EnvelopeError, Verified};
use crate::protocol::proof::ExecutionProof;
use crate::protocol::task::FederationTask;
use crate::state::reputation::Reputations;
use crate::worker::ops;

/// The endpoints, by operation name.
pub const ENDPOINTS: [&str; 5] = ["grant", "lock", "commit", "rollback", "witness"];

/// Requests one service instance verifies or waits on at once, over all endpoints; past it,
/// a request is answered "busy, retry" at once instead of taking a task and memory.
pub const LEDGER_REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// How a ledger service instance runs.
#[derive(Clone, Debug)]
pub struct LedgerOptions {
    /// Platforms whose signed requests may grant ATP.
    pub admins: BTreeSet<String>,
    /// Key ids of the admin keys pinned in the ledger's config: when not empty, a grant
    /// counts only if signed by one of them, whatever keys the key bucket holds for an admin.
    pub admin_keys: BTreeSet<String>,
    /// The federation root: every key the ledger verifies must chain to it.
    pub root: ed25519_dalek::VerifyingKey,
    /// Whether this instance sweeps expired locks.
    pub sweep: bool,
    /// How fast executors' reputation forgets: a settlement counts half after this long.
    pub reputation_half_life: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot open the ledger bucket sage_ledger ({0}); is NATS up and the ledger created (`sagefed up`)?")]
    Bucket(#[source] async_nats::jetstream::context::KeyValueError),
    #[error(transparent)]
    Keys(#[from] crate::identity::directory::DirectoryError),
    #[error(transparent)]
    Reputation(#[from] crate::state::reputation::ReputationError),
    #[error("cannot start the sagefed-ledger service: {0}")]
    Service(#[source] async_nats::Error),
}

/// A running ledger service instance.
pub struct LedgerService {
    service: async_nats::service::Service,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sequencer: tokio::task::JoinHandle<()>,
    reputation: tokio::task::JoinHandle<()>,
}

impl LedgerService {
    /// Starts serving on `client`. The streams and buckets must exist (`infra::ensure`).
    pub async fn start(client: Client, options: LedgerOptions) -> Result<Self, ServiceError> {
        let js = jetstream::new(client.clone());
        let kv = js
            .get_key_value(subjects::LEDGER_BUCKET)
            .await
            .map_err(ServiceError::Bucket)?;
        let keys = Arc::new(KeyDirectory::open(&js, &options.root).await?);
        let reputations = Reputations::open(&js).await?;
        let (reputation, reputation_task) = ReputationWriter::start(reputations, options.reputation_half_life);
        let (handle, sequencer) = sequencer::spawn(
            LedgerStore::new(client.clone(), kv.clone()),
            options.admins.clone(),
            Some(reputation),
        );
        let service = client
            .service_builder()
            .description("sagefed ATP ledger: grant, lock, commit, rollback, witness")
            .queue_group(subjects::LEDGER_QUEUE_GROUP)
            .start(subjects::LEDGER_SERVICE, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(ServiceError::Service)?;
        let group = service.group(subjects::LEDGER_ENDPOINT_PREFIX);
        let admin_keys = Arc::new(options.admin_keys.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(LEDGER_REQUESTS_IN_FLIGHT_MAX));
        let mut tasks = Vec::new();
        for name in ENDPOINTS {
            let mut endpoint = group.endpoint(name).await.map_err(ServiceError::Service)?;
            let keys = Arc::clone(&keys);
            let handle = handle.clone();
            let admin_keys = Arc::clone(&admin_keys);
            let slots = Arc::clone(&slots);
            tasks.push(tokio::spawn(async move {
                while let Some(request) = endpoint.next().await {
                    // A test may ask for a busy answer to a rollback (`fault`), as past the limit.
                    let faulted = name == "rollback" && fault::busy_rollback();
                    let (Ok(slot), false) = (Arc::clone(&slots).try_acquire_owned(), faulted) else {
                        metrics::refused(Refuser::Ledger, RefusalReason::Limits);
                        respond(request, &busy_reply()).await;
                        continue;
                    };
                    let keys = Arc::clone(&keys);
                    let handle = handle.clone();
                    let admin_keys = Arc::clone(&admin_keys);
                    tokio::spawn(async move {
                        let reply = handle_request(name, &request.message.payload, &keys, &admin_keys, &handle).await;
                        drop(slot);
                        respond(request, &reply).await;
                    });
                }
            }));
        }
        if options.sweep {
            tasks.push(tokio::spawn(sweeper::run(kv, handle)));
        }
        Ok(Self {
            service,
            tasks,
            sequencer,
            reputation: reputation_task,
        })
    }

    /// Stops answering and waits for queued commands to finish.
    pub async fn stop(self) {
        let _ = self.service.stop().await;
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        // With every handle dropped the sequencer drains its queue and ends, and then the
        // reputation writer, whose last sender the sequencer held.
        let _ = self.sequencer.await;
        let _ = self.reputation.await;
    }
}

/// Runs a ledger service until `shutdown` resolves.
pub async fn serve(
    client: Client,
    options: LedgerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let service = LedgerService::start(client.clone(), options).await?;
    tracing::info!("ledger service ready");
    shutdown.await;
    service.stop().await;
    let _ = client.flush().await;
    Ok(())
}

/// The answer to a request past [`LEDGER_REQUESTS_IN_FLIGHT_MAX`].
pub fn busy_reply() -> LedgerReply {
    LedgerReply::rejected(
        RejectCode::Busy,
        format!("the ledger service has {LEDGER_REQUESTS_IN_FLIGHT_MAX} requests in flight (its limit); retry"),
    )
}

async fn respond(request: async_nats::service::Request, reply: &LedgerReply) {
    let body = serde_json::to_vec(reply).unwrap_or_default();
    if let Err(e) = request.respond(Ok(Bytes::from(body))).await {
        tracing::debug!(error = %e, "could not send a ledger reply");
    }
}

fn refuse(error: &EnvelopeError) -> LedgerReply {
    let code = match error {
        EnvelopeError::Malformed(_)
        | EnvelopeError::TooLarge { .. }
        | EnvelopeError::WrongKind { .. }
        | EnvelopeError::Invalid(_) => RejectCode::InvalidRequest,
        _ => RejectCode::BadSignature,
    };
    LedgerReply::rejected(code, error.to_string())
}

async fn verify_proof(keys: &KeyDirectory, wire: &str, what: &str) -> Result<Verified<ExecutionProof>, LedgerReply> {
    keys.verify::<ExecutionProof>(&Bytes::copy_from_slice(wire.as_bytes()))
        .await
        .map_err(|e| LedgerReply::rejected(RejectCode::BadSignature, format!("the {what} does not verify: {e}")))
}

/// Checks the proof's result against the task a commit carries: the task must be a genuine
/// signed task of the same id (its digest is what the lock names; the rules compare them), and
/// the verdict is the built-in operation's own check, run on a blocking thread.
async fn check_work(
    keys: &KeyDirectory,
    task: &str,
    proof: &Verified<ExecutionProof>,
) -> Result<CheckedWork, LedgerReply> {
    let wire = Bytes::copy_from_slice(task.as_bytes());
    // The task may have expired since it ran: its signature and fields still count.
    let task = keys
        .verify_ignoring_expiry::<FederationTask>(&wire)
        .await
        .map_err(|e| LedgerReply::rejected(RejectCode::BadSignature, format!("the task does not verify: {e}")))?;
    if task.task_id != proof.task_id {
        return Err(LedgerReply::rejected(
            RejectCode::InvalidRequest,
            format!(
                "the task carried is {}, the proof is about {}",
                task.task_id, proof.task_id
            ),
        ));
    }
    let budget = task
        .budget()
        .map_err(|why| LedgerReply::rejected(RejectCode::InvalidAmount, why))?;
    let (operation, parameters, result) = (task.operation.clone(), task.parameters.clone(), proof.result.clone());
    let verdict = tokio::task::spawn_blocking(move || ops::verify(&operation, &parameters, budget, &result))
        .await
        .map_err(|e| LedgerReply::rejected(RejectCode::Busy, format!("the result check did not finish: {e}")))?;
    Ok(CheckedWork {
        task_digest: crate::protocol::envelope::digest(&wire),
        operation: task.operation.clone(),
        verdict,
        draw: draw()?,
    })
}

/// The ledger's own random draw for sampling a commit: from the operating system, so no
/// party to the task can predict or steer it.
fn draw() -> Result<Draw, LedgerReply> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| LedgerReply::rejected(RejectCode::Busy, format!("no randomness for sampling: {e}")))?;
    let [sample, pick] = [&bytes[..8], &bytes[8..]].map(|half| {
        let mut word = [0u8; 8];
        word.copy_from_slice(half);
        u64::from_le_bytes(word)
    });
    // 53 random bits: uniform in 0..1 with an f64's full precision.
    let sample = (sample >> 11) as f64 / (1u64 << 53) as f64;
    Ok(Draw { sample, pick })
}

/// A lock's witness terms from the wire (the share in decimal ATP).
fn witness_terms(request: Option<WitnessRequest>) -> Result<Option<Box<WitnessTerms>>, LedgerReply> {
    let Some(request) = request else {
        return Ok(None);
    };
    let share_uatp = Atp::positive_from_f64(request.share, "witness share")
        .map_err(|e| LedgerReply::rejected(RejectCode::InvalidAmount, e.to_string()))?;
    Ok(Some(Box::new(WitnessTerms {
        candidates: request.candidates,
        share_uatp,
        tolerance: request.tolerance,
        hold_seconds: request.hold_seconds,
    })))
}

/// Verifies a request and turns it into a command; any refusal is a reply.
async fn command_for(
    endpoint: &str,
    payload: &Bytes,
    keys: &KeyDirectory,
    admin_keys: &BTreeSet<String>,
) -> Result<Command, LedgerReply> {
    let request = keys.verify::<LedgerRequest>(payload).await.map_err(|e| refuse(&e))?;
    let requester = request.requester.clone();
    let key_id = request.key_id().to_owned();
    let request = request.into_message();
    if request.operation.name() != endpoint {
        return Err(LedgerReply::rejected(
            RejectCode::InvalidRequest,
            format!(
                "a {} request was sent to the {endpoint} endpoint",
                request.operation.name()
            ),
        ));
    }
    let amount = |value: f64, what: &'static str| {
        Atp::positive_from_f64(value, what).map_err(|e| LedgerReply::rejected(RejectCode::InvalidAmount, e.to_string()))
    };
    Ok(match request.operation {
        Operation::Grant {
            grant_id,
            account,
            amount: value,
        } => {
            // Creating ATP needs a pinned key: whoever can write an admin's key record to
            // the bucket still cannot mint.
            if !admin_keys.is_empty() && !admin_keys.contains(&key_id) {
                return Err(LedgerReply::rejected(
                    RejectCode::NotAuthorized,
                    format!("grants must be signed by an admin key pinned in the ledger's config; {key_id} is not one"),
                ));
            }
            Command::Grant {
                requester,
                grant_id,
                account,
                amount: amount(value, "amount")?,
            }
        }
        Operation::Lock {
            task_id,
            delegator,
            executor,
            amount: value,
            quality_threshold,
            deadline,
            expires_at,
            task_digest,
            operation,
            witness,
        } => {
            let lock = Lock {
                task_id,
                delegator,
                executor,
                amount_uatp: amount(value, "amount")?,
                quality_threshold,
                created_at: request.created_at,
                deadline,
                expires_at,
                state: LockState::Pending,
                settlement: None,
                task_digest,
                witness_terms: witness_terms(witness)?,
                hold: None,
                operation,
            };
            Command::Lock { requester, lock }
        }
        Operation::Commit { task_id, proof, task } => {
            let proof = verify_proof(keys, proof.get(), "proof").await?;
            let work = match task {
                Some(task) => Some(check_work(keys, task.get(), &proof).await?),
                None => None,
            };
            Command::Commit {
                requester,
                task_id,
                proof,
                work,
            }
        }
        Operation::Rollback {
            task_id,
            reason,
            evidence,
        } => {
            let evidence = match evidence {
                Some(wire) => Some(verify_proof(keys, wire.get(), "evidence").await?),
                None => None,
            };
            Command::Rollback {
                requester,
                task_id,
                reason,
                evidence,
            }
        }
        Operation::Witness { task_id, proof } => {
            let proof = verify_proof(keys, proof.get(), "witness's proof").await?;
            Command::Witness {
                requester,
                task_id,
                proof,
            }
        }
    })
}

async fn handle_request(
    endpoint: &str,
    payload: &Bytes,
    keys: &KeyDirectory,
    admin_keys: &BTreeSet<String>,
    sequencer: &SequencerHandle,
) -> LedgerReply {
    let started = std::time::Instant::now();
    let reply = match command_for(endpoint, payload, keys, admin_keys).await {
        Ok(command) => sequencer.submit(command).await,
        Err(reply) => reply,
    };
    metrics::ledger_transition(endpoint, outcome_label(reply.outcome), started.elapsed());
    if let Some(code) = reply.code {
        metrics::refused(Refuser::Ledger, refusal_reason(code));
    }
    reply
}

/// The metric label for a reply's outcome.
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::AlreadyApplied => "already_applied",
        Outcome::Rejected => "rejected",
    }
}

/// The metric label for a ledger refusal.
fn refusal_reason(code: RejectCode) -> RefusalReason {
    match code {
        RejectCode::BadSignature => RefusalReason::Signature,
        RejectCode::InvalidRequest => RefusalReason::Malformed,
        _ => RefusalReason::Rules,
    }
}
