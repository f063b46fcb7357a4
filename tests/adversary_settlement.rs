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
use sage_federation::delegation::status;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::ledger::protocol::{Outcome, RejectCode};
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
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
        .subscribe(subjects::proof("Thor", "Legion", task_id.as_str()))
        .await
        .expect("subscribe to Thor's proof")
}

async fn next_proof(p: &Processes, proofs: &mut async_nats::Subscriber) -> Verified<ExecutionProof> {
    let message = tokio::time::timeout(Duration::from_secs(30), proofs.next())
        .await
        .expect("a proof within 30 s")
        .expect("the subscription is open");
    let keys = sage_federation::identity::directory::KeyDirectory::open(&p.nats.js().await, &p.nats.root())
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
        expires_at: task.expires_at + Duration::from_secs(60),
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
                let now = sage_federation::protocol::clock::Timestamp::now();
                t.deadline = now + Duration::from_secs(1);
                t.expires_at = now + Duration::from_secs(2);
            },
            "before the task's expiry",
        ),
        (
            "a lock expiring inside the executor's commit window",
            |t| t.expires_at = t.deadline + Duration::from_secs_f64(0.5),
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

/// A signed cancel of `task_id` by Thor, carrying Thor's signed ledger rollback of
/// `rollback_of` (the status service must forward only the rollback of the task cancelled).
fn cancel_request(p: &Processes, task_id: &TaskId, rollback_of: &TaskId) -> bytes::Bytes {
    use sage_federation::ledger::protocol::{LedgerRequest, Operation, REQUEST_TTL};
    let thor = p.thor();
    let now = sage_federation::protocol::clock::Timestamp::now();
    let rollback = LedgerRequest {
        requester: "Thor".into(),
        created_at: now,
        expires_at: now + REQUEST_TTL,
        operation: Operation::Rollback {
            task_id: rollback_of.clone(),
            reason: RollbackReason::Cancelled,
            evidence: None,
        },
    };
    let request = status::CancelRequest {
        task_id: task_id.clone(),
        requester: "Thor".into(),
        created_at: now,
        expires_at: now + REQUEST_TTL,
        rollback: String::from_utf8(thor.sign(&rollback).expect("sign").to_vec()).expect("utf8"),
    };
    thor.sign(&request).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_bookkeeping_forwards_only_the_cancelled_tasks_rollback_and_the_board_follows_the_ledger() {
    let p = Processes::start().await;
    let thor = LedgerClient::new(p.nats.client_as("Thor").await, p.thor());
    let client = p.nats.client_as("Thor").await;
    let board = TaskBoard::open(&p.nats.js().await).await.expect("board");

    // A cancel of task A carrying the rollback of task B is refused; nothing moves, the
    // board is untouched.
    let (a, b) = (TaskId::random().expect("id"), TaskId::random().expect("id"));
    let mut proofs = proofs_seen_by_thor(&p, &a).await;
    lock_and_publish(&p, &thor, &a, |_| {}).await;
    wait_for_state(&p, &a, TaskState::Running).await;
    let before = p.snapshot().await;
    let answer = client
        .request(
            format!("{}.cancel", subjects::STATUS_ENDPOINT_PREFIX),
            cancel_request(&p, &a, &b),
        )
        .await
        .expect("the status service answers");
    let answer = String::from_utf8_lossy(&answer.payload).into_owned();
    assert!(answer.contains("is not Thor's cancel of task"), "{answer}");
    assert_eq!(
        p.snapshot().await.accounts,
        before.accounts,
        "a refused cancel moves no ATP"
    );
    assert_eq!(
        board.get(&a).await.expect("read").map(|(s, _)| s.state),
        Some(TaskState::Running),
        "a refused cancel leaves the board as it was"
    );

    // The task finishes and is paid: the board says completed, as the ledger does.
    let proof = next_proof(&p, &mut proofs).await;
    assert_eq!(proof.status, ProofStatus::Completed, "{proof:?}");
    wait_for_state(&p, &a, TaskState::Completed).await;

    // A cancel that loses the race to the executor's commit: the board first says
    // cancelled (a request), then the executor's ending replaces it.
    let c = TaskId::random().expect("id");
    lock_and_publish(&p, &thor, &c, |_| {}).await;
    wait_for_state(&p, &c, TaskState::Running).await;
    board
        .cancel(&c, "Thor", "a cancel the executor never saw")
        .await
        .expect("cancel");
    wait_for_state(&p, &c, TaskState::Cancelled).await;
    let lock_state =
        |snapshot: &sage_federation::ledger::snapshot::LedgerSnapshot| snapshot.locks[&format!("locks.{c}")].state;
    // No abort was sent: the work runs to the end and is committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock_state(&p.snapshot().await) == LockState::Pending {
        assert!(Instant::now() < deadline, "task {c} was never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lock_state(&p.snapshot().await), LockState::Committed);
    wait_for_state(&p, &c, TaskState::Completed).await;
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_first_under_a_task_id_does_not_swallow_the_real_task() {
    let p = Processes::start().await;
    let task_id = TaskId::random().expect("id");
    // The attacker sees the id (or guesses it) and publishes junk under it first, as the
    // message id the delegator used to publish under.
    publish_to_legion(&p.nats.js().await, bytes::Bytes::from_static(b"junk"), task_id.as_str()).await;
    let thor = p.client("Thor").await;
    let outcome = thor
        .delegate_task(common::add_on_legion(&task_id, 5.0, 5))
        .await
        .expect("the real task is stored under the digest of its own bytes, not under its id");
    // Before, the junk took the id and the real task was dropped as a duplicate.
    assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
    assert_eq!(outcome.proof_status, Some(ProofStatus::Completed), "{outcome:?}");
    assert_eq!(
        outcome.result.get("results"),
        Some(&json!([{"value": 3.0}])),
        "{outcome:?}"
    );
    // The junk could not be read and went to the dead letters, with no ledger call.
    let operator = async_nats::jetstream::new(p.nats.client_as("Treasury").await);
    let mut dead = operator.get_stream(subjects::DEAD_STREAM).await.expect("dead letters");
    assert_eq!(
        dead.info().await.expect("info").state.messages,
        1,
        "the junk is dead-lettered once"
    );
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_expired_task_is_dead_lettered_and_makes_the_executor_sign_nothing() {
    const TTL_SECONDS: f64 = 3.0;
    let p = Processes::start().await;
    let thor = LedgerClient::new(p.nats.client_as("Thor").await, p.thor());
    let task_id = TaskId::random().expect("id");
    let task = hand_task(&task_id, task_id_params(), 1, TTL_SECONDS);
    let reply = thor
        .lock(&LockTerms {
            deadline: task.expires_at,
            expires_at: task.expires_at + Duration::from_secs(60),
            ..common::lock_terms(&task_id, &lct("Thor", C), &lct("Legion", C), 5.0)
        })
        .await
        .expect("lock");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    let wire = p.thor().sign(&task).expect("sign");
    let js = p.nats.js().await;
    let mut proofs = proofs_seen_by_thor(&p, &task_id).await;
    publish_to_legion(&js, wire.clone(), task_id.as_str()).await;
    let proof = next_proof(&p, &mut proofs).await;
    assert_eq!(proof.status, ProofStatus::Completed, "{proof:?}");

    // Once it has expired, the attacker replays it under another message id.
    let wait = Timestamp::now().until(task.expires_at + Duration::from_millis(500));
    tokio::time::sleep(wait).await;
    publish_to_legion(&js, wire, &format!("{task_id}-again")).await;
    let operator = async_nats::jetstream::new(p.nats.client_as("Treasury").await);
    let mut dead = operator.get_stream(subjects::DEAD_STREAM).await.expect("dead letters");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead.info().await.expect("info").state.messages < 1 {
        assert!(Instant::now() < deadline, "the replay was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letter = dead.get_raw_message(1).await.expect("dead letter");
    let reason = letter
        .headers
        .get(sage_federation::worker::DEAD_REASON_HEADER)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(reason.contains("replay"), "{reason}");
    // No second proof: the executor signed nothing for the replay.
    let second = tokio::time::timeout(Duration::from_secs(2), proofs.next()).await;
    assert!(second.is_err(), "the executor answered the replay: {second:?}");
    p.assert_audit_clean();
}

fn task_id_params() -> serde_json::Value {
    json!({"steps": [{"op": "add", "args": [1, 2]}]})
}
