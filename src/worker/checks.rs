//! The executor's checks, before any work, in the order the design fixes: (1) signature and
//! key, (2) replay, then expiry, (3) permissions, (4) budget and concurrency, (5) the
//! delegator's rate, (6) payload and resource limits. (1) and the replay half of (2) run in
//! `run.rs` because a failure there must not touch the ledger; the rest are here. No check
//! reads a clock: the caller passes the time in, so each is a pure function of its inputs
//! (tested as a table in `checks_table.rs`).

use std::time::Instant;

use crate::config::Config;
use crate::identity::keys::KeyRecord;
use crate::ledger::COMMIT_WINDOW;
use crate::ledger::model::{Lock, LockState, RollbackReason};
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::task::FederationTask;
use crate::worker::admission::{Admissions, Admitted, RateLimiter};
use crate::worker::ops::Operations;

/// A refusal: why, and the rollback reason the ledger records.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: String,
    pub rollback: RollbackReason,
}

fn refuse(rollback: RollbackReason, reason: String) -> Refusal {
    Refusal { reason, rollback }
}

/// (2) The task has not expired at `now` (Unix seconds).
pub fn check_expiry(task: &FederationTask, now: Timestamp) -> Result<(), Refusal> {
    if now > task.expires_at {
        return Err(refuse(
            RollbackReason::Timeout,
            format!(
                "the task expired {:.1} s ago, before it could start",
                now.duration_since(task.expires_at).as_secs_f64()
            ),
        ));
    }
    Ok(())
}

/// (3) The delegator holds `federation:delegate` (and, for a critical task,
/// `federation:critical`), as the record of the key that signed the task says (granted by the
/// root or the key's endorser, never by the delegator's own registry record), and may
/// delegate here; this platform executes the operation.
pub fn check_permissions(
    task: &FederationTask,
    signing_key: Option<&KeyRecord>,
    config: &Config,
    operations: &Operations,
) -> Result<(), Refusal> {
    let from = task.source_lct.platform();
    let denied = |why: String| refuse(RollbackReason::PermissionDenied, why);
    match signing_key {
        None => {
            return Err(denied(format!(
                "the key that signed {from}'s task is not in the key directory, so its federation:delegate grant is unknown"
            )));
        }
        Some(record) if !record.delegate => {
            return Err(denied(format!(
                "the delegator {from} lacks the federation:delegate permission: the root did not grant it to key {}",
                record.key_id
            )));
        }
        Some(record) if task.critical && !record.critical => {
            return Err(denied(format!(
                "the delegator {from} lacks the federation:critical permission, so its task may not be critical: the root did not grant it to key {}",
                record.key_id
            )));
        }
        Some(record) => debug_assert_eq!(record.platform, from, "the task verified with its delegator's key"),
    }
    let allowed = &config.permissions.delegators;
    if !allowed.is_empty() && !allowed.iter().any(|p| p.as_str() == from) {
        return Err(denied(format!(
            "{} does not accept tasks from {from}",
            config.platform()
        )));
    }
    let executes = config
        .permissions
        .execute
        .iter()
        .any(|op| op.as_str() == task.operation);
    if !executes || operations.get(&task.operation).is_none() {
        return Err(denied(format!(
            "{} lacks the {}:execute permission",
            config.platform(),
            task.operation
        )));
    }
    Ok(())
}

/// Whether the lock's deadline, expiry and threshold fit the task: the lock may not fall due
/// before the task's own expiry (which bounds the work), it must leave the executor its whole
/// commit window after the deadline, and its threshold must be one this platform accepts.
/// Otherwise the delegator could roll back for a timeout, or let the lock expire, while the
/// work runs, and never pay for it.
fn check_lock_times(task: &FederationTask, lock: &Lock, config: &Config) -> Result<(), String> {
    if lock.deadline < task.expires_at {
        return Err(format!(
            "the lock of task {} falls due at {:.3}, before the task's expiry {:.3}",
            task.task_id, lock.deadline, task.expires_at
        ));
    }
    if lock.expires_at < lock.deadline + COMMIT_WINDOW {
        return Err(format!(
            "the lock of task {} expires at {:.3}, inside the executor's {} s commit window after its deadline {:.3}",
            task.task_id,
            lock.expires_at,
            COMMIT_WINDOW.as_secs(),
            lock.deadline
        ));
    }
    let accepted = config.settlement.accepted_threshold_max.get();
    if lock.quality_threshold > accepted {
        return Err(format!(
            "the lock of task {} asks quality {}, above the {accepted} {} accepts (settlement.accepted_threshold_max)",
            task.task_id,
            lock.quality_threshold,
            config.platform()
        ));
    }
    Ok(())
}

