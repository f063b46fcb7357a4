//! One task, from message to acknowledgement: verify, claim, check, execute, prove, settle.
//!
//! Every step is safe to repeat, because a task message is delivered again when a worker dies
//! or a step fails: the claim tells a redelivery from a replay, the proof is published with a
//! message id, and the ledger is idempotent by task id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use serde_json::Map;

use crate::fault;
use crate::ledger::model::{LockState, RollbackReason};
use crate::ledger::protocol::{LedgerReply, Outcome, RejectCode};
use crate::nats::subjects;
use crate::observe::metrics::{self, RefusalReason, Refuser};
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{EnvelopeError, Verified};
use crate::protocol::proof::{ExecutionProof, ProofStatus, message_id};
use crate::protocol::task::FederationTask;
use crate::state::task_board::{Claim, TaskState, TaskStatus};
use crate::worker::WorkerContext;
use crate::worker::checks::{self, Refusal};
use crate::worker::ops::{OperationError, OperationInput};

/// Progress reports per ack wait: a running task tells the server it is alive this many
/// times within each `worker.ack_wait_seconds`, so it is never delivered twice while it runs.
pub const PROGRESS_REPORTS_PER_ACK_WAIT: u32 = 3;
/// Longest pause before a task that failed for a transient reason is delivered again.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(30);
/// Header on a dead letter: why it is there.
pub const DEAD_REASON_HEADER: &str = "Sage-Dead-Reason";
/// Header on a dead letter: the subject it came from.
pub const DEAD_SUBJECT_HEADER: &str = "Sage-Dead-Subject";

