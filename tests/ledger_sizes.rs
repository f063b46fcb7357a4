//! Sizes at the edge (issue #9, item 8): a proof whose result is as large as a result may be
//! travels inside a ledger commit without being escaped a second time, so the executor of
//! a legitimately large result is paid.

mod common;

use common::{LedgerFixture, lct, lock_terms};
use sage_federation::ledger::model::LockState;
use sage_federation::ledger::protocol::Outcome;
use sage_federation::protocol::task::TaskId;
use serde_json::{Map, Value};

const C: &str = "consciousness";
/// `protocol::limits::PROOF_RESULT_BYTES_MAX` (the module is private): signing refuses a
/// larger result, so a wrong copy here fails the test.
const PROOF_RESULT_BYTES_MAX: usize = 128 * 1024;
/// `protocol::limits::ENVELOPE_BYTES_MAX`.
const ENVELOPE_BYTES_MAX: usize = 256 * 1024;

/// The largest result made of one string of quotes: each quote serializes as two bytes.
fn result_of_quotes() -> Map<String, Value> {
    let quotes = (PROOF_RESULT_BYTES_MAX - r#"{"q":""}"#.len()) / 2;
    let mut result = Map::new();
    result.insert("q".to_owned(), Value::String("\"".repeat(quotes)));
    assert!(serde_json::to_vec(&result).expect("json").len() > PROOF_RESULT_BYTES_MAX - 2);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_with_the_largest_result_of_quotes_is_paid() {
    let f = LedgerFixture::start().await;
    let treasury = f.client("Treasury").await;
    let reply = treasury.grant("genesis", &lct("Thor", C), 100.0).await.expect("grant");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    let task_id = TaskId::random().expect("id");
    let reply = f
        .client("Thor")
        .await
        .lock(&lock_terms(&task_id, &lct("Thor", C), &lct("Legion", C), 10.0))
        .await
        .expect("lock");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");

    let proof = common::completed_proof(&task_id, C, 4.0, 0.9, result_of_quotes());
    let wire = f
        .signer("Legion")
        .sign(&proof)
        .expect("a result within its limit signs");
    assert!(wire.len() < ENVELOPE_BYTES_MAX, "{} bytes", wire.len());
    let reply = f
        .client("Legion")
        .await
        .commit(&task_id, &wire)
        .await
        .expect("the commit is sent");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    let snapshot = f.snapshot().await;
    let lock = &snapshot.locks[&sage_federation::nats::subjects::ledger_lock(task_id.as_str())];
    assert_eq!(lock.state, LockState::Committed);
    let paid = lock.settlement.as_ref().map(|s| s.paid_uatp.micros());
    assert_eq!(paid, Some(4_000_000));
    f.assert_audit_clean().await;
}
