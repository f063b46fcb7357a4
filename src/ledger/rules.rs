//! The ledger's transition rules, as pure functions: given a command and the records it
//! touches, decide the records to write and the reply. No I/O here, so every rule is tested
//! directly; the store applies the writes in one atomic batch.

use std::collections::BTreeSet;

use crate::ledger::model::{
    Account, GrantRecord, JournalEntry, Lock, LockState, Record, RollbackReason, Settlement, SignedProof, Supply,
    Transition, WitnessRecord, WitnessSettlement,
};
use crate::ledger::protocol::{LedgerReply, Outcome, RejectCode};
use crate::ledger::witness::{self, Draw};
use crate::nats::subjects;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::Verified;
use crate::protocol::lct::Lct;
use crate::protocol::proof::{ExecutionProof, ProofStatus};
use crate::protocol::task::TaskId;
use crate::protocol::verdict::Verdict;
use std::time::Duration;

/// Longest a lock may live (from now to its expiry).
pub const LOCK_TTL_MAX: Duration = Duration::from_secs(2 * 3600);

/// Seconds after a lock's deadline in which only the executor may settle it: work finished
/// by the deadline is committed in this window, and the delegator may roll back for a timeout
/// or an unacknowledged cancel only after it.
pub const COMMIT_WINDOW: Duration = Duration::from_secs(5);

/// Who settles expired locks, in journal entries.
pub const SWEEPER: &str = "ledger";

/// A checked, verified request, ready for the rules.
#[derive(Clone, Debug)]
pub enum Command {
    Grant {
        requester: String,
        grant_id: String,
        account: Lct,
        amount: Atp,
    },
    Lock {
        requester: String,
        lock: Lock,
    },
    Commit {
        requester: String,
        task_id: TaskId,
        proof: Verified<ExecutionProof>,
        /// The task the commit carried, as the service checked it.
        work: Option<CheckedWork>,
    },
    Rollback {
        requester: String,
        task_id: TaskId,
        reason: RollbackReason,
        evidence: Option<Verified<ExecutionProof>>,
    },
    /// The appointed witness's answer for a commit held for it (its own verified proof).
    Witness {
        requester: String,
        task_id: TaskId,
        proof: Verified<ExecutionProof>,
    },
    /// From the sweeper only, never from a request.
    Expire {
        task_id: TaskId,
    },
}

/// A task a commit carried, checked before the rules run (the check is CPU work, not a rule):
/// the digest of its signed bytes, and the verdict on the proof's result against it.
#[derive(Clone, Debug)]
pub struct CheckedWork {
    pub task_digest: String,
    /// The operation of the task carried.
    pub operation: String,
    pub verdict: Verdict,
    /// The ledger's draw for sampling this commit.
    pub draw: Draw,
}

impl Command {
    /// The keys whose current records the rules need, first round (before the lock is known).
    pub fn keys(&self) -> Vec<String> {
        match self {
            Command::Grant { grant_id, account, .. } => vec![
                Account::empty(account.clone()).key(),
                subjects::ledger_grant(grant_id),
                subjects::LEDGER_SUPPLY.to_owned(),
            ],
            Command::Lock { lock, .. } => vec![lock.key(), Account::empty(lock.delegator.clone()).key()],
            // An unverifiable result may be sampled: the executor's witness record sets the rate.
            Command::Commit {
                task_id,
                proof,
                work: Some(work),
                ..
            } if work.verdict == Verdict::Unverifiable => vec![
                subjects::ledger_lock(task_id.as_str()),
                subjects::ledger_witness(proof.executor_lct.platform(), &work.operation),
            ],
            Command::Commit { task_id, .. } | Command::Rollback { task_id, .. } | Command::Expire { task_id } => {
                vec![subjects::ledger_lock(task_id.as_str())]
            }
            Command::Witness { task_id, proof, .. } => vec![
                subjects::ledger_lock(task_id.as_str()),
                Account::empty(proof.executor_lct.clone()).key(),
            ],
        }
    }

