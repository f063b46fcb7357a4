//! Issue #13, item 2 (tests of item 5): witnesses for what the ledger cannot check. A
//! federation of separate processes runs (`sagefed ledger serve`, the workers); Thor locks
//! `wordcount` tasks (an external program: no cheap check) for Legion naming Sprout as the
//! witness, Legion commits, and when the ledger samples the commit Sprout answers with its
//! own signed proof. Everything goes through the real ledger service on each platform's own
//! credentials; the audit is clean after each test.

mod common;

use std::time::Duration;

use common::federation::Processes;
use common::lct;
use common::witness::{
    BUDGET_ATP, C, CONSUMED_ATP, OPERATION, Parties, SHARE_ATP, WORDS, lock_of, locked_task, proof_of, run_task, terms,
    uatp,
};
use sage_federation::ledger::model::{LockState, RollbackReason, WitnessRecord, WitnessSettlement};
use sage_federation::ledger::protocol::Outcome;
use sage_federation::ledger::witness::{WITNESS_RATE_FLOOR, WITNESS_RATE_HALVING_AGREEMENTS, WITNESS_RATE_MAX};
use sage_federation::nats::subjects;
use sage_federation::protocol::task::TaskId;

/// The witnesses compare word counts exactly (a deterministic program).
const EXACT: f64 = 0.0;
/// Agreements in a row that bring a new executor's rate down to the floor:
/// `WITNESS_RATE_MAX * 0.5^(n / WITNESS_RATE_HALVING_AGREEMENTS) <= WITNESS_RATE_FLOOR`.
fn agreements_to_the_floor() -> u32 {
    let halvings = (WITNESS_RATE_MAX / WITNESS_RATE_FLOOR).log2();
    (halvings * f64::from(WITNESS_RATE_HALVING_AGREEMENTS)).ceil() as u32
}

/// Tasks within which a liar sampled at the floor rate is caught but with probability
/// below one in a million: `(1 - floor)^n < 1e-6`. At the floor, 1 / floor = 10 tasks are
/// expected.
fn tasks_to_catch_at_the_floor() -> u32 {
    (1e-6_f64.ln() / (1.0 - WITNESS_RATE_FLOOR).ln()).ceil() as u32
}

async fn record_if_any(p: &Processes) -> Option<WitnessRecord> {
    p.snapshot()
        .await
        .witness_records
        .get(&subjects::ledger_witness("Legion", OPERATION))
        .cloned()
}

async fn record(p: &Processes) -> WitnessRecord {
    record_if_any(p)
        .await
        .expect("the ledger keeps Legion's witness record")
}

