//! What a platform holding valid credentials can do to another platform's task status
//! (issue #8 item 3): write the delegator's or the executor's part of it in `sage_tasks`,
//! or mark it cancelled where it may write and tell the executor to abort it. The server
//! refuses the writes; the executor believes a cancel only in the delegator's own part.

mod common;

use std::time::{Duration, Instant};

use common::attacker::Attacker;
use common::federation::Processes;
use common::topology::Deployment;
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest};
use sage_federation::ledger::model::LockState;
use sage_federation::nats::subjects;
use sage_federation::nats::topology::Topology;
use sage_federation::protocol::proof::ProofStatus;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::{TaskBoard, TaskState, TaskStatus};
use serde_json::json;

/// How long the attacked task works: long enough for the attacker to strike while it runs.
const WORK_MS: u64 = 2_000;

/// A task of [`WORK_MS`] from Thor to Legion under `task_id`.
fn waiting_task(task_id: &TaskId) -> DelegationRequest {
    common::waiting_on_legion(task_id, WORK_MS)
}

/// Waits until the board (which every platform reads) shows `task_id` running at Legion.
async fn running(board: &TaskBoard, task_id: &TaskId) -> TaskStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some((status, _))) = board.get(task_id).await
            && status.state == TaskState::Running
        {
            return status;
        }
        assert!(Instant::now() < deadline, "task {task_id} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The keys Sprout tries to write for Thor's task to Legion: the old single record, Thor's
/// part and Legion's part (all refused), then its own two parts (allowed, never read).
fn forged_keys(task_id: &TaskId) -> (Vec<String>, Vec<String>) {
    let id = task_id.as_str();
    let foreign = vec![
        id.to_owned(),
        subjects::task_delegator_part(id, "Thor"),
        subjects::task_executor_part(id, "Thor", "Legion"),
    ];
    let own = vec![
        subjects::task_delegator_part(id, "Sprout"),
        subjects::task_executor_part(id, "Thor", "Sprout"),
    ];
    (foreign, own)
}

/// `status` marked cancelled by Sprout, as JSON.
fn forged_cancel(mut status: TaskStatus) -> &'static str {
    status.state = TaskState::Cancelled;
    status.reason = "cancelled by Sprout".into();
    Box::leak(serde_json::to_string(&status).expect("json").into_boxed_str())
}

/// Publishes `payload` on `key` of the task bucket as a JetStream message through `client`;
/// whether the bucket stored it.
async fn stored(client: &async_nats::Client, key: &str, payload: &'static str) -> bool {
    let js = async_nats::jetstream::new(client.clone());
    let subject = subjects::kv_subject(subjects::TASKS_BUCKET, key);
    match js.publish(subject, payload.into()).await {
        Ok(ack) => matches!(tokio::time::timeout(Duration::from_secs(5), ack).await, Ok(Ok(_))),
        Err(_) => false,
    }
}

/// Tells Legion's workers to abort `task_id`, as Sprout.
async fn forged_abort(client: &async_nats::Client, task_id: &TaskId) {
    client
        .publish(subjects::abort("Legion"), task_id.to_string().into())
        .await
        .expect("abort published");
    client.flush().await.expect("flush");
}

/// Legion ran Thor's task to the end and was paid; the board says so.
async fn assert_completed(outcome: &DelegationOutcome, board: &TaskBoard) {
    assert_eq!(
        (outcome.settlement, outcome.proof_status),
        (LockState::Committed, Some(ProofStatus::Completed)),
        "Legion ran Thor's task to the end and was paid: {outcome:?}"
    );
    assert_eq!(outcome.result.get("steps"), Some(&json!(2)), "{outcome:?}");
    let (status, _) = board.get(&outcome.task_id).await.expect("read").expect("status");
    assert_eq!(
        status.state,
        TaskState::Completed,
        "the board says what the ledger says: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_cannot_cancel_claim_or_finish_another_platforms_task() {
    let p = Processes::start().await;
    let thor = p.client("Thor").await;
    let task_id = TaskId::random().expect("id");
    let request = waiting_task(&task_id);
    let delegation = tokio::spawn(async move { thor.delegate_task(request).await });
    let sprout = p.nats.client_as("Sprout").await;
    let board = TaskBoard::open(&async_nats::jetstream::new(sprout.clone()))
        .await
        .expect("board");
    let forged = forged_cancel(running(&board, &task_id).await);

    // Sprout writes Thor's task cancelled wherever a status could be kept: the server
    // answers each foreign key with a permission error.
    let (foreign, own) = forged_keys(&task_id);
    let mut attacker = Attacker::connect(&p, "Sprout").await;
    for key in &foreign {
        attacker
            .publish(&subjects::kv_subject(subjects::TASKS_BUCKET, key), forged)
            .await;
    }
    assert_eq!(
        attacker.attempts,
        foreign.len(),
        "every attempt was refused by the server"
    );
    // Its own parts it may write, and it tells Legion to abort: Legion believes only Thor's.
    for key in &own {
        assert!(
            stored(&sprout, key, forged).await,
            "Sprout's own part {key} is writable"
        );
    }
    forged_abort(&sprout, &task_id).await;

    let outcome = delegation.await.expect("join").expect("Thor's delegation settles");
    assert_completed(&outcome, &board).await;
    p.assert_audit_clean();
}

/// The same across a leaf link: Sprout on its leaf, Thor on the other, Legion on the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_platform_cannot_cancel_another_platforms_task() {
    let d = Deployment::start(Topology::HubLeaf).await;
    let thor = d.client("Thor").await;
    let task_id = TaskId::random().expect("id");
    let request = waiting_task(&task_id);
    let delegation = tokio::spawn(async move { thor.delegate_task(request).await });
    let sprout = d.connect("Sprout").await;
    let board = TaskBoard::open(&async_nats::jetstream::new(sprout.clone()))
        .await
        .expect("board");
    let forged = forged_cancel(running(&board, &task_id).await);

    let (foreign, own) = forged_keys(&task_id);
    for key in &foreign {
        assert!(
            !stored(&sprout, key, forged).await,
            "the hub stored Sprout's write of {key}"
        );
    }
    for key in &own {
        assert!(
            stored(&sprout, key, forged).await,
            "Sprout's own part {key} is writable"
        );
    }
    forged_abort(&sprout, &task_id).await;

    let outcome = delegation.await.expect("join").expect("Thor's delegation settles");
    assert_completed(&outcome, &board).await;
    d.assert_audit_clean().await;
}
