//! The platform registry in the `sage_platforms` bucket: what each platform executes, whether
//! it may delegate, its key, its load, and a heartbeat that says it is alive. Each platform's
//! workers write its own record; delegators read every record to choose a target.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::nats::subjects;

/// How often a worker refreshes its platform's record.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A platform whose heartbeat is older than this is not healthy.
pub const HEARTBEAT_STALE_SECONDS: f64 = 6.0;

/// One platform's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlatformRecord {
    pub platform: String,
    /// Task types it executes (`consciousness`, `consciousness.sage`).
    pub capabilities: Vec<String>,
    /// Operations it executes for others.
    pub operations: Vec<String>,
    /// Whether it holds `federation:delegate`.
    pub delegate: bool,
    /// Its current signing key.
    pub key_id: String,
    /// Tasks it is executing now, over all its worker processes that reported.
    pub load: u32,
    /// Tasks it executes at once, at most.
    pub capacity: u32,
    /// Unix seconds of the last heartbeat.
    pub heartbeat_at: f64,
}

impl PlatformRecord {
    pub fn is_healthy(&self, now: f64) -> bool {
        now - self.heartbeat_at <= HEARTBEAT_STALE_SECONDS
    }

    /// Load as a fraction of capacity.
    pub fn utilisation(&self) -> f64 {
        f64::from(self.load) / f64::from(self.capacity.max(1))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("platform registry sage_platforms: {0}")]
pub struct RegistryError(String);

/// The `sage_platforms` bucket.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
}

impl Registry {
    pub async fn open(js: &jetstream::Context) -> Result<Self, RegistryError> {
        let kv = js
            .get_key_value(subjects::PLATFORMS_BUCKET)
            .await
            .map_err(|e| RegistryError(e.to_string()))?;
        Ok(Self { kv })
    }

    /// Records (or refreshes) a platform, as the seed's `register_platform`.
    pub async fn register_platform(&self, record: &PlatformRecord) -> Result<(), RegistryError> {
        let value = serde_json::to_vec(record).map_err(|e| RegistryError(e.to_string()))?;
        self.kv
            .put(&record.platform, Bytes::from(value))
            .await
            .map_err(|e| RegistryError(e.to_string()))?;
        Ok(())
    }

    /// The record of `platform`. A record under its key that describes another platform
    /// (each identity may write only its own key, but may claim anything in it) is ignored
    /// with a warning.
    pub async fn get(&self, platform: &str) -> Result<Option<PlatformRecord>, RegistryError> {
        let value = self.kv.get(platform).await.map_err(|e| RegistryError(e.to_string()))?;
        let record: Option<PlatformRecord> = value.and_then(|v| serde_json::from_slice(&v).ok());
        Ok(record.filter(|r| {
            let own = r.platform == platform;
            if !own {
                tracing::warn!(key = platform, claims = %r.platform, "ignoring a registry record about another platform");
            }
            own
        }))
    }

    /// Every registered platform (records that do not parse are skipped).
    pub async fn all(&self) -> Result<Vec<PlatformRecord>, RegistryError> {
        let mut keys = self.kv.keys().await.map_err(|e| RegistryError(e.to_string()))?;
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| RegistryError(e.to_string()))?;
            if let Some(record) = self.get(&key).await? {
                records.push(record);
            }
        }
        Ok(records)
    }
}
