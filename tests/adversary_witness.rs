//! Witnesses under attack (issue #13, item 2). A federation of separate processes runs;
//! Thor locks an unverifiable `wordcount` task for Legion naming Sprout as the witness. Each
//! party, holding its own valid credentials and key, tries to get around the witness: name
//! itself (or the other party) as witness, answer for the appointed witness, forge the
//! witness's proof, replay an answer to another task, roll a held lock back, be paid twice,
//! or reset its witness record in the bucket. Each attempt is refused by the ledger's rules,
//! by signatures or by the server's permissions, and a refused attempt leaves the ledger
//! exactly as it was. The audit is clean at the end.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::attacker::Attacker;
use common::federation::Processes;
use common::lct;
use common::witness::{C, Parties, WORDS, ledger_state, lock_of, locked_task, proof_of, terms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::ledger::protocol::{LedgerReply, Outcome, RejectCode, WitnessRequest};
use sage_federation::ledger::snapshot::LedgerSnapshot;
use sage_federation::nats::subjects;
use sage_federation::protocol::task::TaskId;
use serde_json::Value;

/// How long a sampled commit is held here: short, so the test sees the sweeper pass.
const HOLD_SECONDS: f64 = 3.0;

/// Sends each attempt and checks it is rejected with its code and changes nothing.
async fn refused(p: &Processes, what: &str, code: RejectCode, attempt: impl std::future::Future<Output = LedgerReply>) {
    let before = ledger_state(&p.snapshot().await);
    let reply = attempt.await;
    assert_eq!(
        (reply.outcome, reply.code),
        (Outcome::Rejected, Some(code)),
        "{what}: {reply:?}"
    );
    assert_eq!(ledger_state(&p.snapshot().await), before, "{what} changed the ledger");
}

/// Each account's balance + locked, in micro-ATP.
fn holdings(snapshot: &LedgerSnapshot) -> std::collections::BTreeMap<String, i64> {
    snapshot
        .accounts
        .values()
        .map(|a| {
            (
                a.lct.to_string(),
                (a.balance_uatp.micros() + a.locked_uatp.micros()) as i64,
            )
        })
        .collect()
}

/// `wire`, a signed envelope, with its body edited by `edit` and its signer renamed:
/// the signature no longer covers it.
fn forged(wire: &Bytes, signer: &str, edit: impl FnOnce(&mut Value)) -> Bytes {
    let mut envelope: Value = serde_json::from_slice(wire).expect("an envelope");
    envelope["signer"] = Value::String(signer.to_owned());
    edit(&mut envelope["body"]);
    Bytes::from(serde_json::to_vec(&envelope).expect("json"))
}

/// Thor's witness terms, with `candidates`.
fn naming(candidates: &[&str]) -> WitnessRequest {
    WitnessRequest {
        candidates: candidates.iter().map(|c| (*c).to_owned()).collect(),
        ..terms(0.0, HOLD_SECONDS)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_party_can_get_around_the_witness() {
    let mut p = Processes::start().await;
    p.expect_violations = true;
    let parties = Parties::connect(&p).await;
    let start = holdings(&p.snapshot().await);

    // A witness is neither party: Thor cannot name itself or Legion, nor Legion itself when
    // it delegates to Thor.
    for (what, client, from, to, candidates) in [
        ("the delegator as witness", &parties.thor, "Thor", "Legion", ["Thor"]),
        ("the executor as witness", &parties.thor, "Thor", "Legion", ["Legion"]),
        (
            "a delegator naming its executor",
            &parties.legion,
            "Legion",
            "Thor",
            ["Thor"],
        ),
    ] {
        let task_id = TaskId::random().expect("id");
        let lock = common::lock_terms(&task_id, &lct(from, C), &lct(to, C), 1.0);
        let task = Bytes::from_static(b"{}");
        refused(&p, what, RejectCode::InvalidRequest, async {
            client
                .lock_with_witness(&lock, &task, common::witness::OPERATION, naming(&candidates))
                .await
                .expect("reply")
        })
        .await;
    }

    // A held task: Legion's first commit is sampled (a new executor's rate is 1).
    let task_id = TaskId::random().expect("id");
    let task = locked_task(&parties, &task_id, terms(0.0, HOLD_SECONDS)).await;
    let garbage = proof_of(&parties.legion_key, &task_id, 0.0);
    let held = lock_of(
        &parties
            .legion
            .commit_with_task(&task_id, &garbage, &task)
            .await
            .expect("commit"),
    );
    assert_eq!(held.state, LockState::AwaitingWitness);

    // Legion answers for its own task: with its own proof, with Sprout's name on a proof it
    // signed, and with a request it signs as Sprout.
    refused(
        &p,
        "the executor as its own witness",
        RejectCode::NotAuthorized,
        async {
            parties
                .legion
                .witness(&task_id, &proof_of(&parties.legion_key, &task_id, 0.0))
                .await
                .expect("reply")
        },
    )
    .await;
    let sprouts_name = forged(&proof_of(&parties.legion_key, &task_id, 0.0), "Sprout", |body| {
        body["executor_lct"] = Value::String(lct("Sprout", C).to_string());
    });
    refused(
        &p,
        "a witness proof forged by the executor",
        RejectCode::BadSignature,
        async { parties.legion.witness(&task_id, &sprouts_name).await.expect("reply") },
    )
    .await;
    // Sprout's genuine proof, sent by Legion: only the appointed witness answers.
    let sprouts_answer = proof_of(&parties.sprout_key, &task_id, 0.0);
    refused(
        &p,
        "the witness's proof sent by the executor",
        RejectCode::NotAuthorized,
        async { parties.legion.witness(&task_id, &sprouts_answer).await.expect("reply") },
    )
    .await;

    // Thor, wanting its ATP back: roll back the held lock, claim a disagreement, answer.
    refused(
        &p,
        "the delegator's rollback of a held lock",
        RejectCode::HeldForWitness,
        async {
            parties
                .thor
                .rollback(&task_id, RollbackReason::Timeout, None)
                .await
                .expect("reply")
        },
    )
    .await;
    refused(
        &p,
        "the delegator claiming a disagreement",
        RejectCode::HeldForWitness,
        async {
            parties
                .thor
                .rollback(&task_id, RollbackReason::WitnessDisagreed, None)
                .await
                .expect("reply")
        },
    )
    .await;
    refused(&p, "the delegator as witness", RejectCode::NotAuthorized, async {
        parties.thor.witness(&task_id, &sprouts_answer).await.expect("reply")
    })
    .await;
    // Legion, replacing its held proof with one claiming more.
    refused(
        &p,
        "another proof for a held commit",
        RejectCode::HeldForWitness,
        async {
            let more = proof_of(&parties.legion_key, &task_id, 1.0);
            parties
                .legion
                .commit_with_task(&task_id, &more, &task)
                .await
                .expect("reply")
        },
    )
    .await;

    // Legion resets its record in the bucket: the server refuses (only the ledger writes it).
    let mut attacker = Attacker::connect(&p, "Legion").await;
    let record_key = subjects::ledger_witness("Legion", common::witness::OPERATION);
    attacker
        .publish(&subjects::kv_pattern(subjects::LEDGER_BUCKET, &record_key), "{}")
        .await;

    // Sprout's answer to another held task is not an answer to this one.
    let other_id = TaskId::random().expect("id");
    let other_task = locked_task(&parties, &other_id, terms(0.0, 60.0)).await;
    let other_commit = proof_of(&parties.legion_key, &other_id, WORDS);
    let other = lock_of(
        &parties
            .legion
            .commit_with_task(&other_id, &other_commit, &other_task)
            .await
            .expect("commit"),
    );
    assert_eq!(other.state, LockState::AwaitingWitness, "still sampled at rate 1");
    refused(
        &p,
        "a witness's answer to another task",
        RejectCode::ProofMismatch,
        async { parties.sprout.witness(&other_id, &sprouts_answer).await.expect("reply") },
    )
    .await;

    // The witness answers (the truth: 9 words); Legion's garbage is refunded, Sprout paid.
    let truth = proof_of(&parties.sprout_key, &task_id, WORDS);
    let reply = parties.sprout.witness(&task_id, &truth).await.expect("reply");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    assert_eq!(lock_of(&reply).state, LockState::RolledBack);
    // Paid once: the answer again, the commit again, and the sweeper past the hold change
    // nothing.
    let settled = ledger_state(&p.snapshot().await);
    let again = parties.sprout.witness(&task_id, &truth).await.expect("reply");
    assert_eq!(again.outcome, Outcome::AlreadyApplied, "{again:?}");
    let recommit = parties
        .legion
        .commit_with_task(&task_id, &garbage, &task)
        .await
        .expect("reply");
    assert_eq!(recommit.code, Some(RejectCode::AlreadySettled), "{recommit:?}");
    // (The other task's hold is 60 s: nothing else moves meanwhile.)
    tokio::time::sleep(Duration::from_secs_f64(HOLD_SECONDS + 1.5)).await;
    assert_eq!(
        ledger_state(&p.snapshot().await),
        settled,
        "a settled answer paid or refunded again"
    );

    // Conservation: what Thor gave, Legion and Sprout got, to the unit (balance + locked:
    // the other task's budget is still locked in Thor's account).
    let end = holdings(&p.snapshot().await);
    let change = |platform: &str| {
        let key = lct(platform, C).to_string();
        end.get(&key).copied().unwrap_or(0) - start.get(&key).copied().unwrap_or(0)
    };
    assert_eq!(change("Legion"), 0, "the liar earned nothing");
    assert_eq!(
        change("Sprout"),
        common::witness::uatp(common::witness::SHARE_ATP) as i64
    );
    assert_eq!(change("Thor") + change("Legion") + change("Sprout"), 0);
    p.assert_audit_clean();
}
