//! The priority lane (issue #13 item 4): a critical task queued behind a backlog of normal
//! ones starts before every one of them, and everything settles with the audit clean. A
//! federation of separate processes runs; the start order is read from the task board (the
//! executor's claim of each task, in the order the bucket stored them).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::federation::Processes;
use futures::StreamExt;
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest, FederationClient, Lane};
use sage_federation::ledger::model::LockState;
use sage_federation::nats::subjects;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::{TaskState, TaskStatus};

/// Normal tasks queued ahead of the critical one.
const BACKLOG: usize = 1_000;
/// ATP each task locks (Thor is granted 1,000 ATP of `consciousness`).
const BUDGET: f64 = 0.5;
/// Each task's timeout: with the queue wait, long enough for Legion to work through the
/// whole backlog one task at a time on a loaded machine.
const TIMEOUT_SECONDS: u64 = 240;

/// Legion executes one task at a time (so the start order is the order it took them), and
/// accepts the backlog's rate from one delegator.
fn one_at_a_time(platform: &str, text: String) -> String {
    if platform != "Legion" {
        return text;
    }
    let sage = text
        .find("[resources.\"consciousness.sage\"]")
        .expect("legion.toml has a consciousness.sage resource");
    let end = text[sage..].find("\n\n").map_or(text.len(), |i| sage + i);
    let text = format!("{}{}", &text[..sage], &text[end..]);
    text.replace("max_concurrent = 10", "max_concurrent = 1")
        .replace("requests_per_minute = 60", "requests_per_minute = 100000")
}

fn task(task_id: &TaskId) -> DelegationRequest {
    common::add_on_legion(task_id, BUDGET, TIMEOUT_SECONDS)
}

/// The operator's view (`Treasury` reads consumer information; platforms may not).
async fn operator(p: &Processes) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(p.nats.client_as("Treasury").await)
}

/// Waits until Legion's lanes hold `count` tasks between them.
async fn queued(p: &Processes, count: u64) {
    let js = operator(p).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut stream = js.get_stream(subjects::TASKS_STREAM).await.expect("tasks stream");
        let held = stream.info().await.expect("stream info").state.messages;
        if held >= count {
            assert_eq!(held, count, "only this test's tasks are queued");
            return;
        }
        assert!(Instant::now() < deadline, "only {held} of {count} tasks were queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until no pull request of Legion's stopped worker is left at the server (it would
/// take a task the new worker should see first).
async fn no_waiting_pulls(p: &Processes) {
    let js = operator(p).await;
    let stream = js.get_stream(subjects::TASKS_STREAM).await.expect("tasks stream");
    let deadline = Instant::now() + Duration::from_secs(60);
    for lane in Lane::SERVED_FIRST_TO_LAST {
        loop {
            let mut consumer = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&lane.consumer("Legion"))
                .await
                .expect("Legion's consumer");
            let info = consumer.info().await.expect("consumer info");
            if info.num_waiting == 0 && info.num_ack_pending == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{lane:?}: the stopped worker's pulls stay: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn committed(outcome: &DelegationOutcome) -> bool {
    outcome.settlement == LockState::Committed
}

#[tokio::test(flavor = "multi_thread")]
async fn a_critical_task_starts_before_a_backlog_of_normal_ones() {
    let mut p = Processes::start_with(&one_at_a_time).await;
    // Start order, from the task board: each executor claim as the bucket stored it.
    let board = operator(&p)
        .await
        .get_key_value(subjects::TASKS_BUCKET)
        .await
        .expect("board");
    let mut claims = board.watch("*.Thor.Legion").await.expect("watch the board");
    let started = tokio::spawn(async move {
        let mut order: Vec<TaskId> = Vec::new();
        while let Some(Ok(entry)) = claims.next().await {
            let Ok(status) = serde_json::from_slice::<TaskStatus>(&entry.value) else {
                continue;
            };
            if status.state == TaskState::Running && !order.contains(&status.task_id) {
                order.push(status.task_id);
                if order.len() > BACKLOG {
                    break;
                }
            }
        }
        order
    });
    let before = p.balances().await;
    p.kill_worker("Legion");
    no_waiting_pulls(&p).await;

    let thor = Arc::new(p.client("Thor").await);
    let mut runs = Vec::new();
    for _ in 0..BACKLOG {
        let thor = Arc::clone(&thor);
        let id = TaskId::random().expect("id");
        runs.push(tokio::spawn(async move { thor.delegate_task(task(&id)).await }));
    }
    queued(&p, BACKLOG as u64).await;
    let critical_id = TaskId::random().expect("id");
    let critical = {
        let thor: Arc<FederationClient> = Arc::clone(&thor);
        let id = critical_id.clone();
        tokio::spawn(async move { thor.delegate_critical_task(task(&id)).await })
    };
    queued(&p, BACKLOG as u64 + 1).await;

    p.spawn_worker("Legion");
    let critical = critical.await.expect("join").expect("the critical task settles");
    assert!(committed(&critical), "{critical:?}");
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for run in runs {
        let outcome = run.await.expect("join").expect("a normal task settles");
        let reason = outcome
            .rollback_reason
            .map(|r| format!(" ({r}: {})", outcome.reason))
            .unwrap_or_default();
        *outcomes.entry(format!("{:?}{reason}", outcome.settlement)).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([("Committed".to_owned(), BACKLOG)]),
        "every queued normal task ran and was paid"
    );
    let order = tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("every claim seen")
        .expect("join");
    assert_eq!(order.len(), BACKLOG + 1, "every task was claimed once");
    assert_eq!(
        order.first(),
        Some(&critical_id),
        "the critical task started first, before all {BACKLOG} normal tasks queued ahead of it"
    );

    // Paid from Thor to Legion, nothing else moved; the ledger holds.
    let after = p.balances().await;
    let key = |platform: &str| common::lct(platform, "consciousness").to_string();
    let paid = before[&key("Thor")] - after[&key("Thor")];
    assert!(paid > 0, "Thor paid for the work");
    assert_eq!(after[&key("Legion")] - before[&key("Legion")], paid, "Legion earned it");
    p.assert_audit_clean();
}
