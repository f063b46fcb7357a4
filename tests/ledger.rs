//! The ledger against a real nats-server: each transition, each invalid call, expiry, and a
//! hot account. Every test ends with the audit.

mod common;

use std::time::Duration;

use common::{LedgerFixture, lct, lock_terms, signed_proof};
use sage_federation::ledger::COMMIT_WINDOW;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::ledger::protocol::{LedgerReply, Operation, Outcome, RejectCode};
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::proof::ProofStatus;
use sage_federation::protocol::task::TaskId;

const C: &str = "consciousness";
const CS: &str = "consciousness.sage";

fn id(text: &str) -> TaskId {
    text.parse().expect("task id")
}

async fn balance(f: &LedgerFixture, platform: &str, task_type: &str) -> (f64, f64) {
    let snapshot = f.snapshot().await;
    let key = sage_federation::ledger::model::account_key(&lct(platform, task_type));
    snapshot
        .accounts
        .get(&key)
        .map_or((0.0, 0.0), |a| (a.balance_uatp.as_f64(), a.locked_uatp.as_f64()))
}

async fn lock(client: &LedgerClient, task: &str, from: &str, to: &str, amount: f64) -> LedgerReply {
    let now = Timestamp::now();
    // The raw operation: the wire's decimal amount, so that hostile values reach the service.
    client
        .request(Operation::Lock {
            task_id: id(task),
            delegator: lct(from, C),
            executor: lct(to, CS),
            amount,
            quality_threshold: 0.7,
            deadline: now + Duration::from_secs(30),
            expires_at: now + Duration::from_secs(60),
            task_digest: None,
            witness: None,
            operation: None,
        })
        .await
        .expect("lock request")
}

fn assert_applied(reply: &LedgerReply) {
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
}

fn assert_rejected(reply: &LedgerReply, code: RejectCode) {
    assert_eq!(
        (reply.outcome, reply.code),
        (Outcome::Rejected, Some(code)),
        "{reply:?}"
    );
    assert!(!reply.message.is_empty());
}

async fn fund(f: &LedgerFixture, platform: &str, amount: f64) {
    let treasury = f.client("Treasury").await;
    let reply = treasury
        .grant(&format!("genesis-{platform}"), &lct(platform, C), amount)
        .await
        .expect("grant");
    assert_applied(&reply);
}

#[tokio::test]
async fn grant_lock_commit_pays_consumed_and_refunds_the_rest() {
    let f = LedgerFixture::start().await;
    fund(&f, "Thor", 100.0).await;
    let again = f
        .client("Treasury")
        .await
        .grant("genesis-Thor", &lct("Thor", C), 100.0)
        .await
        .expect("grant");
    assert_eq!(again.outcome, Outcome::AlreadyApplied, "grant is idempotent by id");

    let thor = f.client("Thor").await;
    let reply = lock(&thor, "t-1", "Thor", "Legion", 10.0).await;
    assert_applied(&reply);
    assert_eq!(reply.lock.as_ref().map(|l| l.state), Some(LockState::Pending));
    assert_eq!(balance(&f, "Thor", C).await, (90.0, 10.0));
    assert_eq!(
        lock(&thor, "t-1", "Thor", "Legion", 10.0).await.outcome,
        Outcome::AlreadyApplied
    );
    assert_rejected(&lock(&thor, "t-1", "Thor", "Legion", 11.0).await, RejectCode::Conflict);

    let proof = signed_proof(
        f.signer("Legion"),
        &id("t-1"),
        &lct("Thor", C),
        &lct("Legion", CS),
        4.0,
        0.9,
        ProofStatus::Completed,
    );
    let reply = thor.commit(&id("t-1"), &proof).await.expect("commit");
    assert_applied(&reply);
    let settlement = reply.lock.and_then(|l| l.settlement).expect("settlement");
    assert_eq!(
        (
            settlement.paid_uatp.as_f64(),
            settlement.refunded_uatp.as_f64(),
            settlement.quality
        ),
        (4.0, 6.0, Some(0.9))
    );
    assert_eq!(balance(&f, "Thor", C).await, (96.0, 0.0));
    assert_eq!(balance(&f, "Legion", CS).await, (4.0, 0.0));

    // Retrying the commit (from either side) changes nothing.
    let before = f.snapshot().await.revision;
    assert_eq!(
        thor.commit(&id("t-1"), &proof).await.expect("commit").outcome,
        Outcome::AlreadyApplied
    );
    assert_eq!(
        f.client("Legion")
            .await
            .commit(&id("t-1"), &proof)
            .await
            .expect("commit")
            .outcome,
        Outcome::AlreadyApplied
    );
    assert_eq!(f.snapshot().await.revision, before);

    let snapshot = f.snapshot().await;
    assert!(snapshot.journal.contains_key("journal.t-1.lock"));
    assert!(snapshot.journal.contains_key("journal.t-1.settle"));
    let report = f.assert_audit_clean().await;
    assert_eq!(report.supply_uatp, 100_000_000);
}

