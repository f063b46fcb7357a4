//! The seed's delegation flow across separate OS processes: nats-server, `sagefed ledger
//! serve`, a `sagefed worker` per platform, and delegators (`sagefed delegate` processes and
//! in-test clients). Exact ATP balances after each scenario; the audit after every test.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::federation::{Processes, hand_task, publish_to_legion};
use common::{lct, micros, outcome_of};
use futures::StreamExt;
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest};
use sage_federation::delegation::scenarios::{self, Scenario};
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::proof::ProofStatus;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::{TaskBoard, TaskState};
use sage_federation::{delegation::status, identity::keys, nats::subjects};
use serde_json::{Value, json};

const C: &str = "consciousness";
const CS: &str = "consciousness.sage";
const ATP: i64 = 1_000_000;

/// Every account's balance, in micro-ATP.
/// Applies a committed outcome to expected balances.
fn pay(expected: &mut BTreeMap<String, i64>, o: &DelegationOutcome, task_type: &str) {
    let consumed = micros(o.atp_consumed);
    *expected.entry(lct(&o.from, task_type).to_string()).or_default() -= consumed;
    *expected.entry(lct(&o.to, task_type).to_string()).or_default() += consumed;
}

/// Runs `scenario` as a `sagefed delegate` process and checks it settled as the seed says.
fn cli(p: &Processes, scenario: &Scenario) -> DelegationOutcome {
    let args = scenario.cli_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = outcome_of(&p.delegate_cli(scenario.from, &args));
    assert_eq!(
        (o.settlement, o.rollback_reason),
        scenario.expected,
        "{}: {o:?}",
        scenario.name
    );
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenarios_settle_with_exact_balances() {
    let p = Processes::start().await;
    let mut expected = p.balances().await;
    assert_eq!(expected[&lct("Thor", CS).to_string()], 2000 * ATP);

    let seed = scenarios::seed();
    let [directions @ .., low_quality, timeout, denied] = seed.as_slice() else {
        panic!("the seed has three directions and three failures");
    };

    // 1. Thor -> Legion: planning, paid exactly what the search expanded.
    let o = cli(&p, &directions[0]);
    assert_eq!(o.quality, Some(1.0), "{o:?}");
    let nodes = o.result["nodes_expanded"].as_i64().expect("nodes_expanded");
    assert_eq!(
        micros(o.atp_consumed),
        10_000 + 1_000 * nodes,
        "0.01 ATP + 0.001 ATP per node expanded"
    );
    assert_eq!(micros(o.atp_consumed + o.atp_refunded), 10 * ATP);
    pay(&mut expected, &o, CS);
    assert_eq!(p.balances().await, expected, "after Thor -> Legion");

    // 2. Sprout -> Legion: perception of 4096 samples at 0.00001 ATP each.
    let o = cli(&p, &directions[1]);
    assert_eq!(micros(o.atp_consumed), 40_960, "{o:?}");
    pay(&mut expected, &o, C);
    assert_eq!(p.balances().await, expected, "after Sprout -> Legion");

    // 3. Legion -> Thor: the other direction.
    let o = cli(&p, &directions[2]);
    assert_eq!(micros(o.atp_consumed), 1_200, "{o:?}");
    pay(&mut expected, &o, C);
    assert_eq!(p.balances().await, expected, "after Legion -> Thor");

    // 4. Ten concurrent delegations from two clients (separate processes), placed automatically.
    let runs: Vec<_> = (0..scenarios::CONCURRENT_DELEGATIONS)
        .map(|i| {
            let scenario = scenarios::concurrent(i);
            let config = p.configs[scenario.from].clone();
            std::thread::spawn(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_sagefed"))
                    .args(["delegate", "--json", "--config"])
                    .arg(config)
                    .args(scenario.cli_args())
                    .output()
                    .expect("run sagefed delegate")
            })
        })
        .collect();
    for run in runs {
        let o = outcome_of(&run.join().expect("thread"));
        assert_eq!(
            (o.settlement, micros(o.atp_consumed)),
            (LockState::Committed, 10_000),
            "{o:?}"
        );
        assert_ne!(o.from, o.to);
        pay(&mut expected, &o, C);
    }
    assert_eq!(p.balances().await, expected, "after 10 concurrent delegations");

    // 5. Quality below the threshold: nothing paid, everything refunded.
    let o = cli(&p, low_quality);
    assert_eq!((micros(o.atp_consumed), micros(o.atp_refunded)), (0, 5 * ATP));
    assert!(o.quality.is_some_and(|q| q < 0.7));

    // 6. Failures: a timeout and a permission denial return the locked ATP.
    let o = cli(&p, timeout);
    assert_eq!(o.proof_status, Some(ProofStatus::TimedOut), "{o:?}");
    let o = cli(&p, denied);
    assert!(o.reason.contains("planning:execute"), "{}", o.reason);
    assert_eq!(p.balances().await, expected, "failures changed no balance");

    // A placement nobody can satisfy fails at once, before any ATP moves.
    let started = Instant::now();
    let output = p.delegate_cli("Sprout", &["--operation", "teleport", "--budget", "1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no platform can take this task"));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(p.balances().await, expected);
    p.assert_audit_clean();
}

