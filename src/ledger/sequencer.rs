//! Group commit: one task per service instance applies ledger commands in groups. Commands
//! that arrive while a batch is being written wait and go together into the next batch, so
//! one hot account with a hundred concurrent locks costs a few batches, not a hundred racing
//! compare-and-swap retries on one key; and per-account order is the arrival order.
//!
//! Each group: read what the commands need (cache first), decide every command in order on
//! top of the earlier ones' writes, write all writes as one atomic batch, reply. On a
//! compare-and-swap conflict (another instance wrote first) or an unknown outcome (timeout),
//! forget the touched keys, read them again and decide again: idempotency turns a batch that
//! did commit into "already applied".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::ledger::model::{Account, Record};
use crate::ledger::protocol::{LedgerReply, Outcome, RejectCode};
use crate::ledger::reputation_writer::ReputationWriter;
use crate::ledger::rules::{Book, Command, Decision, decide};
use crate::ledger::store::LedgerStore;
use crate::nats::subjects;
use crate::protocol::clock::Timestamp;

/// Most commands decided and written in one batch (each writes at most 6 keys: a witness's
/// answer writes three accounts, the lock, the journal entry and the executor's witness
/// record; and a batch holds at most 1000 messages).
pub const GROUP_COMMANDS_MAX: usize = 160;
/// Commands waiting for the sequencer before new requests are refused as busy.
pub const QUEUE_COMMANDS_MAX: usize = 20_000;
/// Attempts at one group before its commands are answered "busy, retry".
const GROUP_ATTEMPTS_MAX: u32 = 12;
/// First pause after a failed attempt; doubles each time.
const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(2);

/// A command and where its reply goes.
pub struct Job {
    pub command: Command,
    pub reply: oneshot::Sender<LedgerReply>,
}

/// Handle to submit commands to a running sequencer.
#[derive(Clone)]
pub struct SequencerHandle {
    tx: mpsc::Sender<Job>,
}

impl SequencerHandle {
    /// Submits `command` and waits for its reply. Refuses at once when the queue is full.
    pub async fn submit(&self, command: Command) -> LedgerReply {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(Job { command, reply }).is_err() {
            return LedgerReply::rejected(RejectCode::Busy, "the ledger service is overloaded; retry");
        }
        rx.await
            .unwrap_or_else(|_| LedgerReply::rejected(RejectCode::Busy, "the ledger service is stopping; retry"))
    }
}

/// Starts the sequencer task over `store`. It stops when every handle is dropped. Each lock
/// it settles goes to `reputation`, when there is one.
pub fn spawn(
    store: LedgerStore,
    admins: BTreeSet<String>,
    reputation: Option<ReputationWriter>,
) -> (SequencerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
    let task = tokio::spawn(run(store, admins, reputation, rx));
    (SequencerHandle { tx }, task)
}

async fn run(
    mut store: LedgerStore,
    admins: BTreeSet<String>,
    reputation: Option<ReputationWriter>,
    mut rx: mpsc::Receiver<Job>,
) {
    let mut group = Vec::with_capacity(GROUP_COMMANDS_MAX);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < GROUP_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let replies = apply_group(&mut store, &admins, group.iter().map(|j| &j.command).collect()).await;
        crate::observe::metrics::ledger_group(group.len(), started.elapsed());
        tracing::debug!(
            commands = group.len(),
            micros = started.elapsed().as_micros() as u64,
            "ledger group applied"
        );
        for (job, reply) in group.drain(..).zip(replies) {
            if let Some(writer) = &reputation
                && reply.outcome == Outcome::Applied
                && let Some(lock) = reply.lock.as_deref()
                && lock.state.is_terminal()
            {
                writer.settled(lock.clone());
            }
            // The requester may have gone away; its retry will find the result.
            let _ = job.reply.send(reply);
        }
    }
}

/// Keys a command's decision rests on, given what is known so far.
fn needed_keys(command: &Command, book: &impl Book) -> Vec<String> {
    let mut keys = command.keys();
    if let Command::Commit { task_id, .. }
    | Command::Rollback { task_id, .. }
    | Command::Expire { task_id }
    | Command::Witness { task_id, .. } = command
        && let Some(lock) = book.lock(task_id)
    {
        keys.push(Account::empty(lock.delegator.clone()).key());
        keys.push(Account::empty(lock.executor.clone()).key());
        if let (Command::Witness { .. }, Some(hold)) = (command, &lock.hold) {
            keys.push(subjects::ledger_witness(lock.executor.platform(), &hold.operation));
        }
    }
    keys
}