    /// Keys that usually do not exist yet: read only after a failed optimistic write.
    pub fn fresh_keys(&self) -> Vec<String> {
        match self {
            Command::Grant { grant_id, .. } => vec![subjects::ledger_grant(grant_id)],
            Command::Lock { lock, .. } => vec![lock.key()],
            _ => Vec::new(),
        }
    }
}

/// The records the rules can read.
pub trait Book {
    fn account(&self, lct: &Lct) -> Option<Account>;
    fn lock(&self, task_id: &TaskId) -> Option<Lock>;
    fn grant(&self, grant_id: &str) -> Option<GrantRecord>;
    fn supply(&self) -> Supply;
    fn witness_record(&self, executor: &str, operation: &str) -> Option<WitnessRecord>;
}

/// What to do with a command.
#[derive(Debug)]
pub enum Decision {
    /// Write these records (each at most once) atomically, then send the reply.
    Apply { writes: Vec<Record>, reply: LedgerReply },
    /// Nothing to write; send the reply (already applied, or rejected).
    Reply(LedgerReply),
}

impl Record {
    /// The key this record is stored under.
    pub fn key(&self) -> String {
        match self {
            Record::Account(a) => a.key(),
            Record::Lock(l) => l.key(),
            Record::Journal(j) if j.transition == Transition::Lock => subjects::ledger_journal_lock(j.task_id.as_str()),
            Record::Journal(j) => subjects::ledger_journal_settle(j.task_id.as_str()),
            Record::Grant(g) => subjects::ledger_grant(&g.grant_id),
            Record::Supply(_) => subjects::LEDGER_SUPPLY.to_owned(),
            Record::Witness(w) => w.key(),
        }
    }

    /// Whether the key must not exist before this write (created once, never updated).
    pub fn is_create_only(&self) -> bool {
        matches!(self, Record::Journal(_) | Record::Grant(_))
    }
}

pub(crate) fn reject(code: RejectCode, message: impl Into<String>) -> Decision {
    Decision::Reply(LedgerReply::rejected(code, message))
}

pub(crate) fn already(message: impl Into<String>, lock: Option<Lock>, account: Option<Account>) -> Decision {
    Decision::Reply(LedgerReply {
        outcome: Outcome::AlreadyApplied,
        code: None,
        message: message.into(),
        lock: lock.map(Box::new),
        account: account.map(Box::new),
    })
}

pub(crate) fn applied(writes: Vec<Record>, message: String, lock: Option<Lock>, account: Option<Account>) -> Decision {
    Decision::Apply {
        writes,
        reply: LedgerReply {
            outcome: Outcome::Applied,
            code: None,
            message,
            lock: lock.map(Box::new),
            account: account.map(Box::new),
        },
    }
}

fn inconsistent(what: &str) -> Decision {
    reject(
        RejectCode::Overflow,
        format!("{what} would overflow or go negative; run `sagefed audit`"),
    )
}

/// Decides what `command` does to `book` at time `now`. `admins` may grant.
pub fn decide(command: &Command, book: &impl Book, admins: &BTreeSet<String>, now: Timestamp) -> Decision {
    let decision = match command {
        Command::Grant {
            requester,
            grant_id,
            account,
            amount,
        } => grant(requester, grant_id, account, *amount, book, admins, now),
        Command::Lock { requester, lock: new } => lock(requester, new, book, now),
        Command::Commit {
            requester,
            task_id,
            proof,
            work,
        } => commit(requester, task_id, proof, work.as_ref(), book, now),
        Command::Rollback {
            requester,
            task_id,
            reason,
            evidence,
        } => rollback(requester, task_id, *reason, evidence.as_ref(), book, now),
        Command::Witness {
            requester,
            task_id,
            proof,
        } => witness::answer(requester, task_id, proof, book, now),
        Command::Expire { task_id } => expire(task_id, book, now),
    };
    if let Decision::Apply { writes, .. } = &decision {
        debug_assert!(
            conserves(book, writes),
            "{command:?} would change balances + locked by other than the supply: {writes:?}"
        );
    }
    decision
}