fn balance(balances: &std::collections::BTreeMap<String, i64>, platform: &str) -> i64 {
    balances.get(&lct(platform, C).to_string()).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_executor_is_caught_within_the_tasks_its_sampling_rate_predicts() {
    let p = Processes::start().await;
    let parties = Parties::connect(&p).await;
    let before = p.balances().await;

    // 1. Honest: Legion earns a record until its rate is at the floor. Unsampled tasks are
    //    paid exactly what they consumed, sampled ones too: the witness's share comes out of
    //    Thor's refund.
    let floor_after = agreements_to_the_floor();
    let (mut honest, mut sampled) = (0u32, 0u32);
    while record_if_any(&p).await.map_or(0, |r| r.agreed_streak) < floor_after {
        assert!(honest < 2_000, "{floor_after} agreements took more than 2000 tasks");
        let run = run_task(&parties, WORDS, WORDS, EXACT).await;
        honest += 1;
        sampled += u32::from(run.held);
        let settlement = run.lock.settlement.expect("settled");
        assert_eq!(run.lock.state, LockState::Committed);
        let (witness_paid, refunded) = if run.held {
            (uatp(SHARE_ATP), uatp(BUDGET_ATP - CONSUMED_ATP - SHARE_ATP))
        } else {
            (0, uatp(BUDGET_ATP - CONSUMED_ATP))
        };
        assert_eq!(
            (
                settlement.paid_uatp.micros(),
                WitnessSettlement::paid(&settlement).micros(),
                settlement.refunded_uatp.micros()
            ),
            (uatp(CONSUMED_ATP), witness_paid, refunded),
            "honest task {honest} (sampled: {})",
            run.held
        );
    }
    let honest_record = record(&p).await;
    assert_eq!(
        (
            honest_record.witnessed,
            honest_record.disagreements,
            honest_record.sampled
        ),
        (u64::from(sampled), 0, u64::from(sampled))
    );
    assert!(
        sampled < honest,
        "a long agreeing record lowers the rate: {sampled} of {honest} sampled"
    );

    // 2. Lying: garbage (0 words) with quality 1.0. Caught by the first sampled task; at the
    //    floor rate, within `tasks_to_catch_at_the_floor()` tasks but with probability 1e-6.
    let bound = tasks_to_catch_at_the_floor();
    let mut lies = 0u32;
    let caught = loop {
        assert!(
            lies < bound,
            "a liar sampled at {WITNESS_RATE_FLOOR} went uncaught for {bound} tasks"
        );
        let run = run_task(&parties, 0.0, WORDS, EXACT).await;
        lies += 1;
        if run.held {
            break run.lock;
        }
        assert_eq!(
            run.lock.state,
            LockState::Committed,
            "an unsampled lie is paid: sampling's price"
        );
    };
    let settlement = caught.settlement.clone().expect("settled");
    assert_eq!(
        (caught.state, settlement.reason, settlement.paid_uatp.micros()),
        (LockState::RolledBack, Some(RollbackReason::WitnessDisagreed), 0)
    );
    assert_eq!(settlement.refunded_uatp.micros(), uatp(BUDGET_ATP - SHARE_ATP));
    let witness = settlement.witness.expect("the witness's part");
    assert_eq!(
        (witness.agreed, witness.paid_uatp.micros()),
        (Some(false), uatp(SHARE_ATP))
    );
    let caught_record = record(&p).await;
    assert_eq!((caught_record.disagreements, caught_record.agreed_streak), (1, 0));
    eprintln!("honest record: {sampled} of {honest} tasks sampled; the liar was caught at lie {lies}");
    // Reputation counts the disagreement as a refuted result: Legion is on probation for
    // this operation (placed last; placement is tested in adversary_reputation.rs).
    common::witness::await_probation(&p, "Legion").await;

    // 3. Caught: sampled at the maximum until it earns its way back. Its next lies are
    //    each held (rate 1.0) and refunded.
    assert_eq!(WITNESS_RATE_MAX, 1.0);
    for _ in 0..3 {
        let run = run_task(&parties, 0.0, WORDS, EXACT).await;
        assert!(run.held, "a liar just caught is sampled at the maximum");
        assert_eq!(run.lock.state, LockState::RolledBack);
    }

    // Conservation across the whole run: what Thor lost, Legion and Sprout gained.
    let after = p.balances().await;
    let change = |platform| balance(&after, platform) - balance(&before, platform);
    assert_eq!(change("Thor") + change("Legion") + change("Sprout"), 0);
    assert_eq!(change("Sprout"), (i64::from(sampled) + 4) * uatp(SHARE_ATP) as i64);
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_that_disagrees_within_the_tolerance_does_not_penalise() {
    let p = Processes::start().await;
    let parties = Parties::connect(&p).await;
    // A new executor: its first commit is always sampled (rate 1). The witness's count
    // differs by 0.01 %, inside a 0.1 % tolerance.
    let run = run_task(&parties, WORDS, WORDS * 1.0001, 1e-3).await;
    assert!(run.held, "a new executor is sampled at the maximum");
    let settlement = run.lock.settlement.expect("settled");
    assert_eq!(
        (
            run.lock.state,
            settlement.paid_uatp.micros(),
            settlement.refunded_uatp.micros()
        ),
        (
            LockState::Committed,
            uatp(CONSUMED_ATP),
            uatp(BUDGET_ATP - CONSUMED_ATP - SHARE_ATP)
        )
    );
    assert_eq!(
        settlement.witness.map(|w| (w.agreed, w.paid_uatp.micros())),
        Some((Some(true), uatp(SHARE_ATP)))
    );
    let agreed = record(&p).await;
    assert_eq!((agreed.agreed_streak, agreed.disagreements), (1, 0));

    // The same difference with exact comparison is a disagreement: the tolerance is what
    // decided, not the values.
    let mut held = None;
    for _ in 0..200 {
        let run = run_task(&parties, WORDS, WORDS * 1.0001, EXACT).await;
        if run.held {
            held = Some(run);
            break;
        }
    }
    let run = held.expect("sampled within 200 tasks at a rate of at least 0.1");
    assert_eq!(run.lock.state, LockState::RolledBack);
    assert_eq!(record(&p).await.disagreements, 1);
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_that_never_answers_lets_the_sweeper_pay_the_executor_at_the_holds_expiry() {
    let p = Processes::start().await;
    let parties = Parties::connect(&p).await;
    let before = p.balances().await;
    let task_id = TaskId::random().expect("id");
    const HOLD_SECONDS: f64 = 2.0;
    let task = locked_task(&parties, &task_id, terms(EXACT, HOLD_SECONDS)).await;
    let proof = proof_of(&parties.legion_key, &task_id, WORDS);
    let reply = parties
        .legion
        .commit_with_task(&task_id, &proof, &task)
        .await
        .expect("commit");
    let held = lock_of(&reply);
    assert_eq!(held.state, LockState::AwaitingWitness, "a new executor is sampled");
    // Held: nothing moved; the audit counts the escrow as locked.
    let during = p.balances().await;
    assert_eq!(balance(&during, "Legion"), balance(&before, "Legion"));
    assert_eq!(
        balance(&during, "Thor"),
        balance(&before, "Thor") - uatp(BUDGET_ATP) as i64
    );
    p.assert_audit_clean();

    // Sprout never answers. The sweeper settles at the hold's expiry: paid as claimed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let settled = loop {
        let lock = p.snapshot().await.locks[&subjects::ledger_lock(task_id.as_str())].clone();
        if lock.state.is_terminal() {
            break lock;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold was not settled: {lock:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settlement = settled.settlement.expect("settled");
    assert_eq!(
        (settled.state, settlement.paid_uatp.micros(), settlement.by.as_str()),
        (LockState::Committed, uatp(CONSUMED_ATP), "ledger")
    );
    // The share is not paid: it stays in Thor's refund.
    assert_eq!(settlement.refunded_uatp.micros(), uatp(BUDGET_ATP - CONSUMED_ATP));
    let witness = settlement.witness.expect("the witness's part");
    assert_eq!((witness.agreed, witness.paid_uatp.micros()), (None, 0));
    // The late answer changes nothing; the record neither gains nor loses.
    let late = parties
        .sprout
        .witness(&task_id, &proof_of(&parties.sprout_key, &task_id, WORDS))
        .await
        .expect("reply");
    assert_eq!(late.outcome, Outcome::Rejected, "{late:?}");
    let after = p.balances().await;
    assert_eq!(
        balance(&after, "Legion") - balance(&before, "Legion"),
        uatp(CONSUMED_ATP) as i64
    );
    assert_eq!(balance(&after, "Sprout"), balance(&before, "Sprout"));
    let unanswered = record(&p).await;
    assert_eq!(
        (unanswered.sampled, unanswered.witnessed, unanswered.agreed_streak),
        (1, 0, 0)
    );
    // The delegator gets the result it paid for: the executor's proof, kept verbatim.
    let paid = sage_federation::ledger::client::LedgerReader::open(&p.nats.js().await)
        .await
        .expect("reader")
        .paid_proof(&task_id)
        .await
        .expect("read");
    assert_eq!(paid.map(|s| s.wire()), Some(proof));
    p.assert_audit_clean();
}
