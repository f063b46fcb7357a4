//! The atomic batch publisher against a real nats-server: what the ledger relies on.

mod common;

use bytes::Bytes;
use common::TestNats;
use sage_federation::ledger::batch::{self, BatchError, BatchMessage};
use sage_federation::nats::subjects;

#[tokio::test]
async fn a_batch_commits_whole_or_not_at_all() {
    let nats = TestNats::with_infra().await;
    let client = nats.client().await;
    let kv = nats
        .js()
        .await
        .get_key_value(subjects::LEDGER_BUCKET)
        .await
        .expect("bucket");
    let subject = |key: &str| subjects::kv_subject(subjects::LEDGER_BUCKET, key);
    let a = kv.put("test.a", "a0".into()).await.expect("put");
    let b = kv.put("test.b", "b0".into()).await.expect("put");

    let ack = batch::publish_atomic(
        &client,
        &batch::new_batch_id(&client),
        vec![
            BatchMessage::new(subject("test.a"), Bytes::from("a1")).expect_last_subject_sequence(a),
            BatchMessage::new(subject("test.b"), Bytes::from("b1")).expect_last_subject_sequence(b),
            BatchMessage::new(subject("test.c"), Bytes::from("c1")).expect_last_subject_sequence(0),
        ],
    )
    .await
    .expect("batch commits");
    assert_eq!(ack.count, 3);
    // Contiguous sequences: each message's revision is computable from the ack.
    for (i, key) in ["test.a", "test.b", "test.c"].iter().enumerate() {
        let entry = kv.entry(*key).await.expect("entry").expect("exists");
        assert_eq!(Some(entry.revision), ack.sequence_of(i), "{key}");
    }
    let revision_after = kv.entry("test.c").await.expect("entry").expect("exists").revision;

    // One stale revision (a is at a newer revision now): nothing of the batch is stored.
    let stale = batch::publish_atomic(
        &client,
        &batch::new_batch_id(&client),
        vec![
            BatchMessage::new(subject("test.b"), Bytes::from("b2"))
                .expect_last_subject_sequence(ack.sequence_of(1).unwrap_or(0)),
            BatchMessage::new(subject("test.a"), Bytes::from("a2")).expect_last_subject_sequence(a),
        ],
    )
    .await;
    assert!(matches!(stale, Err(BatchError::WrongLastSequence(_))), "{stale:?}");
    assert_eq!(kv.get("test.b").await.expect("get").as_deref(), Some(&b"b1"[..]));

    // Re-creating a key that exists (a replayed journal entry) is refused.
    let replay = batch::publish_atomic(
        &client,
        &batch::new_batch_id(&client),
        vec![BatchMessage::new(subject("test.c"), Bytes::from("c2")).expect_last_subject_sequence(0)],
    )
    .await;
    assert!(matches!(replay, Err(BatchError::WrongLastSequence(_))), "{replay:?}");
    let stream = nats
        .js()
        .await
        .get_stream(subjects::kv_stream(subjects::LEDGER_BUCKET))
        .await
        .expect("stream");
    assert_eq!(
        stream.cached_info().state.last_sequence,
        revision_after,
        "no refused batch stored anything"
    );
}
