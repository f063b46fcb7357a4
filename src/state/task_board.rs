//! Each task's status in the `sage_tasks` bucket, in two parts, each written only by its
//! party (nats-server permits a platform `$KV.sage_tasks.*.<me>` and `$KV.sage_tasks.*.*.<me>`):
//! the delegator's part `<task_id>.<delegator>` (queued, cancelled, settled) and the
//! executor's part `<task_id>.<delegator>.<executor>` (claimed by one worker with
//! compare-and-swap and the stream sequence of the message it claimed, then finished).
//! Readers merge the two parts named by an authority: the signed task, or the ledger's lock
//! (written only by the ledger). A platform holding valid credentials can write only parts
//! under its own name, which nobody reads for another platform's task. The claim is how a
//! worker tells a redelivery (same message: run it again) from a replay (the same task
//! published again: refuse it).

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use crate::ledger::client::LedgerReader;
use crate::nats::cas::{self, CasError, Step};
use crate::nats::subjects;
use crate::protocol::clock::Timestamp;
use crate::protocol::lct::Lct;
use crate::protocol::task::{FederationTask, TaskId};

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Running,
    Completed,
    Failed,
    Rejected,
    TimedOut,
    Cancelled,
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }
}

/// The status record of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub delegator: Lct,
    pub executor: Lct,
    pub operation: String,
    pub state: TaskState,
    pub updated_at: Timestamp,
    /// Stream sequence of the task message the running worker claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sequence: Option<u64>,
    /// The worker process that claimed it (`<platform>-<pid>@<host>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atp_consumed: Option<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Whether the delegator side has recorded this task's settlement (reputation), once.
    #[serde(default)]
    pub settled: bool,
}

impl TaskStatus {
    /// `task`'s status in `state`, now, with nothing recorded yet.
    pub fn for_task(task: &FederationTask, state: TaskState) -> Self {
        Self {
            task_id: task.task_id.clone(),
            delegator: task.source_lct.clone(),
            executor: task.target_lct.clone(),
            operation: task.operation.clone(),
            state,
            updated_at: Timestamp::now(),
            stream_sequence: None,
            worker: None,
            quality: None,
            atp_consumed: None,
            reason: String::new(),
            settled: false,
        }
    }
}

/// What a worker's claim found.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// This worker runs the task; the running record's revision.
    Claimed(u64),
    /// The same message again after a worker died: run it again.
    Redelivered(u64),
    /// The same message again after it finished (the ack was lost): do not run it again.
    AlreadyFinished(TaskState),
    /// Another message with the same task id: a replay.
    Replay(TaskState),
    /// The delegator cancelled it before it started.
    Cancelled,
}

/// What a cancel found.
#[derive(Clone, Debug, PartialEq)]
pub enum CancelResult {
    /// Was queued or running; now cancelled.
    Cancelled(TaskState),
    /// Had already ended.
    AlreadyEnded(TaskState),
    Unknown,
}

/// Why the task board could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("opening the task status bucket: {0}")]
    Open(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Kv(#[from] CasError),
    #[error("reading the task's lock, which names its parties: {0}")]
    Lock(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("task id {0} is already in use")]
    TaskIdInUse(TaskId),
}

/// The task and the platforms whose parts of its status count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskParties {
    pub task_id: TaskId,
    pub delegator: String,
    pub executor: String,
}

impl TaskParties {
    /// The parties a status record names (the signed task's, when the record was built
    /// from it).
    pub fn of(status: &TaskStatus) -> Self {
        Self {
            task_id: status.task_id.clone(),
            delegator: status.delegator.platform().to_owned(),
            executor: status.executor.platform().to_owned(),
        }
    }

    pub fn delegator_key(&self) -> String {
        subjects::task_delegator_part(self.task_id.as_str(), &self.delegator)
    }

    pub fn executor_key(&self) -> String {
        subjects::task_executor_part(self.task_id.as_str(), &self.delegator, &self.executor)
    }

