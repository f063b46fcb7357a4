//! The key registry shared through the `sage_keys` KV bucket, trusted only as far as it chains
//! to the federation's pinned root.
//!
//! Each platform publishes its own key records (endorsed by the root at `sagefed init`, or by
//! its previous key at `sagefed keys rotate`) under `<platform>.<key_id>`; an admin publishes
//! the root's revocations under `<platform>.<key_id>.revoked`. Verifiers read everything on
//! open and follow later changes with a KV watch. Whatever the bucket holds, a record that
//! does not chain to the root this directory was given is refused with a warning naming it
//! ([`KeyRegistry::admit`]); a revocation seen is kept even if the entry is later deleted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;

use crate::identity::chain::{Endorser, ROTATION_CHAIN_MAX, Revocation};
use crate::identity::keys::{KeyError, KeyRecord, KeyRegistry};
use crate::identity::unknown_keys::UnknownKeys;
use crate::nats::subjects;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{
    EnvelopeError, Signable, Signer, Verified, peek_signer, verify, verify_ignoring_expiry,
};
use crate::protocol::lct::{check_platform, token_problem};

/// Pause before following the key bucket again after its watch ended.
const WATCH_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest key id worth looking up (ours are 16 hex digits).
const KEY_ID_CHARS_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The key bucket could not be opened, read or written (the server or its JetStream
    /// unreachable, or this identity lacks the permission).
    #[error("key bucket sage_keys: cannot {action}: {source}")]
    Kv {
        action: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// A thread panicked while holding the key cache; this process must restart.
    #[error("the key cache was poisoned by a panic; restart the process")]
    CachePoisoned,
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The platform's own secret key is missing or unreadable.
    #[error("{source}: create it with `sagefed init` (it is in the platform's bundle as {platform}.key)")]
    SecretKey {
        platform: String,
        #[source]
        source: KeyError,
    },
    /// The secret key does not sign for the platform it claims.
    #[error("{platform}'s secret key cannot sign: {source}")]
    Signer {
        platform: String,
        #[source]
        source: crate::protocol::envelope::EnvelopeError,
    },
    /// The key file has no record of this key endorsed by the root.
    #[error(
        "{records} holds no root-endorsed record of {platform}'s key {key_id}: use the key from the platform's bundle (`sagefed init`), or let `sagefed up` endorse the keys its configs name"
    )]
    NotEndorsed {
        records: std::path::PathBuf,
        platform: String,
        key_id: String,
    },
    /// The config does not pin a usable root key.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// One entry of the bucket: a key record or a revocation.
enum Entry {
    Record(KeyRecord),
    Revocation(Revocation),
}

fn decode(key: &str, value: &[u8]) -> Option<Entry> {
    if subjects::is_key_revocation_entry(key) {
        serde_json::from_slice(value).ok().map(Entry::Revocation)
    } else {
        serde_json::from_slice(value).ok().map(Entry::Record)
    }
}

/// Admits `entries` into `registry`: revocations first, then records until no more chain
/// (a successor may come before the key that endorsed it). Each refusal is logged once.
fn admit_all(registry: &RwLock<KeyRegistry>, root: &VerifyingKey, entries: Vec<(String, Entry)>) {
    let Ok(mut registry) = registry.write() else { return };
    let mut pending = Vec::new();
    for (name, entry) in entries {
        // An entry counts only under its own name: a platform writing its own namespace
        // cannot slip in a record (or revocation) about someone else.
        let expected = match &entry {
            Entry::Record(r) => subjects::key_entry(&r.platform, &r.key_id),
            Entry::Revocation(r) => subjects::key_revocation_entry(&r.platform, &r.key_id),
        };
        if name != expected {
            tracing::warn!(entry = %name, expected = %expected, "refused a sage_keys entry stored under another name");
            continue;
        }
        match entry {
            Entry::Revocation(revocation) => {
                if let Err(e) = registry.revoke(&revocation, root) {
                    tracing::warn!(entry = %name, error = %e, "refused a key revocation in sage_keys");
                }
            }
            Entry::Record(record) => pending.push((name, record)),
        }
    }
    loop {
        let before = pending.len();
        let mut refused = Vec::new();
        for (name, record) in pending {
            if let Err(e) = registry.admit(record.clone(), root) {
                refused.push((name, record, e));
            }
        }
        if refused.len() == before || refused.is_empty() {
            for (name, _, e) in refused {
                tracing::warn!(entry = %name, error = %e, "refused a key record in sage_keys");
            }
            return;
        }
        pending = refused.into_iter().map(|(name, record, _)| (name, record)).collect();
    }
}

