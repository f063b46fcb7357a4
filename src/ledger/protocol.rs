//! The ledger service's wire protocol: signed requests and plain replies.
//!
//! Each request is a [`LedgerRequest`] in a signed envelope (domain
//! `sagefed/ledger-request/v1\0`) from the requesting platform. The reply says exactly what
//! happened: applied, already applied (an idempotent retry), or rejected with a code and a
//! message.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ledger::model::{Account, Lock, RollbackReason};
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::Signable;
use crate::protocol::lct::{Lct, check_platform, token_problem};
use crate::protocol::limits::{ENVELOPE_BYTES_MAX, LEDGER_REQUEST_BYTES_MAX, TASK_ID_CHARS_MAX};
use crate::protocol::task::TaskId;
use std::time::Duration;

/// How long a signed ledger request stays acceptable. Requests are idempotent, so a replay
/// inside this window changes nothing; the window only bounds how long one is worth keeping.
pub const REQUEST_TTL: Duration = Duration::from_secs(120);

/// A signed request to the ledger.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRequest {
    /// The platform that signs the request.
    pub requester: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub operation: Operation,
}

/// What the request asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Creates `amount` ATP in `account` (admins only). Idempotent by `grant_id`.
    Grant {
        grant_id: String,
        account: Lct,
        amount: f64,
    },
    /// Moves `amount` from the delegator's balance into escrow for `task_id`.
    Lock {
        task_id: TaskId,
        delegator: Lct,
        executor: Lct,
        amount: f64,
        quality_threshold: f64,
        deadline: Timestamp,
        expires_at: Timestamp,
        /// The SHA-256 (hex) of the signed task the lock pays for: commits must carry it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_digest: Option<String>,
        /// Witness terms: a commit of an operation without a cheap check may then be sampled
        /// and held for one of the candidates to re-execute (needs `task_digest`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        witness: Option<WitnessRequest>,
        /// The task's operation (one subject token): reputation is kept per operation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation: Option<String>,
    },
    /// Pays the executor what its signed proof says it consumed; refunds the rest.
    Commit {
        task_id: TaskId,
        /// The executor's signed ExecutionProof envelope, verbatim, as a JSON value: embedded
        /// as a string it would be escaped a second time (a result of quotes doubles again).
        proof: Box<RawValue>,
        /// The delegator's signed task, verbatim, when the lock names its digest: the ledger
        /// checks the proof's result against it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<Box<RawValue>>,
    },
    /// Refunds the whole lock to the delegator.
    Rollback {
        task_id: TaskId,
        reason: RollbackReason,
        /// The executor's signed proof backing the reason, when the delegator rolls back
        /// for low quality, failure or a refusal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        evidence: Option<Box<RawValue>>,
    },
    /// The appointed witness's answer for a commit held for it: its own signed proof of the
    /// same task (executor = the witness), compared by the ledger with the executor's.
    Witness {
        task_id: TaskId,
        /// The witness's signed ExecutionProof envelope, verbatim, as a JSON value.
        proof: Box<RawValue>,
    },
}

/// A delegator's witness terms on the wire (the share as decimal ATP, as amounts are).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRequest {
    pub candidates: Vec<String>,
    pub share: f64,
    pub tolerance: f64,
    /// Seconds, as the wire carries the span (checked against `WITNESS_HOLD_SECONDS_MAX`).
    pub hold_seconds: f64,
}

impl Operation {
    /// The endpoint name (`sage.ledger.<name>`).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Grant { .. } => "grant",
            Operation::Lock { .. } => "lock",
            Operation::Commit { .. } => "commit",
            Operation::Rollback { .. } => "rollback",
            Operation::Witness { .. } => "witness",
        }
    }
}

/// Checks a grant id: one KV key token.
pub fn check_grant_id(grant_id: &str) -> Result<(), String> {
    match token_problem(grant_id, TASK_ID_CHARS_MAX) {
        None => Ok(()),
        Some(why) => Err(format!("grant id {grant_id:?} is invalid: {why}")),
    }
}