async fn wait_for_state(p: &Processes, task_id: &TaskId, state: TaskState) {
    let board = TaskBoard::open(&p.nats.js().await).await.expect("board");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some((status, _))) = board.get(task_id).await
            && status.state == state
        {
            return;
        }
        assert!(Instant::now() < deadline, "task {task_id} never reached {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn waiting(ms: u64, timeout: u64, task_id: &TaskId) -> DelegationRequest {
    DelegationRequest {
        to: Some("Legion".into()),
        task_type: C.into(),
        operation: "execution".into(),
        budget: 5.0,
        timeout_seconds: timeout,
        parameters: json!({"steps": [{"op": "wait", "args": [ms]}, {"op": "add", "args": [1, 1]}]})
            .as_object()
            .cloned()
            .expect("object"),
        task_id: Some(task_id.clone()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_aborts_a_running_task_and_a_queued_one_never_runs() {
    let mut p = Processes::start().await;
    let before = p.balances().await;
    let thor = p.client("Thor").await;

    // Running: aborted, everything refunded.
    let task_id = TaskId::random().expect("id");
    let delegation = thor.delegate_task(waiting(20_000, 30, &task_id));
    let cancel = async {
        wait_for_state(&p, &task_id, TaskState::Running).await;
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sagefed"))
            .args(["cancel", task_id.as_str(), "--json", "--config"])
            .arg(&p.configs["Thor"])
            .output()
            .expect("run sagefed cancel");
        serde_json::from_slice::<status::CancelReply>(&output.stdout).expect("cancel reply")
    };
    let started = Instant::now();
    let (outcome, reply) = tokio::join!(delegation, cancel);
    let outcome = outcome.expect("delegation");
    assert!(reply.cancelled && reply.atp_refunded == 5.0, "{reply:?}");
    assert_eq!(
        (outcome.settlement, outcome.rollback_reason),
        (LockState::RolledBack, Some(RollbackReason::Cancelled))
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "aborted, not run to the end"
    );
    assert!(p.worker_log("Legion").contains("aborting a cancelled task"));

    // Queued: the executor's worker is down; cancel; it comes back, does not run it, and
    // acknowledges the cancel by refunding the lock itself.
    p.kill_worker("Legion");
    let queued = TaskId::random().expect("id");
    let thor_signer = thor.signer().clone();
    let client = p.nats.client().await;
    let delegation = {
        let thor = p.client("Thor").await;
        let request = waiting(100, 30, &queued);
        tokio::spawn(async move { thor.delegate_task(request).await })
    };
    wait_for_state(&p, &queued, TaskState::Queued).await;
    let reply = status::cancel_task(&client, &thor_signer, &queued).await;
    p.spawn_worker("Legion");
    let outcome = delegation.await.expect("join");
    // The status service runs in every worker: Thor's and Sprout's still answer. The
    // executor is down, so nobody acknowledges the cancel: the ledger refuses the
    // delegator's own rollback before the deadline, and the cancel stays recorded only.
    let reply = reply.expect("cancel");
    assert!(
        !reply.cancelled && reply.atp_refunded == 0.0 && reply.message.contains("when the executor acknowledges it"),
        "{reply:?}"
    );
    let outcome = outcome.expect("delegation");
    assert_eq!(
        (outcome.settlement, outcome.proof_status),
        (LockState::RolledBack, Some(ProofStatus::Cancelled)),
        "{outcome:?}"
    );
    let board = TaskBoard::open(&p.nats.js().await).await.expect("board");
    let (record, _) = board.get(&queued).await.expect("read").expect("status");
    assert_eq!(
        (record.state, record.stream_sequence),
        (TaskState::Cancelled, None),
        "never claimed, never run"
    );

    let lct_status = status::lct(&client, &lct("Thor", C)).await.expect("status");
    assert_eq!((lct_status.tasks_running, lct_status.atp_consumed), (0, 0.0));
    assert_eq!(p.balances().await, before);
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_is_redelivered_and_paid_once() {
    let mut p = Processes::start().await;
    let before = p.balances().await;
    let thor = p.client("Thor").await;
    let task_id = TaskId::random().expect("id");
    let delegation = thor.delegate_task(waiting(2_000, 30, &task_id));
    let killer = async {
        wait_for_state(&p, &task_id, TaskState::Running).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.kill_worker("Legion");
        p.spawn_worker("Legion");
    };
    let (outcome, ()) = tokio::join!(delegation, killer);
    let outcome = outcome.expect("delegation");
    assert_eq!(
        (outcome.settlement, micros(outcome.atp_consumed)),
        (LockState::Committed, 1_200),
        "{outcome:?}"
    );
    assert!(p.worker_log("Legion").matches("worker ready").count() >= 2);
    let mut expected = before.clone();
    pay(&mut expected, &outcome, C);
    assert_eq!(p.balances().await, expected, "paid exactly once");
    let snapshot = p.snapshot().await;
    let legion = snapshot
        .accounts
        .get(&sage_federation::ledger::model::account_key(&lct("Legion", C)))
        .expect("account");
    assert_eq!(legion.earned_uatp.micros(), 1_200);
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_malformed_tasks_are_refused_and_the_ledger_is_untouched() {
    let p = Processes::start().await;
    let js = p.nats.js().await;
    let client = p.nats.client().await;
    let thor = p.thor();
    let task = |task_id: &TaskId| hand_task(task_id, json!({"steps": [{"op": "add", "args": [1, 2]}]}), 30, 60.0);
    let publish = |bytes: bytes::Bytes, id: String| {
        let js = js.clone();
        async move { publish_to_legion(&js, bytes, &id).await }
    };

    // A genuine task, locked and published by hand, runs once.
    let genuine = TaskId::random().expect("id");
    let wire = thor.sign(&task(&genuine)).expect("sign");
    let ledger = LedgerClient::new(client.clone(), thor.clone());
    let now = Timestamp::now();
    let reply = ledger
        .lock(&LockTerms {
            deadline: now + Duration::from_secs(60),
            expires_at: now + Duration::from_secs(120),
            ..common::lock_terms(&genuine, &lct("Thor", C), &lct("Legion", C), 5.0)
        })
        .await
        .expect("lock");
    assert!(reply.is_ok(), "the lock must apply: {reply:?}");
    publish(wire.clone(), genuine.to_string()).await;
    wait_for_state(&p, &genuine, TaskState::Completed).await;
    let board = TaskBoard::open(&js).await.expect("board");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !board.get(&genuine).await.ok().flatten().is_some_and(|(s, _)| s.settled) {
        assert!(Instant::now() < deadline, "the genuine task was not settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = p.snapshot().await;

    // The same message again within the dedupe window is dropped by the stream itself.
    assert!(publish(wire.clone(), genuine.to_string()).await.duplicate);
    // Replayed under another message id: refused as a replay.
    publish(wire.clone(), "replay-1".into()).await;
    // Forged: Thor's name, another key.
    let impostor = Signer::new("Thor", keys::generate().expect("random")).expect("signer");
    let forged = TaskId::random().expect("id");
    publish(impostor.sign(&task(&forged)).expect("sign"), forged.to_string()).await;
    // Tampered: a genuine envelope with the budget changed after signing.
    let tampered = String::from_utf8(wire.to_vec())
        .expect("utf8")
        .replace("\"atp_budget\":5.0", "\"atp_budget\":500.0");
    publish(bytes::Bytes::from(tampered), "tampered-1".into()).await;
    // Malformed.
    publish(bytes::Bytes::from_static(b"not a task at all"), "junk-1".into()).await;
    publish(bytes::Bytes::from_static(br#"{"kind":"task"}"#), "junk-2".into()).await;
    // Genuine signature, but no ATP locked: refused with a signed proof, nothing to refund.
    let unpaid = TaskId::random().expect("id");
    let mut proofs = client
        .subscribe(subjects::proof("Thor", "Legion", unpaid.as_str()))
        .await
        .expect("subscribe");
    publish(thor.sign(&task(&unpaid)).expect("sign"), unpaid.to_string()).await;
    let refusal = tokio::time::timeout(Duration::from_secs(20), proofs.next())
        .await
        .expect("a refusal")
        .expect("message");
    let refusal: Value = serde_json::from_slice(&refusal.payload).expect("json");
    assert_eq!(refusal["body"]["status"], "rejected");
    assert!(
        refusal["body"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no ATP is locked")),
        "{refusal}"
    );

    // Five dead letters, each saying why.
    // Dead letters are the operator's to read (the admin identity), not the platforms'.
    let operator = async_nats::jetstream::new(p.nats.client_as("Treasury").await);
    let mut dead = operator.get_stream(subjects::DEAD_STREAM).await.expect("dead letters");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.info().await.expect("info").state.messages < 5 {
        assert!(Instant::now() < deadline, "expected 5 dead letters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reasons = Vec::new();
    for sequence in 1..=5 {
        let message = dead.get_raw_message(sequence).await.expect("dead letter");
        reasons.push(
            message
                .headers
                .get(sage_federation::worker::DEAD_REASON_HEADER)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    }
    for expected in ["replay", "signature or key", "malformed"] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no dead letter says {expected:?}: {reasons:?}"
        );
    }

    let after = p.snapshot().await;
    assert_eq!(after.accounts, before.accounts, "no account changed");
    assert!(!after.locks.contains_key(&format!("locks.{forged}")));
    assert_eq!(after.locks.len(), before.locks.len());

    // The worker survived all of it and still works.
    let o = p
        .client("Thor")
        .await
        .delegate_task(waiting(0, 30, &TaskId::random().expect("id")))
        .await
        .expect("delegation");
    assert_eq!(o.settlement, LockState::Committed);
    p.assert_audit_clean();
}
