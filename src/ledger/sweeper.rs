//! Expires locks: a vanished delegator never freezes funds. Follows every lock in the bucket
//! and, once a pending lock is past its expiry (or a lock held for a witness past its hold's
//! expiry: `Lock::settles_at`), submits an `Expire` command. Several
//! instances may sweep at once; the ledger's idempotency makes the losers' commands no-ops.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;

use crate::ledger::model::Lock;
use crate::ledger::protocol::Outcome;
use crate::ledger::rules::Command;
use crate::ledger::sequencer::SequencerHandle;
use crate::nats::subjects;
use crate::protocol::clock::Timestamp;
use crate::protocol::task::TaskId;

/// How often pending locks are checked for expiry.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Pause before following the bucket again after the watch failed.
const WATCH_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Sweeps until the task is aborted.
pub async fn run(kv: kv::Store, sequencer: SequencerHandle) {
    loop {
        if let Err(e) = sweep(&kv, &sequencer).await {
            tracing::warn!(error = %e, "lock sweeper lost its watch; restarting it");
        }
        tokio::time::sleep(WATCH_RETRY_PAUSE).await;
    }
}

async fn sweep(kv: &kv::Store, sequencer: &SequencerHandle) -> Result<(), String> {
    let filter = format!("{}>", subjects::LEDGER_LOCK_PREFIX);
    let mut watch = kv.watch_with_history(&filter).await.map_err(|e| e.to_string())?;
    let mut pending: HashMap<TaskId, Timestamp> = HashMap::new();
    let mut in_flight: HashSet<TaskId> = HashSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<TaskId>();
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    // How long the replay of the bucket takes after a (re)start: the newest locks, the pending
    // ones, come last, so this is how late a restarted sweeper can be (logged for the chaos run).
    let started = std::time::Instant::now();
    let (mut read, mut caught_up) = (0usize, false);
    loop {
        tokio::select! {
            entry = watch.next() => {
                let entry = entry.ok_or("the watch ended")?.map_err(|e| e.to_string())?;
                read += 1;
                if let Ok(lock) = serde_json::from_slice::<Lock>(&entry.value) {
                    if lock.state.is_terminal() {
                        pending.remove(&lock.task_id);
                    } else {
                        pending.insert(lock.task_id.clone(), lock.settles_at());
                    }
                }
                if !caught_up && entry.delta == 0 {
                    caught_up = true;
                    tracing::info!(
                        locks = read,
                        pending = pending.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "lock sweeper caught up with the bucket"
                    );
                }
            }
            Some(task_id) = done_rx.recv() => {
                in_flight.remove(&task_id);
            }
            _ = tick.tick() => {
                let now = Timestamp::now();
                for (task_id, _) in pending.iter().filter(|(_, expires_at)| now > **expires_at) {
                    if !in_flight.insert(task_id.clone()) {
                        continue;
                    }
                    let sequencer = sequencer.clone();
                    let done = done_tx.clone();
                    let task_id = task_id.clone();
                    tokio::spawn(async move {
                        let reply = sequencer.submit(Command::Expire { task_id: task_id.clone() }).await;
                        if reply.outcome == Outcome::Rejected {
                            tracing::warn!(task = %task_id, message = %reply.message, "could not expire a lock");
                        } else {
                            tracing::info!(task = %task_id, "{}", reply.message);
                        }
                        let _ = done.send(task_id);
                    });
                }
            }
        }
    }
}
