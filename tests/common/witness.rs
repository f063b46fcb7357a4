//! The witness suites' parts (issue #13, item 2): Thor delegates an unverifiable external
//! operation (`wordcount`) to Legion by hand through the real ledger service, naming Sprout
//! as the only candidate witness; Legion commits what it likes and Sprout answers with its
//! own signed proof of the same task.

use bytes::Bytes;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{Lock, LockState};
use sage_federation::ledger::protocol::{LedgerReply, Outcome, WitnessRequest};
use sage_federation::ledger::snapshot::LedgerSnapshot;
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::{FederationTask, TaskId};
use sage_federation::state::reputation::Reputations;
use serde_json::{Map, Value, json};

use super::federation::{Processes, hand_task};
use super::lct;
use std::time::Duration;

pub const C: &str = "consciousness";
/// What Thor locks per task, what Legion claims to consume, and the witness's share (ATP).
pub const BUDGET_ATP: f64 = 1.0;
pub const CONSUMED_ATP: f64 = 0.5;
pub const SHARE_ATP: f64 = 0.1;
/// The operation under test: an external program, which the ledger cannot check.
pub const OPERATION: &str = "wordcount";
/// The text the task counts, and the true answer.
pub const TEXT: &str = "the quick brown fox jumps over the lazy dog";
pub const WORDS: f64 = 9.0;

/// The three parties' ledger clients and keys, on their own credentials.
pub struct Parties {
    pub thor: LedgerClient,
    pub legion: LedgerClient,
    pub sprout: LedgerClient,
    pub thor_key: Signer,
    pub legion_key: Signer,
    pub sprout_key: Signer,
}

impl Parties {
    pub async fn connect(p: &Processes) -> Self {
        let client =
            |name: &'static str| async move { LedgerClient::new(p.nats.client_as(name).await, p.signer(name)) };
        Self {
            thor: client("Thor").await,
            legion: client("Legion").await,
            sprout: client("Sprout").await,
            thor_key: p.thor(),
            legion_key: p.signer("Legion"),
            sprout_key: p.signer("Sprout"),
        }
    }
}

/// The witness terms every task here names: Sprout, `SHARE_ATP`, `tolerance`, `hold_seconds`.
pub fn terms(tolerance: f64, hold_seconds: f64) -> WitnessRequest {
    WitnessRequest {
        candidates: vec!["Sprout".to_owned()],
        share: SHARE_ATP,
        tolerance,
        hold_seconds,
    }
}

/// Thor signs a `wordcount` task for Legion and locks `BUDGET_ATP` for it with `witness`;
/// the task's signed bytes.
pub async fn locked_task(parties: &Parties, task_id: &TaskId, witness: WitnessRequest) -> Bytes {
    locked_task_and_wire(parties, task_id, witness).await.1
}

/// [`locked_task`], with the task itself besides its signed bytes.
pub async fn locked_task_and_wire(
    parties: &Parties,
    task_id: &TaskId,
    witness: WitnessRequest,
) -> (FederationTask, Bytes) {
    let task = FederationTask {
        operation: OPERATION.into(),
        atp_budget: BUDGET_ATP,
        ..hand_task(task_id, json!({"text": TEXT}), 30, 60.0)
    };
    let wire = parties.thor_key.sign(&task).expect("sign");
    let terms = LockTerms {
        deadline: task.expires_at,
        expires_at: task.expires_at + Duration::from_secs(60),
        ..super::lock_terms(task_id, &lct("Thor", C), &lct("Legion", C), BUDGET_ATP)
    };
    let reply = parties
        .thor
        .lock_with_witness(&terms, &wire, OPERATION, witness)
        .await
        .expect("lock");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    (task, wire)
}

/// Legion commits Thor's `task` by hand with an honest count: the ledger holds it (a new
/// executor is sampled at rate 1.0).
pub async fn held(parties: &Parties, task_id: &TaskId, task: &bytes::Bytes, witness: &str) {
    let proof = proof_of(&parties.legion_key, task_id, WORDS);
    let lock = lock_of(
        &parties
            .legion
            .commit_with_task(task_id, &proof, task)
            .await
            .expect("commit"),
    );
    assert_eq!(lock.state, LockState::AwaitingWitness, "{lock:?}");
    assert_eq!(lock.hold.as_ref().map(|h| h.witness.as_str()), Some(witness));
}