/// Whether `writes` change the accounts' balances + locked by exactly what they change the
/// supply by (conservation, per transition, so per group commit too).
pub(crate) fn conserves(book: &impl Book, writes: &[Record]) -> bool {
    let held = |a: &Account| i128::from(a.balance_uatp.micros()) + i128::from(a.locked_uatp.micros());
    let mut change: i128 = 0;
    for write in writes {
        match write {
            Record::Account(account) => {
                change += held(account) - book.account(&account.lct).map_or(0, |old| held(&old));
            }
            Record::Supply(supply) => {
                change -= i128::from(supply.total_uatp.micros()) - i128::from(book.supply().total_uatp.micros());
            }
            Record::Lock(_) | Record::Journal(_) | Record::Grant(_) | Record::Witness(_) => {}
        }
    }
    change == 0
}

fn grant(
    requester: &str,
    grant_id: &str,
    lct: &Lct,
    amount: Atp,
    book: &impl Book,
    admins: &BTreeSet<String>,
    now: Timestamp,
) -> Decision {
    if !admins.contains(requester) {
        return reject(
            RejectCode::NotAuthorized,
            format!("{requester} is not a ledger admin and may not grant ATP"),
        );
    }
    if amount == Atp::ZERO {
        return reject(RejectCode::InvalidAmount, "a grant must be more than zero");
    }
    if let Some(existing) = book.grant(grant_id) {
        return if existing.account == *lct && existing.amount_uatp == amount {
            already(format!("grant {grant_id} was already applied"), None, book.account(lct))
        } else {
            reject(
                RejectCode::Conflict,
                format!("grant id {grant_id} was already used for another account or amount"),
            )
        };
    }
    let mut account = book.account(lct).unwrap_or_else(|| Account::empty(lct.clone()));
    let mut supply = book.supply();
    let (Some(balance), Some(total)) = (
        account.balance_uatp.checked_add(amount),
        supply.total_uatp.checked_add(amount),
    ) else {
        return inconsistent("the balance or the supply");
    };
    account.balance_uatp = balance;
    supply.total_uatp = total;
    let record = GrantRecord {
        grant_id: grant_id.to_owned(),
        account: lct.clone(),
        amount_uatp: amount,
        at: now,
        by: requester.to_owned(),
    };
    applied(
        vec![
            Record::Account(account.clone()),
            Record::Grant(record),
            Record::Supply(supply),
        ],
        format!("granted {amount} ATP to {lct}"),
        None,
        Some(account),
    )
}

/// Checks a lock's terms on their own: who asks, the accounts, the amount, the threshold
/// and the times.
fn check_lock_terms(requester: &str, new: &Lock, now: Timestamp) -> Result<(), Decision> {
    if requester != new.delegator.platform() {
        return Err(reject(
            RejectCode::NotAuthorized,
            format!("{requester} may not lock ATP of {}", new.delegator),
        ));
    }
    if new.delegator == new.executor {
        return Err(reject(
            RejectCode::SameAccount,
            "the delegator and the executor are the same account",
        ));
    }
    if new.amount_uatp == Atp::ZERO {
        return Err(reject(RejectCode::InvalidAmount, "a lock must be more than zero"));
    }
    if let Some(operation) = &new.operation
        && let Some(why) = crate::protocol::lct::token_problem(operation, crate::protocol::limits::OPERATION_CHARS_MAX)
    {
        return Err(reject(
            RejectCode::InvalidRequest,
            format!("operation {operation:?} is invalid: {why}"),
        ));
    }
    if !(0.0..=1.0).contains(&new.quality_threshold) {
        return Err(reject(
            RejectCode::InvalidRequest,
            format!("quality_threshold {} is outside 0..=1", new.quality_threshold),
        ));
    }
    let times_ok = now < new.deadline && new.deadline <= new.expires_at && new.expires_at <= now + LOCK_TTL_MAX;
    if !times_ok {
        return Err(reject(
            RejectCode::InvalidRequest,
            format!(
                "need now < deadline <= expires_at <= now + {} s",
                LOCK_TTL_MAX.as_secs()
            ),
        ));
    }
    witness::check_terms(new).map_err(|why| reject(RejectCode::InvalidRequest, why))
}

