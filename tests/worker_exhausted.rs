//! A task that ran out of deliveries (issue #9, item 4) is dead-lettered and refunded once,
//! by whichever of the platform's two workers receives its next delivery: the consumer has no
//! delivery limit of its own, the worker counts (so no platform needs to read or delete
//! queued tasks by sequence, issue #8).

mod common;

use std::time::{Duration, Instant};

use common::federation::{Processes, TEST_ACK_WAIT_SECONDS, TEST_MAX_DELIVER, hand_task, publish_to_legion};
use common::lct;
use futures::StreamExt;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::task::TaskId;
use serde_json::json;

const C: &str = "consciousness";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_task_is_dead_lettered_once_by_two_workers() {
    let mut p = Processes::start().await;
    // Legion's workers are away while its deliveries run out, taken by a hung client.
    p.kill_worker("Legion");
    let js = p.nats.js().await;
    let thor = p.thor();
    let task_id = TaskId::random().expect("id");
    let task = hand_task(&task_id, json!({"steps": [{"op": "wait", "args": [10]}]}), 60, 300.0);
    let now = Timestamp::now();
    let reply = LedgerClient::new(p.nats.client().await, thor.clone())
        .lock(&LockTerms {
            deadline: now + Duration::from_secs(300),
            expires_at: now + Duration::from_secs(360),
            ..common::lock_terms(&task_id, &lct("Thor", C), &lct("Legion", C), 5.0)
        })
        .await
        .expect("lock");
    assert!(reply.is_ok(), "{reply:?}");
    publish_to_legion(&js, thor.sign(&task).expect("sign"), task_id.as_str()).await;

    let hung = async_nats::jetstream::new(p.nats.client_as("Legion").await);
    let consumer: async_nats::jetstream::consumer::PullConsumer = hung
        .get_stream(subjects::TASKS_STREAM)
        .await
        .expect("tasks")
        .get_consumer(&subjects::worker_consumer("Legion"))
        .await
        .expect("Legion's consumer");
    for delivery in 1..=TEST_MAX_DELIVER {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(TEST_ACK_WAIT_SECONDS * 3))
            .messages()
            .await
            .expect("fetch");
        let message = batch.next().await.expect("a delivery").expect("a message");
        assert_eq!(message.info().expect("info").delivered, delivery as i64);
        // Never acknowledged: the delivery's ack wait runs out.
    }
    // Two workers are pulling when it is delivered once more than allowed.
    p.spawn_worker("Legion");
    p.spawn_extra_worker("Legion");
    p.wait_healthy(&["Legion"]).await;

    let operator = async_nats::jetstream::new(p.nats.client_as("Treasury").await);
    let mut dead = operator.get_stream(subjects::DEAD_STREAM).await.expect("dead letters");
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.info().await.expect("info").state.messages < 1 {
        assert!(
            Instant::now() < deadline,
            "the exhausted task was not dead-lettered:\n{}",
            p.worker_log("Legion")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lock = p.snapshot().await.locks[&subjects::ledger_lock(task_id.as_str())].clone();
        if lock.state == LockState::RolledBack {
            assert_eq!(lock.settlement.and_then(|s| s.reason), Some(RollbackReason::Failure));
            break;
        }
        assert!(Instant::now() < deadline, "not refunded: {:?}", lock.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both workers had time to receive it again, had it stayed in the queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dead.info().await.expect("info").state.messages, 1, "dead-lettered once");
    let tasks = js.get_stream(subjects::TASKS_STREAM).await.expect("tasks");
    assert_eq!(tasks.cached_info().state.messages, 0, "removed from the work queue");
    p.assert_audit_clean();
}
