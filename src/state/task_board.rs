//! Each task's status in the `sage_tasks` bucket: queued by the delegator, claimed by one
//! worker (compare-and-swap, with the stream sequence of the message it claimed), finished or
//! cancelled. The claim is how a worker tells a redelivery (same message: run it again) from
//! a replay (the same task published again: refuse it).

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use crate::nats::cas::{self, CasError, Step};
use crate::nats::subjects;
use crate::protocol::clock::now_seconds;
use crate::protocol::lct::Lct;
use crate::protocol::task::TaskId;

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
    pub updated_at: f64,
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
    #[error("task id {0} is already in use")]
    TaskIdInUse(TaskId),
}

/// The `sage_tasks` bucket.
#[derive(Clone)]
pub struct TaskBoard {
    kv: kv::Store,
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
        Ok(Self { kv })
    }

    /// The status of `task_id` and its revision.
    pub async fn get(&self, task_id: &TaskId) -> Result<Option<(TaskStatus, u64)>, StatusError> {
        Ok(cas::read(&self.kv, task_id.as_str()).await?)
    }

    /// Records a task as queued (the delegator, before publishing it).
    pub async fn queue(&self, status: &TaskStatus) -> Result<(), StatusError> {
        let created = cas::update(
            &self.kv,
            status.task_id.as_str(),
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

    /// Claims `task_id` for the message at `stream_sequence`.
    pub async fn claim(&self, template: &TaskStatus, stream_sequence: u64) -> Result<Claim, StatusError> {
        let same_message = |status: &TaskStatus| status.stream_sequence == Some(stream_sequence);
        let updated = cas::update(&self.kv, template.task_id.as_str(), |current: Option<TaskStatus>| {
            let mut running = template.clone();
            running.state = TaskState::Running;
            running.stream_sequence = Some(stream_sequence);
            running.updated_at = now_seconds();
            let Some(status) = current else {
                return Step::Write(running, ClaimStep::Run { redelivered: false });
            };
            match status.state {
                TaskState::Queued => Step::Write(running, ClaimStep::Run { redelivered: false }),
                TaskState::Cancelled => Step::Done(ClaimStep::Stop(Claim::Cancelled)),
                TaskState::Running if same_message(&status) => {
                    Step::Write(running, ClaimStep::Run { redelivered: true })
                }
                state if same_message(&status) => Step::Done(ClaimStep::Stop(Claim::AlreadyFinished(state))),
                state => Step::Done(ClaimStep::Stop(Claim::Replay(state))),
            }
        })
        .await?;
        Ok(match (updated.answer, updated.revision) {
            (ClaimStep::Stop(claim), _) => claim,
            (ClaimStep::Run { redelivered: true }, Some(revision)) => Claim::Redelivered(revision),
            (ClaimStep::Run { .. }, revision) => {
                debug_assert!(revision.is_some(), "a claim that runs was written");
                Claim::Claimed(revision.unwrap_or_default())
            }
        })
    }

    /// Like [`TaskBoard::finish`], first trying the record as this worker last wrote it (one
    /// write instead of a read and a write).
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
        known.updated_at = now_seconds();
        if cas::write_at(&self.kv, known.task_id.as_str(), &known, revision)
            .await?
            .is_some()
        {
            return Ok(());
        }
        self.finish(&known.task_id, state, quality, atp_consumed, reason).await
    }

    /// Moves a running task to a terminal `state`. A task already ended keeps its first
    /// ending; a delegator's cancel is only a request until the executor ends the task, so
    /// the executor's ending replaces it (the board then says what the ledger says).
    pub async fn finish(
        &self,
        task_id: &TaskId,
        state: TaskState,
        quality: Option<f64>,
        atp_consumed: Option<f64>,
        reason: &str,
    ) -> Result<(), StatusError> {
        cas::update(
            &self.kv,
            task_id.as_str(),
            |current: Option<TaskStatus>| match current {
                Some(mut status) if !status.state.is_terminal() || status.state == TaskState::Cancelled => {
                    status.state = state;
                    status.quality = quality;
                    status.atp_consumed = atp_consumed;
                    status.reason = reason.to_owned();
                    status.updated_at = now_seconds();
                    Step::Write(status, ())
                }
                _ => Step::Done(()),
            },
        )
        .await?;
        Ok(())
    }

    /// Marks the task's settlement as recorded by the delegator side; true for the one caller
    /// that did it (so reputation counts each task once however many processes settle it).
    pub async fn mark_settled(&self, task_id: &TaskId) -> Result<bool, StatusError> {
        let updated = cas::update(
            &self.kv,
            task_id.as_str(),
            |current: Option<TaskStatus>| match current {
                Some(mut status) if !status.settled => {
                    status.settled = true;
                    Step::Write(status, true)
                }
                _ => Step::Done(false),
            },
        )
        .await?;
        Ok(updated.answer)
    }

    /// Marks a queued or running task cancelled.
    pub async fn cancel(
        &self,
        task_id: &TaskId,
        reason: &str,
    ) -> Result<(CancelResult, Option<TaskStatus>), StatusError> {
        let updated = cas::update(&self.kv, task_id.as_str(), |current: Option<TaskStatus>| {
            let Some(mut status) = current else {
                return Step::Done((CancelResult::Unknown, None));
            };
            if status.state.is_terminal() {
                return Step::Done((CancelResult::AlreadyEnded(status.state), Some(status)));
            }
            let before = status.state;
            status.state = TaskState::Cancelled;
            status.reason = reason.to_owned();
            status.updated_at = now_seconds();
            Step::Write(status.clone(), (CancelResult::Cancelled(before), Some(status)))
        })
        .await?;
        Ok(updated.answer)
    }
}
