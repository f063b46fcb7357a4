//! The seed's scenarios, run once by `sagefed up`: Thor->Legion, Sprout->Legion,
//! Legion->Thor, 10 concurrent delegations from two clients, a low-quality result, a timeout,
//! a permission denial, a cancel, and an external program. Prints each delegation and the
//! balances before and after, then runs the audit.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::cli::platform::describe;
use crate::up::Federation;
use sage_federation::delegation::client::{DelegationOutcome, DelegationRequest, FederationClient};
use sage_federation::delegation::status;
use sage_federation::ledger::audit::audit;
use sage_federation::ledger::model::{LockState, RollbackReason};
use sage_federation::ledger::snapshot::LedgerSnapshot;
use sage_federation::protocol::clock::now_seconds;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::TaskState;

/// How long the cancel scenario waits for its task to start running.
const CANCEL_START_TIMEOUT: Duration = Duration::from_secs(20);

struct Row {
    scenario: &'static str,
    expected: (LockState, Option<RollbackReason>),
    outcome: Result<DelegationOutcome, String>,
}

fn params(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn request(
    to: Option<&str>,
    task_type: &str,
    operation: &str,
    budget: f64,
    timeout: u64,
    parameters: Value,
) -> DelegationRequest {
    DelegationRequest {
        to: to.map(str::to_owned),
        task_type: task_type.to_owned(),
        operation: operation.to_owned(),
        budget,
        timeout_seconds: timeout,
        parameters: params(parameters),
        task_id: None,
    }
}

fn planning() -> Value {
    json!({"width": 48, "height": 48, "start": [0, 0], "goal": [47, 47], "obstacle_density": 0.2, "seed": 3})
}

fn perception(seed: u64) -> Value {
    json!({"length": 4096, "seed": seed})
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

/// Runs every scenario; true when each ended as the seed expects and the audit is clean.
pub async fn run(federation: &Federation, url: &str) -> anyhow::Result<bool> {
    let js = async_nats::jetstream::new(federation.client.clone());
    let before = LedgerSnapshot::read(&js).await?;
    let (legion, thor, sprout) = (
        client(federation, "Legion")?,
        client(federation, "Thor")?,
        client(federation, "Sprout")?,
    );
    let committed = (LockState::Committed, None);
    let rolled_back = |reason| (LockState::RolledBack, Some(reason));
    let mut rows = Vec::new();

    println!("\nrunning the seed's scenarios on {url}");
    rows.push(Row {
        scenario: "1 Thor -> Legion",
        expected: committed,
        outcome: delegate(
            thor,
            request(Some("Legion"), "consciousness.sage", "planning", 10.0, 30, planning()),
        )
        .await,
    });
    rows.push(Row {
        scenario: "2 Sprout -> Legion",
        expected: committed,
        outcome: delegate(
            sprout,
            request(Some("Legion"), "consciousness", "perception", 5.0, 30, perception(7)),
        )
        .await,
    });
    let program = json!({"steps": [{"op": "add", "args": [2, 3]}, {"op": "mul", "args": ["$0", 4], "expect": 20}]});
    rows.push(Row {
        scenario: "3 Legion -> Thor (bidirectional)",
        expected: committed,
        outcome: delegate(
            legion,
            request(Some("Thor"), "consciousness", "execution", 5.0, 30, program),
        )
        .await,
    });
    let concurrent = (0..10u64).map(|i| {
        let from = if i % 2 == 0 { thor } else { sprout };
        delegate(
            from,
            request(None, "consciousness", "perception", 2.0, 30, perception(100 + i)),
        )
    });
    for outcome in futures::future::join_all(concurrent).await {
        rows.push(Row {
            scenario: "4 concurrent (Thor, Sprout)",
            expected: committed,
            outcome,
        });
    }
    let failing =
        json!({"steps": [{"op": "add", "args": [1, 1]}, {"op": "div", "args": [1, 0]}, {"op": "sqrt", "args": [-4]}]});
    rows.push(Row {
        scenario: "5 low quality",
        expected: rolled_back(RollbackReason::LowQuality),
        outcome: delegate(
            thor,
            request(Some("Legion"), "consciousness", "execution", 5.0, 30, failing),
        )
        .await,
    });
    let slow = json!({"steps": [{"op": "wait", "args": [3000]}]});
    rows.push(Row {
        scenario: "6 timeout",
        expected: rolled_back(RollbackReason::Timeout),
        outcome: delegate(
            thor,
            request(Some("Legion"), "consciousness", "execution", 5.0, 1, slow),
        )
        .await,
    });
    rows.push(Row {
        scenario: "7 permission denied",
        expected: rolled_back(RollbackReason::PermissionDenied),
        outcome: delegate(
            legion,
            request(Some("Sprout"), "consciousness", "planning", 5.0, 30, planning()),
        )
        .await,
    });
    rows.push(Row {
        scenario: "8 cancel",
        expected: rolled_back(RollbackReason::Cancelled),
        outcome: cancel_scenario(federation, thor).await,
    });
    rows.push(Row {
        scenario: "9 external program",
        expected: committed,
        outcome: delegate(
            thor,
            request(
                Some("Legion"),
                "consciousness",
                "wordcount",
                5.0,
                30,
                json!({"text": "machines delegate tasks to each other"}),
            ),
        )
        .await,
    });

    let mut all_ok = print_rows(&rows);
    let after = LedgerSnapshot::read(&js).await?;
    print_balances(&before, &after);
    let report = audit(&after, now_seconds());
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

/// Delegates a long task, cancels it while it runs, and returns the settled outcome.
async fn cancel_scenario(federation: &Federation, thor: &FederationClient) -> Result<DelegationOutcome, String> {
    let task_id = TaskId::random().map_err(|e| e.to_string())?;
    let mut long = request(
        Some("Legion"),
        "consciousness",
        "execution",
        5.0,
        20,
        json!({"steps": [{"op": "wait", "args": [10000]}]}),
    );
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
        status::cancel_task(&federation.client, thor.signer(), &task_id)
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

fn print_rows(rows: &[Row]) -> bool {
    println!(
        "\n{:<34} {:<18} {:<11} {:>7} {:>13} {:>8} {:<32} {:<4}",
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
                    "{:<34} {:<18} {:<11} {:>7} {:>13} {:>8.1} {:<32} {}",
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
                println!("{:<34} FAILED: {e} (expected {expected})", row.scenario);
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
