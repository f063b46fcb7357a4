//! The ledger bucket as the service sees it: a cache of records with their revisions, reads
//! from KV, and writes as one atomic batch in which every message carries its own
//! expected revision (compare-and-swap), so a batch commits whole or not at all.
//!
//! The cache only saves reads: every write is checked against the bucket by the batch's
//! compare-and-swap, so a stale entry can cost a retry, never a wrong write.

use std::collections::{HashMap, HashSet};

use async_nats::Client;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::join_all;

use crate::ledger::batch::{self, BatchError, BatchMessage};
use crate::ledger::model::{Account, GrantRecord, Lock, Record, Supply, WitnessRecord, account_key};
use crate::ledger::rules::Book;
use crate::nats::subjects;
use crate::protocol::lct::Lct;
use crate::protocol::task::TaskId;

/// Records kept in the cache before it is dropped and rebuilt from the bucket.
pub const CACHE_ENTRIES_MAX: usize = 200_000;
/// Keys read from the bucket at once.
const READS_IN_FLIGHT_MAX: usize = 256;

/// A record as last seen, with its revision (0 = the key does not exist).
#[derive(Clone, Debug)]
struct Cached {
    record: Option<Record>,
    revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading ledger key {key}: {why}")]
    Read { key: String, why: String },
    #[error("ledger key {key} holds an invalid record: {why}")]
    Corrupt { key: String, why: String },
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl StoreError {
    /// A compare-and-swap conflict: someone else wrote one of the keys first.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Batch(BatchError::WrongLastSequence(_)))
    }
}

/// The service's view of the ledger bucket.
pub struct LedgerStore {
    client: Client,
    kv: kv::Store,
    cache: HashMap<String, Cached>,
}

impl LedgerStore {
    pub fn new(client: Client, kv: kv::Store) -> Self {
        Self {
            client,
            kv,
            cache: HashMap::new(),
        }
    }

    /// Reads every key of `keys` that is not cached. Keys in `assume_absent` are not read
    /// but taken as not existing yet (new task and grant ids); a wrong guess fails the batch
    /// and the caller retries with a real read. Returns the keys actually read.
    pub async fn load(
        &mut self,
        keys: &[String],
        assume_absent: &HashSet<String>,
    ) -> Result<HashSet<String>, StoreError> {
        let mut missing: Vec<String> = Vec::new();
        for key in keys {
            if self.cache.contains_key(key) || missing.contains(key) {
                continue;
            }
            if assume_absent.contains(key) {
                self.cache.insert(
                    key.clone(),
                    Cached {
                        record: None,
                        revision: 0,
                    },
                );
            } else {
                missing.push(key.clone());
            }
        }
        let read: HashSet<String> = missing.iter().cloned().collect();
        for chunk in missing.chunks(READS_IN_FLIGHT_MAX) {
            let entries = join_all(chunk.iter().map(|key| self.kv.entry(key.clone()))).await;
            for (key, entry) in chunk.iter().zip(entries) {
                let entry = entry.map_err(|e| StoreError::Read {
                    key: key.clone(),
                    why: e.to_string(),
                })?;
                let cached = match entry {
                    Some(entry) if entry.operation == kv::Operation::Put => {
                        let record = Record::parse(key, &entry.value).map_err(|e| StoreError::Corrupt {
                            key: key.clone(),
                            why: e.why,
                        })?;
                        Cached {
                            record: Some(record),
                            revision: entry.revision,
                        }
                    }
                    // A deleted key keeps its marker's revision: a create must expect it.
                    Some(entry) => Cached {
                        record: None,
                        revision: entry.revision,
                    },
                    None => Cached {
                        record: None,
                        revision: 0,
                    },
                };
                self.cache.insert(key.clone(), cached);
            }
        }
        Ok(read)
    }

    /// Forgets `keys`, so the next [`LedgerStore::load`] reads them.
    pub fn forget<'a>(&mut self, keys: impl IntoIterator<Item = &'a String>) {
        for key in keys {
            self.cache.remove(key);
        }
    }

    fn cached(&self, key: &str) -> Option<&Record> {
        self.cache.get(key).and_then(|c| c.record.as_ref())
    }

    /// Writes `writes` (each key once, in order) as one atomic batch, each message expecting
    /// the revision last seen (or 0 for a key that must not exist), then caches the results.
    pub async fn commit(&mut self, writes: Vec<Record>) -> Result<(), StoreError> {
        let mut messages = Vec::with_capacity(writes.len());
        let mut keys = Vec::with_capacity(writes.len());
        for record in &writes {
            let key = record.key();
            let expected = if record.is_create_only() {
                0
            } else {
                self.cache.get(&key).map_or(0, |c| c.revision)
            };
            let value = record
                .to_json()
                .map_err(|e| StoreError::Corrupt { key: e.key, why: e.why })?;
            messages.push(
                BatchMessage::new(subjects::kv_subject(subjects::LEDGER_BUCKET, &key), Bytes::from(value))
                    .expect_last_subject_sequence(expected),
            );
            keys.push(key);
        }
        let batch_id = batch::new_batch_id(&self.client);
        let ack = batch::publish_atomic(&self.client, &batch_id, messages).await?;
        if self.cache.len() + writes.len() > CACHE_ENTRIES_MAX {
            self.cache.clear();
        }
        for (i, (key, record)) in keys.into_iter().zip(writes).enumerate() {
            // Journal entries are never read back by the rules: do not cache them.
            if matches!(record, Record::Journal(_)) {
                continue;
            }
            match ack.sequence_of(i) {
                Some(revision) => {
                    self.cache.insert(
                        key,
                        Cached {
                            record: Some(record),
                            revision,
                        },
                    );
                }
                None => {
                    self.cache.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// The current view plus `overlay` (records written earlier in the same group).
    pub fn book<'a>(&'a self, overlay: &'a HashMap<String, Record>) -> OverlayBook<'a> {
        OverlayBook { store: self, overlay }
    }
}

/// A [`Book`] reading a group's pending writes first, then the cache.
pub struct OverlayBook<'a> {
    store: &'a LedgerStore,
    overlay: &'a HashMap<String, Record>,
}

impl OverlayBook<'_> {
    fn get(&self, key: &str) -> Option<&Record> {
        self.overlay.get(key).or_else(|| self.store.cached(key))
    }
}

impl Book for OverlayBook<'_> {
    fn account(&self, lct: &Lct) -> Option<Account> {
        match self.get(&account_key(lct)) {
            Some(Record::Account(a)) => Some(a.clone()),
            _ => None,
        }
    }

    fn lock(&self, task_id: &TaskId) -> Option<Lock> {
        match self.get(&subjects::ledger_lock(task_id.as_str())) {
            Some(Record::Lock(l)) => Some(l.clone()),
            _ => None,
        }
    }

    fn grant(&self, grant_id: &str) -> Option<GrantRecord> {
        match self.get(&subjects::ledger_grant(grant_id)) {
            Some(Record::Grant(g)) => Some(g.clone()),
            _ => None,
        }
    }

    fn supply(&self) -> Supply {
        match self.get(subjects::LEDGER_SUPPLY) {
            Some(Record::Supply(s)) => *s,
            _ => Supply::default(),
        }
    }

    fn witness_record(&self, executor: &str, operation: &str) -> Option<WitnessRecord> {
        match self.get(&subjects::ledger_witness(executor, operation)) {
            Some(Record::Witness(w)) => Some(w.clone()),
            _ => None,
        }
    }
}
