//! Witnesses for results without a cheap check (issue #13, item 2), as pure rules: how
//! often the ledger samples an executor's commits (per executor and operation, adapting as
//! BOINC's adaptive replication does), the hold of a sampled commit, and its settlement by
//! the appointed witness's answer or by the hold's own expiry. ARCHITECTURE.md, "Witnesses",
//! says who decides each state and why conservation holds on every path.

use serde_json::Value;

use crate::ledger::model::{
    Lock, LockState, Record, RollbackReason, SignedProof, WitnessHold, WitnessRecord, WitnessSettlement,
};
use crate::ledger::protocol::RejectCode;
use crate::ledger::rules::{Book, CheckedWork, Closing, Decision, SWEEPER, already, applied, reject, settle};
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::Verified;
use crate::protocol::lct::check_platform;
use crate::protocol::proof::{ExecutionProof, ProofStatus};
use crate::protocol::task::TaskId;
use crate::protocol::verdict::Verdict;

/// The sampling rate of an executor with no agreeing record (new, or wrong last time).
pub const WITNESS_RATE_MAX: f64 = 1.0;
/// The lowest sampling rate, however long the agreeing record: a liar is always caught
/// within about `1 / WITNESS_RATE_FLOOR` tasks.
pub const WITNESS_RATE_FLOOR: f64 = 0.1;
/// Witnessed agreements in a row that halve the sampling rate (down to the floor).
pub const WITNESS_RATE_HALVING_AGREEMENTS: u32 = 2;
/// Most candidate witnesses a lock may name.
pub const WITNESS_CANDIDATES_MAX: usize = 8;
/// Longest a sampled commit may be held for its witness, in seconds: it bounds the wire's and
/// the config's `hold_seconds` numbers where they are checked.
pub const WITNESS_HOLD_SECONDS_MAX: f64 = 600.0;
/// Largest relative tolerance a lock may name for comparing results.
pub const WITNESS_TOLERANCE_MAX: f64 = 1.0;

/// The ledger's random draw for one commit, made by the service (never by a party to the
/// task) and carried in the command, so the rules stay pure and a re-decided batch draws
/// the same.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    /// Uniform in 0..1: sampled iff below the executor's rate.
    pub sample: f64,
    /// Picks the witness among the candidates.
    pub pick: u64,
}

/// The sampling rate for an executor's next commit of an operation, by its record:
/// [`WITNESS_RATE_MAX`] halved every [`WITNESS_RATE_HALVING_AGREEMENTS`] agreements in a
/// row, never below [`WITNESS_RATE_FLOOR`].
pub fn sampling_rate(record: Option<&WitnessRecord>) -> f64 {
    let streak = f64::from(record.map_or(0, |r| r.agreed_streak));
    let halvings = streak / f64::from(WITNESS_RATE_HALVING_AGREEMENTS);
    (WITNESS_RATE_MAX * 0.5_f64.powf(halvings)).max(WITNESS_RATE_FLOOR)
}

/// Whether two results agree: the same shape, strings and booleans equal, numbers within
/// `tolerance` relative to the larger magnitude (at least 1).
pub fn agrees(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= tolerance * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| agrees(x, y, tolerance))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, x)| y.get(k).is_some_and(|y| agrees(x, y, tolerance)))
        }
        _ => a == b,
    }
}

/// Checks a lock's witness terms: candidates that are platforms other than the delegator
/// and the executor (so neither can witness its own task), a share the lock can pay, a
/// tolerance and a hold in range, and a named task (the witness re-executes that task).
pub fn check_terms(lock: &Lock) -> Result<(), String> {
    let Some(terms) = &lock.witness_terms else {
        return Ok(());
    };
    if lock.task_digest.is_none() {
        return Err("witness terms need the task's digest: the witness re-executes that task".to_owned());
    }
    if terms.candidates.is_empty() || terms.candidates.len() > WITNESS_CANDIDATES_MAX {
        return Err(format!("name 1 to {WITNESS_CANDIDATES_MAX} candidate witnesses"));
    }
    for candidate in &terms.candidates {
        check_platform(candidate).map_err(|e| format!("candidate witness: {e}"))?;
        if candidate == lock.delegator.platform() || candidate == lock.executor.platform() {
            return Err(format!(
                "{candidate} is a party to the task: a witness is neither the delegator nor the executor"
            ));
        }
    }
    if terms.share_uatp == Atp::ZERO || terms.share_uatp > lock.amount_uatp {
        return Err(format!(
            "the witness share {} must be more than zero and at most the lock's {}",
            terms.share_uatp, lock.amount_uatp
        ));
    }
    if !(0.0..=WITNESS_TOLERANCE_MAX).contains(&terms.tolerance) {
        return Err(format!(
            "tolerance {} is outside 0..={WITNESS_TOLERANCE_MAX}",
            terms.tolerance
        ));
    }
    if !(terms.hold_seconds > 0.0 && terms.hold_seconds <= WITNESS_HOLD_SECONDS_MAX) {
        return Err(format!(
            "hold_seconds {} is outside 0..={WITNESS_HOLD_SECONDS_MAX}",
            terms.hold_seconds
        ));
    }
    Ok(())
}

