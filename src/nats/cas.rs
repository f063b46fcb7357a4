//! One compare-and-swap update of a JSON record in a KV bucket: read the entry, let the caller
//! decide from the decoded record what to write (or not), write expecting the revision read,
//! and read again when another writer won. Every read-modify-write of a shared record (task
//! board, reputation, key directory) goes through [`update`], so none can lose a write.
//!
//! A value that does not decode is an error naming its key, never a default: writing over it
//! would hide the corruption, and reading it as empty would lie.

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Compare-and-swap attempts on one key before giving up on contention.
pub const CAS_ATTEMPTS_MAX: u32 = 16;

/// What to do with the record as read.
pub enum Step<T, R> {
    /// Write this record, then answer `R`.
    Write(T, R),
    /// Write nothing; answer `R`.
    Done(R),
}

/// The answer of an [`update`], and the revision written (`None` when nothing was).
#[derive(Debug)]
pub struct Updated<R> {
    pub answer: R,
    pub revision: Option<u64>,
}

/// Why an update failed. The bucket is as it was unless the kind says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    #[error("{bucket} key {key}: {source}")]
    Nats {
        bucket: String,
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{bucket} key {key} holds a record that does not decode ({source}); repair or delete it")]
    Corrupt {
        bucket: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{bucket} key {key}: other writers kept winning ({attempts} attempts); retry")]
    Contention { bucket: String, key: String, attempts: u32 },
}

impl CasError {
    fn nats(kv: &kv::Store, key: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        CasError::Nats {
            bucket: kv.name.clone(),
            key: key.to_owned(),
            source: Box::new(source),
        }
    }
}

/// Decodes the value stored under `key` of `kv`.
pub fn decode<T: DeserializeOwned>(kv: &kv::Store, key: &str, value: &[u8]) -> Result<T, CasError> {
    serde_json::from_slice(value).map_err(|source| CasError::Corrupt {
        bucket: kv.name.clone(),
        key: key.to_owned(),
        source,
    })
}

/// The record under `key` with its revision; `None` when the key is absent or deleted.
pub async fn read<T: DeserializeOwned>(kv: &kv::Store, key: &str) -> Result<Option<(T, u64)>, CasError> {
    match kv.entry(key).await.map_err(|e| CasError::nats(kv, key, e))? {
        Some(entry) if entry.operation == kv::Operation::Put => {
            Ok(Some((decode(kv, key, &entry.value)?, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// Reads `key`, asks `decide` what to write, and writes it expecting the revision read (or
/// that the key is absent), up to [`CAS_ATTEMPTS_MAX`] times. `decide` runs once per attempt
/// with the current record (`None`: absent or deleted), so it must not have side effects.
pub async fn update<T, R>(
    kv: &kv::Store,
    key: &str,
    mut decide: impl FnMut(Option<T>) -> Step<T, R>,
) -> Result<Updated<R>, CasError>
where
    T: Serialize + DeserializeOwned,
{
    for _ in 0..CAS_ATTEMPTS_MAX {
        let entry = kv.entry(key).await.map_err(|e| CasError::nats(kv, key, e))?;
        let (current, revision) = match &entry {
            Some(e) if e.operation == kv::Operation::Put => (Some(decode(kv, key, &e.value)?), Some(e.revision)),
            // A deleted key keeps a marker at its revision: write over the marker.
            Some(e) => (None, Some(e.revision)),
            None => (None, None),
        };
        let (record, answer) = match decide(current) {
            Step::Done(answer) => {
                return Ok(Updated { answer, revision: None });
            }
            Step::Write(record, answer) => (record, answer),
        };
        let value = Bytes::from(serde_json::to_vec(&record).map_err(|e| CasError::nats(kv, key, e))?);
        let written = match revision {
            Some(revision) => match kv.update(key, value, revision).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                Err(e) => return Err(CasError::nats(kv, key, e)),
            },
            None => match kv.create(key, value).await {
                Ok(revision) => Some(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                Err(e) => return Err(CasError::nats(kv, key, e)),
            },
        };
        if let Some(revision) = written {
            return Ok(Updated {
                answer,
                revision: Some(revision),
            });
        }
    }
    Err(CasError::Contention {
        bucket: kv.name.clone(),
        key: key.to_owned(),
        attempts: CAS_ATTEMPTS_MAX,
    })
}

/// Writes `record` under `key` if its revision is still `revision` (one attempt, for a
/// writer that knows the revision it last wrote). `None` back when another writer won.
pub async fn write_at<T: Serialize>(
    kv: &kv::Store,
    key: &str,
    record: &T,
    revision: u64,
) -> Result<Option<u64>, CasError> {
    let value = Bytes::from(serde_json::to_vec(record).map_err(|e| CasError::nats(kv, key, e))?);
    match kv.update(key, value, revision).await {
        Ok(revision) => Ok(Some(revision)),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(CasError::nats(kv, key, e)),
    }
}
