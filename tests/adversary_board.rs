//! What a platform holding valid credentials can do to another platform's task through the
//! shared boards (issue #8 item 3, issue #9 item 5): here, occupy or overwrite the task's
//! proof slot. A federation of separate processes runs; the attacker, Sprout, signs with its
//! own key and publishes wherever its credentials let it.

mod common;

use std::time::{Duration, Instant};

use common::federation::Processes;
use common::{lct, signed_proof};
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::ledger::model::LockState;
use sage_federation::nats::subjects;
use sage_federation::protocol::envelope::{Signer, Verified};
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::TaskBoard;
use serde_json::json;

const C: &str = "consciousness";
/// How long the attacked task works: long enough for the attacker to publish first.
const WORK_MS: u64 = 2_000;

fn sprout(p: &Processes) -> Signer {
    p.signer("Sprout")
}

/// A task of [`WORK_MS`] from Thor to Legion under `task_id`.
fn waiting_task(task_id: &TaskId) -> DelegationRequest {
    common::waiting_on_legion(task_id, WORK_MS)
}

/// Waits until the task board (which every platform reads) shows `task_id`: the attacker
/// learns the id there.
async fn seen_on_the_board(p: &Processes, task_id: &TaskId) {
    let board = TaskBoard::open(&async_nats::jetstream::new(p.nats.client_as("Sprout").await))
        .await
        .expect("board");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(board.get(task_id).await, Ok(Some(_))) {
        assert!(Instant::now() < deadline, "task {task_id} never reached the board");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sprout's forged "completed" proof of Thor's `task_id`, with a result of its own.
fn forged_proof(p: &Processes, task_id: &TaskId) -> bytes::Bytes {
    signed_proof(
        &sprout(p),
        task_id,
        &lct("Thor", C),
        &lct("Sprout", C),
        5.0,
        1.0,
        ProofStatus::Completed,
    )
}

/// Publishes `wire` as Sprout on each proof subject of `task_id` it might try (Legion's slot
/// and its own), under `message_id`; returns how many the server stored.
async fn publish_as_sprout(p: &Processes, task_id: &TaskId, wire: bytes::Bytes, message_id: &str) -> usize {
    let js = async_nats::jetstream::new(p.nats.client_as("Sprout").await);
    let mut stored = 0;
    for subject in slot_subjects(task_id) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        if let Ok(ack) = js.publish_with_headers(subject, headers, wire.clone()).await
            && let Ok(Ok(ack)) = tokio::time::timeout(Duration::from_secs(5), ack).await
            && !ack.duplicate
        {
            stored += 1;
        }
    }
    stored
}

/// The proof subjects an attacker would try for Thor's `task_id`.
fn slot_subjects(task_id: &TaskId) -> Vec<String> {
    vec![
        subjects::proof("Thor", "Legion", task_id.as_str()),
        subjects::proof("Thor", "Sprout", task_id.as_str()),
    ]
}

/// The message ids an attacker would guess for the real proof of `task_id`.
fn guessed_message_id(task_id: &TaskId) -> String {
    format!("proof-{task_id}")
}

async fn verified(p: &Processes, wire: &bytes::Bytes) -> Verified<ExecutionProof> {
    p.nats.key_directory().await.verify(wire).await.expect("a signed proof")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_published_first_by_another_platform_does_not_take_the_task() {
    let p = Processes::start().await;
    let thor = p.client("Thor").await;
    let task_id = TaskId::random().expect("id");
    let request = waiting_task(&task_id);
    let delegation = tokio::spawn(async move { thor.delegate_task(request).await });
    seen_on_the_board(&p, &task_id).await;
    let stored = publish_as_sprout(&p, &task_id, forged_proof(&p, &task_id), &guessed_message_id(&task_id)).await;
    assert_eq!(stored, 1, "the server stores Sprout's proof under its own name only");

    let outcome = delegation.await.expect("join").expect("Thor's delegation settles");
    assert_eq!(
        (outcome.to.as_str(), outcome.settlement, outcome.proof_status),
        ("Legion", LockState::Committed, Some(ProofStatus::Completed)),
        "{outcome:?}"
    );
    let envelope = outcome.proof_envelope.as_deref().expect("the proof settled on");
    let proof = verified(&p, &bytes::Bytes::copy_from_slice(envelope.as_bytes())).await;
    assert_eq!(
        proof.executor_lct.platform(),
        "Legion",
        "Thor settled on Legion's proof"
    );
    assert_eq!(proof.result.get("steps"), Some(&json!(2)), "Legion's result: {proof:?}");
    assert_eq!(outcome.result, proof.result, "Thor holds Legion's result");
    p.assert_audit_clean();
}

/// The subject Legion's real proof of Thor's `task_id` is stored under.
fn real_slot(task_id: &TaskId) -> String {
    subjects::proof("Thor", "Legion", task_id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_published_later_by_another_platform_does_not_replace_the_real_one() {
    let p = Processes::start().await;
    let thor = p.client("Thor").await;
    let task_id = TaskId::random().expect("id");
    let outcome = thor.delegate_task(waiting_task(&task_id)).await.expect("settles");
    assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");

    let stored = publish_as_sprout(&p, &task_id, forged_proof(&p, &task_id), "a-fresh-message-id").await;
    assert_eq!(stored, 1, "the server stores Sprout's proof under its own name only");

    let js = async_nats::jetstream::new(p.nats.client_as("Thor").await);
    let stream = js.get_stream(subjects::PROOFS_STREAM).await.expect("proofs stream");
    let stored = stream
        .direct_get_last_for_subject(real_slot(&task_id))
        .await
        .expect("the task's proof is stored");
    let proof = verified(&p, &stored.payload).await;
    assert_eq!(
        proof.executor_lct.platform(),
        "Legion",
        "the slot holds Legion's proof: {proof:?}"
    );
    assert_eq!(proof.result.get("steps"), Some(&json!(2)), "{proof:?}");
    p.assert_audit_clean();
}
