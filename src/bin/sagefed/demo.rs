//! The seed's scenarios (the table in `delegation::scenarios`), run once by `sagefed up`: Thor->Legion, Sprout->Legion,
//! Legion->Thor, 10 concurrent delegations from two clients, a low-quality result, a timeout,
//! a permission denial, a cancel, an external program, a lying executor caught by the
//! ledger's check, a critical task overtaking a backlog, and a lying external program caught
//! by a witness (scenario 9's program is witnessed by Sprout when the ledger samples it). Prints each delegation and the
//! balances before and after, then runs the audit.

use std::time::Duration;

use crate::cli::platform::describe;
use crate::up::Federation;
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest, FederationClient, Lane, SETTLE_GRACE};
use sage_federation::delegation::scenarios::{self, CONCURRENT_DELEGATIONS, CRITICAL_BACKLOG, Scenario, Settled};
use sage_federation::delegation::status;
use sage_federation::ledger::audit::audit;
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::{LockState, SignedProof};
use sage_federation::ledger::protocol::{Outcome, WitnessRequest};
use sage_federation::ledger::snapshot::LedgerSnapshot;
use sage_federation::nats::subjects;
use sage_federation::protocol::atp::Atp;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::FederationTask;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::TaskState;
use serde_json::json;

/// The quality threshold of the lying-executor scenario's lock.
const LYING_SCENARIO_THRESHOLD: f64 = 0.7;

/// Made-up results the witness scenario commits at most before it gives up: even at the
/// lowest sampling rate (0.1) all of them escape with probability 0.9^200, below 1e-9.
const WITNESS_SCENARIO_LIES_MAX: u32 = 200;
/// How long the cancel scenario waits for its task to start running.
const CANCEL_START_TIMEOUT: Duration = Duration::from_secs(20);

struct Row {
    scenario: &'static str,
    expected: Settled,
    outcome: Result<DelegationOutcome, String>,
}

async fn delegate(client: &FederationClient, request: DelegationRequest) -> Result<DelegationOutcome, String> {
    client.delegate_task(request).await.map_err(|e| e.to_string())
}

fn client<'a>(federation: &'a Federation, platform: &str) -> anyhow::Result<&'a FederationClient> {
    federation
        .clients
        .get(platform)
        .ok_or_else(|| anyhow::anyhow!("no platform {platform} in configs/"))
}

/// Delegates `scenario` from its delegator and records the outcome.
async fn run_one(federation: &Federation, scenario: &Scenario) -> anyhow::Result<Row> {
    let from = client(federation, scenario.from)?;
    Ok(Row {
        scenario: scenario.name,
        expected: scenario.expected,
        outcome: delegate(from, scenario.request()).await,
    })
}

/// Runs every scenario; true when each ended as the seed expects and the audit is clean.
pub async fn run(federation: &Federation, url: &str) -> anyhow::Result<bool> {
    let js = async_nats::jetstream::new(federation.client.clone());
    let before = LedgerSnapshot::read(&js).await?;
    let mut rows = Vec::new();

    println!("\nrunning the seed's scenarios on {url}");
    let seed = scenarios::seed();
    // The three directions first, then the concurrent delegations, then the failures.
    let (directions, failures) = seed.split_at(3);
    for scenario in directions {
        rows.push(run_one(federation, scenario).await?);
    }
    let concurrent: Vec<Scenario> = (0..CONCURRENT_DELEGATIONS).map(scenarios::concurrent).collect();
    for row in futures::future::join_all(concurrent.iter().map(|s| run_one(federation, s))).await {
        rows.push(row?);
    }
    for scenario in failures {
        rows.push(run_one(federation, scenario).await?);
    }
    let cancel = scenarios::cancelled();
    rows.push(Row {
        scenario: cancel.name,
        expected: cancel.expected,
        outcome: cancel_scenario(federation, &cancel).await,
    });
    let external = run_one(federation, &scenarios::external_program()).await?;
    if let Ok(outcome) = &external.outcome {
        print_witnessed(outcome);
    }
    rows.push(external);
    let lying = scenarios::lying_executor();
    rows.push(Row {
        scenario: lying.name,
        expected: lying.expected,
        outcome: lying_executor_scenario(federation, &lying).await,
    });
    let critical = scenarios::critical_backlog(None);
    rows.push(Row {
        scenario: critical.name,
        expected: critical.expected,
        outcome: critical_scenario(federation).await,
    });
    let witnessed = scenarios::witness_catches_a_lie();
    rows.push(Row {
        scenario: witnessed.name,
        expected: witnessed.expected,
        outcome: witness_scenario(federation, &witnessed).await,
    });

    let mut all_ok = print_rows(&rows);
    let after = LedgerSnapshot::read(&js).await?;
    print_balances(&before, &after);
    let report = audit(&after, Timestamp::now());
    if report.is_clean() {
        println!(
            "audit: ok (balances + locked = supply = {} ATP; every lock settled once)",
            report.supply_uatp as f64 / 1e6
        );
    } else {
        all_ok = false;
        for v in &report.violations {
            println!("audit VIOLATION {}: {}", v.key, v.problem);
        }
    }
    Ok(all_ok)
}

