//! The platform registry in the `sage_platforms` bucket: what each platform executes, whether
//! it says it may delegate, its key, its load, and a heartbeat that says it is alive. Each
//! platform's workers write its own record, signed with the platform's key; delegators read
//! every record to choose a target. A record that does not verify (no signature, a key that
//! does not chain to the root, another platform's key) or that describes another platform is
//! ignored with a warning: nobody can speak for a platform in the registry.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::identity::directory::KeyDirectory;
use crate::nats::cas::{self, CasError};
use crate::nats::subjects;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{EnvelopeError, Signable, Signer};

/// How often a worker refreshes its platform's record.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A platform whose heartbeat is older than this is not healthy. It outlasts a leader
/// election of the replicated registry bucket, during which no heartbeat can be written: a
/// follower waits 4-9 s for a lost leader before it campaigns (`minElectionTimeoutDefault`..
/// `maxElectionTimeoutDefault` in nats-server's `server/raft.go`), then a put that was waiting
/// (5 s request timeout) fails and the next tick writes. With 6 s, a cluster node's loss made
/// every platform look dead to placement for a few seconds.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(20);

/// One platform's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlatformRecord {
    pub platform: String,
    /// Task types it executes (`consciousness`, `consciousness.sage`).
    pub capabilities: Vec<String>,
    /// Operations it executes for others.
    pub operations: Vec<String>,
    /// Whether it says it holds `federation:delegate`: a claim, shown to people. Workers read
    /// the grant from the root-endorsed record of the key that signed a task instead.
    pub delegate: bool,
    /// Its current signing key.
    pub key_id: String,
    /// Tasks it is executing now, over all its worker processes that reported.
    pub load: u32,
    /// Tasks it executes at once, at most.
    pub capacity: u32,
    /// Unix seconds of the last heartbeat.
    pub heartbeat_at: Timestamp,
}

impl Signable for PlatformRecord {
    const DOMAIN: &'static [u8] = b"sagefed/platform-record/v1\0";
    const KIND: &'static str = "platform_record";

    fn signer_platform(&self) -> &str {
        &self.platform
    }

    fn created_at(&self) -> Timestamp {
        self.heartbeat_at
    }

    fn expires_at(&self) -> Option<Timestamp> {
        None
    }

    fn validate(&self) -> Result<(), String> {
        crate::protocol::lct::check_platform(&self.platform).map_err(|e| e.to_string())
    }
}

impl PlatformRecord {
    pub fn is_healthy(&self, now: Timestamp) -> bool {
        now.duration_since(self.heartbeat_at) <= HEARTBEAT_STALE
    }

    /// Load as a fraction of capacity.
    pub fn utilisation(&self) -> f64 {
        f64::from(self.load) / f64::from(self.capacity.max(1))
    }
}

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("platform registry sage_platforms: {0}")]
    Nats(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Kv(#[from] CasError),
}

fn nats(e: impl std::error::Error + Send + Sync + 'static) -> RegistryError {
    RegistryError::Nats(Box::new(e))
}

/// The `sage_platforms` bucket, read through the key directory.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
    keys: Arc<KeyDirectory>,
}

impl Registry {
    /// Opens the bucket; records are verified with `keys`.
    pub async fn open(js: &jetstream::Context, keys: Arc<KeyDirectory>) -> Result<Self, RegistryError> {
        let kv = js.get_key_value(subjects::PLATFORMS_BUCKET).await.map_err(nats)?;
        Ok(Self { kv, keys })
    }

    /// Records (or refreshes) a platform, as the seed's `register_platform`, signed by
    /// `signer` (the platform itself).
    pub async fn register_platform(&self, signer: &Signer, record: &PlatformRecord) -> Result<(), RegistryError> {
        debug_assert_eq!(signer.platform(), record.platform, "a platform registers itself");
        let value = signer.sign(record).map_err(nats)?;
        self.kv.put(&record.platform, value).await.map_err(nats)?;
        Ok(())
    }

    /// `platform`'s record; an error naming the key when it is not an envelope at all. A
    /// record that does not verify as signed by `platform`, or that describes another
    /// platform (each identity may write only its own key, but may claim anything in it), is
    /// ignored with a warning.
    pub async fn get(&self, platform: &str) -> Result<Option<PlatformRecord>, RegistryError> {
        let Some(value) = self.kv.get(platform).await.map_err(nats)? else {
            return Ok(None);
        };
        match self.keys.verify::<PlatformRecord>(&value).await {
            Ok(record) if record.platform == platform => Ok(Some(record.into_message())),
            Ok(record) => {
                tracing::warn!(key = platform, claims = %record.platform, "ignoring a registry record about another platform");
                Ok(None)
            }
            // Not even JSON: a broken value to repair, named as such.
            Err(EnvelopeError::Malformed(_)) if serde_json::from_slice::<serde_json::Value>(&value).is_err() => {
                cas::decode::<serde_json::Value>(&self.kv, platform, &value)?;
                Ok(None)
            }
            // JSON without a valid signature (an unsigned claim, a forged or foreign key).
            Err(e) => {
                tracing::warn!(key = platform, error = %e, "ignoring a registry record that does not verify");
                Ok(None)
            }
        }
    }

    /// Every registered platform. A record that does not decode is left out with a warning
    /// naming its key: one bad record must not stop placement among the others.
    pub async fn all(&self) -> Result<Vec<PlatformRecord>, RegistryError> {
        let mut keys = self.kv.keys().await.map_err(nats)?;
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(nats)?;
            match self.get(&key).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(RegistryError::Kv(corrupt @ CasError::Corrupt { .. })) => {
                    tracing::warn!(error = %corrupt, "leaving a platform record out of placement");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(records)
    }
}
