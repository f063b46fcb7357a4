//! A platform holding valid credentials floods the services (issue #9, item 9): each
//! service's named limit on requests in flight holds, every request still gets an answer
//! (applied, or a clear "busy"), honest requests are served afterwards, and the ledger
//! stays consistent.

mod common;

use common::{LedgerFixture, lct};
use futures::future::join_all;
use sage_federation::delegation::status::{self, STATUS_REQUESTS_IN_FLIGHT_MAX, StatusService, status_busy_error};
use sage_federation::ledger::protocol::{
    LedgerReply, LedgerRequest, Operation, Outcome, REQUEST_TTL_SECONDS, RejectCode,
};
use sage_federation::ledger::service::{LEDGER_REQUESTS_IN_FLIGHT_MAX, busy_reply};
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::now_seconds;
use sage_federation::protocol::task::TaskId;

const C: &str = "consciousness";
/// Signed lock requests sent at once: many times the service's limit.
const FLOOD_REQUESTS: usize = 12 * LEDGER_REQUESTS_IN_FLIGHT_MAX;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_signed_requests_meets_the_ledgers_limit_and_honest_requests_still_pass() {
    let f = LedgerFixture::start().await;
    let treasury = f.client("Treasury").await;
    let reply = treasury
        .grant("genesis", &lct("Mallory", C), 1.0e6)
        .await
        .expect("grant");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    let before = f.snapshot().await;

    // Signed before sending, so that they arrive as one burst.
    let mallory = f.signer("Mallory");
    let now = now_seconds();
    let wires: Vec<_> = (0..FLOOD_REQUESTS)
        .map(|_| {
            let request = LedgerRequest {
                requester: "Mallory".to_owned(),
                created_at: now,
                expires_at: now + REQUEST_TTL_SECONDS,
                operation: Operation::Lock {
                    task_id: TaskId::random().expect("id"),
                    delegator: lct("Mallory", C),
                    executor: lct("Legion", C),
                    amount: 1.0,
                    quality_threshold: 0.5,
                    deadline: now + 60.0,
                    expires_at: now + 120.0,
                },
            };
            mallory.sign(&request).expect("sign")
        })
        .collect();
    let client = f.nats.client().await;
    let replies: Vec<LedgerReply> = join_all(wires.into_iter().map(|wire| {
        let client = client.clone();
        async move {
            let reply = client
                .request(subjects::ledger_endpoint("lock"), wire)
                .await
                .expect("every request gets an answer");
            serde_json::from_slice(&reply.payload).expect("a ledger reply")
        }
    }))
    .await;
    let applied = replies.iter().filter(|r| r.outcome == Outcome::Applied).count();
    let busy = replies
        .iter()
        .filter(|r| r.code == Some(RejectCode::Busy) && r.message == busy_reply().message)
        .count();
    eprintln!("{FLOOD_REQUESTS} requests: {applied} applied, {busy} busy at the limit");
    assert_eq!(
        applied + busy,
        FLOOD_REQUESTS,
        "only applied or busy: {:?}",
        replies
            .iter()
            .find(|r| r.outcome != Outcome::Applied && r.message != busy_reply().message)
    );
    assert!(
        busy > 0,
        "the flood never reached the limit of {LEDGER_REQUESTS_IN_FLIGHT_MAX}"
    );
    assert!(applied > 0, "the service applied nothing during the flood");

    // The ledger holds exactly what was applied, and serves an honest request at once.
    let after = f.snapshot().await;
    assert_eq!(after.locks.len() - before.locks.len(), applied);
    let reply = f
        .client("Thor")
        .await
        .lock(&common::lock_terms(
            &TaskId::random().expect("id"),
            &lct("Thor", C),
            &lct("Legion", C),
            1.0,
        ))
        .await
        .expect("lock");
    assert_eq!(
        reply.code,
        Some(RejectCode::InsufficientAtp),
        "an honest request is answered on its merits: {reply:?}"
    );
    f.assert_audit_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_status_requests_meets_the_status_services_limit() {
    let nats = common::TestNats::with_infra().await;
    let client = nats.client().await;
    // Task status needs no key: a root nobody's key chains to will do.
    let root = sage_federation::identity::keys::generate()
        .expect("random")
        .verifying_key();
    let service = StatusService::start(client.clone(), &root)
        .await
        .expect("status service");
    let ids: Vec<TaskId> = (0..12 * STATUS_REQUESTS_IN_FLIGHT_MAX)
        .map(|_| TaskId::random().expect("id"))
        .collect();
    let answers = join_all(ids.iter().map(|id| status::task(&client, id))).await;
    let (mut answered, mut busy) = (0, 0);
    for answer in &answers {
        match answer {
            Ok(report) => {
                assert!(report.status.is_none() && report.lock.is_none(), "{report:?}");
                answered += 1;
            }
            Err(e) if e.to_string() == status_busy_error() => busy += 1,
            Err(e) => panic!("neither an answer nor busy: {e}"),
        }
    }
    eprintln!(
        "{} status requests: {answered} answered, {busy} busy at the limit",
        ids.len()
    );
    assert!(
        busy > 0,
        "the flood never reached the limit of {STATUS_REQUESTS_IN_FLIGHT_MAX}"
    );
    assert!(answered > 0, "the service answered nothing during the flood");
    // After the flood, an honest request is answered.
    let report = status::task(&client, &ids[0]).await.expect("answered after the flood");
    assert_eq!(report.task_id, ids[0].to_string());
    service.stop().await;
}