fn lock(requester: &str, new: &Lock, book: &impl Book, now: Timestamp) -> Decision {
    if let Err(decision) = check_lock_terms(requester, new, now) {
        return decision;
    }
    if let Some(existing) = book.lock(&new.task_id) {
        return if existing.same_terms(new) {
            already(format!("task {} was already locked", new.task_id), Some(existing), None)
        } else {
            reject(
                RejectCode::Conflict,
                format!("task id {} was already locked with other terms", new.task_id),
            )
        };
    }
    let Some(mut account) = book.account(&new.delegator) else {
        return reject(
            RejectCode::InsufficientAtp,
            format!("{} has no ATP (no account)", new.delegator),
        );
    };
    let Some(balance) = account.balance_uatp.checked_sub(new.amount_uatp) else {
        return reject(
            RejectCode::InsufficientAtp,
            format!(
                "{} has {} ATP available, {} asked",
                new.delegator, account.balance_uatp, new.amount_uatp
            ),
        );
    };
    let Some(locked) = account.locked_uatp.checked_add(new.amount_uatp) else {
        return inconsistent("the locked amount");
    };
    account.balance_uatp = balance;
    account.locked_uatp = locked;
    account.pending_locks = account.pending_locks.saturating_add(1);
    let mut lock = new.clone();
    lock.state = LockState::Pending;
    lock.settlement = None;
    lock.hold = None;
    lock.created_at = now;
    let journal = JournalEntry {
        task_id: lock.task_id.clone(),
        transition: Transition::Lock,
        delegator: lock.delegator.clone(),
        executor: lock.executor.clone(),
        amount_uatp: lock.amount_uatp,
        paid_uatp: Atp::ZERO,
        refunded_uatp: Atp::ZERO,
        quality: None,
        reason: None,
        at: now,
        by: requester.to_owned(),
        proof: None,
        witness: None,
    };
    applied(
        vec![
            Record::Account(account),
            Record::Lock(lock.clone()),
            Record::Journal(journal),
        ],
        format!(
            "locked {} ATP of {} for task {}",
            lock.amount_uatp, lock.delegator, lock.task_id
        ),
        Some(lock),
        None,
    )
}

/// Checks that a verified proof belongs to `lock`.
fn proof_matches(proof: &ExecutionProof, lock: &Lock) -> Result<(), Decision> {
    if proof.task_id != lock.task_id || proof.executor_lct != lock.executor || proof.delegator_lct != lock.delegator {
        return Err(reject(
            RejectCode::ProofMismatch,
            format!(
                "the proof is for task {} from {} to {}, the lock for task {} from {} to {}",
                proof.task_id, proof.delegator_lct, proof.executor_lct, lock.task_id, lock.delegator, lock.executor
            ),
        ));
    }
    Ok(())
}

fn commit(
    requester: &str,
    task_id: &TaskId,
    proof: &Verified<ExecutionProof>,
    work: Option<&CheckedWork>,
    book: &impl Book,
    now: Timestamp,
) -> Decision {
    let Some(lock) = book.lock(task_id) else {
        return reject(RejectCode::UnknownLock, format!("no lock exists for task {task_id}"));
    };
    if requester != lock.delegator.platform() && requester != lock.executor.platform() {
        return reject(
            RejectCode::NotAuthorized,
            format!("{requester} is neither the delegator nor the executor of task {task_id}"),
        );
    }
    if let Err(decision) = proof_matches(proof, &lock) {
        return decision;
    }
    if let Some(decision) = settled_already(&lock, proof) {
        return decision;
    }
    if now > lock.expires_at {
        return reject(
            RejectCode::LockExpired,
            format!("the lock of task {task_id} expired at {:.3}", lock.expires_at),
        );
    }
    if proof.status != ProofStatus::Completed {
        return reject(
            RejectCode::InvalidRequest,
            format!(
                "the proof says the task {:?} ({}); roll it back instead",
                proof.status, proof.reason
            ),
        );
    }
    let quality = match paid_quality(&lock, proof, work) {
        Ok(quality) => quality,
        Err(Refused::Reply(decision)) => return decision,
        Err(Refused::Unpaid { reason, quality, why }) => {
            return refuse_payment(lock, reason, quality, requester, why, book, now);
        }
    };
    let consumed = match consumed_within(proof, &lock) {
        Ok(consumed) => consumed,
        Err(decision) => return decision,
    };
    let refund = lock.amount_uatp.checked_sub(consumed).unwrap_or(Atp::ZERO);
    let Some(kept) = SignedProof::from_wire(proof.wire()) else {
        return reject(
            RejectCode::InvalidRequest,
            "the proof is not a JSON envelope".to_owned(),
        );
    };
    let mut extra = Vec::new();
    match witness::sample(&lock, work, proof, (consumed, quality), book, now) {
        Some((record, Some(hold))) => return witness::hold(lock, hold, record),
        Some((record, None)) => extra.push(Record::Witness(record)),
        None => {}
    }
    let closing = Closing {
        state: LockState::Committed,
        paid: consumed,
        quality: Some(quality),
        reason: None,
        proof: Some(kept),
        by: requester,
        message: format!("committed task {task_id}: paid {consumed} ATP, refunded {refund} ATP"),
        witness: None,
        extra,
    };
    settle(lock, closing, book, now)
}