/// Decides and writes one group; returns one reply per command, in order.
pub async fn apply_group(
    store: &mut LedgerStore,
    admins: &BTreeSet<String>,
    commands: Vec<&Command>,
) -> Vec<LedgerReply> {
    let mut optimistic = true;
    let mut pause = RETRY_PAUSE_FIRST;
    let mut last_error = String::new();
    // Keys read from the bucket while working on this group: refusals may rest on these.
    let mut fresh = HashSet::new();
    for _ in 0..GROUP_ATTEMPTS_MAX {
        match attempt(store, admins, &commands, optimistic, &mut fresh).await {
            Ok(Some(replies)) => return replies,
            // A decision rested on cached records that may be stale: decide again on fresh ones.
            Ok(None) => {}
            Err((error, touched)) => {
                store.forget(&touched);
                if !error.is_conflict() {
                    tracing::warn!(%error, "ledger batch failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                last_error = error.to_string();
            }
        }
        optimistic = false;
    }
    let message = format!("the ledger could not apply this after {GROUP_ATTEMPTS_MAX} attempts ({last_error}); retry");
    commands
        .iter()
        .map(|_| LedgerReply::rejected(RejectCode::Busy, message.clone()))
        .collect()
}

type AttemptError = (crate::ledger::store::StoreError, Vec<String>);

async fn attempt(
    store: &mut LedgerStore,
    admins: &BTreeSet<String>,
    commands: &[&Command],
    optimistic: bool,
    fresh: &mut HashSet<String>,
) -> Result<Option<Vec<LedgerReply>>, AttemptError> {
    // Round 1: the keys each command names; round 2: the accounts of the locks found.
    let first: Vec<String> = commands.iter().flat_map(|c| c.keys()).collect();
    let assume_absent: HashSet<String> = if optimistic {
        commands.iter().flat_map(|c| c.fresh_keys()).collect()
    } else {
        HashSet::new()
    };
    fresh.extend(store.load(&first, &assume_absent).await.map_err(|e| (e, Vec::new()))?);
    let empty = HashMap::new();
    let second: Vec<String> = commands
        .iter()
        .flat_map(|c| needed_keys(c, &store.book(&empty)))
        .collect();
    fresh.extend(store.load(&second, &assume_absent).await.map_err(|e| (e, Vec::new()))?);

    let now = Timestamp::now();
    let mut overlay: HashMap<String, Record> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut replies = Vec::with_capacity(commands.len());
    let mut stale: Vec<String> = Vec::new();
    let no_guesses = HashSet::new();
    for command in commands {
        // An earlier command of this group may have revealed keys this one needs (a commit
        // of a lock created just before needs both accounts): read the ones never loaded,
        // rather than take them for absent.
        let keys = needed_keys(command, &store.book(&overlay));
        let unread: Vec<String> = keys.iter().filter(|k| !overlay.contains_key(*k)).cloned().collect();
        fresh.extend(store.load(&unread, &no_guesses).await.map_err(|e| (e, Vec::new()))?);
        let book = store.book(&overlay);
        match decide(command, &book, admins, now) {
            Decision::Apply { writes, reply } => {
                for record in writes {
                    let key = record.key();
                    if !overlay.contains_key(&key) {
                        order.push(key.clone());
                    }
                    overlay.insert(key, record);
                }
                replies.push(reply);
            }
            Decision::Reply(reply) => {
                // A refusal must rest on what the bucket says now, not on a cached copy.
                if reply.outcome == Outcome::Rejected && !optimistic_safe(&reply) {
                    stale.extend(
                        keys.into_iter()
                            .filter(|k| !fresh.contains(k) && !overlay.contains_key(k)),
                    );
                }
                replies.push(reply);
            }
        }
    }
    if !stale.is_empty() {
        store.forget(&stale);
        return Ok(None);
    }
    if overlay.is_empty() {
        return Ok(Some(replies));
    }
    let writes: Vec<Record> = order.iter().filter_map(|k| overlay.remove(k)).collect();
    let touched: Vec<String> = writes.iter().map(Record::key).collect();
    tracing::trace!(messages = writes.len(), "writing a ledger batch");
    store.commit(writes).await.map_err(|e| (e, touched))?;
    Ok(Some(replies))
}

/// Refusals that do not depend on the bucket's state.
fn optimistic_safe(reply: &LedgerReply) -> bool {
    matches!(
        reply.code,
        Some(
            RejectCode::InvalidRequest
                | RejectCode::InvalidAmount
                | RejectCode::NotAuthorized
                | RejectCode::SameAccount
        )
    )
}
