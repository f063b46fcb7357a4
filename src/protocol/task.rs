//! FederationTask: what a delegator asks an executor to do (the seed's shape, plus expiry and
//! the reply destination), and task ids.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::nats::subjects;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{Signable, dedupe_id};
use crate::protocol::lct::{Lct, check_task_type, token_problem};
use crate::protocol::limits::{
    OPERATION_CHARS_MAX, TASK_ID_CHARS_MAX, TASK_PARAMETERS_BYTES_MAX, TASK_TIMEOUT_SECONDS_MAX,
};

/// The dedupe id (`Nats-Msg-Id`) a delegator publishes the signed task `wire` under: a digest
/// of its bytes, not the task id. The task id is on the task board before the publish, so an
/// id derived from it lets another platform store junk first; with the digest, a `duplicate`
/// ack can only mean these very bytes are stored, which is the delegator's own task.
pub fn message_id(wire: &[u8]) -> String {
    dedupe_id("task", wire)
}

/// A task id: a safe NATS subject token and KV key token, unique per task.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    /// A fresh random id (`t-` and 32 hex digits).
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(format!("t-{}", hex::encode(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match token_problem(&value, TASK_ID_CHARS_MAX) {
            None => Ok(Self(value)),
            Some(why) => Err(format!("task id {value:?} is invalid: {why}")),
        }
    }
}

impl std::str::FromStr for TaskId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which of an executor's two queues a task waits in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// The normal queue, in order of arrival.
    #[default]
    Normal,
    /// The critical lane: the executor's workers take its tasks before any queued normal one.
    Critical,
}

impl Lane {
    /// Both lanes, in the order a worker serves them.
    pub const SERVED_FIRST_TO_LAST: [Lane; 2] = [Lane::Critical, Lane::Normal];

    /// The subject tasks for `platform` on this lane are published on.
    pub fn subject(self, platform: &str) -> String {
        subjects::task_queue(platform, self == Lane::Critical)
    }

    /// The durable consumer `platform`'s workers share on this lane.
    pub fn consumer(self, platform: &str) -> String {
        match self {
            Lane::Normal => subjects::worker_consumer(platform),
            Lane::Critical => subjects::critical_consumer(platform),
        }
    }

    /// The lane a task marked `critical` (or not) belongs on.
    pub fn of(critical: bool) -> Lane {
        if critical { Lane::Critical } else { Lane::Normal }
    }
}

/// A task one platform delegates to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationTask {
    pub task_id: TaskId,
    /// The delegator; its platform signs the task.
    pub source_lct: Lct,
    /// The executor the task is for.
    pub target_lct: Lct,
    /// `consciousness` or `consciousness.sage`; equals the target LCT's task type.
    pub task_type: String,
    /// `perception`, `planning`, `execution`, or an operation a platform configured.
    pub operation: String,
    /// ATP locked for this task; the executor may consume up to this much.
    pub atp_budget: f64,
    /// Longest the execution may take.
    pub timeout_seconds: u64,
    /// Operation-specific parameters (a JSON object).
    pub parameters: Map<String, Value>,
    /// Unix seconds when the delegator created the task.
    pub created_at: Timestamp,
    /// Unix seconds after which no executor may start it or produce its proof.
    pub expires_at: Timestamp,
    /// Subject the executor publishes the proof on: always the proofs subject of the source
    /// platform for this task, checked, so a task cannot make a worker publish elsewhere.
    pub reply_to: String,
    /// A critical task: queued on the executor's critical lane, which its workers drain
    /// before the normal one. Only a delegator whose key holds `federation:critical` may
    /// sign one (the worker refuses it otherwise). Absent on the wire when false, so a task
    /// signed before the field existed decodes, and verifies, as normal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
}

impl FederationTask {
    /// The lane this task is queued on at its executor.
    pub fn lane(&self) -> Lane {
        Lane::of(self.critical)
    }

    /// The subject this task is queued on at its executor: its lane's.
    pub fn queue_subject(&self) -> String {
        self.lane().subject(self.target_lct.platform())
    }

    /// The budget as a ledger amount. Valid once `validate` passed.
    pub fn budget(&self) -> Result<Atp, String> {
        Atp::positive_from_f64(self.atp_budget, "atp_budget").map_err(|e| e.to_string())
    }
}

impl Signable for FederationTask {
    const DOMAIN: &'static [u8] = b"sagefed/task/v1\0";
    const KIND: &'static str = "task";

    fn signer_platform(&self) -> &str {
        self.source_lct.platform()
    }

    fn created_at(&self) -> Timestamp {
        self.created_at
    }

    fn expires_at(&self) -> Option<Timestamp> {
        Some(self.expires_at)
    }

