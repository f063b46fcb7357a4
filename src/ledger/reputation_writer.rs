//! Counts the settlements this ledger instance applied into the executors' reputation
//! (`state::reputation`), off the reply path: the sequencer hands over each lock it settled,
//! and a background task folds them into one compare-and-swap per executor and operation.
//!
//! The ledger is the only identity the server lets write `sage_reputation`, so what a
//! reputation says rests on settlements the ledger decided, at the quality it checked. Each
//! settlement is applied by exactly one instance, once, so it is counted at most once; a crash
//! or an unknown batch outcome (then replied "already applied") may leave one uncounted:
//! reputation, not ATP.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::ledger::model::Lock;
use crate::state::reputation::{Reputations, Settled};

/// Settled locks waiting to be counted before new ones are dropped (with a warning).
pub const REPUTATION_QUEUE_MAX: usize = 10_000;
/// The operation a lock that declares none is counted under.
pub const OPERATION_UNDECLARED: &str = "undeclared";

/// Where the sequencer sends the locks it settled.
#[derive(Clone)]
pub struct ReputationWriter {
    tx: mpsc::Sender<Lock>,
}

impl ReputationWriter {
    /// Starts the writing task; it ends when every writer is dropped and the queue is empty.
    pub fn start(reputations: Reputations, half_life: Duration) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Lock>(REPUTATION_QUEUE_MAX);
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, REPUTATION_QUEUE_MAX).await > 0 {
                let mut by_key: HashMap<(String, String), Vec<Settled>> = HashMap::new();
                for lock in batch.drain(..) {
                    if let Some(settled) = Settled::of_lock(&lock) {
                        let operation = lock
                            .operation
                            .clone()
                            .unwrap_or_else(|| OPERATION_UNDECLARED.to_owned());
                        by_key
                            .entry((lock.executor.platform().to_owned(), operation))
                            .or_default()
                            .push(settled);
                    }
                }
                for ((platform, operation), settled) in by_key {
                    if let Err(e) = reputations
                        .record_many(&platform, &operation, &settled, half_life)
                        .await
                    {
                        tracing::warn!(%platform, %operation, error = %e, "reputation not updated");
                    }
                }
            }
        });
        (Self { tx }, task)
    }

    /// Queues a lock the sequencer just settled.
    pub fn settled(&self, lock: Lock) {
        debug_assert!(lock.state.is_terminal());
        if let Err(e) = self.tx.try_send(lock) {
            let task = match e {
                mpsc::error::TrySendError::Full(lock) | mpsc::error::TrySendError::Closed(lock) => lock.task_id,
            };
            tracing::warn!(%task, "reputation queue full; this settlement is not counted");
        }
    }
}