/// Why handling a task failed before it finished. A transient kind (the bus, a bucket or the
/// ledger unreachable or busy) delivers the task again later; any other kind cannot succeed
/// on a retry, so the task is dead-lettered at once.
#[derive(Debug, thiserror::Error)]
enum TaskFailure {
    #[error("task board: {0}")]
    Board(#[from] crate::state::task_board::StatusError),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::client::LedgerClientError),
    #[error("the ledger is busy: {0}")]
    LedgerBusy(String),
    #[error("publishing the proof: {0}")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
    #[error("signing the proof: {0}")]
    Sign(#[from] crate::protocol::envelope::EnvelopeError),
}

impl TaskFailure {
    fn is_transient(&self) -> bool {
        match self {
            Self::Board(_) | Self::LedgerBusy(_) | Self::Publish(_) => true,
            Self::Ledger(e) => e.is_transient(),
            Self::Sign(_) => false,
        }
    }
}

/// Handles one task message to the end: acked, dead-lettered, or handed back for a retry.
pub async fn handle(ctx: Arc<WorkerContext>, message: jetstream::Message) {
    let message = Arc::new(message);
    let (sequence, delivered) = match message.info() {
        Ok(info) => {
            metrics::task_delivered(ctx.config.platform(), info.delivered, info.pending);
            (info.stream_sequence, info.delivered)
        }
        Err(e) => {
            tracing::warn!(error = %e, "a task message without JetStream metadata; dead-lettering it");
            dead_letter(&ctx, &message, &format!("no JetStream metadata: {e}")).await;
            return;
        }
    };
    if is_exhausted(delivered, ctx.config.worker.max_deliver) {
        let reason = format!(
            "exhausted its {} deliveries without an answer (worker died or hung)",
            ctx.config.worker.max_deliver
        );
        tracing::error!(sequence, delivered, "{reason}; dead-lettering it");
        give_up(&ctx, &message, &reason).await;
        return;
    }
    match process(&ctx, &message, sequence).await {
        Ok(Done::DeadLettered) => {}
        Ok(Done::Finished) => {
            if let Err(e) = message.double_ack().await {
                tracing::warn!(error = %e, sequence, "could not acknowledge a finished task; it will be delivered again and found finished");
            }
        }
        Err(why) if why.is_transient() && delivered < ctx.config.worker.max_deliver => {
            let delay = Duration::from_secs(1u64 << delivered.clamp(0, 5) as u32).min(RETRY_DELAY_MAX);
            tracing::warn!(
                sequence,
                delivered,
                ?delay,
                "task failed for a transient reason ({why}); retrying"
            );
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(why) if why.is_transient() => {
            tracing::error!(
                sequence,
                delivered,
                "task failed on its last delivery ({why}); dead-lettering it"
            );
            let reason = format!("failed on all {delivered} deliveries; last: {why}");
            give_up(&ctx, &message, &reason).await;
        }
        Err(why) => {
            tracing::error!(
                sequence,
                delivered,
                "task failed ({why}); a retry cannot help: dead-lettering it"
            );
            give_up(&ctx, &message, &format!("failed: {why}")).await;
        }
    }
}

/// Whether a message on its `delivered`th delivery has used up the `max_deliver` a platform
/// allows: every earlier delivery ended without an acknowledgement (its worker died or hung,
/// or the task crashes whoever runs it), so this one is not run again. The consumer itself
/// has no limit: the worker holding the message dead-letters it, and no platform needs to
/// read or delete queued tasks by sequence.
fn is_exhausted(delivered: i64, max_deliver: i64) -> bool {
    delivered > max_deliver
}

/// Copies the message to the dead-letter stream and removes it from the work queue, then
/// refunds its lock when the task is genuine.
async fn give_up(ctx: &WorkerContext, message: &jetstream::Message, reason: &str) {
    dead_letter(ctx, message, reason).await;
    abandon(ctx, &message.payload, reason).await;
}

/// Marks a dead-lettered task failed and refunds its lock, when the task is genuine and
/// this platform's. A refund that fails is logged: the lock then expires and is refunded.
pub async fn abandon(ctx: &WorkerContext, payload: &bytes::Bytes, reason: &str) {
    let Ok(task) = ctx.keys.verify_ignoring_expiry::<FederationTask>(payload).await else {
        return;
    };
    if task.target_lct.platform() != ctx.config.platform() {
        return;
    }
    let _ = ctx
        .board
        .finish(status_template(ctx, &task, None), TaskState::Failed, None, None, reason)
        .await;
    if let Err(e) = ctx.ledger.rollback(&task.task_id, RollbackReason::Failure, None).await {
        tracing::warn!(task = %task.task_id, error = %e, "could not refund a dead-lettered task; its lock will expire");
    }
}

/// Publishes a copy of `message` to the dead-letter stream with the reason, then terminates
/// it (which removes it from the work queue). Never silent: the reason is logged too.
pub async fn dead_letter(ctx: &WorkerContext, message: &jetstream::Message, reason: &str) {
    tracing::warn!(subject = %message.subject, reason, "dead-lettering a task");
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_REASON_HEADER, one_line(reason).as_str());
    headers.insert(DEAD_SUBJECT_HEADER, message.subject.as_str());
    let subject = subjects::dead_letter(ctx.config.platform());
    let published = match ctx
        .js
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match published {
        // Only once the copy is stored may the original go.
        Ok(()) => {
            metrics::dead_lettered(ctx.config.platform());
            let _ = message.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "could not dead-letter a task; leaving it to be delivered again");
            let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY_MAX))).await;
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ").chars().take(512).collect()
}

/// How a message left `process`.
enum Done {
    /// Handled: acknowledge it.
    Finished,
    /// Copied to the dead-letter stream and terminated already.
    DeadLettered,
}

