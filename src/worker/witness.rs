//! The witness's side of a sampled task (issue #13, item 2): a delegator hands its signed
//! task to the platform the ledger appointed as witness of the held commit; this platform's
//! worker re-runs it and answers the ledger with its own signed proof.
//!
//! The request is believed for nothing: the task's signature and the ledger's own lock
//! decide whether this platform runs anything, so no platform gets free work by calling its
//! task a "witness request" (ARCHITECTURE.md, "Witnesses").

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;

use crate::ledger::model::{LockState, WitnessHold};
use crate::ledger::protocol::{LedgerReply, Outcome};
use crate::nats::subjects;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{Verified, digest};
use crate::protocol::proof::{ExecutionProof, ProofStatus};
use crate::protocol::task::{FederationTask, TaskId};
use crate::worker::WorkerContext;
use crate::worker::checks;
use crate::worker::ops::OperationInput;

/// Why this platform refused a witness request without running anything.
#[derive(Debug, thiserror::Error)]
pub enum WitnessRefusal {
    #[error("the task does not verify: {0}")]
    Signature(#[source] crate::protocol::envelope::EnvelopeError),
    #[error("the ledger could not be read ({0}); the delegator sends the request again")]
    LedgerUnreadable(#[source] crate::ledger::client::LedgerClientError),
    #[error("task {0} has no lock")]
    NoLock(TaskId),
    #[error("task {task} is {state:?}, not held for a witness")]
    NotHeld { task: TaskId, state: LockState },
    #[error("task {task}'s commit is held for witness {witness}, not this platform")]
    NotAppointed { task: TaskId, witness: String },
    #[error("the task's bytes are not the ones task {0}'s lock was taken for")]
    OtherTask(TaskId),
    #[error("task {0}'s lock names another delegator or executor than the signed task")]
    OtherParties(TaskId),
    #[error("this platform does not execute operation {0}")]
    Operation(String),
    #[error("the hold of task {0} for its witness has expired")]
    HoldExpired(TaskId),
    #[error("task {0} is being witnessed already")]
    InFlight(TaskId),
    /// Over this platform's concurrency or budget cap, its rate for the delegator, or its
    /// limits: the delegator sends the request again while the hold lasts.
    #[error("task {task} not admitted now: {why}")]
    NotAdmitted { task: TaskId, why: String },
}

/// What became of a witness request this platform accepted.
#[derive(Debug)]
pub enum Witnessed {
    /// Ran and answered: the ledger's reply.
    Answered(LedgerReply),
    /// The run failed (or timed out): no answer, the hold expires and pays the executor.
    RunFailed(String),
}

/// Listens on this platform's witness subject until the connection closes, handling each
/// request on its own task; a task id runs once at a time (the delegator repeats its request).
pub async fn listen(ctx: Arc<WorkerContext>, client: Client) {
    let Ok(mut requests) = client.subscribe(subjects::witness_request(ctx.config.platform())).await else {
        tracing::error!("cannot subscribe to witness requests; tasks held for this platform will expire unwitnessed");
        return;
    };
    let running: Arc<Mutex<HashSet<TaskId>>> = Arc::default();
    while let Some(message) = requests.next().await {
        let ctx = Arc::clone(&ctx);
        let running = Arc::clone(&running);
        tokio::spawn(async move {
            match witness(&ctx, &message.payload, &running).await {
                Ok(Witnessed::Answered(reply)) if reply.outcome == Outcome::Rejected => {
                    tracing::warn!(code = ?reply.code, "the ledger refused this platform's witness answer: {}", reply.message)
                }
                Ok(Witnessed::Answered(reply)) => tracing::info!("witnessed: {}", reply.message),
                Ok(Witnessed::RunFailed(why)) => {
                    tracing::warn!("a witnessed run failed ({why}); no answer, the hold expires")
                }
                Err(WitnessRefusal::InFlight(task)) => tracing::debug!(%task, "witness request repeated while it runs"),
                Err(refusal @ WitnessRefusal::NotAdmitted { .. }) => {
                    tracing::info!("witness request deferred, nothing run ({refusal}); the delegator sends it again")
                }
                Err(refusal) => tracing::warn!("refused a witness request, nothing run: {refusal}"),
            }
        });
    }
}

/// Checks a witness request (`payload`: the delegator's signed task) against the ledger's
/// lock, runs the task and answers the ledger with this platform's own signed proof.
pub async fn witness(
    ctx: &WorkerContext,
    payload: &Bytes,
    running: &Mutex<HashSet<TaskId>>,
) -> Result<Witnessed, WitnessRefusal> {
    let (task, hold) = appointed(ctx, payload).await?;
    let fresh = running
        .lock()
        .map(|mut r| r.insert(task.task_id.clone()))
        .unwrap_or(false);
    if !fresh {
        return Err(WitnessRefusal::InFlight(task.task_id.clone()));
    }
    // The same admission as a task from the queue: a flood of valid witness requests runs
    // no more at once than this platform's caps allow.
    let answered = match checks::admit_witness(&task, &ctx.config, &ctx.admissions, &ctx.limiter, Instant::now()) {
        Ok(admitted) => {
            let answered = run_and_answer(ctx, &task, &hold).await;
            drop(admitted);
            Ok(answered)
        }
        Err(refusal) => Err(WitnessRefusal::NotAdmitted {
            task: task.task_id.clone(),
            why: refusal.reason,
        }),
    };
    if let Ok(mut running) = running.lock() {
        running.remove(&task.task_id);
    }
    answered
}

/// The task and the hold it is witnessed for, when the signed task and the ledger's lock
/// show this platform as its appointed witness, in time.
async fn appointed(
    ctx: &WorkerContext,
    payload: &Bytes,
) -> Result<(Verified<FederationTask>, WitnessHold), WitnessRefusal> {
    // The task's own expiry may have passed: the hold's is the deadline.
    let task: Verified<FederationTask> = ctx
        .keys
        .verify_ignoring_expiry(payload)
        .await
        .map_err(WitnessRefusal::Signature)?;
    let id = task.task_id.clone();
    let lock = ctx
        .reader
        .lock(&id)
        .await
        .map_err(WitnessRefusal::LedgerUnreadable)?
        .ok_or_else(|| WitnessRefusal::NoLock(id.clone()))?;
    let hold = match (lock.state, lock.hold.as_deref()) {
        (LockState::AwaitingWitness, Some(hold)) => hold.clone(),
        (state, _) => return Err(WitnessRefusal::NotHeld { task: id, state }),
    };
    if hold.witness != ctx.config.platform() {
        return Err(WitnessRefusal::NotAppointed {
            task: id,
            witness: hold.witness,
        });
    }
    if lock.task_digest.as_deref() != Some(digest(payload).as_str()) {
        return Err(WitnessRefusal::OtherTask(id));
    }
    if lock.delegator != task.source_lct || lock.executor != task.target_lct {
        return Err(WitnessRefusal::OtherParties(id));
    }
    let executes = ctx
        .config
        .permissions
        .execute
        .iter()
        .any(|o| o.as_str() == task.operation);
    if !executes || ctx.operations.get(&task.operation).is_none() {
        return Err(WitnessRefusal::Operation(task.operation.clone()));
    }
    if Timestamp::now() >= hold.until {
        return Err(WitnessRefusal::HoldExpired(id));
    }
    Ok((task, hold))
}

/// Runs the task with this platform's usual limits, until the hold's expiry at the latest,
/// and answers the ledger with its own completed proof.
async fn run_and_answer(ctx: &WorkerContext, task: &FederationTask, hold: &WitnessHold) -> Witnessed {
    let Some(operation) = ctx.operations.get(&task.operation) else {
        return Witnessed::RunFailed(format!("operation {} vanished", task.operation));
    };
    let executor_lct = match task.target_lct.with_platform(ctx.config.platform()) {
        Ok(lct) => lct,
        Err(e) => return Witnessed::RunFailed(e.to_string()),
    };
    let budget = task.budget().unwrap_or(Atp::ZERO);
    let left = Timestamp::now().until(hold.until);
    let input = OperationInput {
        parameters: task.parameters.clone(),
        budget,
        timeout: Duration::from_secs(task.timeout_seconds).min(left),
        memory_mb: ctx.config.permissions.memory_mb,
    };
    let started = Instant::now();
    let output = match operation.run(input).await {
        Ok(output) => output,
        Err(e) => return Witnessed::RunFailed(e.to_string()),
    };
    let proof = ExecutionProof {
        task_id: task.task_id.clone(),
        executor_lct,
        delegator_lct: task.source_lct.clone(),
        status: ProofStatus::Completed,
        reason: format!("witnessed for {}", task.target_lct.platform()),
        atp_consumed: output.atp_consumed.min(budget).as_f64_at_most(),
        execution_time: started.elapsed().as_secs_f64(),
        quality_score: output.quality.clamp(0.0, 1.0),
        result: output.result,
        created_at: Timestamp::now(),
    };
    let wire = match ctx.signer.sign(&proof) {
        Ok(wire) => wire,
        Err(e) => return Witnessed::RunFailed(format!("cannot sign the witness's proof: {e}")),
    };
    match ctx.ledger.witness(&task.task_id, &wire).await {
        Ok(reply) => Witnessed::Answered(reply),
        Err(e) => Witnessed::RunFailed(format!("the ledger did not take the answer: {e}")),
    }
}
