//! Each task's status in the `sage_tasks` bucket: queued by the delegator, claimed by one
//! worker (compare-and-swap, with the stream sequence of the message it claimed), finished or
//! cancelled. The claim is how a worker tells a redelivery (same message: run it again) from
//! a replay (the same task published again: refuse it).

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::nats::subjects;
use crate::protocol::clock::now_seconds;
use crate::protocol::lct::Lct;
use crate::protocol::task::TaskId;

/// Compare-and-swap attempts on one status record before giving up.
const CAS_ATTEMPTS_MAX: u32 = 16;

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

#[derive(Debug, thiserror::Error)]
#[error("task status bucket sage_tasks: {0}")]
pub struct StatusError(String);

fn err(e: impl std::fmt::Display) -> StatusError {
    StatusError(e.to_string())
}

/// The `sage_tasks` bucket.
#[derive(Clone)]
pub struct TaskBoard {
    kv: kv::Store,
}

impl TaskBoard {
    pub async fn open(js: &jetstream::Context) -> Result<Self, StatusError> {
        Ok(Self {
            kv: js.get_key_value(subjects::TASKS_BUCKET).await.map_err(err)?,
        })
    }

    /// The status of `task_id` and its revision.
    pub async fn get(&self, task_id: &TaskId) -> Result<Option<(TaskStatus, u64)>, StatusError> {
        let Some(entry) = self.kv.entry(task_id.as_str()).await.map_err(err)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let status = serde_json::from_slice(&entry.value).map_err(err)?;
        Ok(Some((status, entry.revision)))
    }

    /// Writes `status` expecting `revision` (`None`: must not exist). `None` back when someone
    /// else wrote first; the new revision otherwise.
    async fn write(&self, status: &TaskStatus, revision: Option<u64>) -> Result<Option<u64>, StatusError> {
        let value = Bytes::from(serde_json::to_vec(status).map_err(err)?);
        let key = status.task_id.as_str();
        // Someone else writing first is not an error: the caller reads again.
        match revision {
            None => match self.kv.create(key, value).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(err(e)),
            },
            Some(revision) => match self.kv.update(key, value, revision).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(err(e)),
            },
        }
    }

    /// Records a task as queued (the delegator, before publishing it).
    pub async fn queue(&self, status: &TaskStatus) -> Result<(), StatusError> {
        if self.write(status, None).await?.is_some() {
            Ok(())
        } else {
            Err(StatusError(format!("task id {} is already in use", status.task_id)))
        }
    }

    /// Claims `task_id` for the message at `stream_sequence`.
    pub async fn claim(&self, template: &TaskStatus, stream_sequence: u64) -> Result<Claim, StatusError> {
        for _ in 0..CAS_ATTEMPTS_MAX {
            let current = self.get(&template.task_id).await?;
            let mut running = template.clone();
            running.state = TaskState::Running;
            running.stream_sequence = Some(stream_sequence);
            running.updated_at = now_seconds();
            let (revision, redelivered) = match current {
                None => (None, false),
                Some((status, revision)) => match status.state {
                    TaskState::Queued => (Some(revision), false),
                    TaskState::Cancelled => return Ok(Claim::Cancelled),
                    TaskState::Running if status.stream_sequence == Some(stream_sequence) => (Some(revision), true),
                    state if status.stream_sequence == Some(stream_sequence) => {
                        return Ok(Claim::AlreadyFinished(state));
                    }
                    state => return Ok(Claim::Replay(state)),
                },
            };
            if let Some(written) = self.write(&running, revision).await? {
                return Ok(if redelivered {
                    Claim::Redelivered(written)
                } else {
                    Claim::Claimed(written)
                });
            }
        }
        Err(StatusError(format!(
            "could not claim task {} (contention)",
            template.task_id
        )))
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
        if self.write(&known, Some(revision)).await?.is_some() {
            return Ok(());
        }
        self.finish(&known.task_id, state, quality, atp_consumed, reason).await
    }

    /// Moves a running task to a terminal `state`. A task already ended (cancelled while it
    /// ran) keeps its first ending.
    pub async fn finish(
        &self,
        task_id: &TaskId,
        state: TaskState,
        quality: Option<f64>,
        atp_consumed: Option<f64>,
        reason: &str,
    ) -> Result<(), StatusError> {
        for _ in 0..CAS_ATTEMPTS_MAX {
            let Some((mut status, revision)) = self.get(task_id).await? else {
                return Ok(());
            };
            if status.state.is_terminal() {
                return Ok(());
            }
            status.state = state;
            status.quality = quality;
            status.atp_consumed = atp_consumed;
            status.reason = reason.to_owned();
            status.updated_at = now_seconds();
            if self.write(&status, Some(revision)).await?.is_some() {
                return Ok(());
            }
        }
        Err(StatusError(format!("could not finish task {task_id} (contention)")))
    }

    /// Marks the task's settlement as recorded by the delegator side; true for the one caller
    /// that did it (so reputation counts each task once however many processes settle it).
    pub async fn mark_settled(&self, task_id: &TaskId) -> Result<bool, StatusError> {
        for _ in 0..CAS_ATTEMPTS_MAX {
            let Some((mut status, revision)) = self.get(task_id).await? else {
                return Ok(false);
            };
            if status.settled {
                return Ok(false);
            }
            status.settled = true;
            if self.write(&status, Some(revision)).await?.is_some() {
                return Ok(true);
            }
        }
        Err(StatusError(format!(
            "could not mark task {task_id} settled (contention)"
        )))
    }

    /// Marks a queued or running task cancelled.
    pub async fn cancel(
        &self,
        task_id: &TaskId,
        reason: &str,
    ) -> Result<(CancelResult, Option<TaskStatus>), StatusError> {
        for _ in 0..CAS_ATTEMPTS_MAX {
            let Some((mut status, revision)) = self.get(task_id).await? else {
                return Ok((CancelResult::Unknown, None));
            };
            if status.state.is_terminal() {
                return Ok((CancelResult::AlreadyEnded(status.state), Some(status)));
            }
            let before = status.state;
            status.state = TaskState::Cancelled;
            status.reason = reason.to_owned();
            status.updated_at = now_seconds();
            if self.write(&status, Some(revision)).await?.is_some() {
                return Ok((CancelResult::Cancelled(before), Some(status)));
            }
        }
        Err(StatusError(format!("could not cancel task {task_id} (contention)")))
    }
}
