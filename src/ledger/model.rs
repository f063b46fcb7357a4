//! The records the ledger keeps in the `sage_ledger` bucket, one JSON value per key.
//! Amounts are integer micro-ATP (`*_uatp`), so sums are exact.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::nats::subjects;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::lct::Lct;
use crate::protocol::task::TaskId;

/// One account per LCT (`accounts.<platform>.<owner>.<task_type>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub lct: Lct,
    /// ATP available to lock.
    pub balance_uatp: Atp,
    /// ATP held by this account's pending locks.
    pub locked_uatp: Atp,
    /// ATP this account paid executors, over all its committed locks.
    #[serde(default)]
    pub spent_uatp: Atp,
    /// ATP this account was paid as an executor.
    #[serde(default)]
    pub earned_uatp: Atp,
    /// How many of this account's locks are pending (tasks in flight).
    #[serde(default)]
    pub pending_locks: u64,
}

impl Account {
    pub fn empty(lct: Lct) -> Self {
        Self {
            lct,
            balance_uatp: Atp::ZERO,
            locked_uatp: Atp::ZERO,
            spent_uatp: Atp::ZERO,
            earned_uatp: Atp::ZERO,
            pending_locks: 0,
        }
    }

    pub fn key(&self) -> String {
        account_key(&self.lct)
    }
}

/// The ledger key of `lct`'s account.
pub fn account_key(lct: &Lct) -> String {
    subjects::ledger_account(&lct.key_path())
}

/// Where a lock is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    Pending,
    /// Committed by the executor, sampled for a witness: the escrow is still held, until the
    /// witness's answer or the hold's own expiry (`Lock::hold`) settles it.
    AwaitingWitness,
    Committed,
    RolledBack,
    Expired,
}

impl LockState {
    /// Settled: nothing moves this lock again.
    pub fn is_terminal(self) -> bool {
        !self.holds_escrow()
    }

    /// The delegator's ATP is still locked in it (pending, or held for a witness).
    pub fn holds_escrow(self) -> bool {
        matches!(self, LockState::Pending | LockState::AwaitingWitness)
    }
}

/// Why a lock was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackReason {
    /// The proof's quality was below the lock's threshold.
    LowQuality,
    /// The execution failed.
    Failure,
    /// No proof arrived before the task's deadline, or the execution timed out.
    Timeout,
    /// The executor refused: the delegator lacked a permission.
    PermissionDenied,
    /// The executor refused for another reason (signature, replay, limits, budget).
    Rejected,
    /// The delegator cancelled the task.
    Cancelled,
    /// The lock passed its expiry; the sweeper refunded it.
    Expired,
    /// The ledger's check of the result against the task refuted it (a commit refused).
    Refuted,
    /// A witness re-executed the sampled task and its result disagreed with the executor's
    /// beyond the tolerance the lock names: the executor is recorded as wrong.
    WitnessDisagreed,
}

impl RollbackReason {
    /// The reason to give for a lock whose proof says `status` and is not paid: a completed
    /// task below the threshold is low quality. (An executor refusing a task names its exact
    /// reason, such as `PermissionDenied`, itself.)
    pub fn for_proof(status: crate::protocol::proof::ProofStatus) -> Self {
        use crate::protocol::proof::ProofStatus;
        match status {
            ProofStatus::Completed => RollbackReason::LowQuality,
            ProofStatus::Rejected => RollbackReason::Rejected,
            ProofStatus::Failed => RollbackReason::Failure,
            ProofStatus::TimedOut => RollbackReason::Timeout,
            ProofStatus::Cancelled => RollbackReason::Cancelled,
        }
    }
}

impl std::fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// How a lock was settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    pub paid_uatp: Atp,
    pub refunded_uatp: Atp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RollbackReason>,
    pub at: Timestamp,
    /// The platform whose request settled it (`ledger` for the sweeper).
    pub by: String,
    /// What the witness of a sampled task was paid and found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessSettlement>,
}

/// The witness's part of a settlement: `paid_uatp` went to `account` (besides the executor's
/// `paid_uatp`), so paid + witness paid + refunded = locked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSettlement {
    /// The platform the ledger appointed.
    pub witness: String,
    /// The account the witness was paid into (its proof's executor LCT); none if it never
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Lct>,
    pub paid_uatp: Atp,
    /// Whether its result agreed with the executor's; none if it never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreed: Option<bool>,
}

impl WitnessSettlement {
    /// What the witness of `settlement` was paid (zero without a witness).
    pub fn paid(settlement: &Settlement) -> Atp {
        settlement.witness.as_ref().map_or(Atp::ZERO, |w| w.paid_uatp)
    }
}