    /// The task's status from its two parts as read (a part about another pairing ignored).
    pub fn merge(&self, delegator_part: Option<&TaskStatus>, executor_part: Option<&TaskStatus>) -> Option<TaskStatus> {
        let ours = |part: Option<&TaskStatus>| part.filter(|p| self.names(p)).cloned();
        merge(ours(delegator_part), ours(executor_part))
    }

    /// Whether `part` is about this task between these parties (a part written under a
    /// party's name for another pairing is not this task's).
    fn names(&self, part: &TaskStatus) -> bool {
        part.task_id == self.task_id
            && part.delegator.platform() == self.delegator
            && part.executor.platform() == self.executor
    }
}

/// The task's status as its two parts say: the executor's ending, else the delegator's
/// ending (a cancel, or a time-out: no proof came), else the executor's claim, else the delegator's queued record. A delegator's
/// cancel is only a request until the executor ends the task, so the executor's ending
/// replaces it (the board then says what the ledger says).
pub fn merge(delegator_part: Option<TaskStatus>, executor_part: Option<TaskStatus>) -> Option<TaskStatus> {
    let (mut merged, delegator_part) = match (delegator_part, executor_part) {
        (None, None) => return None,
        (Some(d), None) => return Some(d),
        (None, Some(e)) => return Some(e),
        (Some(d), Some(e)) => (e, d),
    };
    merged.settled = delegator_part.settled;
    merged.updated_at = merged.updated_at.max(delegator_part.updated_at);
    if !merged.state.is_terminal() && delegator_part.state.is_terminal() {
        merged.state = TaskState::Cancelled;
        merged.reason = delegator_part.reason;
    }
    Some(merged)
}

/// The `sage_tasks` bucket, and the ledger's locks (which name a task's parties).
#[derive(Clone)]
pub struct TaskBoard {
    kv: kv::Store,
    locks: LedgerReader,
}

/// What a claim's compare-and-swap decided, before the revision written is known.
enum ClaimStep {
    Run { redelivered: bool },
    Stop(Claim),
}

impl TaskBoard {
    pub async fn open(js: &jetstream::Context) -> Result<Self, StatusError> {
        let kv = js
            .get_key_value(subjects::TASKS_BUCKET)
            .await
            .map_err(|e| StatusError::Open(Box::new(e)))?;
        let locks = LedgerReader::open(js)
            .await
            .map_err(|e| StatusError::Open(Box::new(e)))?;
        Ok(Self { kv, locks })
    }

    /// The status of `task_id` between the parties its lock names (the ledger's word, not a
    /// platform's), and the revision of the part it came from; `None` for a task with no
    /// lock (every delegated task has one before it reaches the board).
    pub async fn get(&self, task_id: &TaskId) -> Result<Option<(TaskStatus, u64)>, StatusError> {
        let lock = self
            .locks
            .lock(task_id)
            .await
            .map_err(|e| StatusError::Lock(Box::new(e)))?;
        let Some(lock) = lock else {
            return Ok(None);
        };
        let parties = TaskParties {
            task_id: task_id.clone(),
            delegator: lock.delegator.platform().to_owned(),
            executor: lock.executor.platform().to_owned(),
        };
        self.get_between(&parties).await
    }

    /// The status of a task between `parties`: their two parts merged ([`merge`]).
    pub async fn get_between(&self, parties: &TaskParties) -> Result<Option<(TaskStatus, u64)>, StatusError> {
        let delegator_part = self.part(parties, &parties.delegator_key()).await?;
        let executor_part = self.part(parties, &parties.executor_key()).await?;
        let revision = [&delegator_part, &executor_part]
            .into_iter()
            .flatten()
            .map(|(_, revision)| *revision)
            .max()
            .unwrap_or_default();
        Ok(merge(delegator_part.map(|(s, _)| s), executor_part.map(|(s, _)| s)).map(|s| (s, revision)))
    }

