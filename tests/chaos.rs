//! The chaos run: N delegations across a hub-leaf deployment (real servers, ledger, workers)
//! while faults are injected at random: SIGKILLed workers, ledger instances, delegator
//! processes, leaf and hub servers, and cut leaf links. Then a report: delegations, faults,
//! outcomes by kind, ATP lost or minted (must be 0), double settlements (must be 0), the
//! longest hold against its expiry window.
//!
//! `cargo test --test chaos` runs a small N. A bigger run, against its own local deployment:
//! `SAGEFED_CHAOS_DELEGATIONS=10000 cargo test --release --test chaos -- --nocapture`
//! (`SAGEFED_CHAOS_SEED` repeats a run's fault sequence).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::federation::PLATFORMS;
use common::topology::Deployment;
use sage_federation::delegation::client::{DelegationRequest, FederationClient};
use sage_federation::ledger::audit::audit;
use sage_federation::ledger::model::LockState;
use sage_federation::nats::topology::Topology;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::task::TaskId;
use serde_json::json;

const DELEGATIONS_ENV: &str = "SAGEFED_CHAOS_DELEGATIONS";
const SEED_ENV: &str = "SAGEFED_CHAOS_SEED";
/// Delegations when the environment does not say (what CI runs).
const DELEGATIONS_DEFAULT: usize = 300;
/// Delegations in flight at once, over all delegators.
const IN_FLIGHT: usize = 16;
/// One delegation in this many runs as its own `sagefed delegate` process (killable).
const PROCESS_EVERY: usize = 25;
/// Time between faults, and how long a killed part stays down.
const FAULT_INTERVAL: Duration = Duration::from_millis(1500);
const DOWN_FOR: Duration = Duration::from_millis(1500);
/// A task's timeout: short, so that locks of lost tasks expire within the run.
const TASK_TIMEOUT_SECONDS: u64 = 5;
/// How long after the last fault every lock must have settled (expiry + the sweeper).
const SETTLE_WITHIN: Duration = Duration::from_secs(240);

/// xorshift64*: a reproducible fault sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    KillLedger,
    KillDelegatorProcess,
    KillLeafServer,
    KillHubServer,
    CutLink,
}

const FAULTS: [Fault; 6] = [
    Fault::KillWorker,
    Fault::KillLedger,
    Fault::KillDelegatorProcess,
    Fault::KillLeafServer,
    Fault::KillHubServer,
    Fault::CutLink,
];

fn request(task_id: &TaskId, to: &str) -> DelegationRequest {
    DelegationRequest {
        to: Some(to.to_owned()),
        task_type: "consciousness".into(),
        operation: "perception".into(),
        budget: 1.0,
        timeout_seconds: TASK_TIMEOUT_SECONDS,
        parameters: json!({"length": 100, "seed": 3}).as_object().cloned().expect("object"),
        task_id: Some(task_id.clone()),
    }
}

/// Another platform than `from`, chosen by `i`.
fn target(from: &str, i: usize) -> &'static str {
    let others: Vec<&str> = PLATFORMS.iter().copied().filter(|p| *p != from).collect();
    others[i % others.len()]
}

/// The delegator processes in flight, by pid, that a fault may SIGKILL.
type Running = Arc<std::sync::Mutex<Vec<u32>>>;

