//! Issue #13 item 1: a built-in operation's result is paid by the ledger's own check of it,
//! never by the quality its executor claims. A federation of separate processes runs; the
//! lying executor is Legion, holding its own valid credentials and key, committing by hand a
//! result it made up, with quality 1.0, for a task Thor locked for it.

mod common;

use common::federation::{Processes, hand_task};
use common::lct;
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::ledger::protocol::{LedgerReply, Outcome, RejectCode};
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::task::TaskId;
use serde_json::{Map, Value, json};
use std::time::Duration;

const C: &str = "consciousness";
const BUDGET_ATP: f64 = 5.0;

/// A 5 x 5 grid with a wall in column 2 but for row 4: the shortest path has 12 moves.
fn walled_grid() -> Value {
    json!({
        "width": 5, "height": 5, "start": [0, 0], "goal": [4, 0],
        "obstacles": [[2, 0], [2, 1], [2, 2], [2, 3]],
    })
}

/// Thor signs a planning task for Legion over [`walled_grid`] and locks its budget naming
/// it; the task's signed bytes.
async fn locked_planning_task(p: &Processes, thor: &LedgerClient, task_id: &TaskId) -> bytes::Bytes {
    let task = sage_federation::protocol::task::FederationTask {
        operation: "planning".into(),
        ..hand_task(task_id, walled_grid(), 30, 60.0)
    };
    let wire = p.thor().sign(&task).expect("sign");
    let terms = LockTerms {
        deadline: task.expires_at,
        expires_at: task.expires_at + Duration::from_secs(60),
        ..common::lock_terms(task_id, &lct("Thor", C), &lct("Legion", C), BUDGET_ATP)
    };
    let reply = thor.lock_for_task(&terms, &wire, &task.operation).await.expect("lock");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    wire
}