/// `signer`'s signed completed proof of Thor's `task_id`, answering `words`.
pub fn proof_of(signer: &Signer, task_id: &TaskId, words: f64) -> Bytes {
    let result: Map<String, Value> = json!({"words": words}).as_object().cloned().expect("object");
    let proof = ExecutionProof {
        executor_lct: lct(signer.platform(), C),
        ..super::completed_proof(task_id, C, CONSUMED_ATP, 1.0, result)
    };
    debug_assert_eq!(proof.status, ProofStatus::Completed);
    signer.sign(&proof).expect("sign")
}

/// The lock in a reply.
pub fn lock_of(reply: &LedgerReply) -> Lock {
    assert!(reply.is_ok(), "{reply:?}");
    reply.lock.as_deref().cloned().expect("the lock in the reply")
}

/// How one task went: held for the witness or not, and the lock as it ended.
pub struct Run {
    pub held: bool,
    pub lock: Lock,
}

/// One task: Legion commits `claimed` words; if the ledger holds it, Sprout answers
/// `witnessed` words.
pub async fn run_task(parties: &Parties, claimed: f64, witnessed: f64, tolerance: f64) -> Run {
    let task_id = TaskId::random().expect("id");
    let task = locked_task(parties, &task_id, terms(tolerance, 60.0)).await;
    let proof = proof_of(&parties.legion_key, &task_id, claimed);
    let committed = lock_of(
        &parties
            .legion
            .commit_with_task(&task_id, &proof, &task)
            .await
            .expect("commit"),
    );
    if committed.state != LockState::AwaitingWitness {
        return Run {
            held: false,
            lock: committed,
        };
    }
    let hold = committed.hold.as_ref().expect("a held lock holds the commit");
    assert_eq!(hold.witness, "Sprout");
    let answer = proof_of(&parties.sprout_key, &task_id, witnessed);
    let reply = parties.sprout.witness(&task_id, &answer).await.expect("witness");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    Run {
        held: true,
        lock: lock_of(&reply),
    }
}

/// ATP as micro-ATP.
pub fn uatp(atp: f64) -> u64 {
    (atp * 1e6).round() as u64
}

/// A program that answers every `wordcount` task with a made-up count and quality 1.0.
pub const LYING_PROGRAM: &str = r#"["python3", "-c", "import json, sys; json.load(sys.stdin); print(json.dumps({'result': {'word_count': 1000}, 'quality': 1.0}))"]"#;

/// Gives Legion `legion_command` instead of its own `wordcount` program when given, and Thor
/// a witness hold of `hold_seconds` (Sprout runs the honest program, as its config says).
pub fn federation_edit(legion_command: Option<&'static str>, hold_seconds: f64) -> impl Fn(&str, String) -> String {
    move |platform, text| match platform {
        "Legion" => match legion_command {
            Some(command) => {
                let start = text.find("[operations.wordcount]").expect("Legion runs wordcount");
                let line = text[start..].find("command = ").expect("its command") + start;
                let end = text[line..].find('\n').expect("end of line") + line;
                format!("{}command = {command}{}", &text[..line], &text[end..])
            }
            None => text,
        },
        "Thor" => text.replace(
            "[settlement]\n",
            &format!("[settlement]\nwitness_hold_seconds = {hold_seconds}\n"),
        ),
        _ => text,
    }
}

/// The parts of the ledger a witness's request or answer could change.
pub fn ledger_state(snapshot: &LedgerSnapshot) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        snapshot.accounts.clone(),
        snapshot.locks.clone(),
        snapshot.journal.clone(),
        snapshot.witness_records.clone(),
        snapshot.supply,
    )
}

/// Waits (at most 20 s) until the ledger's reputation writer has counted a refuted result of
/// `platform` for `OPERATION` and put it on probation (placed last).
pub async fn await_probation(p: &Processes, platform: &str) {
    let reputations = Reputations::open(&p.nats.js().await).await.expect("bucket");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let reputation = reputations.get(platform, OPERATION).await.expect("readable");
        if reputation.refuted >= 1 {
            assert!(reputation.on_probation(), "{reputation:?}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger never recorded {platform}'s refuted result in its reputation: {reputation:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