    /// One part, if it is about this task between these parties.
    async fn part(&self, parties: &TaskParties, key: &str) -> Result<Option<(TaskStatus, u64)>, StatusError> {
        let part: Option<(TaskStatus, u64)> = cas::read(&self.kv, key).await?;
        Ok(part.filter(|(status, _)| parties.names(status)))
    }

    /// Records a task as queued: the delegator's part, before publishing it.
    pub async fn queue(&self, status: &TaskStatus) -> Result<(), StatusError> {
        let parties = TaskParties::of(status);
        let created = cas::update(
            &self.kv,
            &parties.delegator_key(),
            |current: Option<TaskStatus>| match current {
                None => Step::Write(status.clone(), true),
                // Our own entry, written by an attempt whose answer was lost.
                Some(existing) if existing == *status => Step::Done(true),
                Some(_) => Step::Done(false),
            },
        )
        .await?;
        if created.answer {
            Ok(())
        } else {
            Err(StatusError::TaskIdInUse(status.task_id.clone()))
        }
    }

    /// How the delegator's part of the task ended it, if it did (cancelled, timed out).
    async fn ended_by_delegator(&self, parties: &TaskParties) -> Result<Option<TaskState>, StatusError> {
        let part = self.part(parties, &parties.delegator_key()).await?;
        Ok(part.map(|(status, _)| status.state).filter(|state| state.is_terminal()))
    }

    /// Claims the task of `template` (the executor's part, built from the signed task) for
    /// the message at `stream_sequence`.
    pub async fn claim(&self, template: &TaskStatus, stream_sequence: u64) -> Result<Claim, StatusError> {
        let parties = TaskParties::of(template);
        if let Some(ended) = self.ended_by_delegator(&parties).await? {
            return self.claim_ended(&parties, stream_sequence, ended).await;
        }
        let same_message = |status: &TaskStatus| status.stream_sequence == Some(stream_sequence);
        let updated = cas::update(&self.kv, &parties.executor_key(), |current: Option<TaskStatus>| {
            let mut running = template.clone();
            running.state = TaskState::Running;
            running.stream_sequence = Some(stream_sequence);
            running.updated_at = Timestamp::now();
            let Some(status) = current else {
                return Step::Write(running, ClaimStep::Run { redelivered: false });
            };
            match status.state {
                TaskState::Running if same_message(&status) => {
                    Step::Write(running, ClaimStep::Run { redelivered: true })
                }
                state if same_message(&status) => Step::Done(ClaimStep::Stop(Claim::AlreadyFinished(state))),
                state => Step::Done(ClaimStep::Stop(Claim::Replay(state))),
            }
        })
        .await?;
        let claim = match (updated.answer, updated.revision) {
            (ClaimStep::Stop(claim), _) => return Ok(claim),
            (ClaimStep::Run { redelivered: true }, Some(revision)) => Claim::Redelivered(revision),
            (ClaimStep::Run { .. }, revision) => {
                debug_assert!(revision.is_some(), "a claim that runs was written");
                Claim::Claimed(revision.unwrap_or_default())
            }
        };
        // A cancel marked between the first look and the claim: the abort it sent may have
        // come before this run could be stopped, so look once more.
        if self.ended_by_delegator(&parties).await? == Some(TaskState::Cancelled) {
            return Ok(Claim::Cancelled);
        }
        Ok(claim)
    }

    /// The claim of a task its delegator ended (`ended`): a replay or a finished run still
    /// says so; otherwise it does not run (cancelled: acknowledged as such; a delegator that
    /// gave up waiting, timed out: refused like a replay).
    async fn claim_ended(
        &self,
        parties: &TaskParties,
        stream_sequence: u64,
        ended: TaskState,
    ) -> Result<Claim, StatusError> {
        Ok(match self.part(parties, &parties.executor_key()).await? {
            // A part ended without a claim (the cancel was found first) names no message.
            Some((status, _)) if status.stream_sequence.is_some_and(|s| s != stream_sequence) => {
                Claim::Replay(status.state)
            }
            Some((status, _)) if status.state.is_terminal() => Claim::AlreadyFinished(status.state),
            _ if ended == TaskState::Cancelled => Claim::Cancelled,
            _ => Claim::Replay(ended),
        })
    }

