//! The sequencer's group commit through the real ledger service (issue #9, item 7): when a
//! lock and the commit of the same task land in one group, every command of the group must
//! still apply, not fail its compare-and-swap on an account the group never read.

mod common;

use bytes::Bytes;
use common::{LedgerFixture, lct, signed_proof};
use futures::future::join_all;
use sage_federation::ledger::model::LockState;
use sage_federation::ledger::protocol::{LedgerReply, LedgerRequest, Operation, Outcome, REQUEST_TTL, RejectCode};
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::proof::ProofStatus;
use sage_federation::protocol::task::TaskId;
use std::time::Duration;

const C: &str = "consciousness";
/// Pairs sent at once: enough that most pairs share a group with their own lock.
const PAIRS: usize = 40;

/// One request, one reply: no retry of a busy answer, so that a failed group shows.
async fn once(client: &async_nats::Client, signer: &Signer, operation: Operation) -> LedgerReply {
    let created_at = Timestamp::now();
    let subject = subjects::ledger_endpoint(operation.name());
    let request = LedgerRequest {
        requester: signer.platform().to_owned(),
        created_at,
        expires_at: created_at + REQUEST_TTL,
        operation,
    };
    let wire = signer.sign(&request).expect("sign");
    let reply = client.request(subject, wire).await.expect("a reply");
    serde_json::from_slice(&reply.payload).expect("a ledger reply")
}

/// Each pair pays its own executor account, so that each pair is the first to touch it.
fn executor(pair: usize) -> sage_federation::protocol::lct::Lct {
    lct("Legion", &format!("{C}.pair{pair}"))
}

fn lock_of(task_id: &TaskId, pair: usize) -> Operation {
    let now = Timestamp::now();
    Operation::Lock {
        task_id: task_id.clone(),
        delegator: lct("Thor", C),
        executor: executor(pair),
        amount: 10.0,
        quality_threshold: 0.5,
        deadline: now + Duration::from_secs(60),
        expires_at: now + Duration::from_secs(120),
        task_digest: None,
        witness: None,
        operation: None,
    }
}

fn proof_of(f: &LedgerFixture, task_id: &TaskId, pair: usize) -> Bytes {
    signed_proof(
        f.signer("Legion"),
        task_id,
        &lct("Thor", C),
        &executor(pair),
        3.0,
        0.9,
        ProofStatus::Completed,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_and_its_commit_in_one_group_do_not_fail_the_group() {
    let mut f = LedgerFixture::start().await;
    let treasury = f.client("Treasury").await;
    // Every account exists before: a write that takes an executor's account, never read,
    // for absent contradicts its revision.
    let accounts = std::iter::once(lct("Thor", C)).chain((0..PAIRS).map(executor));
    for (n, account) in accounts.enumerate() {
        let reply = treasury
            .grant(&format!("genesis-{n}"), &account, 1000.0)
            .await
            .expect("grant");
        assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    }
    // A new instance: its cache is empty, so nothing the group reads comes from the grants.
    f.service.take().expect("a service").stop().await;
    f.service = Some(f.start_service(true).await);
    let client = f.nats.client().await;
    let tasks: Vec<TaskId> = (0..PAIRS).map(|_| TaskId::random().expect("id")).collect();
    let pairs = tasks.iter().enumerate().map(|(pair, task_id)| {
        let (client, thor, legion) = (&client, f.signer("Thor"), f.signer("Legion"));
        let commit = Operation::Commit {
            task_id: task_id.clone(),
            proof: serde_json::value::RawValue::from_string(
                String::from_utf8(proof_of(&f, task_id, pair).to_vec()).expect("utf-8"),
            )
            .expect("an envelope is JSON"),
            task: None,
        };
        async move { tokio::join!(once(client, thor, lock_of(task_id, pair)), once(client, legion, commit)) }
    });
    let replies = join_all(pairs).await;

    let mut committed_with_its_lock = 0;
    for (pair, (task_id, (lock, commit))) in tasks.iter().zip(&replies).enumerate() {
        assert_eq!(lock.outcome, Outcome::Applied, "lock of {task_id}: {lock:?}");
        assert_ne!(commit.code, Some(RejectCode::Busy), "commit of {task_id}: {commit:?}");
        if commit.outcome == Outcome::Applied {
            committed_with_its_lock += 1;
        } else {
            // The commit overtook its lock: refused as unknown, and it settles now.
            assert_eq!(commit.code, Some(RejectCode::UnknownLock), "{commit:?}");
            let again = f
                .client("Legion")
                .await
                .commit(task_id, &proof_of(&f, task_id, pair))
                .await
                .expect("commit");
            assert_eq!(again.outcome, Outcome::Applied, "{again:?}");
        }
    }
    assert!(
        committed_with_its_lock > 0,
        "no commit found its lock: the test proves nothing"
    );

    let snapshot = f.snapshot().await;
    for task_id in &tasks {
        assert_eq!(
            snapshot.locks[&subjects::ledger_lock(task_id.as_str())].state,
            LockState::Committed
        );
    }
    let account = |lct| snapshot.accounts[&sage_federation::ledger::model::account_key(&lct)].clone();
    for pair in 0..PAIRS {
        assert_eq!(
            account(executor(pair)).balance_uatp.micros(),
            1003 * 1_000_000,
            "pair {pair} paid 3 ATP"
        );
    }
    let thor = account(lct("Thor", C));
    assert_eq!(thor.balance_uatp.micros(), (1000 - 3 * PAIRS as u64) * 1_000_000);
    assert_eq!(thor.locked_uatp.micros(), 0);
    f.assert_audit_clean().await;
}