/// What the proof says it consumed, at most what `lock` holds.
fn consumed_within(proof: &ExecutionProof, lock: &Lock) -> Result<Atp, Decision> {
    let consumed = proof.consumed().map_err(|why| reject(RejectCode::InvalidAmount, why))?;
    if consumed > lock.amount_uatp {
        return Err(reject(
            RejectCode::ConsumedExceedsLocked,
            format!("the proof claims {consumed} ATP, the lock holds {}", lock.amount_uatp),
        ));
    }
    Ok(consumed)
}

/// The answer to a commit of a lock that is no longer pending: a retry, or a refusal.
fn settled_already(lock: &Lock, proof: &Verified<ExecutionProof>) -> Option<Decision> {
    let task_id = &lock.task_id;
    let decision = match lock.state {
        LockState::Pending => return None,
        LockState::Committed => already(
            format!("task {task_id} was already committed"),
            Some(lock.clone()),
            None,
        ),
        // The same proof again is a retry; another proof cannot replace the held one.
        LockState::AwaitingWitness if lock.hold.as_ref().is_some_and(|h| h.proof.wire() == proof.wire()) => already(
            format!("task {task_id} was already committed and is held for its witness"),
            Some(lock.clone()),
            None,
        ),
        LockState::AwaitingWitness => reject(
            RejectCode::HeldForWitness,
            format!("task {task_id} is held for its witness with another proof"),
        ),
        LockState::RolledBack | LockState::Expired => reject(
            RejectCode::AlreadySettled,
            format!("task {task_id} was already {:?}; it cannot be committed", lock.state),
        ),
    };
    Some(decision)
}

/// Why a commit pays nothing: refused outright, or settled unpaid by the ledger's check.
enum Refused {
    Reply(Decision),
    Unpaid {
        reason: RollbackReason,
        quality: Option<f64>,
        why: String,
    },
}

