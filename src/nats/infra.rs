//! The streams and KV buckets listed in `subjects.md`, created idempotently.
//!
//! `sagefed up`, the ledger service and the tests call [`ensure`]; running it twice changes
//! nothing. Consumers are created by the processes that own them (workers, settlers).

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::nats::subjects;
use crate::protocol::limits::{ENVELOPE_BYTES_MAX, TASK_TIMEOUT_SECONDS_MAX};

/// Bytes of headers we allow on top of an envelope in a stream message.
const HEADERS_BYTES_MAX: usize = 4 * 1024;
/// Largest value in a KV bucket: one account, lock or registry record.
pub const KV_VALUE_BYTES_MAX: i32 = 64 * 1024;
/// Bytes of a settle journal entry around the signed proof it keeps.
const JOURNAL_BYTES_BESIDE_PROOF: usize = 8 * 1024;
/// Largest value in the ledger bucket: a commit's journal entry keeps the executor's whole
/// signed proof (at most an envelope), so a redelivered task can republish it.
pub const LEDGER_VALUE_BYTES_MAX: i32 = (ENVELOPE_BYTES_MAX + JOURNAL_BYTES_BESIDE_PROOF) as i32;
/// Tasks waiting in the work queue, over all platforms, before publishers are refused.
pub const TASKS_QUEUED_MAX: i64 = 1_000_000;
/// Bytes of tasks waiting in the work queue.
pub const TASKS_QUEUED_BYTES_MAX: i64 = 512 * 1024 * 1024;
/// How long a task id deduplicates a republished task (`Nats-Msg-Id`).
pub const TASK_DEDUPE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long proofs are kept for delegators that were away.
pub const PROOFS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long dead letters are kept for an operator to look at.
pub const DEAD_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a finished task's status record is kept.
pub const TASK_STATUS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a delegator's signed task whose lock names witness terms is kept: longer than
/// any such lock can stay unsettled (queue wait, the longest timeout and the settle grace to
/// the lock's expiry, then the longest hold: `delegation::client` asserts it), so the
/// bucket's age limit is its only clean-up.
pub const WITNESSED_TASK_MAX_AGE: Duration = Duration::from_secs(TASK_TIMEOUT_SECONDS_MAX + 30 * 60);

/// One stream or bucket as [`ensure`] found or made it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resource {
    pub kind: &'static str,
    pub name: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up {kind} {name}: {why}")]
pub struct InfraError {
    kind: &'static str,
    name: String,
    why: String,
}