    /// Like [`TaskBoard::finish`], first trying the executor's part as this worker last
    /// wrote it (one write instead of a read and a write).
    pub async fn finish_from(
        &self,
        mut known: TaskStatus,
        revision: u64,
        state: TaskState,
        quality: Option<f64>,
        atp_consumed: Option<f64>,
        reason: &str,
    ) -> Result<(), StatusError> {
        known.state = state;
        known.quality = quality;
        known.atp_consumed = atp_consumed;
        known.reason = reason.to_owned();
        known.updated_at = Timestamp::now();
        let key = TaskParties::of(&known).executor_key();
        if cas::write_at(&self.kv, &key, &known, revision).await?.is_some() {
            return Ok(());
        }
        self.finish(known, state, quality, atp_consumed, reason).await
    }

    /// Ends the executor's part of the task of `template` (built from the signed task) in a
    /// terminal `state`; a part already ended keeps its first ending.
    pub async fn finish(
        &self,
        template: TaskStatus,
        state: TaskState,
        quality: Option<f64>,
        atp_consumed: Option<f64>,
        reason: &str,
    ) -> Result<(), StatusError> {
        let key = TaskParties::of(&template).executor_key();
        cas::update(&self.kv, &key, |current: Option<TaskStatus>| {
            let mut status = match current {
                Some(status) if status.state.is_terminal() => return Step::Done(()),
                Some(status) => status,
                None => template.clone(),
            };
            status.state = state;
            status.quality = quality;
            status.atp_consumed = atp_consumed;
            status.reason = reason.to_owned();
            status.updated_at = Timestamp::now();
            Step::Write(status, ())
        })
        .await?;
        Ok(())
    }

    /// Marks the task's settlement as recorded by its delegator (the caller); true for the
    /// one caller that did it (so reputation counts each task once however many processes
    /// settle it).
    pub async fn mark_settled(&self, task_id: &TaskId, delegator: &str) -> Result<bool, StatusError> {
        let key = subjects::task_delegator_part(task_id.as_str(), delegator);
        let Some(base) = self.delegator_base(task_id, &key).await? else {
            return Ok(false);
        };
        let updated = cas::update(&self.kv, &key, |current: Option<TaskStatus>| match current {
            None => Step::Write(
                TaskStatus {
                    settled: true,
                    ..base.clone()
                },
                true,
            ),
            Some(mut status) if !status.settled => {
                status.settled = true;
                Step::Write(status, true)
            }
            _ => Step::Done(false),
        })
        .await?;
        Ok(updated.answer)
    }

    /// The delegator's part at `key`, or for a task published without one (by hand), its
    /// status as the parties its lock names left it: what the delegator's part starts from.
    async fn delegator_base(&self, task_id: &TaskId, key: &str) -> Result<Option<TaskStatus>, StatusError> {
        if let Some((part, _)) = cas::read::<TaskStatus>(&self.kv, key).await? {
            return Ok(Some(part));
        }
        let merged = self.get(task_id).await?.map(|(status, _)| TaskStatus {
            // The executor's ending stays in its own part; the delegator's part starts queued.
            state: TaskState::Queued,
            reason: String::new(),
            ..status
        });
        Ok(merged.filter(|status| subjects::task_delegator_part(task_id.as_str(), status.delegator.platform()) == key))
    }

