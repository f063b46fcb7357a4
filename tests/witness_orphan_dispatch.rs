//! Issue #13, item 2: a delegator that restarted while its lock is held still dispatches its
//! task to the witness. Thor delegates `wordcount` to Legion, whose program lies (a made-up
//! count, quality 1.0) after a pause; Thor's client is dropped once Legion runs the task,
//! and Legion commits while nothing of Thor's runs: the ledger holds the commit for Sprout.
//! A new client of Thor's, started afterwards, finds Legion's proof through its orphan
//! settler, reads back the signed task it kept at lock time and sends it to Sprout, whose
//! real worker catches the lie. Without the kept task the hold expires and pays the liar.
//! Real processes, a real server with credentials, the real ledger service.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::federation::Processes;
use common::witness::federation_edit;
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::ledger::client::LedgerReader;
use sage_federation::ledger::model::{Lock, LockState, RollbackReason};
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::{TaskBoard, TaskState};
use serde_json::json;

const BUDGET_ATP: f64 = 1.0;
/// Thor's `[settlement] witness_share` default: a tenth of the budget.
const SHARE_ATP: f64 = 0.1;
/// Long enough for the restarted client to dispatch, short enough that the code without
/// the kept task fails in reasonable time (the hold expires and pays Legion).
const HOLD_SECONDS: f64 = 30.0;
/// How long Thor's state is polled past the hold before the test gives up.
const WAIT_PAST_HOLD: Duration = Duration::from_secs(20);
/// A program that waits (so that Thor's client is gone before the commit), then answers
/// every `wordcount` task with a made-up count and quality 1.0.
const SLOW_LYING_PROGRAM: &str = r#"["python3", "-c", "import json, sys, time; json.load(sys.stdin); time.sleep(3); print(json.dumps({'result': {'word_count': 1000}, 'quality': 1.0}))"]"#;

/// Polls `task_id`'s lock until `done` holds for it, failing after `within`.
async fn await_lock(reader: &LedgerReader, task_id: &TaskId, within: Duration, done: impl Fn(&Lock) -> bool) -> Lock {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let lock = reader.lock(task_id).await.expect("ledger readable");
        if let Some(lock) = lock
            && done(&lock)
        {
            return lock;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task_id}'s lock never got there: {:?}",
            reader.lock(task_id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_delegator_dispatches_its_held_task_and_the_liar_is_caught() {
    let mut p = Processes::start_with(&federation_edit(Some(SLOW_LYING_PROGRAM), HOLD_SECONDS)).await;
    // Thor's worker runs an orphan settler of its own: nothing of Thor's may run meanwhile.
    p.kill_worker("Thor");
    let js = p.nats.js().await;
    let reader = LedgerReader::open(&js).await.expect("ledger");
    let board = TaskBoard::open(&js).await.expect("board");
    let thor_before = p.balance("Thor", "consciousness").await;

    let task_id = TaskId::random().expect("id");
    let request = DelegationRequest {
        to: Some("Legion".into()),
        task_type: "consciousness".into(),
        operation: "wordcount".into(),
        budget: BUDGET_ATP,
        timeout_seconds: 20,
        parameters: json!({"text": "the quick brown fox jumps over the lazy dog"})
            .as_object()
            .cloned()
            .expect("object"),
        task_id: Some(task_id.clone()),
    };
    let first = Arc::new(p.client("Thor").await);
    let delegation = tokio::spawn({
        let first = Arc::clone(&first);
        async move { first.delegate_task(request).await }
    });
    // Legion runs the task (so Thor published it); its program pauses before it answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = board.get(&task_id).await.expect("board readable");
        if status.is_some_and(|(s, _)| s.state == TaskState::Running) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Legion never ran the task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Thor's delegator goes away before the commit.
    delegation.abort();
    assert!(
        delegation.await.is_err_and(|e| e.is_cancelled()),
        "aborted before it ended"
    );
    drop(first);
    let pending = reader.lock(&task_id).await.expect("readable").expect("locked");
    assert_eq!(
        pending.state,
        LockState::Pending,
        "Thor left before the commit: {pending:?}"
    );

    // Legion commits while nothing of Thor's runs; a new executor is sampled at rate 1.0.
    let held = await_lock(&reader, &task_id, Duration::from_secs(20), |l| {
        l.state != LockState::Pending
    })
    .await;
    assert_eq!(held.state, LockState::AwaitingWitness, "{held:?}");
    assert_eq!(held.hold.as_ref().map(|h| h.witness.as_str()), Some("Sprout"));

    // Thor comes back: its orphan settler finds Legion's proof and dispatches the kept task.
    let restarted = Arc::new(p.client("Thor").await);
    let settler = tokio::spawn({
        let restarted = Arc::clone(&restarted);
        async move { restarted.settle_orphaned_proofs().await }
    });
    let within = Duration::from_secs_f64(HOLD_SECONDS) + WAIT_PAST_HOLD;
    let settled = await_lock(&reader, &task_id, within, |l| l.state.is_terminal()).await;
    settler.abort();

    assert_eq!(settled.state, LockState::RolledBack, "the liar was paid: {settled:?}");
    let settlement = settled.settlement.clone().expect("settled");
    assert_eq!(settlement.reason, Some(RollbackReason::WitnessDisagreed), "{settled:?}");
    let witness = settlement.witness.clone().expect("witnessed");
    assert_eq!((witness.witness.as_str(), witness.agreed), ("Sprout", Some(false)));
    assert!((witness.paid_uatp.as_f64() - SHARE_ATP).abs() < 1e-6, "{settled:?}");
    assert_eq!(settlement.paid_uatp.as_f64(), 0.0, "Legion paid nothing: {settled:?}");
    assert!(
        (settlement.refunded_uatp.as_f64() - (BUDGET_ATP - SHARE_ATP)).abs() < 1e-6,
        "{settled:?}"
    );
    // Thor is out of pocket by the witness's share only.
    let thor_after = p.balance("Thor", "consciousness").await;
    assert_eq!(thor_before - thor_after, (SHARE_ATP * 1e6).round() as u64);

    common::witness::await_probation(&p, "Legion").await;
    p.assert_audit_clean();
}