/// (4) ATP is locked for this task with this executor, and this platform's budget and
/// concurrency for the task type admit it.
pub fn check_budget(
    task: &FederationTask,
    task_digest: &str,
    lock: Option<&Lock>,
    config: &Config,
    admissions: &Admissions,
) -> Result<Admitted, Refusal> {
    let rejected = |why: String| refuse(RollbackReason::Rejected, why);
    let budget = task.budget().map_err(rejected)?;
    match lock {
        None => {
            return Err(rejected(format!(
                "no ATP is locked for task {}: it would run unpaid",
                task.task_id
            )));
        }
        Some(lock) if lock.state != LockState::Pending => {
            return Err(rejected(format!(
                "the lock of task {} is already {:?}",
                task.task_id, lock.state
            )));
        }
        Some(lock)
            if lock.executor != task.target_lct
                || lock.delegator != task.source_lct
                || lock.amount_uatp < budget
                // A lock that names another task would refuse this one's commit: unpaid work.
                || lock.task_digest.as_ref().is_some_and(|d| d != task_digest)
                || lock.operation.as_ref().is_some_and(|op| *op != task.operation) =>
        {
            return Err(rejected(format!(
                "the lock of task {} does not match the task",
                task.task_id
            )));
        }
        Some(lock) => check_lock_times(task, lock, config).map_err(rejected)?,
    }
    admit_resources(task, budget, config, admissions).map_err(rejected)
}

/// A place for `task` (holding `budget`) within this platform's concurrency and budget caps
/// for its task type.
fn admit_resources(
    task: &FederationTask,
    budget: Atp,
    config: &Config,
    admissions: &Admissions,
) -> Result<Admitted, String> {
    let Some(resource) = config
        .resources
        .iter()
        .find(|(t, _)| t.as_str() == task.task_type)
        .map(|(_, r)| r)
    else {
        return Err(format!(
            "{} does not execute {} tasks",
            config.platform(),
            task.task_type
        ));
    };
    admissions
        .admit(
            &task.task_type,
            budget,
            resource.max_concurrent,
            resource.atp_budget.atp(),
        )
        .map_err(|why| format!("{}: {why}", config.platform()))
}

/// A witness run's admission: what (4) to (6) ask of a task, the held lock standing for the
/// budget check (the witness's caller checked it names this platform): a place within the
/// task type's concurrency and budget caps, the delegator within its rate, the platform's
/// limits. A refused request is sent again by its delegator while the hold lasts.
pub fn admit_witness(
    task: &FederationTask,
    config: &Config,
    admissions: &Admissions,
    limiter: &RateLimiter,
    now: Instant,
) -> Result<Admitted, Refusal> {
    let rejected = |why: String| refuse(RollbackReason::Rejected, why);
    let budget = task.budget().map_err(rejected)?;
    let admitted = admit_resources(task, budget, config, admissions).map_err(rejected)?;
    check_rate(task, limiter, config, now)?;
    check_limits(task, config)?;
    Ok(admitted)
}

/// (5) The delegator is within its rate at `now`.
pub fn check_rate(task: &FederationTask, limiter: &RateLimiter, config: &Config, now: Instant) -> Result<(), Refusal> {
    if limiter.allow(task.source_lct.platform(), now) {
        Ok(())
    } else {
        Err(refuse(
            RollbackReason::Rejected,
            format!(
                "{} is over its rate of {} requests per minute",
                task.source_lct.platform(),
                config.permissions.requests_per_minute
            ),
        ))
    }
}

/// (6) Payload and resource limits. The envelope and parameters sizes were bounded when the
/// task was verified; here the limits this platform sets.
pub fn check_limits(task: &FederationTask, config: &Config) -> Result<(), Refusal> {
    if task.timeout_seconds > config.permissions.timeout_seconds_max {
        return Err(refuse(
            RollbackReason::Rejected,
            format!(
                "timeout_seconds {} is above this platform's maximum of {}",
                task.timeout_seconds, config.permissions.timeout_seconds_max
            ),
        ));
    }
    Ok(())
}