fn stream_configs(replicas: usize) -> Vec<stream::Config> {
    let max_message_size = i32::try_from(ENVELOPE_BYTES_MAX + HEADERS_BYTES_MAX).unwrap_or(i32::MAX);
    vec![
        stream::Config {
            name: subjects::TASKS_STREAM.to_owned(),
            description: Some("Signed delegated tasks; per target platform a normal and a critical lane".to_owned()),
            subjects: vec![
                subjects::TASKS_SUBJECTS.to_owned(),
                subjects::CRITICAL_TASKS_SUBJECTS.to_owned(),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_messages: TASKS_QUEUED_MAX,
            max_bytes: TASKS_QUEUED_BYTES_MAX,
            max_message_size,
            discard: stream::DiscardPolicy::New,
            duplicate_window: TASK_DEDUPE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects::PROOFS_STREAM.to_owned(),
            description: Some("Signed execution proofs, addressed to the delegator".to_owned()),
            subjects: vec![subjects::PROOFS_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: PROOFS_MAX_AGE,
            max_messages_per_subject: 1,
            // Direct gets carry the subject in the API subject: see `subjects::js_direct_get_subject`.
            allow_direct: true,
            max_message_size,
            duplicate_window: TASK_DEDUPE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: subjects::DEAD_STREAM.to_owned(),
            description: Some("Tasks that exhausted their deliveries or could not be read".to_owned()),
            subjects: vec![subjects::DEAD_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: DEAD_MAX_AGE,
            max_message_size: max_message_size.saturating_mul(2),
            num_replicas: replicas,
            ..Default::default()
        },
    ]
}

fn bucket_configs(replicas: usize) -> Vec<(kv::Config, bool)> {
    let bucket = |name: &str, description: &str, history: i64, max_age: Duration| kv::Config {
        bucket: name.to_owned(),
        description: description.to_owned(),
        history,
        max_age,
        max_value_size: KV_VALUE_BYTES_MAX,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    vec![
        // The ledger's bucket is the only one written with atomic batches.
        (
            kv::Config {
                max_value_size: LEDGER_VALUE_BYTES_MAX,
                ..bucket(
                    subjects::LEDGER_BUCKET,
                    "ATP ledger: accounts, locks, journal, grants, supply",
                    1,
                    Duration::ZERO,
                )
            },
            true,
        ),
        (
            bucket(
                subjects::KEYS_BUCKET,
                "Platform public keys with validity windows",
                5,
                Duration::ZERO,
            ),
            false,
        ),
        (
            bucket(
                subjects::PLATFORMS_BUCKET,
                "Platform registry: capabilities, heartbeat, load",
                1,
                Duration::ZERO,
            ),
            false,
        ),
        (
            bucket(subjects::REPUTATION_BUCKET, "Executor reputation", 1, Duration::ZERO),
            false,
        ),
        (
            bucket(subjects::TASKS_BUCKET, "Task status", 1, TASK_STATUS_MAX_AGE),
            false,
        ),
        // Read back by direct gets (every bucket allows them) that name the key, so that
        // permissions confine each delegator to its own tasks; a task is at most an envelope.
        (
            kv::Config {
                max_value_size: i32::try_from(ENVELOPE_BYTES_MAX).unwrap_or(i32::MAX),
                ..bucket(
                    subjects::WITNESSED_TASKS_BUCKET,
                    "Delegators' signed tasks held for a witness, kept until their locks settle",
                    1,
                    WITNESSED_TASK_MAX_AGE,
                )
            },
            false,
        ),
    ]
}

/// Creates every stream and bucket that does not exist yet and turns on atomic batches for
/// the ledger bucket. `replicas` is 1 on one server, 3 on a cluster.
pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<Vec<Resource>, InfraError> {
    let mut made = Vec::new();
    for config in stream_configs(replicas) {
        let name = config.name.clone();
        let err = |why: String| InfraError {
            kind: "stream",
            name: name.clone(),
            why,
        };
        let wanted = config.subjects.clone();
        let mut stream = js.get_or_create_stream(config).await.map_err(|e| err(e.to_string()))?;
        if stream.cached_info().config.subjects != wanted {
            // A stream from an earlier release captures the old subjects (proofs gained the
            // executor's name): capture the current ones, or publishes would find no stream.
            let mut updated = stream.cached_info().config.clone();
            updated.subjects = wanted;
            js.update_stream(updated)
                .await
                .map_err(|e| err(format!("updating its subjects: {e}")))?;
            stream = js.get_stream(&name).await.map_err(|e| err(e.to_string()))?;
        }
        let info = stream.cached_info();
        made.push(Resource {
            kind: "stream",
            name: name.clone(),
            detail: format!(
                "{} ({:?}, {} msgs)",
                info.config.subjects.join(" "),
                info.config.retention,
                info.state.messages
            ),
        });
    }
    for (config, atomic) in bucket_configs(replicas) {
        let name = config.bucket.clone();
        let value_bytes_max = config.max_value_size;
        let err = |why: String| InfraError {
            kind: "kv bucket",
            name: name.clone(),
            why,
        };
        if js.get_key_value(&name).await.is_err() {
            js.create_key_value(config).await.map_err(|e| err(e.to_string()))?;
        }
        let stream_name = subjects::kv_stream(&name);
        let mut stream = js.get_stream(&stream_name).await.map_err(|e| err(e.to_string()))?;
        let info = stream.info().await.map_err(|e| err(e.to_string()))?.clone();
        // A bucket made by an older version gets the settings this one needs.
        let enable_atomic = atomic && !info.config.allow_atomic_publish;
        let raise_value_size = info.config.max_message_size < value_bytes_max;
        if enable_atomic || raise_value_size {
            let mut config = info.config.clone();
            config.allow_atomic_publish |= atomic;
            config.max_message_size = config.max_message_size.max(value_bytes_max);
            js.update_stream(config)
                .await
                .map_err(|e| err(format!("enabling atomic batches or raising the value size: {e}")))?;
        }
        made.push(Resource {
            kind: "kv bucket",
            name: name.clone(),
            detail: format!(
                "history {}, {} keys{}",
                info.config.max_messages_per_subject,
                info.state.messages,
                if atomic { ", atomic batches" } else { "" }
            ),
        });
    }
    Ok(made)
}