#[tokio::test]
async fn rollbacks_refund_everything_and_need_a_reason_the_ledger_can_check() {
    let f = LedgerFixture::start().await;
    fund(&f, "Thor", 100.0).await;
    let thor = f.client("Thor").await;
    let legion = f.client("Legion").await;
    let (delegator, executor) = (lct("Thor", C), lct("Legion", CS));

    // Low quality: the delegator shows the executor's proof.
    assert_applied(&lock(&thor, "t-low", "Thor", "Legion", 10.0).await);
    let low = signed_proof(
        f.signer("Legion"),
        &id("t-low"),
        &delegator,
        &executor,
        5.0,
        0.3,
        ProofStatus::Completed,
    );
    assert_rejected(
        &thor.commit(&id("t-low"), &low).await.expect("commit"),
        RejectCode::QualityBelowThreshold,
    );
    assert_rejected(
        &thor
            .rollback(&id("t-low"), RollbackReason::LowQuality, None)
            .await
            .expect("rb"),
        RejectCode::EvidenceRequired,
    );
    let good = signed_proof(
        f.signer("Legion"),
        &id("t-low"),
        &delegator,
        &executor,
        5.0,
        0.95,
        ProofStatus::Completed,
    );
    assert_rejected(
        &thor
            .rollback(&id("t-low"), RollbackReason::LowQuality, Some(&good))
            .await
            .expect("rb"),
        RejectCode::EvidenceRequired,
    );
    let reply = thor
        .rollback(&id("t-low"), RollbackReason::LowQuality, Some(&low))
        .await
        .expect("rollback");
    assert_applied(&reply);
    assert_eq!(
        reply.lock.and_then(|l| l.settlement).and_then(|s| s.reason),
        Some(RollbackReason::LowQuality)
    );
    assert_eq!(
        thor.rollback(&id("t-low"), RollbackReason::LowQuality, Some(&low))
            .await
            .expect("rb")
            .outcome,
        Outcome::AlreadyApplied
    );
    assert_rejected(
        &thor.commit(&id("t-low"), &good).await.expect("commit"),
        RejectCode::AlreadySettled,
    );

    // Timeout: not before the deadline and the executor's commit window after it, unless the
    // executor's proof says it timed out.
    let now = Timestamp::now();
    let reply = thor
        .lock(&LockTerms {
            deadline: now + Duration::from_secs(1),
            expires_at: now + Duration::from_secs(60),
            ..lock_terms(&id("t-slow"), &delegator, &executor, 10.0)
        })
        .await
        .expect("lock");
    assert_applied(&reply);
    assert_rejected(
        &thor
            .rollback(&id("t-slow"), RollbackReason::Timeout, None)
            .await
            .expect("rb"),
        RejectCode::EvidenceRequired,
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_rejected(
        &thor
            .rollback(&id("t-slow"), RollbackReason::Timeout, None)
            .await
            .expect("rb"),
        RejectCode::EvidenceRequired,
    );
    tokio::time::sleep(COMMIT_WINDOW).await;
    assert_applied(
        &thor
            .rollback(&id("t-slow"), RollbackReason::Timeout, None)
            .await
            .expect("rb"),
    );

    // Permission denied: the executor's signed rejection is the evidence.
    assert_applied(&lock(&thor, "t-denied", "Thor", "Legion", 10.0).await);
    let refusal = signed_proof(
        f.signer("Legion"),
        &id("t-denied"),
        &delegator,
        &executor,
        0.0,
        0.0,
        ProofStatus::Rejected,
    );
    assert_rejected(
        &thor
            .rollback(&id("t-denied"), RollbackReason::PermissionDenied, None)
            .await
            .expect("rb"),
        RejectCode::EvidenceRequired,
    );
    assert_applied(
        &thor
            .rollback(&id("t-denied"), RollbackReason::PermissionDenied, Some(&refusal))
            .await
            .expect("rb"),
    );

    // Cancel by the delegator: not without the executor's acknowledgement (else it could
    // cancel a running task, keep the result and the ATP); with it, refunded.
    assert_applied(&lock(&thor, "t-cancel", "Thor", "Legion", 10.0).await);
    assert_rejected(
        &thor
            .rollback(&id("t-cancel"), RollbackReason::Cancelled, None)
            .await
            .expect("rb"),
        RejectCode::EvidenceRequired,
    );
    let acknowledged = signed_proof(
        f.signer("Legion"),
        &id("t-cancel"),
        &delegator,
        &executor,
        0.0,
        0.0,
        ProofStatus::Cancelled,
    );
    assert_applied(
        &thor
            .rollback(&id("t-cancel"), RollbackReason::Cancelled, Some(&acknowledged))
            .await
            .expect("rb"),
    );
    // Failure given up by the executor itself.
    assert_applied(&lock(&thor, "t-fail", "Thor", "Legion", 10.0).await);
    assert_applied(
        &legion
            .rollback(&id("t-fail"), RollbackReason::Failure, None)
            .await
            .expect("rb"),
    );

    assert_eq!(balance(&f, "Thor", C).await, (100.0, 0.0));
    assert_eq!(balance(&f, "Legion", CS).await, (0.0, 0.0));
    f.assert_audit_clean().await;
}

#[tokio::test]
async fn invalid_calls_leave_the_ledger_unchanged_and_say_why() {
    let f = LedgerFixture::start().await;
    fund(&f, "Thor", 100.0).await;
    let thor = f.client("Thor").await;
    let sprout = f.client("Sprout").await;
    let mallory = f.client("Mallory").await;
    let legion = f.client("Legion").await;
    let (delegator, executor) = (lct("Thor", C), lct("Legion", CS));
    assert_applied(&lock(&thor, "t-open", "Thor", "Legion", 10.0).await);
    assert_applied(&lock(&thor, "t-done", "Thor", "Legion", 10.0).await);
    assert_applied(
        &legion
            .rollback(&id("t-done"), RollbackReason::Rejected, None)
            .await
            .expect("rb"),
    );
    let before = f.snapshot().await;

    let proof = |task: &str, consumed: f64, quality: f64| {
        signed_proof(
            f.signer("Legion"),
            &id(task),
            &delegator,
            &executor,
            consumed,
            quality,
            ProofStatus::Completed,
        )
    };
    let now = Timestamp::now();
    let cases: Vec<(&str, LedgerReply, RejectCode)> = vec![
        (
            "commit of an unknown lock",
            thor.commit(&id("t-none"), &proof("t-none", 1.0, 0.9)).await.expect("r"),
            RejectCode::UnknownLock,
        ),
        (
            "commit after rollback",
            thor.commit(&id("t-done"), &proof("t-done", 1.0, 0.9)).await.expect("r"),
            RejectCode::AlreadySettled,
        ),
        (
            "consumed > locked",
            thor.commit(&id("t-open"), &proof("t-open", 10.5, 0.9))
                .await
                .expect("r"),
            RejectCode::ConsumedExceedsLocked,
        ),
        (
            "proof of another task",
            thor.commit(&id("t-open"), &proof("t-done", 1.0, 0.9)).await.expect("r"),
            RejectCode::ProofMismatch,
        ),
        (
            "proof signed by the wrong platform",
            thor.commit(
                &id("t-open"),
                &signed_proof(
                    f.signer("Sprout"),
                    &id("t-open"),
                    &delegator,
                    &lct("Sprout", CS),
                    1.0,
                    0.9,
                    ProofStatus::Completed,
                ),
            )
            .await
            .expect("r"),
            RejectCode::ProofMismatch,
        ),
        (
            "a stranger commits",
            sprout
                .commit(&id("t-open"), &proof("t-open", 1.0, 0.9))
                .await
                .expect("r"),
            RejectCode::NotAuthorized,
        ),
        (
            "a stranger rolls back",
            sprout
                .rollback(&id("t-open"), RollbackReason::Cancelled, None)
                .await
                .expect("r"),
            RejectCode::NotAuthorized,
        ),
        (
            "locking another's ATP",
            lock(&sprout, "t-x", "Thor", "Legion", 1.0).await,
            RejectCode::NotAuthorized,
        ),
        (
            "grant by a non-admin",
            mallory.grant("g-m", &lct("Mallory", C), 1e6).await.expect("r"),
            RejectCode::NotAuthorized,
        ),
        (
            "negative lock",
            lock(&thor, "t-neg", "Thor", "Legion", -5.0).await,
            RejectCode::InvalidAmount,
        ),
        (
            "zero lock",
            lock(&thor, "t-zero", "Thor", "Legion", 0.0).await,
            RejectCode::InvalidAmount,
        ),
        (
            "huge lock",
            lock(&thor, "t-huge", "Thor", "Legion", 1e300).await,
            RejectCode::InvalidAmount,
        ),
        (
            "NaN lock",
            lock(&thor, "t-nan", "Thor", "Legion", f64::NAN).await,
            RejectCode::InvalidRequest,
        ),
        (
            "infinite lock",
            lock(&thor, "t-inf", "Thor", "Legion", f64::INFINITY).await,
            RejectCode::InvalidRequest,
        ),
        (
            "negative grant",
            f.client("Treasury")
                .await
                .grant("g-neg", &lct("Thor", C), -1.0)
                .await
                .expect("r"),
            RejectCode::InvalidAmount,
        ),
        (
            "insufficient ATP",
            lock(&thor, "t-big", "Thor", "Legion", 95.0).await,
            RejectCode::InsufficientAtp,
        ),
        (
            "no account at all",
            lock(&f.client("Legion").await, "t-poor", "Legion", "Thor", 1.0).await,
            RejectCode::InsufficientAtp,
        ),
        (
            "delegator is executor",
            thor.lock(&lock_terms(&id("t-self"), &delegator, &delegator, 1.0))
                .await
                .expect("r"),
            RejectCode::SameAccount,
        ),
        (
            "expiry too far",
            thor.lock(&LockTerms {
                expires_at: now + Duration::from_secs(1_000_000),
                ..lock_terms(&id("t-far"), &delegator, &executor, 1.0)
            })
            .await
            .expect("r"),
            RejectCode::InvalidRequest,
        ),
        (
            "quality threshold above 1",
            thor.lock(&LockTerms {
                quality_threshold: 1.5,
                ..lock_terms(&id("t-q"), &delegator, &executor, 1.0)
            })
            .await
            .expect("r"),
            RejectCode::InvalidRequest,
        ),
        (
            "rollback as expired",
            thor.rollback(&id("t-open"), RollbackReason::Expired, None)
                .await
                .expect("r"),
            RejectCode::InvalidRequest,
        ),
    ];
    for (what, reply, code) in &cases {
        assert_eq!(
            (reply.outcome, reply.code),
            (Outcome::Rejected, Some(*code)),
            "{what}: {reply:?}"
        );
    }

    // Raw bytes straight onto the endpoints: junk, a forged signature, a wrong endpoint.
    let client = f.nats.client().await;
    let raw = |subject: &'static str, body: bytes::Bytes| {
        let client = client.clone();
        async move {
            let message = client.request(subject, body).await.expect("reply");
            serde_json::from_slice::<LedgerReply>(&message.payload).expect("reply parses")
        }
    };
    assert_rejected(
        &raw("sage.ledger.lock", "junk".into()).await,
        RejectCode::InvalidRequest,
    );
    assert_rejected(
        &raw("sage.ledger.lock", bytes::Bytes::from(vec![b'{'; 300_000])).await,
        RejectCode::InvalidRequest,
    );
    let impostor = sage_federation::protocol::envelope::Signer::new(
        "Thor",
        sage_federation::identity::keys::generate().expect("random"),
    )
    .expect("signer");
    let forged = LedgerClient::new(f.nats.client().await, impostor);
    assert_rejected(
        &lock(&forged, "t-forged", "Thor", "Legion", 1.0).await,
        RejectCode::BadSignature,
    );
    let request = sage_federation::ledger::protocol::LedgerRequest {
        requester: "Treasury".into(),
        created_at: Timestamp::now(),
        expires_at: Timestamp::now() + Duration::from_secs(60),
        operation: sage_federation::ledger::protocol::Operation::Grant {
            grant_id: "g-x".into(),
            account: lct("Thor", C),
            amount: 1.0,
        },
    };
    let wire = f.signer("Treasury").sign(&request).expect("sign");
    assert_rejected(&raw("sage.ledger.lock", wire).await, RejectCode::InvalidRequest);

    let after = f.snapshot().await;
    assert_eq!(after.revision, before.revision, "no invalid call wrote anything");
    assert_eq!(after.accounts, before.accounts);
    f.assert_audit_clean().await;
}