/// The quality a commit of `lock` is paid by. A lock that names its task is paid by the
/// ledger's check of the result, not by the quality the executor claims; a lock that names
/// none (an older client) as claimed.
fn paid_quality(lock: &Lock, proof: &Verified<ExecutionProof>, work: Option<&CheckedWork>) -> Result<f64, Refused> {
    let task_id = &lock.task_id;
    let verdict = match (&lock.task_digest, work) {
        (None, _) => Verdict::Unverifiable,
        (Some(_), None) => {
            return Err(Refused::Reply(reject(
                RejectCode::InvalidRequest,
                format!("the lock of task {task_id} pays for a named task: the commit must carry it"),
            )));
        }
        (Some(digest), Some(work)) if *digest != work.task_digest => {
            return Err(Refused::Reply(reject(
                RejectCode::InvalidRequest,
                format!("the task the commit carries is not the one the lock of task {task_id} pays for"),
            )));
        }
        (Some(_), Some(work)) if lock.operation.as_ref().is_some_and(|op| *op != work.operation) => {
            return Err(Refused::Reply(reject(
                RejectCode::InvalidRequest,
                format!(
                    "the task of {task_id} runs {}, but its lock was taken for {}",
                    work.operation,
                    lock.operation.as_deref().unwrap_or_default()
                ),
            )));
        }
        (Some(_), Some(work)) => work.verdict.clone(),
    };
    match verdict {
        Verdict::Refuted { why } => Err(Refused::Unpaid {
            reason: RollbackReason::Refuted,
            quality: None,
            why,
        }),
        Verdict::Verified { quality } if quality < lock.quality_threshold => Err(Refused::Unpaid {
            reason: RollbackReason::LowQuality,
            quality: Some(quality),
            why: format!(
                "the checked quality {quality} is below the threshold {} (the proof claims {})",
                lock.quality_threshold, proof.quality_score
            ),
        }),
        Verdict::Verified { quality } => Ok(quality),
        Verdict::Unverifiable if proof.quality_score < lock.quality_threshold => Err(Refused::Reply(reject(
            RejectCode::QualityBelowThreshold,
            format!(
                "quality {} is below the threshold {}; roll it back instead",
                proof.quality_score, lock.quality_threshold
            ),
        ))),
        Verdict::Unverifiable => Ok(proof.quality_score),
    }
}

/// Refunds a lock whose commit the ledger's check refused (`reason`): nobody is paid for a
/// result the check refutes or scores below the threshold, and the delegator, who could not
/// show it with the executor's own proof, does not wait for the lock's expiry.
fn refuse_payment(
    lock: Lock,
    reason: RollbackReason,
    quality: Option<f64>,
    requester: &str,
    why: String,
    book: &impl Book,
    now: Timestamp,
) -> Decision {
    let message = format!("refunded task {} unpaid ({reason}): {why}", lock.task_id);
    refund(lock, reason, quality, requester, message, book, now)
}

/// Rolls `lock` back for `reason`: the whole amount returns to the delegator.
fn refund(
    lock: Lock,
    reason: RollbackReason,
    quality: Option<f64>,
    by: &str,
    message: String,
    book: &impl Book,
    now: Timestamp,
) -> Decision {
    let closing = Closing {
        state: LockState::RolledBack,
        paid: Atp::ZERO,
        quality,
        reason: Some(reason),
        proof: None,
        by,
        message,
        witness: None,
        extra: Vec::new(),
    };
    settle(lock, closing, book, now)
}

fn rollback(
    requester: &str,
    task_id: &TaskId,
    reason: RollbackReason,
    evidence: Option<&Verified<ExecutionProof>>,
    book: &impl Book,
    now: Timestamp,
) -> Decision {
    let Some(lock) = book.lock(task_id) else {
        return reject(RejectCode::UnknownLock, format!("no lock exists for task {task_id}"));
    };
    if let Some(proof) = evidence
        && let Err(decision) = proof_matches(proof, &lock)
    {
        return decision;
    }
    match lock.state {
        LockState::RolledBack | LockState::Expired => {
            return already(format!("task {task_id} was already refunded"), Some(lock), None);
        }
        LockState::Committed => {
            return reject(
                RejectCode::AlreadySettled,
                format!("task {task_id} was already committed; it cannot be rolled back"),
            );
        }
        LockState::AwaitingWitness => {
            return reject(
                RejectCode::HeldForWitness,
                format!("task {task_id} is held for its witness: its answer or the hold's expiry settles it"),
            );
        }
        LockState::Pending => {}
    }
    if reason == RollbackReason::Expired {
        return reject(RejectCode::InvalidRequest, "only the ledger's sweeper expires locks");
    }
    if reason == RollbackReason::Refuted || reason == RollbackReason::WitnessDisagreed {
        return reject(
            RejectCode::InvalidRequest,
            format!("only the ledger settles a lock as {reason}, by its check or a witness's answer"),
        );
    }
    let by_executor = requester == lock.executor.platform();
    let by_delegator = requester == lock.delegator.platform();
    if !by_executor && !by_delegator {
        return reject(
            RejectCode::NotAuthorized,
            format!("{requester} is neither the delegator nor the executor of task {task_id}"),
        );
    }
    // The executor may always give up its claim. The delegator must show why it refuses to
    // pay, so it cannot take a good result and keep the ATP.
    if !by_executor && !delegator_shows(reason, evidence, &lock, now) {
        return reject(
            RejectCode::EvidenceRequired,
            format!(
                "a delegator's rollback for {reason} needs the executor's signed proof showing it{}",
                if matches!(reason, RollbackReason::Timeout | RollbackReason::Cancelled) {
                    format!(
                        ", or the deadline plus the executor's {} s commit window to pass",
                        COMMIT_WINDOW.as_secs()
                    )
                } else {
                    String::new()
                }
            ),
        );
    }
    let quality = evidence.map(|p| p.quality_score);
    let message = format!("rolled back task {task_id} ({reason})");
    refund(lock, reason, quality, requester, message, book, now)
}

