//! A consistent read of the whole ledger bucket, also while it is being written.
//!
//! It follows the bucket from the last value of every key onward (an ordered consumer, last
//! per subject) until it has caught up (nothing pending). Atomic batches are stored whole and
//! contiguously, so the values read at that point are the bucket's state after one batch and
//! before the next: never half a transition.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use crate::ledger::model::{Account, GrantRecord, JournalEntry, Lock, Record, Supply, WitnessRecord};
use crate::nats::subjects;

/// Longest a snapshot may take to catch up with a busy ledger.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("ledger bucket sage_ledger: cannot {action} ({source}); is NATS up and the ledger created (`sagefed up`)?")]
    Bucket {
        action: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// The bucket's history ended before the watch caught up with its last revision.
    #[error("ledger bucket sage_ledger: the watch ended before catching up; read again")]
    WatchEnded,
    #[error("the ledger did not settle for a consistent read within {0:?}")]
    Timeout(Duration),
}

/// Every ledger record, as of one point between two batches.
#[derive(Debug, Default, Clone)]
pub struct LedgerSnapshot {
    pub accounts: BTreeMap<String, Account>,
    pub locks: BTreeMap<String, Lock>,
    pub journal: BTreeMap<String, JournalEntry>,
    pub grants: BTreeMap<String, GrantRecord>,
    pub supply: Supply,
    /// Each executor's witness record per operation, by key.
    pub witness_records: BTreeMap<String, WitnessRecord>,
    /// Keys whose values are not valid records, with why.
    pub invalid: Vec<(String, String)>,
    /// The bucket revision the snapshot is as of.
    pub revision: u64,
}

impl LedgerSnapshot {
    /// Adds one bucket value (a record that does not parse is listed in `invalid`). The
    /// dashboard keeps a live snapshot this way, from its own watch.
    pub fn insert(&mut self, key: &str, value: &[u8], revision: u64) {
        self.revision = self.revision.max(revision);
        match Record::parse(key, value) {
            Ok(Record::Account(a)) => {
                self.accounts.insert(key.to_owned(), a);
            }
            Ok(Record::Lock(l)) => {
                self.locks.insert(key.to_owned(), l);
            }
            Ok(Record::Journal(j)) => {
                self.journal.insert(key.to_owned(), j);
            }
            Ok(Record::Grant(g)) => {
                self.grants.insert(key.to_owned(), g);
            }
            Ok(Record::Supply(s)) => self.supply = s,
            Ok(Record::Witness(w)) => {
                self.witness_records.insert(key.to_owned(), w);
            }
            Err(e) => self.invalid.push((key.to_owned(), e.why)),
        }
    }

    /// Reads the ledger bucket.
    pub async fn read(js: &jetstream::Context) -> Result<Self, SnapshotError> {
        let store = js
            .get_key_value(subjects::LEDGER_BUCKET)
            .await
            .map_err(|e| bucket("open the bucket", e))?;
        tokio::time::timeout(SNAPSHOT_TIMEOUT, Self::follow(js, &store))
            .await
            .map_err(|_| SnapshotError::Timeout(SNAPSHOT_TIMEOUT))?
    }

    async fn follow(js: &jetstream::Context, store: &kv::Store) -> Result<Self, SnapshotError> {
        let mut stream = js
            .get_stream(subjects::kv_stream(subjects::LEDGER_BUCKET))
            .await
            .map_err(|e| bucket("open its stream", e))?;
        let mut snapshot = Self::default();
        if stream
            .info()
            .await
            .map_err(|e| bucket("read its stream's state", e))?
            .state
            .messages
            == 0
        {
            return Ok(snapshot);
        }
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| bucket("watch its history", e))?;
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| bucket("read an entry", e))?;
            if entry.operation == kv::Operation::Put {
                snapshot.insert(&entry.key, &entry.value, entry.revision);
            }
            if entry.delta == 0 {
                return Ok(snapshot);
            }
        }
        Err(SnapshotError::WatchEnded)
    }
}

/// A bucket failure, naming what was being done.
fn bucket(action: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> SnapshotError {
    SnapshotError::Bucket {
        action,
        source: Box::new(source),
    }
}
