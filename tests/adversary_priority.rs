//! A platform holding valid credentials but not `federation:critical` tries to jump the
//! queue (issue #13 item 4). The attacker, Sprout, may delegate; only Thor was granted the
//! critical lane. A federation of separate processes runs; Sprout signs with its own key and
//! publishes wherever its credentials let it.

mod common;

use std::time::{Duration, Instant};

use common::attacker::Attacker;
use common::federation::{Processes, hand_task};
use common::lct;
use sage_federation::delegation::client::DelegateError;
use sage_federation::ledger::client::{LedgerClient, LedgerReader, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::nats::subjects;
use sage_federation::protocol::task::{FederationTask, TaskId};
use sage_federation::state::task_board::{TaskBoard, TaskState};
use serde_json::json;

const C: &str = "consciousness";

/// Sprout's task for Legion, marked critical and signed by Sprout's key (which the root did
/// not grant `federation:critical`).
fn sprouts_critical_task(task_id: &TaskId) -> FederationTask {
    FederationTask {
        source_lct: lct("Sprout", C),
        reply_to: subjects::proof("Sprout", "Legion", task_id.as_str()),
        critical: true,
        ..hand_task(task_id, json!({"steps": [{"op": "add", "args": [1, 1]}]}), 30, 60.0)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_without_federation_critical_cannot_jump_the_queue() {
    let mut p = Processes::start().await;
    p.expect_violations = true;
    let before = p.snapshot().await;
    let sprout_balance = p.balance("Sprout", C).await;

    // (1) The critical lanes: the server refuses Sprout's publish on any of them.
    let mut sprout = Attacker::connect(&p, "Sprout").await;
    for lane in [
        subjects::critical("Legion"),
        subjects::critical("Thor"),
        subjects::critical("Sprout"),
    ] {
        sprout.publish(&lane, "{}").await;
    }
    assert_eq!(sprout.attempts, 3);

    // (2) Sprout's own client refuses before any ATP moves.
    let client = p.client("Sprout").await;
    let refused = client
        .delegate_critical_task(common::add_on_legion(&TaskId::random().expect("id"), 1.0, 30))
        .await;
    assert!(
        matches!(&refused, Err(DelegateError::CriticalNotPermitted(who)) if who == "Sprout"),
        "{refused:?}"
    );
    assert_eq!(p.balance("Sprout", C).await, sprout_balance, "nothing was locked");

    // (3) A critical task Sprout signs, locks and queues on the normal lane (which it may
    // publish on): Legion's worker refuses it with a signed rejection and the lock is
    // refunded in full.
    let task_id = TaskId::random().expect("id");
    let task = sprouts_critical_task(&task_id);
    let signer = p.signer("Sprout");
    let wire = signer.sign(&task).expect("sign");
    let nats = p.nats.client_as("Sprout").await;
    let terms = LockTerms {
        deadline: task.expires_at,
        expires_at: task.expires_at + Duration::from_secs(60),
        ..common::lock_terms(&task_id, &lct("Sprout", C), &lct("Legion", C), task.atp_budget)
    };
    let locked = LedgerClient::new(nats.clone(), signer)
        .lock_for_task(&terms, &wire, &task.operation)
        .await
        .expect("lock");
    assert!(locked.is_ok(), "Sprout may lock its own ATP: {locked:?}");
    assert!(p.balance("Sprout", C).await < sprout_balance, "the budget is locked");
    let js = async_nats::jetstream::new(nats);
    common::federation::publish_to_legion(&js, wire, task_id.as_str()).await;

    let reader = LedgerReader::open(&js).await.expect("reader");
    let deadline = Instant::now() + Duration::from_secs(30);
    let lock = loop {
        let lock = reader.lock(&task_id).await.expect("read the lock").expect("the lock");
        if lock.state != LockState::Pending {
            break lock;
        }
        assert!(Instant::now() < deadline, "Legion never settled Sprout's critical task");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lock.state, LockState::RolledBack, "{lock:?}");
    let settlement = lock.settlement.expect("a settlement");
    assert_eq!(settlement.reason, Some(RollbackReason::PermissionDenied));
    assert_eq!(settlement.paid_uatp.micros(), 0, "nothing paid for a refused task");
    assert_eq!(settlement.refunded_uatp, lock.amount_uatp, "refunded in full");
    let board = TaskBoard::open(&js).await.expect("board");
    let (status, _) = board.get(&task_id).await.expect("board").expect("the task's status");
    assert_eq!(status.state, TaskState::Rejected);
    assert!(
        status.reason.contains("federation:critical"),
        "the rejection says why: {}",
        status.reason
    );

    // The ledger is exactly as it was, apart from the refused task's settled lock.
    assert_eq!(p.balance("Sprout", C).await, sprout_balance, "refunded");
    let after = p.snapshot().await;
    assert_eq!(after.supply.total_uatp, before.supply.total_uatp);
    assert_eq!(common::balances_of(&after), common::balances_of(&before));
    p.assert_audit_clean();
}