async fn process(ctx: &WorkerContext, message: &Arc<jetstream::Message>, sequence: u64) -> Result<Done, TaskFailure> {
    // (1) Signature and key. A task that does not verify gets no proof and no ledger call:
    // answering it under its claimed task id would let a forger cancel a genuine task.
    let task = match ctx
        .keys
        .verify_ignoring_expiry::<FederationTask>(&message.payload)
        .await
    {
        Ok(task) => task,
        Err(e) => {
            let why = match e {
                EnvelopeError::Malformed(_) | EnvelopeError::TooLarge { .. } | EnvelopeError::WrongKind { .. } => {
                    metrics::refused(Refuser::Worker, RefusalReason::Malformed);
                    format!("malformed task: {e}")
                }
                _ => {
                    metrics::refused(Refuser::Worker, RefusalReason::Signature);
                    format!("task refused, signature or key: {e}")
                }
            };
            dead_letter(ctx, message, &why).await;
            return Ok(Done::DeadLettered);
        }
    };
    if task.target_lct.platform() != ctx.config.platform() {
        let why = format!(
            "task {} is for {}, not {}",
            task.task_id,
            task.target_lct.platform(),
            ctx.config.platform()
        );
        metrics::refused(Refuser::Worker, RefusalReason::WrongPlatform);
        dead_letter(ctx, message, &why).await;
        return Ok(Done::DeadLettered);
    }
    // (2) Replay, then expiry: a replay is dead-lettered unanswered whether or not it has
    // expired, so a replayed expired task never makes this executor sign a refusal that
    // could take the place of the task's real proof.
    let template = status_template(ctx, &task, Some(sequence));
    let revision = match ctx.board.claim(&template, sequence).await? {
        Claim::Claimed(revision) | Claim::Redelivered(revision) => revision,
        Claim::AlreadyFinished(state) => {
            tracing::info!(task = %task.task_id, ?state, "task delivered again after it finished; acknowledging it");
            return Ok(Done::Finished);
        }
        Claim::Replay(state) => {
            let why = format!(
                "replay of task {} (already {state:?}): a task id runs once",
                task.task_id
            );
            metrics::refused(Refuser::Worker, RefusalReason::Replay);
            dead_letter(ctx, message, &why).await;
            return Ok(Done::DeadLettered);
        }
        Claim::Cancelled => {
            let proof = refusal_proof(
                &task,
                ProofStatus::Cancelled,
                "cancelled by the delegator before it started",
            );
            conclude(ctx, &task, &proof, None, None).await?;
            return Ok(Done::Finished);
        }
    };
    let claimed = Some((template, revision));
    let lock = ctx.reader.lock(&task.task_id).await?;
    if let Some(lock) = &lock
        && lock.state == LockState::Committed
        && lock.executor == task.target_lct
    {
        // Delivered again after its commit landed (the worker died, or the proof's publish
        // failed, in between): the delegator paid, so it gets the proof it paid for.
        if let Some(paid) = ctx.reader.paid_proof(&task.task_id).await? {
            return republish(ctx, &task, paid.wire(), claimed).await;
        }
    }
    if let Err(refusal) = checks::check_expiry(&task, Timestamp::now()) {
        return refuse(ctx, &task, refusal, RefusalReason::Expired, claimed).await;
    }
    // (3) Permissions, (4) budget and concurrency, (5) rate, (6) limits.
    let signing_key = ctx.keys.record(task.source_lct.platform(), task.key_id());
    if let Err(refusal) = checks::check_permissions(&task, signing_key.as_ref(), &ctx.config, &ctx.operations) {
        return refuse(ctx, &task, refusal, RefusalReason::Permission, claimed).await;
    }
    let task_digest = crate::protocol::envelope::digest(task.wire());
    let admitted = match checks::check_budget(&task, &task_digest, lock.as_ref(), &ctx.config, &ctx.admissions) {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(ctx, &task, refusal, RefusalReason::Budget, claimed).await,
    };
    if let Err(refusal) = checks::check_rate(&task, &ctx.limiter, &ctx.config, Instant::now()) {
        return refuse(ctx, &task, refusal, RefusalReason::RateLimit, claimed).await;
    }
    if let Err(refusal) = checks::check_limits(&task, &ctx.config) {
        return refuse(ctx, &task, refusal, RefusalReason::Limits, claimed).await;
    }
    let proof = execute(ctx, &task, message).await;
    drop(admitted);
    conclude(ctx, &task, &proof, None, claimed).await?;
    Ok(Done::Finished)
}

/// The executor's part of `task`'s status as this worker starts it (from the signed task).
fn status_template(ctx: &WorkerContext, task: &FederationTask, sequence: Option<u64>) -> TaskStatus {
    TaskStatus {
        stream_sequence: sequence,
        worker: Some(ctx.worker_id.clone()),
        ..TaskStatus::for_task(task, TaskState::Running)
    }
}

/// Publishes the signed proof a commit of `task` paid for, exactly as the ledger kept it, and
/// finishes the task's status.
async fn republish(
    ctx: &WorkerContext,
    task: &FederationTask,
    wire: bytes::Bytes,
    claimed: Option<(TaskStatus, u64)>,
) -> Result<Done, TaskFailure> {
    let proof = ctx.keys.verify_ignoring_expiry::<ExecutionProof>(&wire).await?;
    tracing::info!(task = %task.task_id, "task delivered again after its commit; republishing the proof it was paid for");
    publish_and_finish(ctx, task, &proof, wire, claimed).await?;
    Ok(Done::Finished)
}

