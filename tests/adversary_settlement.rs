//! Money and results under attack (issue #9, items 1 and 3): a delegator holding valid
//! credentials tries to keep both the result and the ATP. A federation of separate processes
//! (`sagefed ledger serve`, a `sagefed worker` per platform) runs; the attacker, Thor, signs
//! with its own key and talks to the ledger directly. Every attempt must leave the result
//! with the executor unless the lock is committed, and the ledger conserved.

mod common;

use std::time::{Duration, Instant};

use common::federation::{Processes, hand_task, publish_to_legion};
use common::lct;
use futures::StreamExt;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::ledger::protocol::{Outcome, RejectCode};
use sage_federation::nats::subjects;
use sage_federation::protocol::envelope::Verified;
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::{TaskBoard, TaskState};
use serde_json::json;

const C: &str = "consciousness";
/// How long the attacked task works: long enough to be caught running.
const WORK_MS: u64 = 1_500;
/// The task's life, from its creation to its expiry (its lock's deadline).
const TASK_TTL_SECONDS: f64 = 60.0;

/// Every proof Legion publishes for Thor's `task_id`, as Thor receives them.
async fn proofs_seen_by_thor(p: &Processes, task_id: &TaskId) -> async_nats::Subscriber {
    p.nats
        .client_as("Thor")
        .await
        .subscribe(subjects::proof("Thor", task_id.as_str()))
        .await
        .expect("subscribe to Thor's proof")
}

async fn next_proof(p: &Processes, proofs: &mut async_nats::Subscriber) -> Verified<ExecutionProof> {
    let message = tokio::time::timeout(Duration::from_secs(30), proofs.next())
        .await
        .expect("a proof within 30 s")
        .expect("the subscription is open");
    let keys = sage_federation::identity::directory::KeyDirectory::open(&p.nats.js().await)
        .await
        .expect("keys");
    keys.verify(&message.payload).await.expect("Legion's signed proof")
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

/// Thor locks `terms` and publishes a signed task of [`WORK_MS`] to Legion, by hand.
async fn lock_and_publish(p: &Processes, ledger: &LedgerClient, task_id: &TaskId, edit: impl FnOnce(&mut LockTerms)) {
    let task = hand_task(
        task_id,
        json!({"steps": [{"op": "wait", "args": [WORK_MS]}, {"op": "add", "args": [1, 2]}]}),
        30,
        TASK_TTL_SECONDS,
    );
    let mut terms = LockTerms {
        deadline: task.expires_at,
        expires_at: task.expires_at + 60.0,
        ..common::lock_terms(task_id, &lct("Thor", C), &lct("Legion", C), 5.0)
    };
    edit(&mut terms);
    let reply = ledger.lock(&terms).await.expect("lock");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    let wire = p.thor().sign(&task).expect("sign");
    publish_to_legion(&p.nats.js().await, wire, task_id.as_str()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegator_cannot_cancel_a_running_task_and_keep_the_result_and_the_atp() {
    let p = Processes::start().await;
    let thor = LedgerClient::new(p.nats.client_as("Thor").await, p.thor());
    let task_id = TaskId::random().expect("id");
    let mut proofs = proofs_seen_by_thor(&p, &task_id).await;
    lock_and_publish(&p, &thor, &task_id, |_| {}).await;
    wait_for_state(&p, &task_id, TaskState::Running).await;
    let before = p.snapshot().await;

    // The attack: roll back as "cancelled" with no acknowledgement from the executor.
    let reply = thor
        .rollback(&task_id, RollbackReason::Cancelled, None)
        .await
        .expect("a ledger reply");
    assert_eq!(
        (reply.outcome, reply.code),
        (Outcome::Rejected, Some(RejectCode::EvidenceRequired)),
        "{reply:?}"
    );
    let after = p.snapshot().await;
    assert_eq!(after.accounts, before.accounts, "the refused rollback moved no ATP");

    // The work finishes; the executor is paid, and only then does Thor hold the result.
    let proof = next_proof(&p, &mut proofs).await;
    let lock = p.snapshot().await.locks[&format!("locks.{task_id}")].clone();
    assert_eq!(
        (proof.status, lock.state),
        (ProofStatus::Completed, LockState::Committed),
        "{proof:?}"
    );
    assert!(!proof.result.is_empty(), "the paid result reaches the delegator");
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_terms_contradict_the_task_is_refused_before_any_work() {
    let p = Processes::start().await;
    let thor = LedgerClient::new(p.nats.client_as("Thor").await, p.thor());
    let before = p.balance("Thor", C).await;
    type Edit = fn(&mut LockTerms);
    let attacks: [(&str, Edit, &str); 3] = [
        (
            "a lock expiring in 2 s",
            |t| {
                let now = sage_federation::protocol::clock::now_seconds();
                t.deadline = now + 1.0;
                t.expires_at = now + 2.0;
            },
            "before the task's expiry",
        ),
        (
            "a lock expiring inside the executor's commit window",
            |t| t.expires_at = t.deadline + 0.5,
            "commit window",
        ),
        (
            "a lock asking quality 1.0",
            |t| t.quality_threshold = 1.0,
            "settlement.accepted_threshold_max",
        ),
    ];
    for (name, edit, why) in attacks {
        let task_id = TaskId::random().expect("id");
        let mut proofs = proofs_seen_by_thor(&p, &task_id).await;
        lock_and_publish(&p, &thor, &task_id, edit).await;
        let proof = next_proof(&p, &mut proofs).await;
        assert_eq!(proof.status, ProofStatus::Rejected, "{name}: {proof:?}");
        assert!(proof.reason.contains(why), "{name}: {:?} lacks {why:?}", proof.reason);
        assert!(proof.result.is_empty(), "{name}: no work, no result");
        assert_eq!(proof.execution_time, 0.0, "{name}: refused before any work");
        let lock = p.snapshot().await.locks[&format!("locks.{task_id}")].clone();
        assert_eq!(lock.state, LockState::RolledBack, "{name}");
    }
    assert_eq!(p.balance("Thor", C).await, before, "every refused lock is refunded");
    p.assert_audit_clean();
}
