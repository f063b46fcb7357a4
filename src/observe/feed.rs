//! The dashboard's live view of the federation, built once per dashboard and pushed to every
//! page: KV watches on the ledger, platform, reputation and task buckets and an ordered
//! consumer on the dead-letter stream keep one in-memory picture, and a publisher turns it
//! into a JSON [`View`] at most [`PUSHES_PER_SECOND`] times a second. Pages never query NATS.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use async_nats::jetstream::{self, consumer::push, kv};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::identity::directory::KeyDirectory;
use crate::ledger::audit;
use crate::ledger::snapshot::LedgerSnapshot;
use crate::nats::subjects;
use crate::observe::metrics;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::state::registry::PlatformRecord;
use crate::state::reputation::Reputation;
use crate::state::task_board::{TaskParties, TaskStatus};
use crate::worker::{DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER};

/// Most views pushed per second: changes in between are coalesced into the next one.
pub const PUSHES_PER_SECOND: u64 = 4;
/// A view is pushed at least this often, so that health and rates age without a change.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Settled tasks shown, newest first.
pub const RECENT_OUTCOMES_SHOWN: usize = 50;
/// Dead letters kept and shown, newest first.
pub const DEAD_LETTERS_SHOWN: usize = 50;
/// The audit reruns on a new ledger revision, and at least this often (some findings, such
/// as a lock pending past its expiry, come with time alone).
const AUDIT_INTERVAL: Duration = Duration::from_secs(5);
/// The window over which delegations per second are counted, in seconds.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Why the feed could not start.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot open {what}: {cause}; is the federation up (`sagefed up`)?")]
    Open { what: &'static str, cause: String },
}

/// One platform as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformView {
    pub platform: String,
    pub healthy: bool,
    pub load: u32,
    pub capacity: u32,
    pub operations: Vec<String>,
    /// Settlements the ledger counted for its reputation, over all operations.
    pub settled: u64,
    /// Its reputation score now, weighted over its operations (0.5 when unknown).
    pub score: f64,
    /// Its results the ledger's checks refuted, ever.
    pub refuted: u64,
    /// Caught lying and not yet back: placed last.
    pub on_probation: bool,
}

/// One ledger account, amounts in ATP.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    pub lct: String,
    pub balance: f64,
    pub locked: f64,
    pub earned: f64,
    pub spent: f64,
}

/// The supply and the audit's verdict on the current picture.
#[derive(Debug, Clone, Serialize)]
pub struct SupplyView {
    pub total: f64,
    pub balances: f64,
    pub locked: f64,
    pub audit_clean: bool,
    pub violations: Vec<String>,
}

/// A task whose budget is locked and not yet settled.
#[derive(Debug, Clone, Serialize)]
pub struct InFlightView {
    pub task_id: String,
    pub delegator: String,
    pub executor: String,
    pub operation: String,
    pub state: String,
    pub budget: f64,
    pub age_seconds: f64,
}

/// A settled task.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeView {
    pub task_id: String,
    pub delegator: String,
    pub executor: String,
    pub operation: String,
    pub outcome: String,
    pub reason: String,
    pub quality: Option<f64>,
    pub latency_ms: f64,
    pub paid: f64,
    pub refunded: f64,
    pub at: Timestamp,
}

/// A task message the workers gave up on.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    pub sequence: u64,
    pub subject: String,
    pub reason: String,
}

/// Everything the page shows, pushed whole (it is small: lists are capped).
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub now: Timestamp,
    pub ledger_revision: u64,
    pub platforms: Vec<PlatformView>,
    pub accounts: Vec<AccountView>,
    pub supply: SupplyView,
    pub in_flight: Vec<InFlightView>,
    pub recent: Vec<OutcomeView>,
    pub dead_letters: Vec<DeadLetterView>,
    /// Why the dead letters are not shown, when this identity may not read them.
    pub dead_letters_unreadable: Option<String>,
    pub delegations_per_second: f64,
    /// The platform whose tasks this dashboard may cancel (started with its config).
    pub cancel_as: Option<String>,
}

/// What the watches have seen so far.
#[derive(Default)]
struct Picture {
    ledger: LedgerSnapshot,
    /// The ledger watch has nothing pending: `ledger` is between two batches, never half a
    /// transition, so the audit may judge it.
    ledger_settled: bool,
    platforms: BTreeMap<String, PlatformRecord>,
    reputations: BTreeMap<String, Reputation>,
    tasks: BTreeMap<String, TaskStatus>,
    dead: VecDeque<DeadLetterView>,
    dead_letters_unreadable: Option<String>,
}

