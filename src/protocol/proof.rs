//! ExecutionProof: what an executor signs about a task it ran, or refused.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{Signable, dedupe_id};
use crate::protocol::lct::Lct;
use crate::protocol::limits::PROOF_RESULT_BYTES_MAX;
use crate::protocol::task::TaskId;

/// How a task ended on the executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofStatus {
    /// Ran to the end; `quality_score` says how well.
    Completed,
    /// Refused before any work (signature, permission, budget, limits, replay...).
    Rejected,
    /// Started and failed (handler error, resource limit).
    Failed,
    /// Exceeded its timeout and was killed.
    TimedOut,
    /// Cancelled by the delegator.
    Cancelled,
}

/// Signed statement of an executor about one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionProof {
    pub task_id: TaskId,
    /// Who executed (or refused); its platform signs the proof.
    pub executor_lct: Lct,
    /// Who delegated: the proof is addressed to this LCT's platform.
    pub delegator_lct: Lct,
    pub status: ProofStatus,
    /// Why the task was refused or failed; empty when completed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// ATP the execution used, never above the task's budget.
    pub atp_consumed: f64,
    /// Seconds spent executing: a span on the wire, as the seed's proofs carry it.
    pub execution_time: f64,
    /// 0.0 ..= 1.0, computed from the result by the operation's handler.
    pub quality_score: f64,
    pub result: Map<String, Value>,
    pub created_at: Timestamp,
}

impl ExecutionProof {
    pub fn consumed(&self) -> Result<Atp, String> {
        Atp::from_f64(self.atp_consumed, "atp_consumed").map_err(|e| e.to_string())
    }
}

/// The dedupe id (`Nats-Msg-Id`) of the signed proof `wire`: a digest of its bytes. The
/// proofs stream dedupes by id across all subjects, so an id another platform could guess
/// (`proof-<task>`) would let it store a message first and have the real proof dropped as
/// a duplicate; nobody can name the digest of a signature before it is published. A retry
/// of the same bytes still dedupes.
pub fn message_id(wire: &[u8]) -> String {
    dedupe_id("proof", wire)
}

impl Signable for ExecutionProof {
    const DOMAIN: &'static [u8] = b"sagefed/proof/v1\0";
    const KIND: &'static str = "proof";

    fn signer_platform(&self) -> &str {
        self.executor_lct.platform()
    }

    fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// A proof stays valid as long as its lock: the ledger decides whether it is too late.
    fn expires_at(&self) -> Option<Timestamp> {
        None
    }

    fn validate(&self) -> Result<(), String> {
        self.consumed()?;
        if !(0.0..=1.0).contains(&self.quality_score) {
            return Err(format!("quality_score {} is outside 0..=1", self.quality_score));
        }
        if !self.execution_time.is_finite() || self.execution_time < 0.0 {
            return Err(format!(
                "execution_time {} is not a non-negative number",
                self.execution_time
            ));
        }
        let result_bytes = serde_json::to_vec(&self.result).map(|v| v.len()).unwrap_or(usize::MAX);
        if result_bytes > PROOF_RESULT_BYTES_MAX {
            return Err(format!(
                "result is {result_bytes} bytes, more than the {PROOF_RESULT_BYTES_MAX} byte limit"
            ));
        }
        if self.status != ProofStatus::Completed && self.reason.is_empty() {
            return Err("a proof that is not `completed` must give a reason".into());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::keys::{KeyRecord, KeyRegistry, generate};
    use crate::protocol::envelope::{EnvelopeError, Signer, verify};
    use crate::protocol::task::FederationTask;
    use crate::protocol::task::tests::sample_task;

    pub(crate) fn sample_proof() -> ExecutionProof {
        ExecutionProof {
            task_id: "t-0001".parse().expect("id"),
            executor_lct: "lct:web4:agent:dp@Legion#consciousness.sage".parse().expect("lct"),
            delegator_lct: "lct:web4:agent:dp@Thor#consciousness".parse().expect("lct"),
            status: ProofStatus::Completed,
            reason: String::new(),
            atp_consumed: 4.5,
            execution_time: 0.02,
            quality_score: 0.9,
            result: Map::new(),
            created_at: Timestamp::from_secs(1010),
        }
    }

    #[test]
    fn message_ids_follow_the_signed_bytes() {
        assert_eq!(message_id(b"a"), message_id(b"a"), "a retry dedupes");
        assert_ne!(message_id(b"a"), message_id(b"b"));
        assert!(!message_id(b"a").contains("t-0001"));
    }

    #[test]
    fn invalid_proofs_are_refused() {
        assert_eq!(sample_proof().validate(), Ok(()));
        for quality in [f64::NAN, -0.1, 1.01, f64::INFINITY] {
            let mut proof = sample_proof();
            proof.quality_score = quality;
            assert!(proof.validate().is_err(), "quality {quality}");
        }
        let mut proof = sample_proof();
        proof.atp_consumed = -1.0;
        assert!(proof.validate().is_err());
        let mut proof = sample_proof();
        proof.status = ProofStatus::Rejected;
        assert!(proof.validate().is_err(), "a rejection needs a reason");
    }

    #[test]
    fn task_and_proof_signatures_do_not_cross() {
        let legion = Signer::new("Legion", generate().expect("random")).expect("signer");
        let thor = Signer::new("Thor", generate().expect("random")).expect("signer");
        let mut keys = KeyRegistry::new();
        keys.insert(KeyRecord::new("Legion", &legion.verifying_key(), Timestamp::EPOCH));
        keys.insert(KeyRecord::new("Thor", &thor.verifying_key(), Timestamp::EPOCH));

        let task_wire = thor.sign(&sample_task("Thor", "Legion")).expect("sign task");
        let proof_wire = legion.sign(&sample_proof()).expect("sign proof");
        verify::<FederationTask>(&task_wire, &keys, Timestamp::from_secs(1030)).expect("task verifies");
        verify::<ExecutionProof>(&proof_wire, &keys, Timestamp::from_secs(1030)).expect("proof verifies");

        // Relabel the task envelope as a proof: the domain tag makes the signature fail.
        let relabeled =
            String::from_utf8(task_wire.to_vec())
                .expect("utf8")
                .replacen("\"kind\":\"task\"", "\"kind\":\"proof\"", 1);
        let err = verify::<ExecutionProof>(&bytes::Bytes::from(relabeled), &keys, Timestamp::from_secs(1030))
            .expect_err("cross kind");
        assert!(matches!(err, EnvelopeError::BadSignature { .. }), "{err}");
        assert!(matches!(
            verify::<FederationTask>(&proof_wire, &keys, Timestamp::from_secs(1030)),
            Err(EnvelopeError::WrongKind { .. })
        ));
    }
}