/// The delegator's terms for witnesses, named in its lock: a commit of an operation without
/// a cheap check may be sampled, and then one of `candidates` re-executes the task for
/// `share_uatp` out of the delegator's part of the lock (`ledger::witness::payments`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessTerms {
    /// Platforms that hold the capability, neither the delegator nor the executor; the
    /// ledger picks one at random when it samples.
    pub candidates: Vec<String>,
    /// What the witness is paid when it answers: out of what the delegator would get back
    /// (the lock less what the executor consumed), at most that.
    pub share_uatp: Atp,
    /// How far two results' numbers may differ and still agree, relative to the larger
    /// magnitude (at least 1): 0 is exact (deterministic programs). Everything but numbers
    /// must match exactly.
    pub tolerance: f64,
    /// How long a sampled commit is held for the witness's answer; after it the sweeper
    /// settles the hold without one. Seconds, as stored; in-process use [`WitnessTerms::hold`].
    pub hold_seconds: f64,
}

/// A sampled commit held for a witness (`Lock::hold`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessHold {
    /// The platform the ledger appointed from the terms' candidates.
    pub witness: String,
    /// The task's operation (its witness record is per executor and operation).
    pub operation: String,
    /// After this the sweeper settles the hold without the witness (the executor is paid).
    pub until: Timestamp,
    /// The sampling rate the executor's record gave when it was sampled.
    pub rate: f64,
    /// What the executor's proof claims it consumed, and its quality.
    pub consumed_uatp: Atp,
    pub quality: f64,
    /// The executor's signed proof, verbatim: compared with the witness's, and paid for.
    pub proof: SignedProof,
}

/// The escrow of one task (`locks.<task_id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub task_id: TaskId,
    pub delegator: Lct,
    pub executor: Lct,
    pub amount_uatp: Atp,
    /// A proof at or above this quality may be committed.
    pub quality_threshold: f64,
    pub created_at: Timestamp,
    /// After this the delegator may roll back for timeout.
    pub deadline: Timestamp,
    /// After this nobody may commit, and the sweeper rolls the lock back.
    pub expires_at: Timestamp,
    pub state: LockState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<Settlement>,
    /// The SHA-256 (hex) of the signed task this lock pays for, named by the delegator: a
    /// commit must then carry that task, and a built-in operation's result is paid by the
    /// ledger's own check of it against the task, not by the quality the executor claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_digest: Option<String>,
    /// The delegator's witness terms: a commit of an unverifiable operation may be sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_terms: Option<Box<WitnessTerms>>,
    /// The sampled commit held for a witness (state `awaiting_witness`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Box<WitnessHold>>,
    /// The operation the task runs, as the delegator declared it: the executor's reputation
    /// is kept per operation. A commit that carries the task must agree with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl WitnessTerms {
    /// How long a sampled commit is held, from `hold_seconds` (checked against
    /// `WITNESS_HOLD_SECONDS_MAX` when the lock was taken; anything else holds for no time).
    pub fn hold(&self) -> Duration {
        Duration::try_from_secs_f64(self.hold_seconds).unwrap_or(Duration::ZERO)
    }
}

impl Lock {
    /// When the sweeper settles this lock if nobody does: the hold's own expiry while held
    /// for a witness, else the lock's.
    pub fn settles_at(&self) -> Timestamp {
        match (&self.state, &self.hold) {
            (LockState::AwaitingWitness, Some(hold)) => hold.until,
            _ => self.expires_at,
        }
    }

    pub fn key(&self) -> String {
        subjects::ledger_lock(self.task_id.as_str())
    }

    /// Same terms as another lock request for the same task: a retry, not a conflict.
    pub fn same_terms(&self, other: &Lock) -> bool {
        self.task_id == other.task_id
            && self.delegator == other.delegator
            && self.executor == other.executor
            && self.amount_uatp == other.amount_uatp
            && self.quality_threshold == other.quality_threshold
            && self.task_digest == other.task_digest
            && self.witness_terms == other.witness_terms
            && self.operation == other.operation
    }
}

/// What a journal entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Lock,
    Commit,
    Rollback,
    Expire,
}

/// An immutable record of one transition (`journal.<task_id>.lock` or `.settle`), created
/// once in the same atomic batch as the change it records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    pub task_id: TaskId,
    pub transition: Transition,
    pub delegator: Lct,
    pub executor: Lct,
    pub amount_uatp: Atp,
    pub paid_uatp: Atp,
    pub refunded_uatp: Atp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RollbackReason>,
    pub at: Timestamp,
    pub by: String,
    /// The executor's signed proof a commit paid for, verbatim: a task delivered again after
    /// its commit landed republishes exactly this proof, so the delegator gets what it paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<SignedProof>,
    /// The witness's part of the settlement, as in the lock's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessSettlement>,
}