/// A signed refusal: proof, refund, status.
async fn refuse(
    ctx: &WorkerContext,
    task: &Verified<FederationTask>,
    refusal: Refusal,
    why: RefusalReason,
    claimed: Option<(TaskStatus, u64)>,
) -> Result<Done, TaskFailure> {
    tracing::info!(task = %task.task_id, from = task.source_lct.platform(), reason = %refusal.reason, "refusing a task");
    metrics::refused(Refuser::Worker, why);
    let proof = refusal_proof(task, ProofStatus::Rejected, &refusal.reason);
    conclude(ctx, task, &proof, Some(refusal.rollback), claimed).await?;
    Ok(Done::Finished)
}

fn refusal_proof(task: &FederationTask, status: ProofStatus, reason: &str) -> ExecutionProof {
    ExecutionProof {
        task_id: task.task_id.clone(),
        executor_lct: task.target_lct.clone(),
        delegator_lct: task.source_lct.clone(),
        status,
        reason: reason.to_owned(),
        atp_consumed: 0.0,
        execution_time: 0.0,
        quality_score: 0.0,
        result: Map::new(),
        created_at: Timestamp::now(),
    }
}

/// Runs the operation under the task's timeout (capped by its expiry), reporting progress,
/// and abortable by a cancel. Always returns a proof.
async fn execute(ctx: &WorkerContext, task: &FederationTask, message: &Arc<jetstream::Message>) -> ExecutionProof {
    let mut proof = refusal_proof(task, ProofStatus::Failed, "");
    let Some(operation) = ctx.operations.get(&task.operation) else {
        proof.reason = format!("operation {} vanished", task.operation);
        return proof;
    };
    let budget = task.budget().unwrap_or(Atp::ZERO);
    let left = Timestamp::now().until(task.expires_at);
    let timeout = Duration::from_secs(task.timeout_seconds).min(left);
    let input = OperationInput {
        parameters: task.parameters.clone(),
        budget,
        timeout,
        memory_mb: ctx.config.permissions.memory_mb,
    };
    let (run, abort) = ctx.aborts.register(&task.task_id);
    let progress = {
        let message = Arc::clone(message);
        let every = Duration::from_secs(ctx.config.worker.ack_wait_seconds) / PROGRESS_REPORTS_PER_ACK_WAIT;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let _ = message.ack_with(AckKind::Progress).await;
            }
        })
    };
    let started = Instant::now();
    let outcome = tokio::select! {
        outcome = operation.run(input) => Some(outcome),
        () = abort.fired() => None,
    };
    progress.abort();
    drop(run);
    proof.execution_time = started.elapsed().as_secs_f64();
    match outcome {
        None => {
            proof.status = ProofStatus::Cancelled;
            proof.reason = "cancelled by the delegator while it ran".to_owned();
        }
        Some(Ok(output)) => {
            proof.status = ProofStatus::Completed;
            proof.result = output.result;
            proof.quality_score = output.quality.clamp(0.0, 1.0);
            proof.atp_consumed = output.atp_consumed.min(budget).as_f64_at_most();
        }
        Some(Err(OperationError::TimedOut { after })) => {
            proof.status = ProofStatus::TimedOut;
            proof.reason = format!(
                "timed out after {:.3} s; the locked ATP is returned",
                after.as_secs_f64()
            );
        }
        Some(Err(e)) => {
            proof.status = ProofStatus::Failed;
            proof.reason = e.to_string();
        }
    }
    proof.created_at = Timestamp::now();
    proof
}