/// What a commit does to a lock with witness terms when the ledger's check found the result
/// unverifiable (else `None`): held for a witness when the ledger's draw falls below the
/// executor's rate, else paid now. Either way the executor's record counts the commit (a
/// write that also makes the rate rest on the record's current revision). `claimed` is what
/// the proof says it consumed, and its quality.
pub fn sample(
    lock: &Lock,
    work: Option<&CheckedWork>,
    proof: &Verified<ExecutionProof>,
    claimed: (Atp, f64),
    book: &impl Book,
    now: Timestamp,
) -> Option<(WitnessRecord, Option<WitnessHold>)> {
    let (terms, work) = (lock.witness_terms.as_ref()?, work?);
    if work.verdict != Verdict::Unverifiable {
        return None;
    }
    let executor = lock.executor.platform();
    let mut record = book
        .witness_record(executor, &work.operation)
        .unwrap_or_else(|| WitnessRecord::new(executor, &work.operation));
    record.commits = record.commits.saturating_add(1);
    let rate = sampling_rate(Some(&record));
    let hold = match SignedProof::from_wire(proof.wire()) {
        Some(proof) if work.draw.sample < rate => {
            let count = u64::try_from(terms.candidates.len()).unwrap_or(1).max(1);
            let index = usize::try_from(work.draw.pick % count).unwrap_or(0);
            terms.candidates.get(index).map(|witness| WitnessHold {
                witness: witness.clone(),
                operation: work.operation.clone(),
                until: now + terms.hold(),
                rate,
                consumed_uatp: claimed.0,
                quality: claimed.1,
                proof,
            })
        }
        _ => None,
    };
    record.sampled = record.sampled.saturating_add(u64::from(hold.is_some()));
    Some((record, hold))
}

/// Holds `lock` for `hold`: nothing moves; the lock and the executor's record are written.
pub fn hold(mut lock: Lock, hold: WitnessHold, record: WitnessRecord) -> Decision {
    let message = format!(
        "task {} sampled (rate {:.3}): held for witness {} until {:.3}; the executor is paid when it agrees",
        lock.task_id, hold.rate, hold.witness, hold.until
    );
    lock.state = LockState::AwaitingWitness;
    lock.hold = Some(Box::new(hold));
    applied(
        vec![Record::Lock(lock.clone()), Record::Witness(record)],
        message,
        Some(lock),
        None,
    )
}

/// What a witnessed lock pays out of its `amount`, the rest refunded to the delegator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payments {
    /// To the executor.
    pub paid: Atp,
    /// To the witness.
    pub witness_paid: Atp,
}

/// The split of a lock of `amount` whose executor claimed `consumed` (at most `amount`,
/// the commit's ceiling) once its witness answered. Agreement: the executor is paid all it
/// consumed, as unsampled; the witness's `share` comes out of what the delegator would get
/// back (`amount - consumed`), all of it when that is enough, else that remainder (the
/// check is the delegator's wish, so the delegator pays for it, and only out of its own
/// lock: the executor's ceiling stays the budget and nothing is paid beyond the lock).
/// Disagreement: the executor nothing, the witness its share (at most the lock, by the
/// terms' check), the delegator the rest.
pub fn payments(agreed: bool, consumed: Atp, share: Atp, amount: Atp) -> Payments {
    let split = if agreed {
        let remainder = amount.checked_sub(consumed).unwrap_or(Atp::ZERO);
        Payments {
            paid: consumed.min(amount),
            witness_paid: share.min(remainder),
        }
    } else {
        Payments {
            paid: Atp::ZERO,
            witness_paid: share.min(amount),
        }
    };
    debug_assert!(
        split
            .paid
            .checked_add(split.witness_paid)
            .is_some_and(|spent| spent <= amount),
        "paid + witness paid = {} + {} exceeds the lock's {amount}",
        split.paid,
        split.witness_paid
    );
    split
}