#[tokio::test]
async fn expired_locks_are_swept_and_an_executor_can_settle_before_expiry() {
    let f = LedgerFixture::start().await;
    fund(&f, "Thor", 100.0).await;
    let thor = f.client("Thor").await;
    let legion = f.client("Legion").await;
    let (delegator, executor) = (lct("Thor", C), lct("Legion", CS));
    let now = Timestamp::now();
    assert_applied(
        &thor
            .lock(&LockTerms {
                deadline: now + Duration::from_secs_f64(0.5),
                expires_at: now + Duration::from_secs(1),
                ..lock_terms(&id("t-gone"), &delegator, &executor, 10.0)
            })
            .await
            .expect("lock"),
    );
    assert_applied(
        &thor
            .lock(&LockTerms {
                deadline: now + Duration::from_secs_f64(0.5),
                expires_at: now + Duration::from_secs(30),
                ..lock_terms(&id("t-paid"), &delegator, &executor, 10.0)
            })
            .await
            .expect("lock"),
    );
    // The delegator vanishes; the executor settles t-paid itself with its proof.
    let proof = signed_proof(
        f.signer("Legion"),
        &id("t-paid"),
        &delegator,
        &executor,
        3.0,
        0.8,
        ProofStatus::Completed,
    );
    assert_applied(&legion.commit(&id("t-paid"), &proof).await.expect("commit"));

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = f.snapshot().await;
        let state = snapshot.locks.get("locks.t-gone").map(|l| l.state);
        if state == Some(LockState::Expired) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper did not expire the lock: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = signed_proof(
        f.signer("Legion"),
        &id("t-gone"),
        &delegator,
        &executor,
        3.0,
        0.8,
        ProofStatus::Completed,
    );
    assert_rejected(
        &legion.commit(&id("t-gone"), &late).await.expect("commit"),
        RejectCode::AlreadySettled,
    );
    assert_eq!(balance(&f, "Thor", C).await, (97.0, 0.0));
    assert_eq!(balance(&f, "Legion", CS).await, (3.0, 0.0));
    f.assert_audit_clean().await;
}