/// A KV-backed, locally cached [`KeyRegistry`] that admits only what chains to `root`.
pub struct KeyDirectory {
    kv: kv::Store,
    root: VerifyingKey,
    cache: Arc<RwLock<KeyRegistry>>,
    /// Key ids recently found absent: a flood of made-up ids is not a flood of bucket reads.
    unknown: Mutex<UnknownKeys>,
    /// Bucket reads made to look up signers' keys, for the flood tests.
    lookups: AtomicU64,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for KeyDirectory {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl KeyDirectory {
    /// Opens the bucket, loads every record that chains to `root` and follows changes.
    pub async fn open(js: &jetstream::Context, root: &VerifyingKey) -> Result<Self, DirectoryError> {
        let kv = js
            .get_key_value(subjects::KEYS_BUCKET)
            .await
            .map_err(|e| kv_error("open the bucket", e))?;
        let cache = Arc::new(RwLock::new(KeyRegistry::new()));
        // Follow changes (new keys, revocations) from now on; `refresh` below reads what is
        // already there. A watch that ends (server restart) is started again, with history,
        // so nothing written meanwhile is missed.
        let mut watch = kv.watch_all().await.map_err(|e| kv_error("watch the bucket", e))?;
        let shared = Arc::clone(&cache);
        let store = kv.clone();
        let root = *root;
        let watcher = tokio::spawn(async move {
            loop {
                while let Some(entry) = watch.next().await {
                    let Ok(entry) = entry else { break };
                    // A deletion changes nothing: what was admitted stays (a revocation
                    // especially).
                    if entry.operation == kv::Operation::Put
                        && let Some(decoded) = decode(&entry.key, &entry.value)
                    {
                        admit_all(&shared, &root, vec![(entry.key, decoded)]);
                    }
                }
                tokio::time::sleep(WATCH_RETRY_PAUSE).await;
                match store.watch_with_history(">").await {
                    Ok(again) => watch = again,
                    Err(e) => tracing::debug!(error = %e, "key registry watch not restarted yet"),
                }
            }
        });
        let directory = Self {
            kv,
            root,
            cache,
            unknown: Mutex::new(UnknownKeys::default()),
            lookups: AtomicU64::new(0),
            watcher,
        };
        directory.refresh().await?;
        Ok(directory)
    }

    /// Opens the directory as the platform `config` describes, trusting the root its config
    /// pins: reads its secret key and publishes its endorsed key records (the file beside the
    /// key), so others can verify what it signs.
    pub async fn open_as(
        config: &crate::config::Config,
        js: &jetstream::Context,
    ) -> Result<(Signer, Self), DirectoryError> {
        let key_path = config.keypair_path();
        let platform = config.platform().to_owned();
        let secret = crate::identity::keys::read_secret(&key_path).map_err(|source| DirectoryError::SecretKey {
            platform: platform.clone(),
            source,
        })?;
        let signer = Signer::new(&platform, secret).map_err(|source| DirectoryError::Signer {
            platform: platform.clone(),
            source,
        })?;
        let records = crate::identity::keys::read_records(&key_path)?;
        let own = crate::identity::keys::key_id(&signer.verifying_key());
        if !records.iter().any(|r| r.key_id == own && r.platform == platform) {
            return Err(DirectoryError::NotEndorsed {
                records: crate::identity::keys::records_path(&key_path),
                platform,
                key_id: own,
            });
        }
        let directory = Self::open(js, &config.root_public_key()?).await?;
        for record in &records {
            directory.publish(record).await?;
        }
        Ok((signer, directory))
    }

    /// Reloads every record and revocation from the bucket.
    pub async fn refresh(&self) -> Result<(), DirectoryError> {
        let mut keys = self.kv.keys().await.map_err(|e| kv_error("list the keys", e))?;
        let mut entries = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| kv_error("list the keys", e))?;
            if let Some(value) = self.kv.get(&key).await.map_err(|e| kv_error("read a record", e))?
                && let Some(entry) = decode(&key, &value)
            {
                entries.push((key, entry));
            }
        }
        admit_all(&self.cache, &self.root, entries);
        Ok(())
    }

    /// Publishes `record`, which must chain to the root given what is known (its endorser
    /// published first). Writes nothing when the bucket already holds the same.
    pub async fn publish(&self, record: &KeyRecord) -> Result<(), DirectoryError> {
        {
            let mut registry = self.cache.write().map_err(|_| DirectoryError::CachePoisoned)?;
            registry.admit(record.clone(), &self.root)?;
        }
        let key = subjects::key_entry(&record.platform, &record.key_id);
        let current = self.kv.get(&key).await.map_err(|e| kv_error("read a record", e))?;
        let same = current
            .and_then(|v| serde_json::from_slice::<KeyRecord>(&v).ok())
            .is_some_and(|old| &old == record);
        if !same {
            let value = serde_json::to_vec(record).map_err(|e| kv_error("encode a key record", e))?;
            self.kv
                .put(&key, value.into())
                .await
                .map_err(|e| kv_error("write a key record", e))?;
        }
        Ok(())
    }