    fn validate(&self) -> Result<(), String> {
        self.budget()?;
        check_task_type(&self.task_type).map_err(|e| e.to_string())?;
        if self.task_type != self.target_lct.task_type() {
            return Err(format!(
                "task_type {:?} differs from the target LCT's task type {:?}",
                self.task_type,
                self.target_lct.task_type()
            ));
        }
        if let Some(why) = token_problem(&self.operation, OPERATION_CHARS_MAX) {
            return Err(format!("operation {:?} is invalid: {why}", self.operation));
        }
        if self.timeout_seconds == 0 || self.timeout_seconds > TASK_TIMEOUT_SECONDS_MAX {
            return Err(format!(
                "timeout_seconds {} is outside 1..={TASK_TIMEOUT_SECONDS_MAX}",
                self.timeout_seconds
            ));
        }
        if self.expires_at <= self.created_at {
            return Err("expires_at must be a finite time after created_at".into());
        }
        let parameters_bytes = serde_json::to_vec(&self.parameters)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if parameters_bytes > TASK_PARAMETERS_BYTES_MAX {
            return Err(format!(
                "parameters are {parameters_bytes} bytes, more than the {TASK_PARAMETERS_BYTES_MAX} byte limit"
            ));
        }
        let expected = subjects::proof(
            self.source_lct.platform(),
            self.target_lct.platform(),
            self.task_id.as_str(),
        );
        if self.reply_to != expected {
            return Err(format!("reply_to {:?} must be {expected:?}", self.reply_to));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_task(source: &str, target: &str) -> FederationTask {
        let task_id: TaskId = "t-0001".parse().expect("id");
        let source_lct: Lct = format!("lct:web4:agent:dp@{source}#consciousness")
            .parse()
            .expect("lct");
        FederationTask {
            reply_to: subjects::proof(source_lct.platform(), target, task_id.as_str()),
            task_id,
            source_lct,
            target_lct: format!("lct:web4:agent:dp@{target}#consciousness.sage")
                .parse()
                .expect("lct"),
            task_type: "consciousness.sage".into(),
            operation: "planning".into(),
            atp_budget: 10.0,
            timeout_seconds: 30,
            parameters: Map::new(),
            created_at: Timestamp::from_secs(1000),
            expires_at: Timestamp::from_secs(1060),
            critical: false,
        }
    }

    #[test]
    fn a_task_without_the_critical_field_decodes_as_normal_and_a_normal_one_omits_it() {
        let task = sample_task("Thor", "Legion");
        let json = serde_json::to_value(&task).expect("json");
        assert!(
            json.get("critical").is_none(),
            "a normal task's bytes are unchanged: {json}"
        );
        let decoded: FederationTask = serde_json::from_value(json).expect("decode");
        assert!(!decoded.critical);
        assert_eq!(decoded.queue_subject(), subjects::delegate("Legion"));
        let critical = FederationTask { critical: true, ..task };
        let json = serde_json::to_value(&critical).expect("json");
        assert_eq!(json["critical"], serde_json::Value::Bool(true));
        assert_eq!(critical.queue_subject(), subjects::critical("Legion"));
    }

    #[test]
    fn task_ids_are_subject_tokens() {
        assert!("t-1".parse::<TaskId>().is_ok());
        assert!(TaskId::random().expect("random").as_str().starts_with("t-"));
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(TASK_ID_CHARS_MAX + 1)] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<TaskId>("\"a.b\"").is_err());
    }

    #[test]
    fn invalid_tasks_say_what_is_wrong() {
        assert_eq!(sample_task("Thor", "Legion").validate(), Ok(()));
        type Mutation = fn(&mut FederationTask);
        let cases: Vec<(Mutation, &str)> = vec![
            (|t| t.atp_budget = f64::NAN, "atp_budget"),
            (|t| t.atp_budget = -1.0, "negative"),
            (|t| t.atp_budget = 0.0, "more than zero"),
            (|t| t.task_type = "consciousness".into(), "differs"),
            (|t| t.operation = "plan ning".into(), "operation"),
            (|t| t.timeout_seconds = 0, "timeout_seconds"),
            (|t| t.expires_at = t.created_at, "expires_at"),
            (|t| t.reply_to = "$JS.API.STREAM.DELETE.SAGE_TASKS".into(), "reply_to"),
            (
                |t| {
                    t.parameters
                        .insert("x".into(), Value::String("y".repeat(TASK_PARAMETERS_BYTES_MAX)));
                },
                "byte limit",
            ),
        ];
        for (mutate, expected) in cases {
            let mut task = sample_task("Thor", "Legion");
            mutate(&mut task);
            let err = task.validate().expect_err(expected);
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }
}
