//! Witness requests under attack (issue #13, item 2): any delegating platform may publish on
//! another's witness subject, so a platform with valid credentials and key (Thor) sends
//! Sprout's real worker, which runs `wordcount`, requests it was never appointed for: a task
//! whose lock is not held, one held for another witness, and other task bytes under the id
//! of a lock held for Sprout. Sprout runs nothing (otherwise any platform gets free work by
//! calling its task a "witness request"), logs each refusal, and the ledger is exactly as it
//! was. The audit is clean at the end.

mod common;

use std::time::Duration;

use common::federation::Processes;
use common::witness::{C, OPERATION, Parties, federation_edit, held, ledger_state, locked_task, terms};
use sage_federation::ledger::protocol::WitnessRequest;
use sage_federation::nats::subjects;
use sage_federation::protocol::task::{FederationTask, TaskId};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_runs_nothing_it_was_not_appointed_for() {
    let p = Processes::start_with(&federation_edit(None, 60.0)).await;
    let parties = Parties::connect(&p).await;
    let thor_nats = p.nats.client_as("Thor").await;

    // 1. Not held: locked naming Sprout, never committed.
    let pending_id = TaskId::random().expect("id");
    let pending = locked_task(&parties, &pending_id, terms(0.0, 60.0)).await;
    // 2. Held for another witness.
    let elsewhere_id = TaskId::random().expect("id");
    let other_witness = WitnessRequest {
        candidates: vec!["Nobody".to_owned()],
        ..terms(0.0, 60.0)
    };
    let elsewhere = locked_task(&parties, &elsewhere_id, other_witness).await;
    held(&parties, &elsewhere_id, &elsewhere, "Nobody").await;
    // 3. Held for Sprout, but the request carries other bytes under the task's id: a task
    //    Thor signs with other work in it.
    let swapped_id = TaskId::random().expect("id");
    let genuine = locked_task(&parties, &swapped_id, terms(0.0, 60.0)).await;
    held(&parties, &swapped_id, &genuine, "Sprout").await;
    let other_work = FederationTask {
        operation: OPERATION.into(),
        atp_budget: 1.0,
        ..common::federation::hand_task(&swapped_id, json!({"text": "free work for Thor"}), 30, 60.0)
    };
    let swapped = parties.thor_key.sign(&other_work).expect("sign");
    assert_eq!(other_work.source_lct, common::lct("Thor", C));

    let before = ledger_state(&p.snapshot().await);
    let attempts = [
        (pending, format!("task {pending_id} is Pending, not held for a witness")),
        (
            elsewhere,
            format!("task {elsewhere_id}'s commit is held for witness Nobody, not this platform"),
        ),
        (
            swapped,
            format!("the task's bytes are not the ones task {swapped_id}'s lock was taken for"),
        ),
    ];
    for (request, _) in &attempts {
        thor_nats
            .publish(subjects::witness_request("Sprout"), request.clone())
            .await
            .expect("publish");
    }
    thor_nats.flush().await.expect("flush");

    // Each refusal is logged by Sprout's worker, naming why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (_, why) in &attempts {
        loop {
            let log = p.worker_log("Sprout");
            if log.contains(why.as_str()) {
                assert!(log.contains("nothing run"), "{log}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Sprout's worker never refused ({why}):\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let log = p.worker_log("Sprout");
    assert!(
        !log.contains("witnessed:"),
        "Sprout answered a request it was not appointed for:\n{log}"
    );
    assert_eq!(
        ledger_state(&p.snapshot().await),
        before,
        "a refused witness request changed the ledger"
    );
    p.assert_audit_clean();
}