/// The appointed witness's answer: agreement pays the executor all it claimed and the
/// witness its share out of the delegator's refund; disagreement refunds the delegator but
/// the witness's share and records the executor as wrong ([`payments`]).
pub fn answer(
    requester: &str,
    task_id: &TaskId,
    proof: &Verified<ExecutionProof>,
    book: &impl Book,
    now: Timestamp,
) -> Decision {
    let Some(lock) = book.lock(task_id) else {
        return reject(RejectCode::UnknownLock, format!("no lock exists for task {task_id}"));
    };
    let hold = match answerable(requester, &lock, proof, now) {
        Ok(hold) => hold,
        Err(decision) => return decision,
    };
    let claimed = match hold.proof.body::<ExecutionProof>() {
        Ok(claimed) => claimed,
        Err(why) => return reject(RejectCode::InvalidRequest, why),
    };
    let Some(terms) = lock.witness_terms.as_deref().cloned() else {
        return reject(
            RejectCode::InvalidRequest,
            format!("task {task_id} names no witness terms"),
        );
    };
    let agreed = agrees(
        &Value::Object(claimed.result),
        &Value::Object(proof.result.clone()),
        terms.tolerance,
    );
    let record = judged(book, lock.executor.platform(), &hold.operation, agreed, now);
    let Payments { paid, witness_paid } = payments(agreed, hold.consumed_uatp, terms.share_uatp, lock.amount_uatp);
    let closing = Closing {
        state: if agreed {
            LockState::Committed
        } else {
            LockState::RolledBack
        },
        paid,
        quality: Some(hold.quality),
        reason: (!agreed).then_some(RollbackReason::WitnessDisagreed),
        proof: agreed.then(|| hold.proof.clone()),
        by: requester,
        message: if agreed {
            format!(
                "witness {requester} agreed: task {task_id} paid {paid} ATP, the witness {witness_paid} ATP out of the refund"
            )
        } else {
            format!(
                "witness {requester} disagreed: task {task_id} refunded but the witness's {witness_paid} ATP; the executor is recorded as wrong"
            )
        },
        witness: Some(WitnessSettlement {
            witness: requester.to_owned(),
            account: Some(proof.executor_lct.clone()),
            paid_uatp: witness_paid,
            agreed: Some(agreed),
        }),
        extra: vec![Record::Witness(record)],
    };
    settle(lock, closing, book, now)
}

/// Checks that `requester` may answer for `lock` with `proof` now; the hold it answers.
fn answerable(requester: &str, lock: &Lock, proof: &ExecutionProof, now: Timestamp) -> Result<WitnessHold, Decision> {
    let task_id = &lock.task_id;
    let Some(hold) = lock.hold.as_deref().cloned() else {
        return Err(reject(
            RejectCode::NotAuthorized,
            format!("task {task_id} was never held for a witness: {requester} is not its witness"),
        ));
    };
    if hold.witness != requester {
        return Err(reject(
            RejectCode::NotAuthorized,
            format!("{requester} is not the witness the ledger appointed for task {task_id}"),
        ));
    }
    if proof.task_id != lock.task_id
        || proof.executor_lct.platform() != requester
        || proof.delegator_lct != lock.delegator
    {
        return Err(reject(
            RejectCode::ProofMismatch,
            format!(
                "a witness answers with its own proof of task {task_id} for {}; this one is of task {} by {} for {}",
                lock.delegator, proof.task_id, proof.executor_lct, proof.delegator_lct
            ),
        ));
    }
    if lock.state != LockState::AwaitingWitness {
        let answered = lock
            .settlement
            .as_ref()
            .and_then(|s| s.witness.as_ref())
            .is_some_and(|w| w.account.as_ref() == Some(&proof.executor_lct));
        return Err(if answered {
            already(
                format!("the witness of task {task_id} already answered"),
                Some(lock.clone()),
                None,
            )
        } else {
            reject(
                RejectCode::AlreadySettled,
                format!("task {task_id} is {:?}: it is not held for a witness", lock.state),
            )
        });
    }
    if proof.status != ProofStatus::Completed {
        return Err(reject(
            RejectCode::InvalidRequest,
            format!(
                "a witness answers with a completed proof (this one says {:?}); one that cannot, lets the hold expire",
                proof.status
            ),
        ));
    }
    if now > hold.until {
        return Err(reject(
            RejectCode::LockExpired,
            format!(
                "the hold of task {task_id} for its witness expired at {:.3}: the sweeper pays the executor",
                hold.until
            ),
        ));
    }
    Ok(hold)
}

/// The executor's record after a witnessed result: an agreement lengthens its streak (and
/// lowers its rate), a disagreement resets it (rate back to the maximum).
fn judged(book: &impl Book, executor: &str, operation: &str, agreed: bool, now: Timestamp) -> WitnessRecord {
    let mut record = book
        .witness_record(executor, operation)
        .unwrap_or_else(|| WitnessRecord::new(executor, operation));
    record.witnessed = record.witnessed.saturating_add(1);
    if agreed {
        record.agreed_streak = record.agreed_streak.saturating_add(1);
    } else {
        record.agreed_streak = 0;
        record.disagreements = record.disagreements.saturating_add(1);
        record.last_disagreement_at = Some(now);
    }
    record
}

