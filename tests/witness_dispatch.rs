//! Issue #13, item 2, the production path: Thor delegates `wordcount` (an external program,
//! which the ledger cannot check) to Legion through `FederationClient`; its client names
//! Sprout, the only other live platform that runs `wordcount`, as candidate witness; the
//! ledger samples Legion's commit (a new executor: rate 1.0) and holds it; Thor's client
//! sends its signed task to Sprout, whose real worker re-runs it and answers the ledger.
//! Real processes, a real server with credentials, the real ledger service; the audit is
//! clean after each test.

mod common;

use common::federation::Processes;
use common::witness::federation_edit;
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest};
use sage_federation::ledger::model::{LockState, RollbackReason, SignedProof};
use sage_federation::protocol::proof::ExecutionProof;
use serde_json::json;

const OPERATION: &str = "wordcount";
const BUDGET_ATP: f64 = 1.0;
/// Thor's `[settlement] witness_share` default: a tenth of the budget.
const SHARE_ATP: f64 = 0.1;
const TEXT: &str = "the quick brown fox jumps over the lazy dog";
/// A hold short enough for the test that waits it out.
const SHORT_HOLD_SECONDS: f64 = 3.0;

fn wordcount_for_legion() -> DelegationRequest {
    DelegationRequest {
        to: Some("Legion".into()),
        task_type: "consciousness".into(),
        operation: OPERATION.into(),
        budget: BUDGET_ATP,
        timeout_seconds: 20,
        parameters: json!({"text": TEXT}).as_object().cloned().expect("object"),
        task_id: None,
    }
}

/// The lock's money adds up: the executor's pay, the witness's and the refund are the budget.
fn assert_conserved(outcome: &DelegationOutcome) {
    let witness_paid = outcome.witness.as_ref().map_or(0.0, |w| w.paid_uatp.as_f64());
    let total = outcome.atp_consumed + witness_paid + outcome.atp_refunded;
    assert!((total - BUDGET_ATP).abs() < 1e-6, "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_executor_is_witnessed_by_a_real_worker_and_the_delegator_gets_the_result() {
    let p = Processes::start_with(&federation_edit(None, 60.0)).await;
    let thor = p.client("Thor").await;
    let outcome = thor.delegate_task(wordcount_for_legion()).await.expect("delegated");

    assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
    let witness = outcome.witness.clone().expect("the ledger sampled a new executor");
    assert_eq!(witness.witness, "Sprout");
    assert_eq!(witness.agreed, Some(true), "{outcome:?}");
    // Legion is paid all it claimed to consume, as if unsampled; Sprout's whole share comes
    // out of Thor's refund (the program is cheap: the refund holds the share).
    let envelope = outcome.proof_envelope.as_deref().expect("the executor's proof");
    let claimed = SignedProof::from_wire(envelope.as_bytes())
        .expect("an envelope")
        .body::<ExecutionProof>()
        .expect("a proof")
        .atp_consumed;
    assert!(claimed > 0.0 && claimed <= BUDGET_ATP - SHARE_ATP, "{outcome:?}");
    assert!((outcome.atp_consumed - claimed).abs() < 1e-6, "{outcome:?}");
    assert!((witness.paid_uatp.as_f64() - SHARE_ATP).abs() < 1e-6, "{outcome:?}");
    assert!(
        (outcome.atp_refunded - (BUDGET_ATP - claimed - SHARE_ATP)).abs() < 1e-6,
        "{outcome:?}"
    );
    // The result is the executor's, from the proof the ledger paid for (not the result-less
    // proof Legion published while the commit was held).
    assert_eq!(outcome.result.get("word_count"), Some(&json!(9)), "{outcome:?}");
    assert_conserved(&outcome);
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_executor_is_caught_by_a_real_witness_worker() {
    let p = Processes::start_with(&federation_edit(Some(common::witness::LYING_PROGRAM), 60.0)).await;
    let thor = p.client("Thor").await;
    let outcome = thor.delegate_task(wordcount_for_legion()).await.expect("delegated");

    assert_eq!(outcome.settlement, LockState::RolledBack, "{outcome:?}");
    assert_eq!(outcome.rollback_reason, Some(RollbackReason::WitnessDisagreed));
    let witness = outcome.witness.clone().expect("witnessed");
    assert_eq!((witness.witness.as_str(), witness.agreed), ("Sprout", Some(false)));
    // Refunded but the witness's share; Legion paid nothing; no made-up result delivered.
    assert!((witness.paid_uatp.as_f64() - SHARE_ATP).abs() < 1e-6, "{outcome:?}");
    assert!(
        (outcome.atp_refunded - (BUDGET_ATP - SHARE_ATP)).abs() < 1e-6,
        "{outcome:?}"
    );
    assert_eq!(outcome.atp_consumed, 0.0);
    assert!(outcome.result.is_empty(), "{outcome:?}");
    assert_conserved(&outcome);

    common::witness::await_probation(&p, "Legion").await;
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_whose_worker_is_down_lets_the_hold_expire_and_the_executor_is_paid() {
    let mut p = Processes::start_with(&federation_edit(None, SHORT_HOLD_SECONDS)).await;
    // Sprout's record still heartbeats fresh for a while: it is appointed, but nobody
    // listens on its witness subject.
    p.kill_worker("Sprout");
    let thor = p.client("Thor").await;
    let outcome = thor.delegate_task(wordcount_for_legion()).await.expect("delegated");

    assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
    let witness = outcome.witness.clone().expect("the commit was held");
    assert_eq!((witness.witness.as_str(), witness.agreed), ("Sprout", None));
    assert_eq!(witness.paid_uatp.as_f64(), 0.0);
    assert!(outcome.atp_consumed > 0.0, "{outcome:?}");
    // The unpaid share stays in Thor's refund.
    assert!(
        (outcome.atp_refunded - (BUDGET_ATP - outcome.atp_consumed)).abs() < 1e-6,
        "{outcome:?}"
    );
    assert_eq!(outcome.result.get("word_count"), Some(&json!(9)), "{outcome:?}");
    assert_conserved(&outcome);
    p.assert_audit_clean();
}