/// The running feed. Dropping it stops its watches.
pub struct Feed {
    view: watch::Receiver<Arc<String>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Feed {
    /// Opens the watches and starts pushing views. `cancel_as` is the platform whose tasks the
    /// page may offer to cancel.
    /// Starts following the buckets; platform records are shown only when they verify with
    /// `keys` (signed by the platform they describe).
    pub async fn start(client: Client, cancel_as: Option<String>, keys: Arc<KeyDirectory>) -> Result<Self, FeedError> {
        let js = jetstream::new(client.clone());
        let picture = Arc::new(Mutex::new(Picture::default()));
        let changed = Arc::new(Notify::new());
        let open = |what: &'static str| {
            move |e: &dyn std::fmt::Display| FeedError::Open {
                what,
                cause: e.to_string(),
            }
        };
        let bucket = |name: &'static str| {
            let js = js.clone();
            async move { js.get_key_value(name).await.map_err(|e| open(name)(&e)) }
        };
        let ledger = bucket(subjects::LEDGER_BUCKET).await?;
        let platforms = bucket(subjects::PLATFORMS_BUCKET).await?;
        let reputations = bucket(subjects::REPUTATION_BUCKET).await?;
        let tasks_bucket = bucket(subjects::TASKS_BUCKET).await?;

        let mut tasks = vec![
            spawn_watch(ledger, &picture, &changed, |p, entry| {
                p.ledger.insert(&entry.key, &entry.value, entry.revision);
                // An atomic batch is stored whole before it is read: the rest of it is pending.
                p.ledger_settled = entry.delta == 0;
            }),
            spawn_watch(platforms, &picture, &changed, move |p, entry| {
                match keys.verify_cached::<PlatformRecord>(&entry.value) {
                    Ok(record) if record.platform == entry.key => {
                        p.platforms.insert(entry.key.clone(), record.into_message());
                    }
                    _ => {
                        tracing::debug!(key = %entry.key, "dashboard: a platform record that does not verify is not shown")
                    }
                }
            }),
            spawn_watch(reputations, &picture, &changed, |p, entry| {
                if let Ok(record) = serde_json::from_slice::<Reputation>(&entry.value) {
                    p.reputations.insert(entry.key.clone(), record);
                }
            }),
            spawn_watch(tasks_bucket, &picture, &changed, |p, entry| {
                if let Ok(record) = serde_json::from_slice::<TaskStatus>(&entry.value) {
                    p.tasks.insert(entry.key.clone(), record);
                }
            }),
        ];
        tasks.push(spawn_dead_letters(client, js, &picture, &changed));

        let (tx, view) = watch::channel(Arc::new(String::from("{}")));
        tasks.push(tokio::spawn(publish(picture, changed, cancel_as, tx)));
        Ok(Self { view, tasks })
    }

    /// The latest view as JSON; changes whenever a new one is pushed.
    pub fn subscribe(&self) -> watch::Receiver<Arc<String>> {
        self.view.clone()
    }
}

/// Follows a bucket from its current values on, applying each entry to the picture.
fn spawn_watch(
    store: kv::Store,
    picture: &Arc<Mutex<Picture>>,
    changed: &Arc<Notify>,
    apply: impl Fn(&mut Picture, &kv::Entry) + Send + 'static,
) -> JoinHandle<()> {
    let (picture, changed) = (Arc::clone(picture), Arc::clone(changed));
    tokio::spawn(async move {
        let mut watch = match store.watch_with_history(">").await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::error!(error = %e, bucket = store.name, "dashboard: cannot watch a bucket");
                return;
            }
        };
        while let Some(entry) = watch.next().await {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(error = %e, bucket = store.name, "dashboard: a bucket watch failed");
                    continue;
                }
            };
            if entry.operation == kv::Operation::Put
                && let Ok(mut picture) = picture.lock()
            {
                apply(&mut picture, &entry);
            }
            // Push only between batches: an atomic ledger batch arrives whole before delta is 0.
            if entry.delta == 0 {
                changed.notify_one();
            }
        }
    })
}