/// Ends a task (`refusal`: the reason it was refused, if it was): signs the proof once, settles the lock with it (commit a completed task, the
/// ledger checking the quality against the delegator's threshold; roll back anything else),
/// publishes it to the delegator's proofs subject (deduplicated by task), finishes the status.
///
/// Settling before publishing means a delegator usually finds the lock already settled when
/// the proof reaches it. A crash in between is safe: the task is delivered again, finds its
/// lock committed and republishes the signed proof the ledger kept with the commit.
async fn conclude(
    ctx: &WorkerContext,
    task: &Verified<FederationTask>,
    proof: &ExecutionProof,
    refusal: Option<RollbackReason>,
    claimed: Option<(TaskStatus, u64)>,
) -> Result<(), TaskFailure> {
    let wire = ctx.signer.sign(proof)?;
    let reply = if proof.status == ProofStatus::Completed {
        // The task goes with the commit: the ledger pays by its own check of the result.
        let reply = ctx.ledger.commit_with_task(&task.task_id, &wire, task.wire()).await?;
        if reply.code == Some(RejectCode::QualityBelowThreshold) {
            ctx.ledger
                .rollback(&task.task_id, RollbackReason::for_proof(proof.status), Some(&wire))
                .await?
        } else {
            reply
        }
    } else {
        // A refusal knows its exact reason; anything else follows from the proof.
        let reason = refusal.unwrap_or(RollbackReason::for_proof(proof.status));
        ctx.ledger.rollback(&task.task_id, reason, Some(&wire)).await?
    };
    log_settlement(task, &reply);
    if reply.code == Some(RejectCode::Busy) {
        return Err(TaskFailure::LedgerBusy(reply.message));
    }
    let paid = reply
        .lock
        .as_ref()
        .is_some_and(|lock| lock.state == LockState::Committed);
    if paid {
        fault::die_at(fault::DIE_AFTER_COMMIT);
    }
    let unpaid;
    let (proof, wire) = if proof.status == ProofStatus::Completed && !paid {
        // The result goes out only with its payment: a completed proof the ledger did not
        // commit is published without it (its quality and the ledger's reason kept).
        unpaid = unpaid_proof(proof, &reply);
        (&unpaid, ctx.signer.sign(&unpaid)?)
    } else {
        (proof, wire)
    };
    publish_and_finish(ctx, task, proof, wire, claimed).await
}

/// Publishes `proof` (signed as `wire`) in the task's proof slot (the delegator's, under this
/// executor's name), deduplicated by the digest of `wire`, then finishes the task's status.
async fn publish_and_finish(
    ctx: &WorkerContext,
    task: &FederationTask,
    proof: &ExecutionProof,
    wire: bytes::Bytes,
    claimed: Option<(TaskStatus, u64)>,
) -> Result<(), TaskFailure> {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id(&wire).as_str());
    let subject = subjects::proof(
        proof.delegator_lct.platform(),
        proof.executor_lct.platform(),
        proof.task_id.as_str(),
    );
    ctx.js.publish_with_headers(subject, headers, wire).await?.await?;
    let state = match proof.status {
        ProofStatus::Completed => TaskState::Completed,
        ProofStatus::Rejected => TaskState::Rejected,
        ProofStatus::Failed => TaskState::Failed,
        ProofStatus::TimedOut => TaskState::TimedOut,
        ProofStatus::Cancelled => TaskState::Cancelled,
    };
    let consumed = (proof.status == ProofStatus::Completed).then_some(proof.atp_consumed);
    let quality = Some(proof.quality_score);
    match claimed {
        Some((known, revision)) => {
            ctx.board
                .finish_from(known, revision, state, quality, consumed, &proof.reason)
                .await?
        }
        None => {
            ctx.board
                .finish(
                    status_template(ctx, task, None),
                    state,
                    quality,
                    consumed,
                    &proof.reason,
                )
                .await?
        }
    }
    Ok(())
}

/// `proof` without its result, saying why the ledger did not pay for it.
fn unpaid_proof(proof: &ExecutionProof, reply: &LedgerReply) -> ExecutionProof {
    let mut unpaid = proof.clone();
    unpaid.result = Map::new();
    unpaid.reason = format!("not paid, so the result is withheld: {}", reply.message);
    unpaid
}

fn log_settlement(task: &FederationTask, reply: &LedgerReply) {
    match reply.outcome {
        Outcome::Rejected => {
            tracing::info!(task = %task.task_id, code = ?reply.code, "the ledger did not settle: {}", reply.message)
        }
        _ => tracing::debug!(task = %task.task_id, "{}", reply.message),
    }
}

#[cfg(test)]
mod tests {
    use super::is_exhausted;

    #[test]
    fn a_task_is_exhausted_only_past_the_deliveries_allowed() {
        assert!(!is_exhausted(1, 4));
        assert!(!is_exhausted(4, 4), "the last allowed delivery still runs");
        assert!(is_exhausted(5, 4));
        assert!(is_exhausted(1_000, 4));
    }
}
