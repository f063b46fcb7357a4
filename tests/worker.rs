//! Worker behaviour across OS processes: two workers share a platform's queue, the rate limit
//! refuses with a signed proof, and a task whose deliveries run out is dead-lettered and
//! refunded, never dropped.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::federation::{Processes, TEST_MAX_DELIVER, hand_task, publish_to_legion};
use common::lct;
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::{TaskBoard, TaskState};
use serde_json::json;

const C: &str = "consciousness";

fn request(to: &str, operation: &str, parameters: serde_json::Value) -> DelegationRequest {
    DelegationRequest {
        to: Some(to.to_owned()),
        task_type: C.to_owned(),
        operation: operation.to_owned(),
        budget: 2.0,
        timeout_seconds: 30,
        parameters: parameters.as_object().cloned().expect("object"),
        task_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_of_a_platform_share_its_queue() {
    let mut p = Processes::start().await;
    p.spawn_extra_worker("Legion");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let thor = p.client("Thor").await;
    let wait = json!({"steps": [{"op": "wait", "args": [300]}]});
    let outcomes =
        futures::future::join_all((0..12).map(|_| thor.delegate_task(request("Legion", "execution", wait.clone()))))
            .await;
    let board = TaskBoard::open(&p.nats.js().await).await.expect("board");
    let mut workers = BTreeSet::new();
    for outcome in outcomes {
        let outcome = outcome.expect("delegation");
        assert_eq!(outcome.settlement, LockState::Committed);
        let (status, _) = board.get(&outcome.task_id).await.expect("read").expect("status");
        workers.insert(status.worker.expect("claimed by a worker"));
    }
    assert_eq!(workers.len(), 2, "both Legion workers took tasks: {workers:?}");
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegator_over_its_rate_is_refused_with_a_signed_proof() {
    let p = Processes::start_with(&|platform, text| {
        if platform == "Legion" {
            text.replace("requests_per_minute = 60", "requests_per_minute = 3")
        } else {
            text
        }
    })
    .await;
    let before = p.snapshot().await.accounts;
    let sprout = p.client("Sprout").await;
    let frame = json!({"length": 100, "seed": 1});
    let mut refused = 0;
    for _ in 0..4 {
        let outcome = sprout
            .delegate_task(request("Legion", "perception", frame.clone()))
            .await
            .expect("delegation");
        if outcome.settlement == LockState::RolledBack {
            assert_eq!(outcome.rollback_reason, Some(RollbackReason::Rejected));
            assert!(
                outcome.reason.contains("over its rate of 3 requests per minute"),
                "{}",
                outcome.reason
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 1, "the fourth request in a minute is refused");
    let after = p.snapshot().await.accounts;
    let key = sage_federation::ledger::model::account_key(&lct("Sprout", C));
    assert_eq!(
        before[&key].balance_uatp.micros() - after[&key].balance_uatp.micros(),
        3 * 1_000,
        "three paid runs of 100 samples"
    );
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_deliveries_run_out_is_dead_lettered_and_refunded() {
    let mut p = Processes::start().await;
    let js = p.nats.js().await;
    let client = p.nats.client().await;
    let thor = p.thor();
    let task_id = TaskId::random().expect("id");
    let task = hand_task(
        &task_id,
        json!({"steps": [{"op": "wait", "args": [60000]}]}),
        120,
        300.0,
    );
    let now = Timestamp::now();
    let reply = LedgerClient::new(client.clone(), thor.clone())
        .lock(&LockTerms {
            deadline: now + Duration::from_secs(300),
            expires_at: now + Duration::from_secs(360),
            ..common::lock_terms(&task_id, &lct("Thor", C), &lct("Legion", C), 5.0)
        })
        .await
        .expect("lock");
    assert!(reply.is_ok(), "the lock must apply: {reply:?}");
    publish_to_legion(&js, thor.sign(&task).expect("sign"), task_id.as_str()).await;

    // The worker running it dies on every delivery.
    let board = TaskBoard::open(&js).await.expect("board");
    let mut pid = p.workers["Legion"].id();
    for delivery in 1..=TEST_MAX_DELIVER {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let claimed_by = board.get(&task_id).await.ok().flatten().and_then(|(s, _)| s.worker);
            if claimed_by == Some(format!("Legion-{pid}")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "delivery {delivery} never reached worker {pid}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pid = p.spawn_worker("Legion");
    }

    // The last delivery's ack wait runs out: the live worker dead-letters and refunds it.
    // Dead letters are the operator's to read (the admin identity), not the platforms'.
    let operator = async_nats::jetstream::new(p.nats.client_as("Treasury").await);
    let mut dead = operator.get_stream(subjects::DEAD_STREAM).await.expect("dead letters");
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.info().await.expect("info").state.messages < 1 {
        assert!(Instant::now() < deadline, "the exhausted task was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letter = dead.get_raw_message(1).await.expect("dead letter");
    let reason = letter
        .headers
        .get(sage_federation::worker::DEAD_REASON_HEADER)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(reason.contains("exhausted"), "{reason}");
    let mut tasks = js.get_stream(subjects::TASKS_STREAM).await.expect("tasks");
    assert_eq!(
        tasks.info().await.expect("info").state.messages,
        0,
        "removed from the work queue"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lock = p
            .snapshot()
            .await
            .locks
            .get(&format!("locks.{task_id}"))
            .cloned()
            .expect("lock");
        if lock.state == LockState::RolledBack {
            assert_eq!(lock.settlement.and_then(|s| s.reason), Some(RollbackReason::Failure));
            break;
        }
        assert!(Instant::now() < deadline, "not refunded: {:?}", lock.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = board.get(&task_id).await.expect("read").expect("status");
    assert_eq!(status.state, TaskState::Failed);
    p.assert_audit_clean();
}