/// The ledger's record of how one executor's results for one operation fared against
/// witnesses (`witness.<platform>.<operation>`): what the sampling rate adapts by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRecord {
    pub executor: String,
    pub operation: String,
    /// Commits considered for sampling, and how many were sampled.
    pub commits: u64,
    pub sampled: u64,
    /// Witnessed results in a row that agreed (reset by a disagreement).
    pub agreed_streak: u32,
    /// Witnessed results in all, and how many disagreed.
    pub witnessed: u64,
    pub disagreements: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disagreement_at: Option<Timestamp>,
}

impl WitnessRecord {
    pub fn new(executor: &str, operation: &str) -> Self {
        Self {
            executor: executor.to_owned(),
            operation: operation.to_owned(),
            commits: 0,
            sampled: 0,
            agreed_streak: 0,
            witnessed: 0,
            disagreements: 0,
            last_disagreement_at: None,
        }
    }

    pub fn key(&self) -> String {
        subjects::ledger_witness(&self.executor, &self.operation)
    }
}

/// A signed proof envelope kept verbatim (its signature covers the exact bytes).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignedProof(Box<serde_json::value::RawValue>);

impl SignedProof {
    /// Keeps `wire`, an envelope as it arrived; `None` if it is not JSON text (a verified
    /// envelope always is).
    pub fn from_wire(wire: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(wire).ok()?;
        serde_json::value::RawValue::from_string(text.to_owned())
            .ok()
            .map(SignedProof)
    }

    /// The envelope's bytes, to publish or verify again.
    pub fn wire(&self) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(self.0.get().as_bytes())
    }

    /// The body of the envelope, read without verifying it again: only for a proof the
    /// ledger verified before it kept it.
    pub fn body<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        #[derive(Deserialize)]
        struct Envelope<T> {
            body: T,
        }
        serde_json::from_str::<Envelope<T>>(self.0.get())
            .map(|e| e.body)
            .map_err(|e| format!("a kept proof does not read back: {e}"))
    }
}

impl PartialEq for SignedProof {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// An immutable record of a grant (`grants.<grant_id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    pub grant_id: String,
    pub account: Lct,
    pub amount_uatp: Atp,
    pub at: Timestamp,
    pub by: String,
}

/// Total ATP ever granted (`supply`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supply {
    pub total_uatp: Atp,
}

/// Any record of the ledger bucket, by its key prefix.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Account(Account),
    Lock(Lock),
    Journal(JournalEntry),
    Grant(GrantRecord),
    Supply(Supply),
    Witness(WitnessRecord),
}

/// A value that is not a valid ledger record for its key.
#[derive(Debug, thiserror::Error)]
#[error("ledger key {key}: {why}")]
pub struct RecordError {
    pub key: String,
    pub why: String,
}

impl Record {
    /// Parses the value stored under `key`.
    pub fn parse(key: &str, value: &[u8]) -> Result<Self, RecordError> {
        let err = |e: serde_json::Error| RecordError {
            key: key.to_owned(),
            why: e.to_string(),
        };
        if key.starts_with(subjects::LEDGER_ACCOUNT_PREFIX) {
            let account: Account = serde_json::from_slice(value).map_err(err)?;
            if account.key() != key {
                return Err(RecordError {
                    key: key.to_owned(),
                    why: format!("holds the account of {}", account.lct),
                });
            }
            Ok(Record::Account(account))
        } else if key.starts_with(subjects::LEDGER_LOCK_PREFIX) {
            serde_json::from_slice(value).map(Record::Lock).map_err(err)
        } else if key.starts_with(subjects::LEDGER_JOURNAL_PREFIX) {
            serde_json::from_slice(value).map(Record::Journal).map_err(err)
        } else if key.starts_with(subjects::LEDGER_GRANT_PREFIX) {
            serde_json::from_slice(value).map(Record::Grant).map_err(err)
        } else if key.starts_with(subjects::LEDGER_WITNESS_PREFIX) {
            serde_json::from_slice(value).map(Record::Witness).map_err(err)
        } else if key == subjects::LEDGER_SUPPLY {
            serde_json::from_slice(value).map(Record::Supply).map_err(err)
        } else {
            Err(RecordError {
                key: key.to_owned(),
                why: "is not a ledger key".to_owned(),
            })
        }
    }

    /// The record as stored. (Serializing these plain structs does not fail; if it ever did,
    /// the error names the key instead of storing an empty value.)
    pub fn to_json(&self) -> Result<Vec<u8>, RecordError> {
        let value = match self {
            Record::Account(r) => serde_json::to_vec(r),
            Record::Lock(r) => serde_json::to_vec(r),
            Record::Journal(r) => serde_json::to_vec(r),
            Record::Grant(r) => serde_json::to_vec(r),
            Record::Supply(r) => serde_json::to_vec(r),
            Record::Witness(r) => serde_json::to_vec(r),
        };
        value.map_err(|e| RecordError {
            key: self.key(),
            why: e.to_string(),
        })
    }
}