impl Signable for LedgerRequest {
    const DOMAIN: &'static [u8] = b"sagefed/ledger-request/v1\0";
    const KIND: &'static str = "ledger_request";

    fn signer_platform(&self) -> &str {
        &self.requester
    }

    fn created_at(&self) -> Timestamp {
        self.created_at
    }

    fn expires_at(&self) -> Option<Timestamp> {
        Some(self.expires_at)
    }

    const BYTES_MAX: usize = LEDGER_REQUEST_BYTES_MAX;

    fn validate(&self) -> Result<(), String> {
        check_platform(&self.requester).map_err(|e| e.to_string())?;
        if !(self.expires_at > self.created_at && self.expires_at.duration_since(self.created_at) <= REQUEST_TTL) {
            return Err(format!(
                "expires_at must be within {} s after created_at",
                REQUEST_TTL.as_secs()
            ));
        }
        match &self.operation {
            Operation::Grant { grant_id, .. } => check_grant_id(grant_id),
            Operation::Commit { proof, .. } | Operation::Witness { proof, .. }
                if proof.get().len() > ENVELOPE_BYTES_MAX =>
            {
                Err("the proof is larger than an envelope may be".to_owned())
            }
            Operation::Commit { task: Some(t), .. } if t.get().len() > ENVELOPE_BYTES_MAX => {
                Err("the task is larger than an envelope may be".to_owned())
            }
            Operation::Lock {
                task_digest: Some(d), ..
            } if !crate::protocol::envelope::is_digest(d) => {
                Err("task_digest is not a SHA-256 in lower-case hex".to_owned())
            }
            Operation::Rollback { evidence: Some(e), .. } if e.get().len() > ENVELOPE_BYTES_MAX => {
                Err("the evidence is larger than an envelope may be".to_owned())
            }
            _ => Ok(()),
        }
    }
}

/// What happened to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The transition was made by this request.
    Applied,
    /// The same transition had already been made (a retry); nothing changed.
    AlreadyApplied,
    /// Refused; nothing changed. `code` and `message` say why.
    Rejected,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The request could not be read, or a field is invalid.
    InvalidRequest,
    /// An amount is NaN, infinite, negative, zero where it must not be, or too large.
    InvalidAmount,
    /// The signature, key or time window of the request (or of a proof in it) failed.
    BadSignature,
    /// The signer may not make this request.
    NotAuthorized,
    /// The delegator's available balance is below the amount.
    InsufficientAtp,
    /// No lock exists for the task.
    UnknownLock,
    /// The lock was already settled another way.
    AlreadySettled,
    /// The lock passed its expiry; it can only be rolled back.
    LockExpired,
    /// The proof claims more ATP than the lock holds.
    ConsumedExceedsLocked,
    /// The proof's quality is below the lock's threshold: roll back instead.
    QualityBelowThreshold,
    /// The proof does not belong to this lock (task, executor or delegator differ).
    ProofMismatch,
    /// A rollback for this reason needs the executor's signed proof, or the deadline to pass.
    EvidenceRequired,
    /// The id was already used with other terms.
    Conflict,
    /// The delegator and the executor are the same account.
    SameAccount,
    /// An account would overflow.
    Overflow,
    /// The lock is held for a witness: only the appointed witness's answer, or the hold's
    /// expiry, settles it.
    HeldForWitness,
    /// The ledger could not apply it now (contention or NATS trouble); retry.
    Busy,
}

/// The ledger's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LedgerReply {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<RejectCode>,
    /// What happened, for people.
    pub message: String,
    /// The lock as it is after the request (lock, commit, rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<Box<Lock>>,
    /// The account as it is after the request (grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Box<Account>>,
}

impl LedgerReply {
    pub fn rejected(code: RejectCode, message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Rejected,
            code: Some(code),
            message: message.into(),
            lock: None,
            account: None,
        }
    }

    pub fn is_ok(&self) -> bool {
        self.outcome != Outcome::Rejected
    }
}
