//! Hub and leaves for real: Legion's hub (JetStream, the ledger) and a leaf nats-server for
//! Thor and for Sprout, each a separate process on its own ports, linked over TLS with the
//! platform's nkey as `sagefed init --topology hub-leaf` configured them; each platform's
//! worker and delegators connect to their own machine's server.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::topology::Deployment;
use common::{lct, micros, outcome_of};
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest};
use sage_federation::delegation::scenarios::{self, Scenario};
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::ledger::model::LockState;
use sage_federation::nats::subjects;
use sage_federation::nats::topology::Topology;
use sage_federation::protocol::envelope::{Signer, Verified};
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::TaskId;
use serde_json::json;

const C: &str = "consciousness";

/// Runs `scenario` as a `sagefed delegate` process on the delegator's own machine, checks
/// it settled as the seed says, and applies what was paid to `expected`.
pub fn run_scenario(d: &Deployment, scenario: &Scenario, expected: &mut BTreeMap<String, i64>) -> DelegationOutcome {
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
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenarios_settle_across_hub_and_leaves_with_exact_balances() {
    let d = Deployment::start(Topology::HubLeaf).await;
    let mut expected = d.balances().await;
    for scenario in scenarios::seed() {
        run_scenario(&d, &scenario, &mut expected);
        assert_eq!(d.balances().await, expected, "after {}", scenario.name);
    }
    for i in 0..scenarios::CONCURRENT_DELEGATIONS {
        let o = run_scenario(&d, &scenarios::concurrent(i), &mut expected);
        assert_ne!(o.from, o.to);
    }
    assert_eq!(d.balances().await, expected, "after the concurrent delegations");
    d.assert_audit_clean().await;
}

/// Delegations in the link-cut test, started this far apart (each waits for no other, so
/// some start while the link is down).
const LINK_CUT_DELEGATIONS: usize = 500;
const LINK_CUT_SPACING: Duration = Duration::from_millis(8);
const LINK_CUT_TASK_TIMEOUT_SECONDS: u64 = 5;
/// When the link is cut (after the first delegations started) and for how long.
const LINK_CUT_AT: Duration = Duration::from_millis(1500);
const LINK_CUT_FOR: Duration = Duration::from_secs(2);
/// A delegation that starts while the link is down fails within this (the ledger client's
/// retries), never waiting for the link.
const FAIL_FAST_WITHIN: Duration = Duration::from_secs(5);

fn small_task(task_id: &TaskId) -> DelegationRequest {
    DelegationRequest {
        to: Some("Legion".into()),
        task_type: C.into(),
        operation: "perception".into(),
        budget: 1.0,
        timeout_seconds: LINK_CUT_TASK_TIMEOUT_SECONDS,
        parameters: json!({"length": 100, "seed": 1}).as_object().cloned().expect("object"),
        task_id: Some(task_id.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_link_cut_during_500_delegations_loses_nothing_and_pays_nothing_twice() {
    // The executors' rate limit is not what this test is about.
    let d = Deployment::start_with(Topology::HubLeaf, &|_, text| {
        text.replace("requests_per_minute = 60", "requests_per_minute = 100000")
    })
    .await;
    let supply_before = d.snapshot().await.supply.total_uatp;
    let thor = std::sync::Arc::new(d.client("Thor").await);
    let ids: Vec<TaskId> = (0..LINK_CUT_DELEGATIONS)
        .map(|_| TaskId::random().expect("id"))
        .collect();
    let started = Instant::now();
    let runs: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (thor, id) = (thor.clone(), id.clone());
            tokio::spawn(async move {
                tokio::time::sleep(LINK_CUT_SPACING * i as u32).await;
                let began = Instant::now();
                (thor.delegate_task(small_task(&id)).await, began, began.elapsed())
            })
        })
        .collect();
    let link = &d.links["Thor"];
    tokio::time::sleep(LINK_CUT_AT).await;
    link.cut();
    let cut_at = Instant::now();
    tokio::time::sleep(LINK_CUT_FOR).await;
    link.heal();
    let healed_at = Instant::now();
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.expect("delegation task"));
    }
    eprintln!("500 delegations with a link cut ran in {:?}", started.elapsed());

    // After the link returns, every lock settles exactly once (the executor's commit, the
    // delegator's rollback, or the sweeper's refund after expiry), and nothing was minted.
    let deadline = Instant::now() + Duration::from_secs(180);
    let snapshot = loop {
        let snapshot = d.snapshot().await;
        let pending = snapshot
            .locks
            .values()
            .filter(|l| ids.contains(&l.task_id) && l.state == LockState::Pending)
            .count();
        if pending == 0 {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "{pending} locks never settled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let locks: BTreeMap<&TaskId, LockState> = snapshot.locks.values().map(|l| (&l.task_id, l.state)).collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut started_while_cut = 0;
    for (id, (result, began, took)) in ids.iter().zip(&results) {
        // Started in the first half of the cut (the leaf notices a cut at once: its socket
        // closes), so it has a second of link down to fail in.
        let while_cut = *began > cut_at && *began < healed_at - LINK_CUT_FOR / 2;
        if while_cut {
            started_while_cut += 1;
        }
        let kind = match (result, locks.get(id)) {
            (Ok(o), Some(state)) => {
                assert_eq!(o.settlement, *state, "{id}: the delegator saw {o:?}");
                format!("settled: {:?} {:?}", o.settlement, o.rollback_reason)
            }
            (Ok(o), None) => panic!("{id} settled without a lock: {o:?}"),
            (Err(e), lock) => {
                if while_cut {
                    assert!(*took < FAIL_FAST_WITHIN, "{id} took {took:?} to fail: {e}");
                }
                match lock {
                    Some(state) => format!("failed, then settled by the ledger: {state:?}"),
                    None => "failed before locking".to_owned(),
                }
            }
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    eprintln!("link cut outcomes ({started_while_cut} started while it was cut): {outcomes:#?}");
    assert!(started_while_cut > 0, "no delegation started while the link was cut");
    assert_eq!(outcomes.values().sum::<usize>(), LINK_CUT_DELEGATIONS);
    assert!(
        outcomes.contains_key("failed before locking"),
        "the cut made no delegation fail fast: {outcomes:?}"
    );
    assert!(
        outcomes.keys().filter(|k| k.starts_with("settled: Committed")).count() > 0,
        "{outcomes:?}"
    );
    assert_eq!(snapshot.supply.total_uatp, supply_before, "ATP minted or lost");

    // What a user sees: `sagefed delegate` on Thor while its link is down fails at once and
    // says what to check.
    link.cut();
    let began = Instant::now();
    let output = d.delegate_cli("Thor", &scenarios::seed()[0].cli_args());
    link.heal();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("link to the hub is down"), "{stderr}");
    assert!(began.elapsed() < FAIL_FAST_WITHIN * 2, "took {:?}", began.elapsed());
    assert_eq!(d.snapshot().await.supply.total_uatp, supply_before);
    d.assert_audit_clean().await;
}

/// Sprout's signed "completed" proof of Thor's `task_id`, with a result of its own.
fn forged_proof(d: &Deployment, task_id: &TaskId) -> bytes::Bytes {
    let key = sage_federation::identity::keys::read_secret(&d.config("Sprout").keypair_path()).expect("key");
    let sprout = Signer::new("Sprout", key).expect("signer");
    common::signed_proof(
        &sprout,
        task_id,
        &lct("Thor", C),
        &lct("Sprout", C),
        1.0,
        1.0,
        ProofStatus::Completed,
    )
}

/// Publishes `wire` on `subject` through `client` as a JetStream message; whether the proofs
/// stream stored it.
async fn stored(client: &async_nats::Client, subject: String, wire: bytes::Bytes) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, "a-fresh-message-id");
    match js.publish_with_headers(subject, headers, wire).await {
        Ok(ack) => matches!(tokio::time::timeout(Duration::from_secs(5), ack).await, Ok(Ok(ack)) if !ack.duplicate),
        Err(_) => false,
    }
}

/// Issue #9 item 5 across a leaf link: a platform on a leaf publishes only in its own proof
/// slots. The hub must propagate the proofs stream's interest over each link (or no leaf
/// executor's proof is stored) without letting a leaf write another executor's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_platform_cannot_write_another_executors_proof_slot() {
    let d = Deployment::start(Topology::HubLeaf).await;
    // Thor (a leaf) delegates to Legion (the hub's platform), and to Sprout (the other leaf):
    // both executors' proofs reach the stream.
    let thor = d.client("Thor").await;
    let mut tasks = BTreeMap::new();
    for executor in ["Legion", "Sprout"] {
        let task_id = TaskId::random().expect("id");
        let request = DelegationRequest {
            to: Some(executor.into()),
            ..small_task(&task_id)
        };
        let outcome = thor.delegate_task(request).await.expect("settles");
        assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
        tasks.insert(executor, task_id);
    }

    // Sprout, from its own leaf, tries to overwrite Legion's proof of Thor's task.
    let sprout = d.connect("Sprout").await;
    let legion_task = &tasks["Legion"];
    let legion_slot = subjects::proof("Thor", "Legion", legion_task.as_str());
    assert!(
        !stored(&sprout, legion_slot.clone(), forged_proof(&d, legion_task)).await,
        "the hub stored Sprout's proof in Legion's slot"
    );
    // Its own slot works through the same link (the refusal above is not a dead link).
    let own_slot = subjects::proof("Thor", "Sprout", legion_task.as_str());
    assert!(
        stored(&sprout, own_slot, forged_proof(&d, legion_task)).await,
        "Sprout's own slot is writable"
    );
    // Legion, on the hub, cannot write Sprout's slot either.
    let legion = d.connect("Legion").await;
    let sprout_task = &tasks["Sprout"];
    let sprout_slot = subjects::proof("Thor", "Sprout", sprout_task.as_str());
    assert!(
        !stored(&legion, sprout_slot, bytes::Bytes::from_static(b"junk")).await,
        "the hub stored Legion's message in Sprout's slot"
    );

    // The slot still holds Legion's signed proof.
    let js = async_nats::jetstream::new(d.connect("Thor").await);
    let stream = js.get_stream(subjects::PROOFS_STREAM).await.expect("proofs stream");
    let kept = stream
        .direct_get_last_for_subject(legion_slot)
        .await
        .expect("the task's proof is stored");
    let keys = KeyDirectory::open(&js, &d.root()).await.expect("keys");
    let proof: Verified<ExecutionProof> = keys.verify(&kept.payload).await.expect("signed");
    assert_eq!(proof.executor_lct.platform(), "Legion", "{proof:?}");
    d.assert_audit_clean().await;
}