/// Whether a delegator's rollback for `reason` is shown: by the executor's signed `evidence`,
/// or for a timeout or a cancel by the deadline and the executor's commit window having
/// passed. A cancel is shown by the executor's acknowledgement (its signed `cancelled` proof),
/// so a delegator cannot cancel a task that runs, keep its result and the ATP.
fn delegator_shows(
    reason: RollbackReason,
    evidence: Option<&Verified<ExecutionProof>>,
    lock: &Lock,
    now: Timestamp,
) -> bool {
    let window_passed = now >= lock.deadline + COMMIT_WINDOW;
    match reason {
        RollbackReason::Cancelled => window_passed || evidence.is_some_and(|p| p.status == ProofStatus::Cancelled),
        RollbackReason::Timeout => window_passed || evidence.is_some_and(|p| p.status == ProofStatus::TimedOut),
        RollbackReason::LowQuality => {
            evidence.is_some_and(|p| p.status != ProofStatus::Completed || p.quality_score < lock.quality_threshold)
        }
        RollbackReason::Failure | RollbackReason::PermissionDenied | RollbackReason::Rejected => {
            evidence.is_some_and(|p| p.status != ProofStatus::Completed)
        }
        RollbackReason::Expired | RollbackReason::Refuted | RollbackReason::WitnessDisagreed => false,
    }
}

fn expire(task_id: &TaskId, book: &impl Book, now: Timestamp) -> Decision {
    let Some(lock) = book.lock(task_id) else {
        return reject(RejectCode::UnknownLock, format!("no lock exists for task {task_id}"));
    };
    if lock.state.is_terminal() {
        return already(format!("task {task_id} was already settled"), Some(lock), None);
    }
    if lock.state == LockState::AwaitingWitness {
        return witness::expire_hold(lock, task_id, book, now);
    }
    if now <= lock.expires_at {
        return reject(
            RejectCode::InvalidRequest,
            format!("the lock of task {task_id} has not expired"),
        );
    }
    let closing = Closing {
        state: LockState::Expired,
        paid: Atp::ZERO,
        quality: None,
        reason: Some(RollbackReason::Expired),
        proof: None,
        by: SWEEPER,
        message: format!("expired task {task_id}"),
        witness: None,
        extra: Vec::new(),
    };
    settle(lock, closing, book, now)
}

/// How a settling transition closes a lock.
pub(crate) struct Closing<'a> {
    /// The state the lock ends in.
    pub state: LockState,
    /// What the executor is paid; the rest of the lock, less the witness's pay, is refunded.
    pub paid: Atp,
    /// The proof's quality, when there is a proof.
    pub quality: Option<f64>,
    /// Why it was rolled back or expired.
    pub reason: Option<RollbackReason>,
    /// The signed proof a commit paid for, kept in the settle journal entry.
    pub proof: Option<SignedProof>,
    /// The platform whose request settles it (`ledger` for the sweeper).
    pub by: &'a str,
    /// The reply's message.
    pub message: String,
    /// The witness's part, for a sampled task: its pay goes to its account.
    pub witness: Option<WitnessSettlement>,
    /// Other records the transition writes (the executor's witness record).
    pub extra: Vec<Record>,
}

