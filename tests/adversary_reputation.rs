//! Reputation that a platform cannot fake (issues #8 and #13 item 3): only the ledger writes
//! `sage_reputation`, from the settlements it applies at the quality it checked, per
//! platform and operation; a platform caught lying is placed after every other candidate.
//! The attackers hold valid credentials of their own.

mod common;

use std::time::{Duration, Instant};

use common::attacker::Attacker;
use common::federation::{Processes, hand_task};
use common::lct;
use sage_federation::delegation::client::{DelegationRequest, FederationClient};
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::ledger::protocol::Outcome;
use sage_federation::nats::subjects;
use sage_federation::protocol::task::{FederationTask, TaskId};
use sage_federation::state::reputation::{Reputation, Reputations};
use serde_json::{Map, Value, json};

const C: &str = "consciousness";
const BUDGET_ATP: f64 = 5.0;
/// Both Legion and Sprout execute it; Legion's name sorts first.
const OPERATION: &str = "perception";

fn frame() -> Map<String, Value> {
    json!({"length": 500, "seed": 9}).as_object().cloned().expect("object")
}

fn perception_request() -> DelegationRequest {
    DelegationRequest {
        to: None,
        task_type: C.into(),
        operation: OPERATION.into(),
        budget: BUDGET_ATP,
        timeout_seconds: 20,
        parameters: frame(),
        task_id: None,
    }
}

/// Waits until the ledger has written `platform`'s record for [`OPERATION`] and `done` holds.
async fn reputation_when(reputations: &Reputations, platform: &str, done: impl Fn(&Reputation) -> bool) -> Reputation {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reputation = reputations.get(platform, OPERATION).await.expect("readable");
        if done(&reputation) {
            return reputation;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger never recorded it: {reputation:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn chosen(thor: &FederationClient) -> String {
    thor.choose_target(&perception_request())
        .await
        .expect("a target")
        .platform
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_caught_by_the_ledgers_check_is_placed_last_and_nobody_but_the_ledger_writes_reputation() {
    let mut p = Processes::start().await;
    p.expect_violations = true;
    let thor = p.client("Thor").await;
    let js = p.nats.js().await;
    let reputations = Reputations::open(&js).await.expect("bucket");

    // Both idle and unknown: by name, Legion.
    assert_eq!(chosen(&thor).await, "Legion");

    // Legion lies: a made-up perception result with quality 1.0 for a task Thor locked for it.
    let task_id = TaskId::random().expect("id");
    let task = FederationTask {
        operation: OPERATION.into(),
        ..hand_task(&task_id, Value::Object(frame()), 30, 60.0)
    };
    let wire = p.thor().sign(&task).expect("sign");
    let terms = LockTerms {
        deadline: task.expires_at,
        expires_at: task.expires_at + Duration::from_secs(60),
        ..common::lock_terms(&task_id, &lct("Thor", C), &lct("Legion", C), BUDGET_ATP)
    };
    let thor_ledger = LedgerClient::new(p.nats.client_as("Thor").await, p.thor());
    let reply = thor_ledger.lock_for_task(&terms, &wire, OPERATION).await.expect("lock");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    let legion = LedgerClient::new(p.nats.client_as("Legion").await, p.signer("Legion").clone());
    let made_up = common::completed_proof(
        &task_id,
        C,
        BUDGET_ATP,
        1.0,
        json!({"anomalies": 0}).as_object().cloned().expect("object"),
    );
    let made_up = p.signer("Legion").sign(&made_up).expect("sign");
    let reply = legion.commit_with_task(&task_id, &made_up, &wire).await.expect("reply");
    let lock = reply.lock.as_deref().expect("lock");
    assert_eq!(
        (lock.state, lock.settlement.as_ref().and_then(|s| s.reason)),
        (LockState::RolledBack, Some(RollbackReason::Refuted)),
        "{reply:?}"
    );

    // The ledger records the lie, and placement puts Legion after Sprout, idle as it is.
    let caught = reputation_when(&reputations, "Legion", |r| r.refuted == 1).await;
    assert!(caught.on_probation(), "{caught:?}");
    assert_eq!((caught.settled, caught.paid_weight), (1, 0.0), "{caught:?}");
    assert_eq!(chosen(&thor).await, "Sprout");
    // `sagefed status` of Legion's LCT shows it.
    let status = sage_federation::delegation::status::lct(&p.nats.client_as("Thor").await, &lct("Legion", C))
        .await
        .expect("status");
    let shown: Vec<(&str, u64, bool)> = status
        .reputation
        .iter()
        .map(|r| (r.operation.as_str(), r.refuted, r.on_probation))
        .collect();
    assert_eq!(shown, [(OPERATION, 1, true)], "{status:?}");

    // An honest delegation goes to Sprout, is paid by the check, and counts for Sprout.
    let outcome = thor.delegate_task(perception_request()).await.expect("settles");
    assert_eq!(
        (outcome.settlement, outcome.to.as_str()),
        (LockState::Committed, "Sprout"),
        "{outcome:?}"
    );
    let sprout = reputation_when(&reputations, "Sprout", |r| r.settled == 1).await;
    assert!(!sprout.on_probation() && sprout.paid_weight == 1.0, "{sprout:?}");
    assert!(sprout.score(sprout.updated_at) > caught.score(caught.updated_at));

    // Nobody but the ledger writes the bucket: Legion cannot clear its own record, nor
    // Thor blacken Sprout's, nor either write under a new operation; the server refuses.
    let forged = serde_json::to_string(&Reputation::new("Legion", OPERATION)).expect("json");
    let forged: &'static str = Box::leak(forged.into_boxed_str());
    for (identity, key) in [
        ("Legion", subjects::reputation_key("Legion", OPERATION)),
        ("Legion", subjects::reputation_key("Legion", "planning")),
        ("Thor", subjects::reputation_key("Sprout", OPERATION)),
        ("Sprout", subjects::reputation_key("Legion", OPERATION)),
    ] {
        let mut attacker = Attacker::connect(&p, identity).await;
        attacker
            .publish(&subjects::kv_subject(subjects::REPUTATION_BUCKET, &key), forged)
            .await;
    }
    let after = reputations.get("Legion", OPERATION).await.expect("readable");
    assert_eq!(after, caught, "Legion's record is as the ledger wrote it");
    assert_eq!(chosen(&thor).await, "Sprout");
    p.assert_audit_clean();
}
