//! The records the ledger keeps in the `sage_ledger` bucket, one JSON value per key.
//! Amounts are integer micro-ATP (`*_uatp`), so sums are exact.

use serde::{Deserialize, Serialize};

use crate::nats::subjects;
use crate::protocol::atp::Atp;
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
    Committed,
    RolledBack,
    Expired,
}

impl LockState {
    pub fn is_terminal(self) -> bool {
        self != LockState::Pending
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
    pub at: f64,
    /// The platform whose request settled it (`ledger` for the sweeper).
    pub by: String,
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
    pub created_at: f64,
    /// After this the delegator may roll back for timeout.
    pub deadline: f64,
    /// After this nobody may commit, and the sweeper rolls the lock back.
    pub expires_at: f64,
    pub state: LockState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<Settlement>,
    /// The SHA-256 (hex) of the signed task this lock pays for, named by the delegator: a
    /// commit must then carry that task, and a built-in operation's result is paid by the
    /// ledger's own check of it against the task, not by the quality the executor claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_digest: Option<String>,
    /// The operation the task runs, as the delegator declared it: the executor's reputation
    /// is kept per operation. A commit that carries the task must agree with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl Lock {
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
    pub at: f64,
    pub by: String,
    /// The executor's signed proof a commit paid for, verbatim: a task delivered again after
    /// its commit landed republishes exactly this proof, so the delegator gets what it paid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<SignedProof>,
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
    pub at: f64,
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
        };
        value.map_err(|e| RecordError {
            key: self.key(),
            why: e.to_string(),
        })
    }
}
