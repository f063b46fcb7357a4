//! A delegator's signed tasks whose locks name witness terms, kept where the delegator can
//! read them back after a restart (the `SAGE_TASKS` work queue deletes a task once its
//! executor acknowledges it, and the lock names only the task's digest). Without them a
//! delegator that restarted while its commit is held could not hand the task to the witness,
//! and the hold's expiry would pay an unchecked executor.
//!
//! Only the owning platform writes or reads its keys (server permissions). The bytes are
//! believed for nothing: the witness checks them against the lock's digest.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::nats::subjects;
use crate::protocol::task::TaskId;

/// Why a witnessed task could not be kept or read back.
#[derive(Debug, thiserror::Error)]
pub enum WitnessedTaskError {
    #[error("cannot open the witnessed-task bucket (run `sagefed up` or the ledger service, which create it): {0}")]
    Open(#[source] Box<async_nats::jetstream::context::KeyValueError>),
    #[error("cannot keep task {task_id} for its witness ({source}); retry in a moment")]
    Keep {
        task_id: TaskId,
        #[source]
        source: kv::PutError,
    },
    #[error("cannot read back task {task_id} for its witness ({source}); retry in a moment")]
    Read {
        task_id: TaskId,
        #[source]
        source: kv::EntryError,
    },
}

/// The bucket of witnessed tasks, as one delegator uses it.
#[derive(Clone)]
pub struct WitnessedTasks {
    kv: kv::Store,
    delegator: String,
}

impl WitnessedTasks {
    /// Opens the bucket for `delegator`'s own tasks.
    pub async fn open(js: &jetstream::Context, delegator: &str) -> Result<Self, WitnessedTaskError> {
        let kv = js
            .get_key_value(subjects::WITNESSED_TASKS_BUCKET)
            .await
            .map_err(|e| WitnessedTaskError::Open(Box::new(e)))?;
        Ok(Self {
            kv,
            delegator: delegator.to_owned(),
        })
    }

    /// Keeps the signed task `wire` of `task_id`; the bucket's age limit
    /// ([`crate::nats::infra::WITNESSED_TASK_MAX_AGE`]) removes it after any lock could settle.
    pub async fn keep(&self, task_id: &TaskId, wire: Bytes) -> Result<(), WitnessedTaskError> {
        self.kv
            .put(self.key(task_id), wire)
            .await
            .map(|_| ())
            .map_err(|source| WitnessedTaskError::Keep {
                task_id: task_id.clone(),
                source,
            })
    }

    /// The signed task kept for `task_id`, if any (gone after the age limit).
    pub async fn get(&self, task_id: &TaskId) -> Result<Option<Bytes>, WitnessedTaskError> {
        self.kv
            .get(self.key(task_id))
            .await
            .map_err(|source| WitnessedTaskError::Read {
                task_id: task_id.clone(),
                source,
            })
    }

    fn key(&self, task_id: &TaskId) -> String {
        subjects::witnessed_task_key(&self.delegator, task_id.as_str())
    }
}