/// Reads the dead-letter stream from its start, keeping the newest. Only some identities
/// may (a ledger admin may; a platform may not): for the others the page says so.
fn spawn_dead_letters(
    client: Client,
    js: jetstream::Context,
    picture: &Arc<Mutex<Picture>>,
    changed: &Arc<Notify>,
) -> JoinHandle<()> {
    let (picture, changed) = (Arc::clone(picture), Arc::clone(changed));
    tokio::spawn(async move {
        // A push consumer delivering to this connection's inbox: creating it is the only
        // API call, which is what the permission table grants readers of the stream.
        let config = push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        };
        let opened = match js.get_stream(subjects::DEAD_STREAM).await {
            Ok(stream) => stream.create_consumer(config).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match opened {
            Ok(consumer) => match consumer.messages().await {
                Ok(messages) => messages,
                Err(e) => return unreadable(&picture, &changed, &e.to_string()),
            },
            Err(e) => return unreadable(&picture, &changed, &e),
        };
        while let Some(message) = messages.next().await {
            let Ok(message) = message else { continue };
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            let letter = DeadLetterView {
                sequence: message.info().map(|i| i.stream_sequence).unwrap_or_default(),
                subject: header(DEAD_SUBJECT_HEADER),
                reason: header(DEAD_REASON_HEADER),
            };
            if let Ok(mut picture) = picture.lock() {
                picture.dead.push_front(letter);
                picture.dead.truncate(DEAD_LETTERS_SHOWN);
            }
            changed.notify_one();
        }
    })
}

/// Records why the dead letters cannot be shown.
fn unreadable(picture: &Mutex<Picture>, changed: &Notify, why: &str) {
    tracing::warn!(error = why, "dashboard: cannot read the dead letters");
    if let Ok(mut picture) = picture.lock() {
        picture.dead_letters_unreadable = Some(format!(
            "this dashboard's identity cannot read {}: {why} (a ledger admin's credentials can)",
            subjects::DEAD_STREAM
        ));
    }
    changed.notify_one();
}

/// Pushes a view after each change (coalesced) and every [`REFRESH_INTERVAL`].
async fn publish(
    picture: Arc<Mutex<Picture>>,
    changed: Arc<Notify>,
    cancel_as: Option<String>,
    tx: watch::Sender<Arc<String>>,
) {
    // The audit walks the whole ledger: once per revision (or interval), not once per push.
    let mut audited: Option<(u64, Instant, SupplyView)> = None;
    loop {
        let _ = tokio::time::timeout(REFRESH_INTERVAL, changed.notified()).await;
        let view = match picture.lock() {
            Ok(picture) => {
                let now = Timestamp::now();
                let supply = match &audited {
                    // Mid-batch (a refresh while the ledger is busy): keep the last verdict.
                    Some((_, _, supply)) if !picture.ledger_settled => supply.clone(),
                    Some((revision, at, supply))
                        if *revision == picture.ledger.revision && at.elapsed() < AUDIT_INTERVAL =>
                    {
                        supply.clone()
                    }
                    _ => {
                        let supply = supply_view(&picture.ledger, now);
                        audited = Some((picture.ledger.revision, Instant::now(), supply.clone()));
                        supply
                    }
                };
                view(&picture, supply, cancel_as.clone(), now)
            }
            Err(_) => return,
        };
        metrics::ledger_totals(to_micros(view.supply.locked), to_micros(view.supply.total));
        match serde_json::to_string(&view) {
            Ok(json) => {
                if tx.send(Arc::new(json)).is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!(error = %e, "dashboard: cannot encode the view"),
        }
        tokio::time::sleep(Duration::from_millis(1000 / PUSHES_PER_SECOND)).await;
    }
}

fn atp(amount: Atp) -> f64 {
    amount.as_f64()
}

fn to_micros(atp: f64) -> u64 {
    Atp::from_f64(atp, "ATP").map_or(0, Atp::micros)
}

/// The page's view of a picture, at `now`.
/// The supply and the audit's verdict on `ledger`, at `now`.
fn supply_view(ledger: &LedgerSnapshot, now: Timestamp) -> SupplyView {
    let report = audit::audit(ledger, now);
    SupplyView {
        total: micros_to_atp(report.supply_uatp),
        balances: micros_to_atp(report.balance_uatp),
        locked: micros_to_atp(report.locked_uatp),
        audit_clean: report.is_clean(),
        violations: report
            .violations
            .iter()
            .map(|v| format!("{}: {}", v.key, v.problem))
            .collect(),
    }
}

/// A platform's reputation records (one per operation) summed up for the page.
struct PlatformStanding {
    settled: u64,
    score: f64,
    refuted: u64,
    on_probation: bool,
}

fn standing_of<'a>(records: impl Iterator<Item = &'a Reputation>, now: Timestamp) -> PlatformStanding {
    let (mut settled, mut refuted, mut on_probation) = (0, 0, false);
    let (mut weighted, mut weights) = (0.0, 0.0);
    for r in records {
        settled += r.settled;
        refuted += r.refuted;
        on_probation |= r.on_probation();
        weighted += r.score(now) * r.weight;
        weights += r.weight;
    }
    let score = if weights > 0.0 {
        weighted / weights
    } else {
        crate::state::reputation::SCORE_UNKNOWN
    };
    PlatformStanding {
        settled,
        score,
        refuted,
        on_probation,
    }
}

