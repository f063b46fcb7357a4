//! Cancel bookkeeping (issue #9, item 3): the refunds that happen when nobody is there to
//! acknowledge. A federation of separate processes (`sagefed ledger serve`, a `sagefed
//! worker` per platform) runs; every test ends with exact balances and a clean audit.

mod common;

use std::time::Duration;

use common::federation::Processes;
use common::lct;
use sage_federation::delegation::status;
use sage_federation::fault;
use sage_federation::ledger::COMMIT_WINDOW;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{Lock, LockState, RollbackReason};
use sage_federation::ledger::protocol::Outcome;
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::{TaskBoard, TaskState, TaskStatus};

const C: &str = "consciousness";
/// The delegated budget, in ATP and micro-ATP.
const BUDGET_ATP: f64 = 5.0;
const BUDGET_UATP: u64 = 5_000_000;
/// How far ahead the cancelled task's deadline is when its lock is taken.
const DEADLINE_IN_SECONDS: f64 = 2.0;
/// The cancelled task's lock outlives its deadline by this much (as a delegator's does).
const LOCK_GRACE_SECONDS: f64 = 60.0;
/// Slack over the delegator's schedule for the rollback to reach the ledger and be read back.
const REFUND_SLACK_SECONDS: f64 = 10.0;

async fn lock_of(p: &Processes, task_id: &TaskId) -> Lock {
    p.snapshot().await.locks[&format!("locks.{task_id}")].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_publish_the_delegator_is_refunded_after_the_deadline_not_at_the_locks_expiry() {
    let p = Processes::start().await;
    let before = p.balance("Thor", C).await;
    let task_id = TaskId::random().expect("id");
    // A real cause for the publish to fail: the work queue is full (`max_msgs` reached,
    // discard new). An operator caps it at what it holds once a message nobody consumes is in.
    let js = p.nats.js().await;
    js.publish(subjects::delegate("Ghost"), bytes::Bytes::from_static(b"unconsumed"))
        .await
        .expect("publish")
        .await
        .expect("stored");
    let operator = async_nats::jetstream::new(p.nats.client_as("ledger").await);
    let mut tasks = operator.get_stream(subjects::TASKS_STREAM).await.expect("tasks stream");
    let info = tasks.info().await.expect("info").clone();
    let mut config = info.config.clone();
    config.max_messages = i64::try_from(info.state.messages).expect("count");
    operator.update_stream(config).await.expect("cap the work queue");
    let thor = p.client("Thor").await;
    let error = thor
        .delegate_task(common::add_on_legion(&task_id, BUDGET_ATP, 1))
        .await
        .expect_err("the task was never stored: the delegation fails");
    assert!(error.to_string().contains("maximum messages exceeded"), "{error}");

    // The budget is locked, and the lock's own expiry is far beyond the task's deadline.
    let lock = lock_of(&p, &task_id).await;
    assert_eq!(lock.state, LockState::Pending);
    assert_eq!(p.balance("Thor", C).await, before - BUDGET_UATP);
    let due = lock.deadline + COMMIT_WINDOW;
    assert!(
        lock.expires_at >= due + 4 * Duration::from_secs_f64(REFUND_SLACK_SECONDS),
        "the lock expires at {} but the refund is due at {due}: the test could not tell them apart",
        lock.expires_at
    );

    // The delegator's own rollback lands once the deadline and the commit window passed.
    let give_up = due + Duration::from_secs_f64(REFUND_SLACK_SECONDS);
    let lock = loop {
        let lock = lock_of(&p, &task_id).await;
        if lock.state != LockState::Pending {
            break lock;
        }
        assert!(
            Timestamp::now() < give_up,
            "still locked {REFUND_SLACK_SECONDS} s after the deadline and commit window (the lock expires only at {})",
            lock.expires_at
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settlement = lock.settlement.clone().expect("a settled lock says how");
    assert_eq!(
        (lock.state, settlement.reason, settlement.by.as_str()),
        (LockState::RolledBack, Some(RollbackReason::Timeout), "Thor"),
        "{lock:?}"
    );
    assert!(
        settlement.at >= due && settlement.at < lock.expires_at,
        "refunded at {}, due at {due}, lock expiry {}",
        settlement.at,
        lock.expires_at
    );
    assert_eq!(settlement.refunded_uatp.micros(), BUDGET_UATP);
    assert_eq!(p.balance("Thor", C).await, before, "the whole budget is back");
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_reply_to_the_forwarded_rollback_is_retried_and_the_cancel_refunds() {
    let p = Processes::start_with_ledger_fault(&|_, text| text, Some(fault::LEDGER_BUSY_ROLLBACKS)).await;
    let before = p.balance("Thor", C).await;
    let thor = LedgerClient::new(p.nats.client_as("Thor").await, p.thor());
    let task_id = TaskId::random().expect("id");
    let deadline = Timestamp::now() + Duration::from_secs_f64(DEADLINE_IN_SECONDS);
    let reply = thor
        .lock(&LockTerms {
            deadline,
            expires_at: deadline + Duration::from_secs_f64(LOCK_GRACE_SECONDS),
            ..common::lock_terms(&task_id, &lct("Thor", C), &lct("Legion", C), BUDGET_ATP)
        })
        .await
        .expect("lock");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    // Queued on the board and never published: no executor will acknowledge the cancel, so
    // the status service must forward Thor's own rollback.
    let board = TaskBoard::open(&p.nats.js().await).await.expect("board");
    board
        .queue(&TaskStatus {
            task_id: task_id.clone(),
            delegator: lct("Thor", C),
            executor: lct("Legion", C),
            operation: "execution".into(),
            state: TaskState::Queued,
            updated_at: Timestamp::now(),
            stream_sequence: None,
            worker: None,
            quality: None,
            atp_consumed: None,
            reason: String::new(),
            settled: false,
        })
        .await
        .expect("queue");
    assert_eq!(p.balance("Thor", C).await, before - BUDGET_UATP);
    // The ledger accepts a delegator's cancel only after the deadline and the commit window.
    let due = deadline + COMMIT_WINDOW + Duration::from_millis(500);
    tokio::time::sleep(Timestamp::now().until(due)).await;

    let answer = status::cancel_task(&p.nats.client_as("Thor").await, &p.thor(), &task_id)
        .await
        .expect("the status service answers the cancel");
    let ledger_log = std::fs::read_to_string(p.nats.path().join("ledger.log")).expect("ledger log");
    let busy_answers = ledger_log.matches("asks this ledger to answer a rollback busy").count();
    assert_eq!(
        busy_answers,
        fault::BUSY_ROLLBACKS as usize,
        "the ledger answered busy to the first forwarded rollbacks"
    );
    assert!(answer.cancelled, "{answer:?}");
    assert_eq!(answer.atp_refunded, BUDGET_ATP, "{answer:?}");
    let lock = lock_of(&p, &task_id).await;
    let settlement = lock.settlement.clone().expect("a settled lock says how");
    assert_eq!(
        (lock.state, settlement.reason, settlement.by.as_str()),
        (LockState::RolledBack, Some(RollbackReason::Cancelled), "Thor"),
        "{lock:?}"
    );
    assert_eq!(settlement.refunded_uatp.micros(), BUDGET_UATP);
    assert_eq!(p.balance("Thor", C).await, before, "the whole budget is back");
    assert_eq!(
        board.get(&task_id).await.expect("read").map(|(s, _)| s.state),
        Some(TaskState::Cancelled)
    );
    p.assert_audit_clean();
}