    /// Ends `delegator`'s part of its task in `state` (it gave up waiting), unless its part
    /// already ended; the executor's ending, if it comes, still replaces it.
    pub async fn end_delegation(
        &self,
        task_id: &TaskId,
        delegator: &str,
        state: TaskState,
        reason: &str,
    ) -> Result<(), StatusError> {
        debug_assert!(state.is_terminal(), "a delegation ends in a terminal state");
        let key = subjects::task_delegator_part(task_id.as_str(), delegator);
        cas::update(&self.kv, &key, |current: Option<TaskStatus>| match current {
            Some(mut status) if !status.state.is_terminal() => {
                status.state = state;
                status.reason = reason.to_owned();
                status.updated_at = Timestamp::now();
                Step::Write(status, ())
            }
            _ => Step::Done(()),
        })
        .await?;
        Ok(())
    }

    /// Marks a queued or running task of `delegator` (the caller: only it may write its part)
    /// cancelled, unless its executor already ended it.
    pub async fn cancel(
        &self,
        task_id: &TaskId,
        delegator: &str,
        reason: &str,
    ) -> Result<(CancelResult, Option<TaskStatus>), StatusError> {
        let key = subjects::task_delegator_part(task_id.as_str(), delegator);
        let Some(queued) = self.delegator_base(task_id, &key).await? else {
            return Ok((CancelResult::Unknown, None));
        };
        let parties = TaskParties::of(&queued);
        if parties.delegator != delegator || parties.task_id != *task_id {
            return Ok((CancelResult::Unknown, None));
        }
        let executor_part = self.part(&parties, &parties.executor_key()).await?.map(|(s, _)| s);
        if let Some(ended) = executor_part.as_ref().filter(|s| s.state.is_terminal()) {
            return Ok((CancelResult::AlreadyEnded(ended.state), Some(ended.clone())));
        }
        let before = executor_part.as_ref().map_or(queued.state, |s| s.state);
        let updated = cas::update(&self.kv, &key, |current: Option<TaskStatus>| {
            let mut status = current.unwrap_or_else(|| queued.clone());
            if status.state.is_terminal() {
                return Step::Done(CancelResult::AlreadyEnded(status.state));
            }
            status.state = TaskState::Cancelled;
            status.reason = reason.to_owned();
            status.updated_at = Timestamp::now();
            Step::Write(status, CancelResult::Cancelled(before))
        })
        .await?;
        let merged = self.get_between(&parties).await?.map(|(s, _)| s);
        Ok((updated.answer, merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id: "t-merge".parse().expect("id"),
            delegator: "lct:web4:agent:dp@Thor#consciousness".parse().expect("lct"),
            executor: "lct:web4:agent:dp@Legion#consciousness".parse().expect("lct"),
            operation: "execution".into(),
            state,
            updated_at: Timestamp::from_secs(1),
            stream_sequence: None,
            worker: None,
            quality: None,
            atp_consumed: None,
            reason: String::new(),
            settled: false,
        }
    }

    #[test]
    fn the_executors_ending_replaces_the_delegators_cancel_but_not_the_reverse() {
        let cancelled = part(TaskState::Cancelled);
        let merged = |d: TaskState, e: TaskState| merge(Some(part(d)), Some(part(e))).map(|s| s.state);
        assert_eq!(
            merged(TaskState::Cancelled, TaskState::Running),
            Some(TaskState::Cancelled)
        );
        assert_eq!(
            merged(TaskState::Cancelled, TaskState::Completed),
            Some(TaskState::Completed)
        );
        assert_eq!(merged(TaskState::Queued, TaskState::Running), Some(TaskState::Running));
        assert_eq!(
            merge(Some(cancelled), None).map(|s| s.state),
            Some(TaskState::Cancelled)
        );
        assert_eq!(merge(None, None), None);
    }

    #[test]
    fn the_delegators_settled_mark_survives_the_merge() {
        let mut settled = part(TaskState::Queued);
        settled.settled = true;
        let merged = merge(Some(settled), Some(part(TaskState::Completed))).expect("merged");
        assert!(merged.settled);
    }
}