fn view(picture: &Picture, supply: SupplyView, cancel_as: Option<String>, now: Timestamp) -> View {
    let ledger = &picture.ledger;
    let platforms = picture
        .platforms
        .values()
        .map(|p| {
            let standing = standing_of(picture.reputations.values().filter(|r| r.platform == p.platform), now);
            PlatformView {
                platform: p.platform.clone(),
                healthy: p.is_healthy(now),
                load: p.load,
                capacity: p.capacity,
                operations: p.operations.clone(),
                settled: standing.settled,
                score: standing.score,
                refuted: standing.refuted,
                on_probation: standing.on_probation,
            }
        })
        .collect();
    let accounts = ledger
        .accounts
        .values()
        .map(|a| AccountView {
            lct: a.lct.to_string(),
            balance: atp(a.balance_uatp),
            locked: atp(a.locked_uatp),
            earned: atp(a.earned_uatp),
            spent: atp(a.spent_uatp),
        })
        .collect();
    // A task's status: the two parts its lock's parties wrote (see `state::task_board`).
    let status = |lock: &crate::ledger::model::Lock| {
        let parties = TaskParties {
            task_id: lock.task_id.clone(),
            delegator: lock.delegator.platform().to_owned(),
            executor: lock.executor.platform().to_owned(),
        };
        parties.merge(
            picture.tasks.get(&parties.delegator_key()),
            picture.tasks.get(&parties.executor_key()),
        )
    };
    let operation = |lock: &crate::ledger::model::Lock| status(lock).map(|t| t.operation).unwrap_or_default();
    let mut in_flight = Vec::new();
    let mut recent = Vec::new();
    for lock in ledger.locks.values() {
        let task_id = lock.task_id.as_str();
        match (&lock.settlement, lock.state) {
            (None, _) => in_flight.push(InFlightView {
                task_id: task_id.to_owned(),
                delegator: lock.delegator.platform().to_owned(),
                executor: lock.executor.platform().to_owned(),
                operation: operation(lock),
                state: status(lock)
                    .and_then(|t| serde_json::to_value(t.state).ok())
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "locked".to_owned()),
                budget: atp(lock.amount_uatp),
                age_seconds: now.duration_since(lock.created_at).as_secs_f64(),
            }),
            (Some(settlement), state) => recent.push(OutcomeView {
                task_id: task_id.to_owned(),
                delegator: lock.delegator.platform().to_owned(),
                executor: lock.executor.platform().to_owned(),
                operation: operation(lock),
                outcome: serde_json::to_value(state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                reason: settlement.reason.map(|r| r.to_string()).unwrap_or_default(),
                quality: settlement.quality,
                latency_ms: settlement.at.duration_since(lock.created_at).as_secs_f64() * 1e3,
                paid: atp(settlement.paid_uatp),
                refunded: atp(settlement.refunded_uatp),
                at: settlement.at,
            }),
        }
    }
    let settled_lately = recent
        .iter()
        .filter(|o| now.duration_since(o.at) <= RATE_WINDOW)
        .count();
    recent.sort_by_key(|o| std::cmp::Reverse(o.at));
    recent.truncate(RECENT_OUTCOMES_SHOWN);
    in_flight.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
    View {
        now,
        ledger_revision: ledger.revision,
        platforms,
        accounts,
        supply,
        in_flight,
        recent,
        dead_letters: picture.dead.iter().cloned().collect(),
        dead_letters_unreadable: picture.dead_letters_unreadable.clone(),
        // A rate per second: the one place seconds are an f64 on purpose.
        delegations_per_second: settled_lately as f64 / RATE_WINDOW.as_secs_f64(),
        cancel_as,
    }
}

fn micros_to_atp(micros: u128) -> f64 {
    micros as f64 / 1e6
}