/// The hold's expiry without an answer: the executor is paid what it claimed, the witness
/// nothing (the share stays in the delegator's refund), the record unchanged. The executor did its part and cannot make the witness
/// answer; refunding instead would give a delegator whose candidate stays silent the work
/// for free. (A liar is not helped: its rate stays where it was, so it is sampled again.)
pub fn expire_hold(lock: Lock, task_id: &TaskId, book: &impl Book, now: Timestamp) -> Decision {
    let Some(hold) = lock.hold.as_deref().cloned() else {
        return reject(RejectCode::InvalidRequest, format!("task {task_id} holds no commit"));
    };
    if now <= hold.until {
        return reject(
            RejectCode::InvalidRequest,
            format!("the hold of task {task_id} for its witness has not expired"),
        );
    }
    let closing = Closing {
        state: LockState::Committed,
        paid: hold.consumed_uatp,
        quality: Some(hold.quality),
        reason: None,
        proof: Some(hold.proof.clone()),
        by: SWEEPER,
        message: format!(
            "witness {} did not answer by {:.3}: task {task_id} paid {} ATP as claimed",
            hold.witness, hold.until, hold.consumed_uatp
        ),
        witness: Some(WitnessSettlement {
            witness: hold.witness.clone(),
            account: None,
            paid_uatp: Atp::ZERO,
            agreed: None,
        }),
        extra: Vec::new(),
    };
    settle(lock, closing, book, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rate_halves_every_two_agreements_down_to_the_floor() {
        let with = |streak| WitnessRecord {
            agreed_streak: streak,
            ..WitnessRecord::new("Legion", "wordcount")
        };
        assert_eq!(sampling_rate(None), WITNESS_RATE_MAX);
        assert_eq!(sampling_rate(Some(&with(2))), 0.5);
        assert_eq!(sampling_rate(Some(&with(4))), 0.25);
        assert_eq!(sampling_rate(Some(&with(7))), WITNESS_RATE_FLOOR);
        assert_eq!(sampling_rate(Some(&with(u32::MAX))), WITNESS_RATE_FLOOR);
    }

    #[test]
    fn the_share_comes_out_of_the_delegators_refund() {
        let atp = Atp::from_micros;
        let (share, amount) = (atp(1_000_000), atp(10_000_000));
        let split = |agreed, consumed| {
            let p = payments(agreed, consumed, share, amount);
            (p.paid, p.witness_paid)
        };
        // A cheap executor (consumed below the share) keeps all it consumed.
        assert_eq!(split(true, atp(90_000)), (atp(90_000), atp(1_000_000)));
        assert_eq!(split(true, atp(4_000_000)), (atp(4_000_000), atp(1_000_000)));
        // An expensive one is paid up to the budget; the witness gets what remains of it.
        assert_eq!(split(true, atp(9_500_000)), (atp(9_500_000), atp(500_000)));
        assert_eq!(split(true, amount), (amount, Atp::ZERO));
        // Disagreement: the executor nothing, the witness its share whatever was claimed.
        assert_eq!(split(false, atp(90_000)), (Atp::ZERO, atp(1_000_000)));
        assert_eq!(split(false, amount), (Atp::ZERO, atp(1_000_000)));
    }

    #[test]
    fn results_agree_within_the_tolerance_only() {
        let a = json!({"words": 9, "score": 0.8, "labels": ["cat", "dog"]});
        assert!(agrees(&a, &a.clone(), 0.0));
        let close = json!({"words": 9, "score": 0.8001, "labels": ["cat", "dog"]});
        assert!(!agrees(&a, &close, 0.0));
        assert!(agrees(&a, &close, 1e-3));
        let far = json!({"words": 9, "score": 0.9, "labels": ["cat", "dog"]});
        assert!(!agrees(&a, &far, 1e-3));
        for other in [
            json!({"words": 9, "score": 0.8, "labels": ["cat", "cow"]}),
            json!({"words": 9, "score": 0.8, "labels": ["cat"]}),
            json!({"words": 9, "score": 0.8}),
            json!({"words": 9, "score": 0.8, "labels": ["cat", "dog"], "extra": 1}),
            json!({"words": "9", "score": 0.8, "labels": ["cat", "dog"]}),
        ] {
            assert!(!agrees(&a, &other, 0.5), "{other}");
        }
    }
}
