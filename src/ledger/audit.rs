//! `sagefed audit`: recomputes the ledger's invariants from a consistent snapshot.
//!
//! - Conservation: sum of balances + sum of locked = total granted (`supply`) = sum of grants.
//! - Each account: locked = the sum of its pending and held locks; balance + locked = what it
//!   was granted + what it was paid as an executor or witness - what it paid as a delegator.
//! - Each settled lock: paid + witness paid + refunded = locked.
//! - Each lock: pending (or held for a witness) and not past its expiry (plus the sweeper's
//!   grace), with its lock
//!   journal entry and no settlement entry; or settled, with exactly one settlement entry
//!   that matches it. Each journal entry belongs to a lock.
//! - Every value in the bucket parses as the record its key says.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::model::{Lock, LockState, Transition, WitnessSettlement};
use crate::ledger::snapshot::LedgerSnapshot;
use crate::nats::subjects;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use std::time::Duration;

/// How long a pending lock may stay past its expiry before the audit calls it stuck: the
/// sweeper checks twice a second, so this only trips when no ledger service is sweeping.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(30);

/// One broken invariant, with the key it was found at.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Violation {
    pub key: String,
    pub problem: String,
}

/// The audit's totals and findings.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub revision: u64,
    pub accounts: usize,
    pub locks_pending: usize,
    pub locks_settled: usize,
    pub balance_uatp: u128,
    pub locked_uatp: u128,
    pub supply_uatp: u128,
    pub granted_uatp: u128,
    pub violations: Vec<Violation>,
}

impl AuditReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

fn micros(atp: Atp) -> u128 {
    u128::from(atp.micros())
}

/// Checks every invariant of `snapshot` at time `now`.
pub fn audit(snapshot: &LedgerSnapshot, now: Timestamp) -> AuditReport {
    let mut violations: Vec<Violation> = snapshot
        .invalid
        .iter()
        .map(|(key, why)| Violation {
            key: key.clone(),
            problem: format!("invalid record: {why}"),
        })
        .collect();
    let mut violate = |key: &str, problem: String| {
        violations.push(Violation {
            key: key.to_owned(),
            problem,
        })
    };

    let balance: u128 = snapshot.accounts.values().map(|a| micros(a.balance_uatp)).sum();
    let locked: u128 = snapshot.accounts.values().map(|a| micros(a.locked_uatp)).sum();
    let supply = micros(snapshot.supply.total_uatp);
    let granted: u128 = snapshot.grants.values().map(|g| micros(g.amount_uatp)).sum();
    if balance + locked != supply {
        violate(
            subjects::LEDGER_SUPPLY,
            format!(
                "conservation: balances {balance} + locked {locked} = {} uATP, but supply is {supply} uATP",
                balance + locked
            ),
        );
    }
    if granted != supply {
        violate(
            subjects::LEDGER_SUPPLY,
            format!("grants sum to {granted} uATP, but supply is {supply} uATP"),
        );
    }

    // What each account should hold, from grants and settled locks.
    let mut expected_total: BTreeMap<String, i128> = BTreeMap::new();
    let mut expected_locked: BTreeMap<String, u128> = BTreeMap::new();
    let mut expected_pending: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_spent: BTreeMap<String, u128> = BTreeMap::new();
    let mut expected_earned: BTreeMap<String, u128> = BTreeMap::new();
    for grant in snapshot.grants.values() {
        *expected_total.entry(grant.account.to_string()).or_default() += micros(grant.amount_uatp) as i128;
    }
    let (mut pending, mut settled) = (0, 0);
    for (key, lock) in &snapshot.locks {
        let lock_entry = snapshot
            .journal
            .get(&subjects::ledger_journal_lock(lock.task_id.as_str()));
        let settle_entry = snapshot
            .journal
            .get(&subjects::ledger_journal_settle(lock.task_id.as_str()));
        if lock_entry.is_none() {
            violate(key, "has no lock journal entry".to_owned());
        }
        if *key != lock.key() {
            violate(key, format!("holds the lock of task {}", lock.task_id));
        }
        if lock.state.holds_escrow() {
            pending += 1;
            *expected_locked.entry(lock.delegator.to_string()).or_default() += micros(lock.amount_uatp);
            *expected_pending.entry(lock.delegator.to_string()).or_default() += 1;
            if now > lock.settles_at() + EXPIRY_GRACE {
                violate(
                    key,
                    format!(
                        "{:?} {:.0} s past its expiry: is a ledger service sweeping?",
                        lock.state,
                        now.duration_since(lock.settles_at()).as_secs_f64()
                    ),
                );
            }
            if (lock.state == LockState::AwaitingWitness) != lock.hold.is_some() {
                violate(key, format!("is {:?} but holds {:?}", lock.state, lock.hold.is_some()));
            }
            if settle_entry.is_some() {
                violate(key, "is pending but has a settlement journal entry".to_owned());
            }
            continue;
        }
        settled += 1;
        check_settled(key, lock, settle_entry, &mut violate);
        if let Some(s) = &lock.settlement {
            *expected_total.entry(lock.executor.to_string()).or_default() += micros(s.paid_uatp) as i128;
            *expected_total.entry(lock.delegator.to_string()).or_default() -= micros(s.paid_uatp) as i128;
            *expected_spent.entry(lock.delegator.to_string()).or_default() += micros(s.paid_uatp);
            *expected_earned.entry(lock.executor.to_string()).or_default() += micros(s.paid_uatp);
            let witness_paid = WitnessSettlement::paid(s);
            match s.witness.as_ref().and_then(|w| w.account.as_ref()) {
                Some(account) => {
                    *expected_total.entry(account.to_string()).or_default() += micros(witness_paid) as i128;
                    *expected_total.entry(lock.delegator.to_string()).or_default() -= micros(witness_paid) as i128;
                    *expected_spent.entry(lock.delegator.to_string()).or_default() += micros(witness_paid);
                    *expected_earned.entry(account.to_string()).or_default() += micros(witness_paid);
                }
                None if witness_paid != Atp::ZERO => violate(key, "paid a witness without an account".to_owned()),
                None => {}
            }
        }
    }
    for (key, entry) in &snapshot.journal {
        if !snapshot
            .locks
            .contains_key(&subjects::ledger_lock(entry.task_id.as_str()))
        {
            violate(key, format!("journal entry of task {} without a lock", entry.task_id));
        }
    }
    for (key, account) in &snapshot.accounts {
        let lct = account.lct.to_string();
        let want_locked = expected_locked.remove(&lct).unwrap_or(0);
        if micros(account.locked_uatp) != want_locked {
            violate(
                key,
                format!(
                    "locked is {} uATP, its pending locks hold {want_locked} uATP",
                    account.locked_uatp.micros()
                ),
            );
        }
        let want_pending = expected_pending.remove(&lct).unwrap_or(0);
        if account.pending_locks != want_pending {
            violate(
                key,
                format!(
                    "counts {} pending locks, the ledger holds {want_pending}",
                    account.pending_locks
                ),
            );
        }
        let (want_spent, want_earned) = (
            expected_spent.remove(&lct).unwrap_or(0),
            expected_earned.remove(&lct).unwrap_or(0),
        );
        if micros(account.spent_uatp) != want_spent || micros(account.earned_uatp) != want_earned {
            violate(
                key,
                format!(
                    "spent/earned are {}/{} uATP, its settled locks give {want_spent}/{want_earned} uATP",
                    account.spent_uatp.micros(),
                    account.earned_uatp.micros()
                ),
            );
        }
        let want_total = expected_total.remove(&lct).unwrap_or(0);
        let total = (micros(account.balance_uatp) + micros(account.locked_uatp)) as i128;
        if total != want_total {
            violate(
                key,
                format!("holds {total} uATP, but grants and settlements give {want_total} uATP"),
            );
        }
    }
    for (lct, amount) in expected_locked.into_iter().filter(|(_, a)| *a > 0) {
        violate(
            &lct,
            format!("pending locks hold {amount} uATP of an account that does not exist"),
        );
    }
    for (lct, amount) in expected_total.into_iter().filter(|(_, a)| *a != 0) {
        violate(
            &lct,
            format!("grants and settlements give {amount} uATP to an account that does not exist"),
        );
    }

    AuditReport {
        revision: snapshot.revision,
        accounts: snapshot.accounts.len(),
        locks_pending: pending,
        locks_settled: settled,
        balance_uatp: balance,
        locked_uatp: locked,
        supply_uatp: supply,
        granted_uatp: granted,
        violations,
    }
}