async fn inject(d: &mut Deployment, fault: Fault, rng: &mut Rng, running: &Running) {
    let platform = PLATFORMS[rng.next(PLATFORMS.len())];
    let leaf = PLATFORMS[1 + rng.next(PLATFORMS.len() - 1)];
    match fault {
        Fault::KillWorker => {
            d.kill_worker(platform);
            tokio::time::sleep(DOWN_FOR).await;
            d.spawn_worker(platform);
        }
        Fault::KillLedger => {
            d.kill_ledgers_on(PLATFORMS[0]);
            tokio::time::sleep(DOWN_FOR).await;
            d.spawn_ledger(PLATFORMS[0]);
        }
        Fault::KillDelegatorProcess => {
            let pid = {
                let pids = running.lock().expect("pids");
                pids.get(rng.next(pids.len().max(1))).copied()
            };
            if let Some(pid) = pid {
                // SAFETY: kill(2) on a child we spawned; no memory is touched.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        Fault::KillLeafServer | Fault::KillHubServer => {
            let machine = if fault == Fault::KillHubServer {
                PLATFORMS[0]
            } else {
                leaf
            };
            d.servers.get_mut(machine).expect("server").kill();
            tokio::time::sleep(DOWN_FOR).await;
            d.servers.get_mut(machine).expect("server").start();
        }
        Fault::CutLink => {
            d.links[leaf].cut();
            tokio::time::sleep(DOWN_FOR).await;
            d.links[leaf].heal();
        }
    }
}

/// One delegation: in this process, or as a `sagefed delegate` process a fault may kill
/// (its task id is its own; the ledger's audit covers its lock). Returns its outcome's kind
/// as the delegator saw it.
async fn delegate(
    i: usize,
    id: TaskId,
    clients: Arc<BTreeMap<&'static str, FederationClient>>,
    configs: Arc<BTreeMap<String, std::path::PathBuf>>,
    running: Running,
) -> String {
    let from = PLATFORMS[i % PLATFORMS.len()];
    let to = target(from, i / PLATFORMS.len());
    if i.is_multiple_of(PROCESS_EVERY) {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sagefed"))
            .args(["delegate", "--json", "--config"])
            .arg(&configs[from])
            .args(["--to", to, "--operation", "perception", "--budget", "1"])
            .args(["--timeout", &TASK_TIMEOUT_SECONDS.to_string()])
            .args(["--params", r#"{"length":100,"seed":3}"#])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sagefed delegate");
        let pid = child.id().unwrap_or_default();
        running.lock().expect("pids").push(pid);
        let output = child.wait_with_output().await.expect("delegate process");
        running.lock().expect("pids").retain(|p| *p != pid);
        return match output.status.code() {
            None => "delegator process killed".to_owned(),
            Some(0) => "process: settled".to_owned(),
            Some(_) => "process: failed".to_owned(),
        };
    }
    match clients[from].delegate_task(request(&id, to)).await {
        Ok(o) => format!("settled {:?}", o.settlement),
        Err(_) => "failed".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_no_atp_and_settles_nothing_twice() {
    let n: usize = std::env::var(DELEGATIONS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DELEGATIONS_DEFAULT);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Timestamp::now().as_unix_seconds().to_bits() | 1);
    let mut d = Deployment::start(Topology::HubLeaf).await;
    assert!(d.plan.install_dir.is_none(), "a deployment of its own");
    let supply_before = d.snapshot().await.supply.total_uatp;
    let mut clients = BTreeMap::new();
    for platform in PLATFORMS {
        clients.insert(platform, d.client(platform).await);
    }
    let clients = Arc::new(clients);
    let configs = Arc::new(d.configs.clone());
    let running: Running = Arc::default();
    let ids: Vec<TaskId> = (0..n).map(|_| TaskId::random().expect("id")).collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let runs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (gate, id) = (gate.clone(), id.clone());
            let (clients, configs, running) = (clients.clone(), configs.clone(), running.clone());
            tokio::spawn(async move {
                let _slot = gate.acquire_owned().await.expect("gate");
                delegate(i, id, clients, configs, running).await
            })
        })
        .collect();

    let mut rng = Rng(seed);
    let mut faults: BTreeMap<Fault, usize> = BTreeMap::new();
    while !runs.iter().all(|r| r.is_finished()) {
        tokio::time::sleep(FAULT_INTERVAL).await;
        let fault = FAULTS[rng.next(FAULTS.len())];
        inject(&mut d, fault, &mut rng, &running).await;
        *faults.entry(fault).or_default() += 1;
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for run in runs {
        *seen.entry(run.await.expect("delegation")).or_default() += 1;
    }
    let ran_for = started.elapsed();

    // Every lock settles: by its executor, its delegator, or the sweeper after expiry.
    let deadline = Instant::now() + SETTLE_WITHIN;
    let snapshot = loop {
        let snapshot = d.snapshot().await;
        let pending = snapshot
            .locks
            .values()
            .filter(|l| l.state == LockState::Pending)
            .count();
        if pending == 0 {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "{pending} locks never settled");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let report = audit(&snapshot, Timestamp::now());
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut longest_hold = (0.0f64, 0.0f64);
    let mut longest_held: Option<TaskId> = None;
    let in_process: Vec<&TaskId> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !i.is_multiple_of(PROCESS_EVERY))
        .map(|(_, id)| id)
        .collect();
    for id in &in_process {
        let lock = snapshot.locks.values().find(|l| &&l.task_id == id);
        let kind = match lock {
            None => "never locked (failed before locking)".to_owned(),
            Some(l) => {
                let settlement = l.settlement.as_ref().expect("settled lock has its settlement");
                let held = settlement.at.seconds_since(l.created_at);
                if held > longest_hold.0 {
                    longest_hold = (held, l.expires_at.seconds_since(l.created_at));
                    longest_held = Some(l.task_id.clone());
                }
                format!("{:?} {:?} by {}", l.state, settlement.reason, settlement.by)
            }
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    let balances: u128 = snapshot
        .accounts
        .values()
        .map(|a| u128::from(a.balance_uatp.micros()))
        .sum();
    let locked: u128 = snapshot
        .accounts
        .values()
        .map(|a| u128::from(a.locked_uatp.micros()))
        .sum();
    let supply = u128::from(snapshot.supply.total_uatp.micros());
    let minted = (balances + locked) as i128 - supply as i128;
    let supply_change = snapshot.supply.total_uatp.micros() as i128 - supply_before.micros() as i128;
    // A lock settled twice would show as a second settlement of one task in the journal, or
    // an account whose flows do not add up: the audit's violations.
    let double_settlements = report.violations.len();
    eprintln!(
        "chaos report (seed {seed})\n  delegations      {n} in {ran_for:?}\n  faults           {faults:?}\n  \
         as delegators saw them {seen:?}\n  outcomes in the ledger (in-process delegations) {outcomes:#?}\n  ATP lost or minted {minted} uATP \
         (supply changed by {supply_change})\n  double settlements / audit violations {double_settlements}\n  \
         longest hold     {:.1} s of its {:.1} s window",
        longest_hold.0, longest_hold.1
    );
    eprintln!("{}", hold_story(&d.ledger_logs(), longest_held.as_ref()));
    assert_eq!(outcomes.values().sum::<usize>(), in_process.len());
    assert_eq!(seen.values().sum::<usize>(), n);
    assert!(faults.values().sum::<usize>() > 0, "no fault was injected");
    assert_eq!(minted, 0, "ATP lost or minted");
    assert_eq!(supply_change, 0, "the supply changed");
    assert!(report.violations.is_empty(), "audit: {:#?}", report.violations);
    assert!(
        longest_hold.0 <= longest_hold.1 + 30.0,
        "a lock was held {:.1} s past its {:.1} s window",
        longest_hold.0,
        longest_hold.1
    );
    d.wait_ledger().await;
    d.assert_audit_clean().await;
}

/// What the ledger instances' logs say about the longest-held lock and about what delays a
/// sweep: every line naming the lock, how long each restarted sweeper took to replay the
/// locks bucket (the newest, pending, locks come last), and how often an expiry or a batch
/// failed. So that a hold past its window explains itself.
fn hold_story(logs: &str, task: Option<&TaskId>) -> String {
    let plain: Vec<String> = logs.lines().map(without_colours).collect();
    let lines: Vec<&str> = plain.iter().map(String::as_str).collect();
    let named: Vec<&str> = task.map_or_else(Vec::new, |t| {
        lines.iter().copied().filter(|l| l.contains(t.as_str())).collect()
    });
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    let slowest_catch_up = lines
        .iter()
        .filter(|l| l.contains("lock sweeper caught up"))
        .max_by(|a, b| catch_up_seconds(a).total_cmp(&catch_up_seconds(b)));
    format!(
        "the longest hold in the ledger logs\n  lines naming it:\n    {}\n  sweeper starts {} (slowest catch-up: {})\n  \
         expiries refused {}, ledger batches failed {}",
        named.join("\n    "),
        count("lock sweeper caught up"),
        slowest_catch_up.unwrap_or(&"none"),
        count("could not expire a lock"),
        count("ledger batch failed"),
    )
}

/// `line` without its terminal colour codes (`ESC [ ... m`).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `seconds=` field of a sweeper's catch-up line.
fn catch_up_seconds(line: &str) -> f64 {
    line.split("seconds=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}