/// Has the scenario's executor commit a made-up result for the delegator's task (what a
/// hostile executor with valid credentials can do), then checks that the ledger refused to
/// pay it and that placement now passes it over. The outcome is the ledger's settlement.
async fn lying_executor_scenario(federation: &Federation, scenario: &Scenario) -> Result<DelegationOutcome, String> {
    let delegator = client(federation, scenario.from).map_err(|e| e.to_string())?;
    let liar_name = scenario.to.ok_or("the scenario names its liar")?;
    let liar = client(federation, liar_name).map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let (task, wire) = locked_task(delegator, liar, scenario, None).await?;
    let made_up = made_up_proof(&task, scenario.budget);
    let signed = liar.signer().sign(&made_up).map_err(|e| e.to_string())?;
    let reply = LedgerClient::new(liar.nats().clone(), liar.signer().clone())
        .commit_with_task(&task.task_id, &signed, &wire)
        .await
        .map_err(|e| e.to_string())?;
    let lock = reply
        .lock
        .as_deref()
        .ok_or_else(|| format!("no lock in the reply: {}", reply.message))?;
    let settlement = lock.settlement.clone().ok_or("the lock is not settled")?;
    // The ledger records the lie off its reply path; then placement must pass the liar over.
    let mut next = scenario.request();
    next.to = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let placed = loop {
        let placed = delegator
            .choose_target(&next)
            .await
            .map_err(|e| e.to_string())?
            .platform;
        if placed != liar_name || tokio::time::Instant::now() > deadline {
            break placed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if placed == liar_name {
        return Err(format!(
            "{liar_name} was refuted, yet the next {} task still goes to it",
            scenario.operation
        ));
    }
    println!(
        "  ({liar_name} claimed quality 1.0 for a made-up result; the ledger's check: {}; the next {} task goes to {placed})",
        reply.message, scenario.operation
    );
    Ok(DelegationOutcome {
        task_id: task.task_id,
        from: scenario.from.to_owned(),
        to: liar_name.to_owned(),
        operation: scenario.operation.to_owned(),
        proof_status: Some(ProofStatus::Completed),
        reason: reply.message.clone(),
        quality: Some(made_up.quality_score),
        settlement: lock.state,
        rollback_reason: settlement.reason,
        atp_consumed: settlement.paid_uatp.as_f64(),
        atp_refunded: settlement.refunded_uatp.as_f64(),
        result: made_up.result,
        latency_ms: started.elapsed().as_secs_f64() * 1e3,
        proof_envelope: None,
        witness: settlement.witness.clone(),
    })
}

/// Says how a sampled task settled with its witness (nothing for an unsampled one): what
/// the executor was paid against what its signed proof says it consumed, and the witness's
/// pay, which comes out of the delegator's refund.
fn print_witnessed(outcome: &DelegationOutcome) {
    let Some(witness) = &outcome.witness else {
        return;
    };
    let claimed = outcome
        .proof_envelope
        .as_deref()
        .and_then(|envelope| SignedProof::from_wire(envelope.as_bytes()))
        .and_then(|proof| proof.body::<ExecutionProof>().ok())
        .map_or_else(|| "?".to_owned(), |proof| proof.atp_consumed.to_string());
    let verdict = match witness.agreed {
        Some(true) => "agreed",
        Some(false) => "disagreed",
        None => "did not answer",
    };
    println!(
        "  (the ledger sampled {}'s {} and witness {} {verdict}: {} paid {} ATP for {claimed} ATP consumed; {} {} ATP out of {}'s refund)",
        outcome.to,
        outcome.operation,
        witness.witness,
        outcome.to,
        outcome.atp_consumed,
        witness.witness,
        witness.paid_uatp,
        outcome.from
    );
}

/// Has the scenario's executor commit made-up results for the delegator's tasks of an
/// operation the ledger cannot check, each locked with the witness terms the delegator's
/// client names, until the ledger samples one; the delegator sends that one to its witness,
/// whose worker runs the program, and the outcome is the settlement it leads to.
async fn witness_scenario(federation: &Federation, scenario: &Scenario) -> Result<DelegationOutcome, String> {
    let delegator = client(federation, scenario.from).map_err(|e| e.to_string())?;
    let liar_name = scenario.to.ok_or("the scenario names its liar")?;
    let liar = client(federation, liar_name).map_err(|e| e.to_string())?;
    let liar_ledger = LedgerClient::new(liar.nats().clone(), liar.signer().clone());
    let budget = Atp::from_f64(scenario.budget, "budget").map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    for lie in 1..=WITNESS_SCENARIO_LIES_MAX {
        let terms = delegator
            .witness_terms(&scenario.request(), liar_name, budget)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no other live platform runs {}: nobody can witness", scenario.operation))?;
        let (task, wire) = locked_task(delegator, liar, scenario, Some(terms)).await?;
        let signed = liar
            .signer()
            .sign(&made_up_proof(&task, scenario.budget))
            .map_err(|e| e.to_string())?;
        let reply = liar_ledger
            .commit_with_task(&task.task_id, &signed, &wire)
            .await
            .map_err(|e| e.to_string())?;
        if reply.lock.as_deref().map(|l| l.state) != Some(LockState::AwaitingWitness) {
            continue; // Not sampled this time: paid, as any unsampled commit.
        }
        let mut outcome = delegator
            .follow_held_task(&task, &wire)
            .await
            .map_err(|e| e.to_string())?;
        outcome.latency_ms = started.elapsed().as_secs_f64() * 1e3;
        let witness = outcome.witness.as_ref().map_or("nobody", |w| w.witness.as_str());
        println!(
            "  ({liar_name} made up a {} result; the ledger sampled lie {lie} and {witness} ran the program again: {})",
            scenario.operation, outcome.reason
        );
        return Ok(outcome);
    }
    Err(format!(
        "the ledger sampled none of {WITNESS_SCENARIO_LIES_MAX} made-up results"
    ))
}

/// The scenario's task, signed by the delegator and locked for `executor` naming it: what
/// an honest delegator does before publishing. Returns the task and its signed bytes.
async fn locked_task(
    delegator: &FederationClient,
    executor: &FederationClient,
    scenario: &Scenario,
    witness: Option<WitnessRequest>,
) -> Result<(FederationTask, bytes::Bytes), String> {
    let error = |e: &dyn std::fmt::Display| e.to_string();
    let task_id = TaskId::random().map_err(|e| error(&e))?;
    let now = Timestamp::now();
    let task = FederationTask {
        reply_to: subjects::proof(scenario.from, executor.platform(), task_id.as_str()),
        task_id: task_id.clone(),
        source_lct: delegator.lct(scenario.task_type).map_err(|e| error(&e))?,
        target_lct: executor.lct(scenario.task_type).map_err(|e| error(&e))?,
        task_type: scenario.task_type.to_owned(),
        operation: scenario.operation.to_owned(),
        atp_budget: scenario.budget,
        timeout_seconds: scenario.timeout_seconds,
        parameters: scenario.request().parameters,
        created_at: now,
        expires_at: now + Duration::from_secs(scenario.timeout_seconds),
        critical: false,
    };
    let wire = delegator.signer().sign(&task).map_err(|e| error(&e))?;
    let terms = LockTerms {
        task_id,
        delegator: task.source_lct.clone(),
        executor: task.target_lct.clone(),
        amount: Atp::from_f64(scenario.budget, "budget").map_err(|e| error(&e))?,
        // The check refutes a made-up result whatever the threshold.
        quality_threshold: LYING_SCENARIO_THRESHOLD,
        deadline: task.expires_at,
        expires_at: task.expires_at + SETTLE_GRACE,
    };
    let ledger = LedgerClient::new(delegator.nats().clone(), delegator.signer().clone());
    let locked = match witness {
        Some(witness) => ledger.lock_with_witness(&terms, &wire, &task.operation, witness).await,
        None => ledger.lock_for_task(&terms, &wire, &task.operation).await,
    }
    .map_err(|e| error(&e))?;
    if locked.outcome != Outcome::Applied {
        return Err(format!("the lock was refused: {}", locked.message));
    }
    Ok((task, wire))
}

/// A completed proof of `task` claiming quality 1.0 and the whole budget for a result nobody
/// computed.
fn made_up_proof(task: &FederationTask, budget: f64) -> ExecutionProof {
    ExecutionProof {
        task_id: task.task_id.clone(),
        executor_lct: task.target_lct.clone(),
        delegator_lct: task.source_lct.clone(),
        status: ProofStatus::Completed,
        reason: String::new(),
        atp_consumed: budget,
        execution_time: 0.001,
        quality_score: 1.0,
        result: json!({"anomalies": 0, "mean": 0.0})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        created_at: Timestamp::now(),
    }
}

/// Delegates a long task, cancels it while it runs, and returns the settled outcome.
async fn cancel_scenario(federation: &Federation, scenario: &Scenario) -> Result<DelegationOutcome, String> {
    let thor = client(federation, scenario.from).map_err(|e| e.to_string())?;
    let task_id = TaskId::random().map_err(|e| e.to_string())?;
    let mut long = scenario.request();
    long.task_id = Some(task_id.clone());
    let delegation = delegate(thor, long);
    let canceller = async {
        let deadline = tokio::time::Instant::now() + CANCEL_START_TIMEOUT;
        loop {
            if let Ok(report) = status::task(&federation.client, &task_id).await
                && report.status.is_some_and(|s| s.state == TaskState::Running)
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err("the task never started".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        status::cancel_task(thor.nats(), thor.signer(), &task_id)
            .await
            .map_err(|e| e.to_string())
    };
    let (outcome, cancelled) = tokio::join!(delegation, canceller);
    let cancelled = cancelled?;
    if !cancelled.cancelled {
        return Err(format!("cancel refused: {}", cancelled.message));
    }
    outcome
}

/// Queues [`CRITICAL_BACKLOG`] normal tasks at Sprout, then a critical one behind them;
/// returns the critical task's outcome, or why it did not overtake the backlog.
async fn critical_scenario(federation: &Federation) -> Result<DelegationOutcome, String> {
    let critical = scenarios::critical_backlog(None);
    let thor = client(federation, critical.from).map_err(|e| e.to_string())?;
    let mut ids = Vec::with_capacity(CRITICAL_BACKLOG);
    let mut backlog = Vec::with_capacity(CRITICAL_BACKLOG);
    for i in 0..CRITICAL_BACKLOG {
        let task_id = TaskId::random().map_err(|e| e.to_string())?;
        let mut request = scenarios::critical_backlog(Some(i)).request();
        request.task_id = Some(task_id.clone());
        ids.push(task_id);
        backlog.push(async move {
            let outcome = thor.delegate_task(request).await;
            (outcome, tokio::time::Instant::now())
        });
    }
    let normal = futures::future::join_all(backlog);
    let overtaking = async {
        // Behind the whole backlog: each is on the task board before it is published.
        let deadline = tokio::time::Instant::now() + CANCEL_START_TIMEOUT;
        for task_id in &ids {
            while !matches!(status::task(&federation.client, task_id).await, Ok(report) if report.status.is_some()) {
                if tokio::time::Instant::now() > deadline {
                    return Err("the backlog was never queued".to_owned());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let outcome = thor
            .delegate_on(critical.request(), Lane::Critical)
            .await
            .map_err(|e| e.to_string())?;
        Ok((outcome, tokio::time::Instant::now()))
    };
    let (normal, critical) = tokio::join!(normal, overtaking);
    let (outcome, settled_at) = critical?;
    let mut overtaken = 0;
    for (normal, at) in normal {
        let normal = normal.map_err(|e| format!("a backlog task failed: {e}"))?;
        if normal.settlement != LockState::Committed {
            return Err(format!("a backlog task was not paid: {}", describe(&normal)));
        }
        overtaken += usize::from(at > settled_at);
    }
    println!(
        "   the critical task settled while {overtaken} of the {CRITICAL_BACKLOG} normal tasks queued ahead of it at {} were still waiting or running",
        outcome.to
    );
    if overtaken == 0 {
        return Err(format!(
            "the critical task settled after all {CRITICAL_BACKLOG} normal tasks queued ahead of it"
        ));
    }
    Ok(outcome)
}

fn print_rows(rows: &[Row]) -> bool {
    println!(
        "\n{:<44} {:<18} {:<11} {:>7} {:>13} {:>8} {:<32} {:<4}",
        "scenario", "route", "operation", "quality", "ATP consumed", "ms", "outcome", "as expected"
    );
    let mut all_ok = true;
    for row in rows {
        let expected = match row.expected {
            (state, Some(reason)) => format!("{state:?} ({reason})"),
            (state, None) => format!("{state:?}"),
        };
        match &row.outcome {
            Ok(o) => {
                let got = (o.settlement, o.rollback_reason);
                let ok = got == row.expected;
                all_ok &= ok;
                let outcome = match got {
                    (state, Some(reason)) => format!("{state:?} ({reason})"),
                    (state, None) => format!("{state:?}"),
                };
                println!(
                    "{:<44} {:<18} {:<11} {:>7} {:>13} {:>8.1} {:<32} {}",
                    row.scenario,
                    format!("{} -> {}", o.from, o.to),
                    o.operation,
                    o.quality.map_or_else(|| "-".to_owned(), |q| format!("{q:.2}")),
                    format!("{}", o.atp_consumed),
                    o.latency_ms,
                    outcome,
                    if ok {
                        "yes".to_owned()
                    } else {
                        format!("NO, expected {expected}")
                    }
                );
                tracing::debug!("{}", describe(o));
            }
            Err(e) => {
                all_ok = false;
                println!("{:<44} FAILED: {e} (expected {expected})", row.scenario);
            }
        }
    }
    all_ok
}

fn print_balances(before: &LedgerSnapshot, after: &LedgerSnapshot) {
    println!(
        "\n{:<48} {:>14} {:>14} {:>10}",
        "account", "before ATP", "after ATP", "locked"
    );
    for (key, account) in &after.accounts {
        let was = before
            .accounts
            .get(key)
            .map_or_else(|| "-".to_owned(), |a| a.balance_uatp.to_string());
        println!(
            "{:<48} {:>14} {:>14} {:>10}",
            account.lct.to_string(),
            was,
            account.balance_uatp.to_string(),
            account.locked_uatp.to_string()
        );
    }
}