fn check_settled(
    key: &str,
    lock: &Lock,
    entry: Option<&crate::ledger::model::JournalEntry>,
    violate: &mut impl FnMut(&str, String),
) {
    let Some(entry) = entry else {
        violate(key, format!("is {:?} but has no settlement journal entry", lock.state));
        return;
    };
    let Some(settlement) = &lock.settlement else {
        violate(key, format!("is {:?} but records no settlement", lock.state));
        return;
    };
    let expected = match lock.state {
        LockState::Committed => Transition::Commit,
        LockState::Expired => Transition::Expire,
        _ => Transition::Rollback,
    };
    if entry.transition != expected {
        violate(
            key,
            format!("is {:?} but its journal says {:?}", lock.state, entry.transition),
        );
    }
    if entry.paid_uatp != settlement.paid_uatp
        || entry.refunded_uatp != settlement.refunded_uatp
        || entry.witness != settlement.witness
    {
        violate(
            key,
            "its settlement and its journal entry disagree on the amounts".to_owned(),
        );
    }
    let witness_paid = WitnessSettlement::paid(settlement);
    let split = settlement
        .paid_uatp
        .checked_add(settlement.refunded_uatp)
        .and_then(|sum| sum.checked_add(witness_paid));
    if split != Some(lock.amount_uatp) {
        violate(
            key,
            format!(
                "paid {} + witness paid {witness_paid} + refunded {} is not the locked {}",
                settlement.paid_uatp, settlement.refunded_uatp, lock.amount_uatp
            ),
        );
    }
    if lock.state != LockState::Committed && settlement.paid_uatp != Atp::ZERO {
        violate(key, "a rolled back lock paid the executor".to_owned());
    }
}
