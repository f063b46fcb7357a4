//! A three-node cluster for real: three nats-server processes with routes over mutual TLS
//! as `sagefed init --topology cluster` configured them, R3 streams and buckets, a ledger
//! instance on each node, and each platform's worker and delegators on its own node.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::topology::Deployment;
use common::{lct, micros, outcome_of};
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::delegation::scenarios;
use sage_federation::ledger::model::LockState;
use sage_federation::nats::subjects;
use sage_federation::nats::topology::{CLUSTER_REPLICAS, Topology};
use sage_federation::protocol::task::TaskId;
use serde_json::json;

const C: &str = "consciousness";
/// Delegations during which a node is SIGKILLed.
const NODE_LOSS_DELEGATIONS: usize = 200;
const NODE_LOSS_IN_FLIGHT: usize = 10;
/// The node lost: Sprout's machine (the delegator Thor and the executor Legion are elsewhere).
const LOST_NODE: &str = "Sprout";

/// One 3-node cluster at a time: two clusters loading 2 cores at once slow a leader election
/// past the delegations' publish retries, and the node-loss test then measures the machine.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenarios_settle_across_the_cluster_with_exact_balances() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let d = Deployment::start(Topology::Cluster).await;
    assert_replicas(&d, CLUSTER_REPLICAS).await;
    let mut expected = d.balances().await;
    let mut all = scenarios::seed();
    all.extend((0..scenarios::CONCURRENT_DELEGATIONS).map(scenarios::concurrent));
    for scenario in all {
        let o = outcome_of(&d.delegate_cli(scenario.from, &scenario.cli_args()));
        assert_eq!(
            (o.settlement, o.rollback_reason),
            scenario.expected,
            "{}: {o:?}",
            scenario.name
        );
        let consumed = micros(o.atp_consumed);
        *expected
            .entry(lct(&o.from, scenario.task_type).to_string())
            .or_default() -= consumed;
        *expected.entry(lct(&o.to, scenario.task_type).to_string()).or_default() += consumed;
        assert_eq!(d.balances().await, expected, "after {}", scenario.name);
    }
    d.assert_audit_clean().await;
}

/// Every stream and bucket has `replicas` replicas, all current.
async fn assert_replicas(d: &Deployment, replicas: usize) {
    let js = async_nats::jetstream::new(d.admin().await);
    let deadline = Instant::now() + Duration::from_secs(60);
    for stream in [
        subjects::TASKS_STREAM.to_owned(),
        subjects::PROOFS_STREAM.to_owned(),
        subjects::kv_stream(subjects::LEDGER_BUCKET),
        subjects::kv_stream(subjects::TASKS_BUCKET),
    ] {
        loop {
            let info = js
                .get_stream(&stream)
                .await
                .expect("stream")
                .info()
                .await
                .expect("info")
                .clone();
            assert_eq!(info.config.num_replicas, replicas, "{stream}");
            let cluster = info.cluster.expect("clustered");
            let current = cluster.replicas.iter().filter(|r| r.current).count();
            if cluster.leader.is_some() && current + 1 == replicas {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{stream}: leader {:?}, {current} current replicas",
                cluster.leader
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn small_task(task_id: &TaskId) -> DelegationRequest {
    DelegationRequest {
        to: Some("Legion".into()),
        task_type: C.into(),
        operation: "perception".into(),
        budget: 1.0,
        timeout_seconds: 10,
        parameters: json!({"length": 100, "seed": 2}).as_object().cloned().expect("object"),
        task_id: Some(task_id.clone()),
    }
}

/// The lock state of every task in `ids` the ledger holds.
async fn lock_states(d: &Deployment, ids: &[TaskId]) -> BTreeMap<TaskId, LockState> {
    d.snapshot()
        .await
        .locks
        .values()
        .filter(|l| ids.contains(&l.task_id))
        .map(|l| (l.task_id.clone(), l.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_acknowledged_and_rejoins_and_a_full_restart_loses_nothing() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut d = Deployment::start(Topology::Cluster).await;
    assert_replicas(&d, CLUSTER_REPLICAS).await;
    let supply = d.snapshot().await.supply.total_uatp;
    let thor = Arc::new(d.client("Thor").await);
    let ids: Vec<TaskId> = (0..NODE_LOSS_DELEGATIONS)
        .map(|_| TaskId::random().expect("id"))
        .collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(NODE_LOSS_IN_FLIGHT));
    let runs: Vec<_> = ids
        .iter()
        .map(|id| {
            let (thor, gate, id) = (thor.clone(), gate.clone(), id.clone());
            tokio::spawn(async move {
                let _slot = gate.acquire_owned().await.expect("gate");
                thor.delegate_task(small_task(&id)).await
            })
        })
        .collect();
    // SIGKILL one node (and the ledger instance on it) while the delegations run.
    tokio::time::sleep(Duration::from_millis(700)).await;
    d.servers.get_mut(LOST_NODE).expect("node").kill();
    d.kill_ledgers_on(LOST_NODE);
    let mut settled: BTreeMap<TaskId, LockState> = BTreeMap::new();
    let mut failed = 0;
    for (id, run) in ids.iter().zip(runs) {
        match run.await.expect("delegation task") {
            Ok(o) => {
                settled.insert(id.clone(), o.settlement);
            }
            Err(e) => {
                // The first few causes, so a failing run says why.
                if failed < 3 {
                    eprintln!("delegation {id} failed: {e:#}");
                }
                failed += 1;
            }
        }
    }
    eprintln!("node loss: {} settled, {failed} failed", settled.len());
    // The ledger kept serving: most delegations settled, and every one a delegator saw
    // settled is settled so in the ledger.
    assert!(
        settled.len() > NODE_LOSS_DELEGATIONS / 2,
        "{} of {NODE_LOSS_DELEGATIONS} settled",
        settled.len()
    );
    let states = lock_states(&d, &ids).await;
    for (id, state) in &settled {
        assert_eq!(states.get(id), Some(state), "{id}: acknowledged as {state:?}");
    }
    // The node comes back and catches up.
    d.servers.get_mut(LOST_NODE).expect("node").start();
    d.spawn_ledger(LOST_NODE);
    assert_replicas(&d, CLUSTER_REPLICAS).await;
    d.assert_audit_clean().await;

    // The whole cluster SIGKILLed and restarted loses nothing.
    let before = d.snapshot().await;
    for server in d.servers.values_mut() {
        server.kill();
    }
    for server in d.servers.values_mut() {
        server.start();
    }
    d.wait_jetstream_everywhere().await;
    assert_replicas(&d, CLUSTER_REPLICAS).await;
    let after = d.snapshot().await;
    assert_eq!(after.accounts, before.accounts, "accounts after a full restart");
    let lock_state = |s: &sage_federation::ledger::snapshot::LedgerSnapshot| -> BTreeMap<String, LockState> {
        s.locks.iter().map(|(k, l)| (k.clone(), l.state)).collect()
    };
    assert_eq!(lock_state(&after), lock_state(&before), "locks after a full restart");
    assert_eq!(after.supply.total_uatp, supply, "supply");
    d.wait_ledger().await;
    d.assert_audit_clean().await;
}