    /// Publishes a revocation the root signed (only an admin's credentials may write it).
    pub async fn publish_revocation(&self, revocation: &Revocation) -> Result<(), DirectoryError> {
        revocation.check(&self.root)?;
        let key = subjects::key_revocation_entry(&revocation.platform, &revocation.key_id);
        let value = serde_json::to_vec(revocation).map_err(|e| kv_error("encode a revocation", e))?;
        self.kv
            .put(&key, value.into())
            .await
            .map_err(|e| kv_error("write a revocation", e))?;
        admit_all(
            &self.cache,
            &self.root,
            vec![(key, Entry::Revocation(revocation.clone()))],
        );
        Ok(())
    }

    /// The admitted record of `platform`'s key `key_id`, if any (what the root granted it).
    pub fn record(&self, platform: &str, key_id: &str) -> Option<KeyRecord> {
        self.cache.read().ok()?.get(platform, key_id).cloned()
    }

    /// Bucket reads made so far to look up the keys of signers not cached.
    pub fn key_lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
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
        verify(bytes, &guard, Timestamp::now())
    }

    /// Like [`KeyDirectory::verify`] with only the keys cached now (no bucket read): for
    /// code that cannot wait, such as the dashboard's watch callbacks.
    pub fn verify_cached<T: Signable>(&self, bytes: &Bytes) -> Result<Verified<T>, EnvelopeError> {
        let guard = self
            .cache
            .read()
            .map_err(|_| EnvelopeError::Malformed("key cache poisoned".to_owned()))?;
        verify(bytes, &guard, Timestamp::now())
    }

    /// Like [`KeyDirectory::verify`], without the expiry check (see
    /// [`crate::protocol::envelope::verify_ignoring_expiry`]).
    pub async fn verify_ignoring_expiry<T: Signable>(&self, bytes: &Bytes) -> Result<Verified<T>, EnvelopeError> {
        self.fetch_signer_key(bytes).await?;
        let guard = self
            .cache
            .read()
            .map_err(|_| EnvelopeError::Malformed("key cache poisoned".to_owned()))?;
        verify_ignoring_expiry(bytes, &guard, Timestamp::now())
    }

    /// Makes sure the key that signed `bytes` is cached when the bucket has it: reads its
    /// record and revocation, and those of the keys up its rotation chain not cached yet.
    async fn fetch_signer_key(&self, bytes: &Bytes) -> Result<(), EnvelopeError> {
        let (platform, signer_key_id) = peek_signer(bytes)?;
        // Only names that are safe KV key tokens are looked up; others cannot be known.
        if check_platform(&platform).is_err() {
            return Ok(());
        }
        let mut key_id = signer_key_id.clone();
        let mut read = false;
        let mut entries = Vec::new();
        for _ in 0..ROTATION_CHAIN_MAX {
            let cached = self
                .cache
                .read()
                .map(|r| r.get(&platform, &key_id).is_some())
                .unwrap_or(false);
            if cached || token_problem(&key_id, KEY_ID_CHARS_MAX).is_some() {
                break;
            }
            let may_read = self
                .unknown
                .lock()
                .map(|mut unknown| unknown.may_read(&platform, &key_id, Instant::now()))
                .unwrap_or(false);
            if !may_read {
                break;
            }
            // The record first: an id with no record costs this one read, then none for the
            // negative cache's interval.
            let name = subjects::key_entry(&platform, &key_id);
            self.lookups.fetch_add(1, Ordering::Relaxed);
            read = true;
            let Ok(Some(value)) = self.kv.get(&name).await else {
                break;
            };
            let revocation = subjects::key_revocation_entry(&platform, &key_id);
            self.lookups.fetch_add(1, Ordering::Relaxed);
            if let Ok(Some(value)) = self.kv.get(&revocation).await
                && let Some(entry) = decode(&revocation, &value)
            {
                entries.push((revocation, entry));
            }
            let Some(Entry::Record(record)) = decode(&name, &value) else {
                break;
            };
            let endorser = match record.endorsement.as_ref().map(|e| &e.endorser) {
                Some(Endorser::Key { key_id }) => Some(key_id.clone()),
                _ => None,
            };
            entries.push((name, Entry::Record(record)));
            match endorser {
                Some(next) => key_id = next,
                None => break,
            }
        }
        admit_all(&self.cache, &self.root, entries);
        // Read and still unknown (no record, or one that does not chain to the root): not
        // read again for the negative cache's interval.
        let known = self
            .cache
            .read()
            .map(|r| r.get(&platform, &signer_key_id).is_some())
            .unwrap_or(false);
        if read
            && !known
            && let Ok(mut unknown) = self.unknown.lock()
        {
            unknown.absent(&platform, &signer_key_id, Instant::now());
        }
        Ok(())
    }
}

/// A key-bucket failure, naming what was being done.
fn kv_error(action: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> DirectoryError {
    DirectoryError::Kv {
        action,
        source: Box::new(source),
    }
}