/// Legion's signed completed proof of `task_id` with `result`, claiming quality 1.0 and the
/// whole budget.
fn claimed_proof(legion: &Signer, task_id: &TaskId, result: Map<String, Value>) -> bytes::Bytes {
    let proof = common::completed_proof(task_id, C, BUDGET_ATP, 1.0, result);
    legion.sign(&proof).expect("sign")
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

fn settled(reply: &LedgerReply) -> (LockState, Option<RollbackReason>, u64) {
    let lock = reply.lock.as_ref().expect("the lock in the reply");
    let settlement = lock.settlement.as_ref().expect("settled");
    (lock.state, settlement.reason, settlement.paid_uatp.micros())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_executor_is_never_paid_for_a_verifiable_operation() {
    let p = Processes::start().await;
    let thor = LedgerClient::new(p.nats.client_as("Thor").await, p.thor());
    let legion_key = p.signer("Legion");
    let legion = LedgerClient::new(p.nats.client_as("Legion").await, legion_key.clone());
    let before = p.balances().await;

    // 1. Garbage with quality 1.0: a "path" straight through the wall.
    let task_id = TaskId::random().expect("id");
    let task = locked_planning_task(&p, &thor, &task_id).await;
    let garbage = claimed_proof(
        &legion_key,
        &task_id,
        object(json!({"outcome": "found", "length": 4, "path": [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]})),
    );
    // Without the task the lock names, no commit at all.
    let reply = legion.commit(&task_id, &garbage).await.expect("reply");
    assert_eq!(
        (reply.outcome, reply.code),
        (Outcome::Rejected, Some(RejectCode::InvalidRequest)),
        "{reply:?}"
    );
    // Nor with another task under the same id (one Legion would find easier).
    let easier = sage_federation::protocol::task::FederationTask {
        operation: "planning".into(),
        ..hand_task(
            &task_id,
            json!({"width": 5, "height": 1, "start": [0, 0], "goal": [4, 0]}),
            30,
            60.0,
        )
    };
    let reply = legion
        .commit_with_task(&task_id, &garbage, &p.thor().sign(&easier).expect("sign"))
        .await
        .expect("reply");
    assert_eq!(
        (reply.outcome, reply.code),
        (Outcome::Rejected, Some(RejectCode::InvalidRequest)),
        "{reply:?}"
    );
    // With the real task, the check refutes the path and the delegator is refunded at once.
    let reply = legion.commit_with_task(&task_id, &garbage, &task).await.expect("reply");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    assert_eq!(
        settled(&reply),
        (LockState::RolledBack, Some(RollbackReason::Refuted), 0)
    );
    assert!(reply.message.contains("obstacle"), "{}", reply.message);

    // 2. A valid but long detour claiming quality 1.0: the check scores it 12/16 = 0.75,
    //    above Thor's 0.7 threshold, so it is paid, with the checked quality on record.
    let task_id = TaskId::random().expect("id");
    let task = locked_planning_task(&p, &thor, &task_id).await;
    // Down the left side, twice back and forth in row 3/4, then along the bottom and up.
    let detour: Value = serde_json::from_str(
        "[[0,0],[0,1],[0,2],[0,3],[0,4],[1,4],[1,3],[1,4],[1,3],[1,4],[2,4],[3,4],[4,4],[4,3],[4,2],[4,1],[4,0]]",
    )
    .expect("json");
    let proof = claimed_proof(
        &legion_key,
        &task_id,
        object(json!({"outcome": "found", "length": 16, "path": detour})),
    );
    let reply = legion.commit_with_task(&task_id, &proof, &task).await.expect("reply");
    assert_eq!(settled(&reply), (LockState::Committed, None, 5_000_000), "{reply:?}");
    let quality = reply
        .lock
        .as_ref()
        .and_then(|l| l.settlement.as_ref())
        .and_then(|s| s.quality);
    assert_eq!(quality, Some(0.75), "the checked quality, not the claimed 1.0");

    // 3. "Unreachable" for a reachable goal: refuted, refunded.
    let task_id = TaskId::random().expect("id");
    let task = locked_planning_task(&p, &thor, &task_id).await;
    let lazy = claimed_proof(&legion_key, &task_id, object(json!({"outcome": "unreachable"})));
    let reply = legion.commit_with_task(&task_id, &lazy, &task).await.expect("reply");
    assert_eq!(
        settled(&reply),
        (LockState::RolledBack, Some(RollbackReason::Refuted), 0)
    );

    // Legion earned exactly the detour's 5 ATP; Thor paid exactly that.
    let after = p.balances().await;
    let key = |platform: &str| lct(platform, C).to_string();
    assert_eq!(
        after[&key("Legion")] - before.get(&key("Legion")).copied().unwrap_or(0),
        5_000_000
    );
    assert_eq!(before[&key("Thor")] - after[&key("Thor")], 5_000_000);
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_executor_is_paid_by_the_check_through_the_whole_federation() {
    let p = Processes::start().await;
    let thor = p.client("Thor").await;
    for (operation, parameters) in [
        ("planning", walled_grid()),
        (
            "execution",
            json!({"steps": [{"op": "add", "args": [1, 2]}, {"op": "div", "args": [1, 0]}]}),
        ),
        ("perception", json!({"length": 500, "seed": 9})),
    ] {
        let outcome = thor
            .delegate_task(DelegationRequest {
                to: Some("Legion".into()),
                task_type: C.into(),
                operation: operation.into(),
                budget: BUDGET_ATP,
                timeout_seconds: 20,
                parameters: object(parameters),
                task_id: None,
            })
            .await
            .expect("settles");
        // Execution: one of two steps fails, so the checked quality is 0.5, below Thor's
        // threshold: refunded by the check, though the worker itself also says 0.5.
        let expected = if operation == "execution" {
            LockState::RolledBack
        } else {
            LockState::Committed
        };
        assert_eq!(outcome.settlement, expected, "{operation}: {outcome:?}");
    }
    p.assert_audit_clean();
}