#[tokio::test]
async fn a_hot_account_with_100_concurrent_locks_does_not_starve() {
    let f = LedgerFixture::start().await;
    fund(&f, "Thor", 60.0).await;
    let thor = f.client("Thor").await;
    let locks = futures::future::join_all((0..100).map(|i| {
        let thor = thor.clone();
        async move { lock(&thor, &format!("t-hot-{i}"), "Thor", "Legion", 1.0).await }
    }))
    .await;
    let applied = locks.iter().filter(|r| r.outcome == Outcome::Applied).count();
    let insufficient = locks
        .iter()
        .filter(|r| r.code == Some(RejectCode::InsufficientAtp))
        .count();
    assert_eq!(
        (applied, insufficient),
        (60, 40),
        "all within the balance succeed, the rest fail fast: {:?}",
        locks
            .iter()
            .find(|r| r.outcome != Outcome::Applied && r.code != Some(RejectCode::InsufficientAtp))
    );

    let commits = futures::future::join_all(locks.iter().filter_map(|r| r.lock.clone()).map(|l| {
        let thor = thor.clone();
        let proof = signed_proof(
            f.signer("Legion"),
            &l.task_id,
            &l.delegator,
            &l.executor,
            0.5,
            0.9,
            ProofStatus::Completed,
        );
        async move { thor.commit(&l.task_id, &proof).await.expect("commit") }
    }))
    .await;
    assert!(commits.iter().all(|r| r.outcome == Outcome::Applied), "{commits:?}");
    assert_eq!(balance(&f, "Thor", C).await, (30.0, 0.0));
    assert_eq!(balance(&f, "Legion", CS).await, (30.0, 0.0));
    f.assert_audit_clean().await;
}