/// The delegator's account once `lock` is released: `refund` back to its balance, `spent`
/// paid out of it.
fn released(book: &impl Book, lock: &Lock, refund: Atp, spent: Atp) -> Result<Account, Decision> {
    let Some(mut delegator) = book.account(&lock.delegator) else {
        return Err(inconsistent("the delegator's account (missing)"));
    };
    let (Some(locked), Some(balance), Some(spent), Some(pending)) = (
        delegator.locked_uatp.checked_sub(lock.amount_uatp),
        delegator.balance_uatp.checked_add(refund),
        delegator.spent_uatp.checked_add(spent),
        delegator.pending_locks.checked_sub(1),
    ) else {
        return Err(inconsistent("the delegator's account"));
    };
    delegator.locked_uatp = locked;
    delegator.balance_uatp = balance;
    delegator.spent_uatp = spent;
    delegator.pending_locks = pending;
    Ok(delegator)
}

/// `lct`'s account paid `amount` (created if it has none yet).
fn credited(book: &impl Book, lct: &Lct, amount: Atp) -> Result<Account, Decision> {
    let mut account = book.account(lct).unwrap_or_else(|| Account::empty(lct.clone()));
    let (Some(balance), Some(earned)) = (
        account.balance_uatp.checked_add(amount),
        account.earned_uatp.checked_add(amount),
    ) else {
        return Err(inconsistent("a payee's balance"));
    };
    account.balance_uatp = balance;
    account.earned_uatp = earned;
    Ok(account)
}

/// Closes `lock` as `closing` says: pays the executor and the witness, and refunds the rest
/// to the delegator.
pub(crate) fn settle(mut lock: Lock, closing: Closing<'_>, book: &impl Book, now: Timestamp) -> Decision {
    let Closing {
        state,
        paid,
        quality,
        reason,
        proof,
        by,
        message,
        witness,
        extra,
    } = closing;
    let witness_paid = witness.as_ref().map_or(Atp::ZERO, |w| w.paid_uatp);
    let Some(spent_now) = paid.checked_add(witness_paid) else {
        return inconsistent("the payments");
    };
    let Some(refund) = lock.amount_uatp.checked_sub(spent_now) else {
        return inconsistent("the refund");
    };
    let delegator = match released(book, &lock, refund, spent_now) {
        Ok(delegator) => delegator,
        Err(decision) => return decision,
    };
    let mut writes = vec![Record::Account(delegator)];
    for (lct, amount) in [
        (Some(&lock.executor), paid),
        (witness.as_ref().and_then(|w| w.account.as_ref()), witness_paid),
    ] {
        if let Some(lct) = lct.filter(|_| amount > Atp::ZERO) {
            match credited(book, lct, amount) {
                Ok(account) => writes.push(Record::Account(account)),
                Err(decision) => return decision,
            }
        }
    }
    debug_assert_eq!(
        spent_now.checked_add(refund),
        Some(lock.amount_uatp),
        "paid + witness paid + refunded = locked for task {}",
        lock.task_id
    );
    lock.state = state;
    lock.settlement = Some(Settlement {
        paid_uatp: paid,
        refunded_uatp: refund,
        quality,
        reason,
        at: now,
        by: by.to_owned(),
        witness: witness.clone(),
    });
    let transition = match state {
        LockState::Committed => Transition::Commit,
        LockState::Expired => Transition::Expire,
        _ => Transition::Rollback,
    };
    writes.push(Record::Journal(JournalEntry {
        task_id: lock.task_id.clone(),
        transition,
        delegator: lock.delegator.clone(),
        executor: lock.executor.clone(),
        amount_uatp: lock.amount_uatp,
        paid_uatp: paid,
        refunded_uatp: refund,
        quality,
        reason,
        at: now,
        by: by.to_owned(),
        proof,
        witness,
    }));
    writes.push(Record::Lock(lock.clone()));
    writes.extend(extra);
    applied(writes, message, Some(lock), None)
}
