//! Crash between a commit and its proof (issue #9 item 2): a real worker process dies right
//! after the ledger applied its commit, before it published the proof. The task is delivered
//! again to a fresh worker, which republishes the signed proof the ledger kept with the
//! commit: the delegator ends with the result it paid for, and balances are exact.

mod common;

use std::time::{Duration, Instant};

use common::federation::Processes;
use common::{lct, micros};
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::fault::DIE_AFTER_COMMIT;
use sage_federation::ledger::client::LedgerReader;
use sage_federation::ledger::model::LockState;
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::TaskId;
use serde_json::{Value, json};

const C: &str = "consciousness";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_between_commit_and_proof_still_delivers_the_paid_result() {
    let mut p = Processes::start().await;
    let before = p.balances().await;
    p.spawn_worker_with_fault("Legion", DIE_AFTER_COMMIT);
    p.wait_healthy(&["Legion"]).await;

    let thor = p.client("Thor").await;
    let task_id = TaskId::random().expect("id");
    let request = DelegationRequest {
        to: Some("Legion".into()),
        task_type: C.into(),
        operation: "execution".into(),
        budget: 5.0,
        timeout_seconds: 40,
        parameters: json!({"steps": [{"op": "add", "args": [20, 22]}]})
            .as_object()
            .cloned()
            .expect("object"),
        task_id: Some(task_id.clone()),
    };
    let delegation = tokio::spawn(async move { thor.delegate_task(request).await });

    // The faulty worker commits and dies before its proof; then a healthy one takes over.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.worker_exited("Legion") {
        assert!(Instant::now() < deadline, "the worker never reached its commit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        p.worker_log("Legion").contains(DIE_AFTER_COMMIT),
        "the worker died at the injected fault"
    );
    let reader = LedgerReader::open(&p.nats.js().await).await.expect("reader");
    let lock = reader.lock(&task_id).await.expect("read").expect("lock");
    assert_eq!(lock.state, LockState::Committed, "the commit landed before the crash");
    let kept = reader
        .paid_proof(&task_id)
        .await
        .expect("read")
        .expect("the commit keeps its proof");
    p.spawn_worker("Legion");

    let outcome = delegation.await.expect("join").expect("delegation");
    assert_eq!(
        (outcome.settlement, outcome.proof_status, micros(outcome.atp_consumed)),
        (LockState::Committed, Some(ProofStatus::Completed), 1_100),
        "{outcome:?}"
    );
    assert!(
        !outcome.result.is_empty(),
        "the delegator got the result it paid for: {outcome:?}"
    );
    assert!(
        outcome.result.values().any(|v| v.to_string().contains("42")),
        "the result is the executed one: {:?}",
        outcome.result
    );
    // Exactly the proof the ledger paid for, byte for byte.
    let envelope = outcome.proof_envelope.as_deref().expect("the proof as it arrived");
    assert_eq!(envelope.as_bytes(), kept.wire().as_ref());
    let body: Value = serde_json::from_str(envelope).expect("json");
    let proof: ExecutionProof = serde_json::from_value(body["body"].clone()).expect("proof");
    assert_eq!(proof.result, outcome.result);

    let mut expected = before;
    *expected.entry(lct("Thor", C).to_string()).or_default() -= 1_100;
    *expected.entry(lct("Legion", C).to_string()).or_default() += 1_100;
    assert_eq!(p.balances().await, expected, "paid exactly once");
    p.assert_audit_clean();
}