fn sagefed(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(args)
        // An open test server: away from any `.sagefed/federation` a local `sagefed up` made.
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run sagefed")
}

#[tokio::test]
async fn the_audit_command_passes_a_clean_ledger_and_names_a_minted_unit() {
    let f = LedgerFixture::start().await;
    fund(&f, "Thor", 100.0).await;
    let thor = f.client("Thor").await;
    assert_applied(&lock(&thor, "t-a", "Thor", "Legion", 10.0).await);
    let url = f.nats.url();

    let clean = sagefed(&["audit", "--nats", &url]);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stdout));
    let json = sagefed(&["audit", "--nats", &url, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json report");
    assert_eq!(report["supply_uatp"], 100_000_000);
    assert_eq!(report["locks_pending"], 1);
    let balances = sagefed(&["balances", "--nats", &url, "--json"]);
    let accounts: serde_json::Value = serde_json::from_slice(&balances.stdout).expect("json balances");
    assert_eq!(accounts[0]["balance"], 90.0);
    assert_eq!(accounts[0]["locked"], 10.0);

    // Someone with write access to the bucket mints one micro-ATP behind the ledger's back.
    let kv = f.nats.js().await.get_key_value("sage_ledger").await.expect("bucket");
    let key = sage_federation::ledger::model::account_key(&lct("Thor", C));
    let mut account: serde_json::Value =
        serde_json::from_slice(&kv.get(&key).await.expect("get").expect("account")).expect("json");
    account["balance_uatp"] = serde_json::json!(90_000_001u64);
    kv.put(&key, serde_json::to_vec(&account).expect("json").into())
        .await
        .expect("tamper");

    let dirty = sagefed(&["audit", "--nats", &url]);
    assert_eq!(dirty.status.code(), Some(3));
    let text = String::from_utf8_lossy(&dirty.stdout);
    assert!(
        text.contains("VIOLATION supply") && text.contains(&format!("VIOLATION {key}")),
        "{text}"
    );

    let unreachable = sagefed(&["audit", "--nats", "nats://127.0.0.1:1"]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect to NATS"));
}
