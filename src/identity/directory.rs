//! The key registry shared through the `sage_keys` KV bucket.
//!
//! Each platform publishes its own public keys (from its config) under
//! `<platform>.<key_id>`; verifiers read them on first use and follow later changes
//! (rotation windows, revocations) with a KV watch. Revocation is sticky: a record that says a
//! key is revoked is never replaced by one that does not.

use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use crate::protocol::clock::now_seconds;
use anyhow::Context as _;

use crate::identity::keys::{KeyError, KeyRecord, KeyRegistry};
use crate::protocol::envelope::{
    EnvelopeError, Signable, Signer, Verified, peek_signer, verify, verify_ignoring_expiry,
};
use crate::protocol::lct::{check_platform, token_problem};

/// Pause before following the key bucket again after its watch ended.
const WATCH_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest key id worth looking up (ours are 16 hex digits).
const KEY_ID_CHARS_MAX: usize = 64;
use crate::nats::cas::{self, CasError, Step};
use crate::nats::subjects;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("key bucket sage_keys: {0}")]
    Kv(String),
    #[error("key record {platform}/{key_id} in the bucket holds another public key; refusing to replace it")]
    Conflict { platform: String, key_id: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Cas(#[from] CasError),
}

/// A KV-backed, locally cached [`KeyRegistry`].
pub struct KeyDirectory {
    kv: kv::Store,
    cache: Arc<RwLock<KeyRegistry>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for KeyDirectory {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn decode(value: &[u8]) -> Option<KeyRecord> {
    let record: KeyRecord = serde_json::from_slice(value).ok()?;
    // A record whose key id does not match its key is ignored, not trusted.
    record.verifying_key().ok()?;
    Some(record)
}

impl KeyDirectory {
    /// Opens the bucket, loads every record and follows changes.
    pub async fn open(js: &jetstream::Context) -> Result<Self, DirectoryError> {
        let kv = js
            .get_key_value(subjects::KEYS_BUCKET)
            .await
            .map_err(|e| DirectoryError::Kv(e.to_string()))?;
        let cache = Arc::new(RwLock::new(KeyRegistry::new()));
        // Follow changes (new keys, revocations) from now on; `refresh` below reads what is
        // already there. A watch that ends (server restart) is started again, with history,
        // so nothing written meanwhile is missed.
        let mut watch = kv.watch_all().await.map_err(|e| DirectoryError::Kv(e.to_string()))?;
        let shared = Arc::clone(&cache);
        let store = kv.clone();
        let watcher = tokio::spawn(async move {
            loop {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { break };
                    if let Some(record) = decode(&entry.value)
                        && let Ok(mut registry) = shared.write()
                    {
                        registry.insert(record);
                    }
                }
                tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                match store.watch_with_history(">").await {
                    Ok(again) => watch = again,
                    Err(e) => tracing::debug!(error = %e, "key registry watch not restarted yet"),
                }
            }
        });
        let directory = Self { kv, cache, watcher };
        directory.refresh().await?;
        Ok(directory)
    }

    /// Opens the directory as the platform `config` describes: reads its secret key and
    /// publishes its public keys, so others can verify what it signs.
    pub async fn open_as(config: &crate::config::Config, js: &jetstream::Context) -> anyhow::Result<(Signer, Self)> {
        let key_path = config.keypair_path();
        let secret = crate::identity::keys::read_secret(&key_path).with_context(|| {
            format!(
                "create it with: sagefed keygen --platform {} --out {}",
                config.platform(),
                key_path.display()
            )
        })?;
        let signer = Signer::new(config.platform(), secret)?;
        let directory = Self::open(js).await?;
        for record in config.key_records(&signer.verifying_key()) {
            directory.publish(&record).await?;
        }
        Ok((signer, directory))
    }

    /// Reloads every record from the bucket.
    pub async fn refresh(&self) -> Result<(), DirectoryError> {
        let mut keys = self.kv.keys().await.map_err(|e| DirectoryError::Kv(e.to_string()))?;
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| DirectoryError::Kv(e.to_string()))?;
            if let Some(value) = self.kv.get(&key).await.map_err(|e| DirectoryError::Kv(e.to_string()))? {
                records.extend(decode(&value));
            }
        }
        self.insert_all(records);
        Ok(())
    }

    fn insert_all(&self, records: impl IntoIterator<Item = KeyRecord>) {
        if let Ok(mut registry) = self.cache.write() {
            for record in records {
                registry.insert(record);
            }
        }
    }

    /// Publishes `record`. Refuses to replace a record that holds another public key and
    /// never un-revokes a revoked key.
    pub async fn publish(&self, record: &KeyRecord) -> Result<(), DirectoryError> {
        record.verifying_key()?;
        let key = subjects::key_entry(&record.platform, &record.key_id);
        // Several processes of one platform publish the same record at start: re-read on a
        // lost compare-and-swap, and write nothing when the bucket already says the same.
        let updated = cas::update(&self.kv, &key, |current: Option<KeyRecord>| {
            let mut record = record.clone();
            // A record whose key id does not match its key is not trusted: replaced.
            let old = current.filter(|old| old.verifying_key().is_ok());
            match &old {
                Some(old) if old.public_key != record.public_key => {
                    return Step::Done(Err(DirectoryError::Conflict {
                        platform: record.platform,
                        key_id: record.key_id,
                    }));
                }
                Some(old) if old.revoked_at.is_some() && record.revoked_at.is_none() => {
                    record.revoked_at = old.revoked_at;
                }
                _ => {}
            }
            if old.as_ref() == Some(&record) {
                Step::Done(Ok(record))
            } else {
                Step::Write(record.clone(), Ok(record))
            }
        })
        .await?;
        self.insert_all([updated.answer?]);
        Ok(())
    }

    /// A snapshot of the registry as cached now.
    pub fn snapshot(&self) -> KeyRegistry {
        self.cache.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Verifies an envelope of kind `T`, fetching the signer's key from the bucket when it
    /// is not cached yet.
    pub async fn verify<T: Signable>(&self, bytes: &Bytes) -> Result<Verified<T>, EnvelopeError> {
        self.fetch_signer_key(bytes).await?;
        let guard = self
            .cache
            .read()
            .map_err(|_| EnvelopeError::Malformed("key cache poisoned".to_owned()))?;
        verify(bytes, &guard, now_seconds())
    }

    /// Like [`KeyDirectory::verify`], without the expiry check (see
    /// [`crate::protocol::envelope::verify_ignoring_expiry`]).
    pub async fn verify_ignoring_expiry<T: Signable>(&self, bytes: &Bytes) -> Result<Verified<T>, EnvelopeError> {
        self.fetch_signer_key(bytes).await?;
        let guard = self
            .cache
            .read()
            .map_err(|_| EnvelopeError::Malformed("key cache poisoned".to_owned()))?;
        verify_ignoring_expiry(bytes, &guard, now_seconds())
    }

    /// Makes sure the key that signed `bytes` is cached, when the bucket has it.
    async fn fetch_signer_key(&self, bytes: &Bytes) -> Result<(), EnvelopeError> {
        let (platform, key_id) = peek_signer(bytes)?;
        let cached = self
            .cache
            .read()
            .map(|r| r.get(&platform, &key_id).is_some())
            .unwrap_or(false);
        // Only names that are safe KV key tokens are looked up; others cannot be known.
        let lookable = check_platform(&platform).is_ok() && token_problem(&key_id, KEY_ID_CHARS_MAX).is_none();
        if !cached
            && lookable
            && let Ok(Some(value)) = self.kv.get(subjects::key_entry(&platform, &key_id)).await
        {
            self.insert_all(decode(&value));
        }
        Ok(())
    }
}
