//! The seed's scenarios as one table, run by `sagefed up` (its demo) and by the federation
//! tests: who delegates what to whom, and how the ledger must settle it. The concurrent
//! delegations and the cancel are not single delegations; their parameters are here too.

use serde_json::{Map, Value, json};

use crate::delegation::client::DelegationRequest;
use crate::ledger::model::{LockState, RollbackReason};

/// How a scenario must settle: the lock's final state and, for a rollback, its reason.
pub type Settled = (LockState, Option<RollbackReason>);

/// Delegations of the concurrency scenario, alternating between two delegators.
pub const CONCURRENT_DELEGATIONS: usize = 10;
/// The delegators of the concurrency scenario, placed automatically.
pub const CONCURRENT_DELEGATORS: [&str; 2] = ["Thor", "Sprout"];

/// One delegation of the seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub from: &'static str,
    /// `None`: placed automatically.
    pub to: Option<&'static str>,
    pub task_type: &'static str,
    pub operation: &'static str,
    pub budget: f64,
    pub timeout_seconds: u64,
    pub parameters: Value,
    pub expected: Settled,
}

impl Scenario {
    /// The request a [`crate::FederationClient`] of `from` sends.
    pub fn request(&self) -> DelegationRequest {
        DelegationRequest {
            to: self.to.map(str::to_owned),
            task_type: self.task_type.to_owned(),
            operation: self.operation.to_owned(),
            budget: self.budget,
            timeout_seconds: self.timeout_seconds,
            parameters: object(&self.parameters),
            task_id: None,
        }
    }

    /// The same request as `sagefed delegate` flags (after `--config <from's config>`).
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "--operation".to_owned(),
            self.operation.to_owned(),
            "--budget".to_owned(),
            self.budget.to_string(),
            "--task-type".to_owned(),
            self.task_type.to_owned(),
            "--timeout".to_owned(),
            self.timeout_seconds.to_string(),
            "--params".to_owned(),
            self.parameters.to_string(),
        ];
        if let Some(to) = self.to {
            args.extend(["--to".to_owned(), to.to_owned()]);
        }
        args
    }
}

fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

const COMMITTED: Settled = (LockState::Committed, None);

const fn rolled_back(reason: RollbackReason) -> Settled {
    (LockState::RolledBack, Some(reason))
}

/// A planning grid the A* search solves.
pub fn planning_grid() -> Value {
    json!({"width": 48, "height": 48, "start": [0, 0], "goal": [47, 47], "obstacle_density": 0.2, "seed": 3})
}

/// A perception frame of 4096 samples.
pub fn perception_frame(seed: u64) -> Value {
    json!({"length": 4096, "seed": seed})
}

/// A program that waits `ms` milliseconds, then adds.
pub fn waiting_program(ms: u64) -> Value {
    json!({"steps": [{"op": "wait", "args": [ms]}, {"op": "add", "args": [1, 1]}]})
}

/// The concurrency scenario's `i`th delegation (placed automatically).
pub fn concurrent(i: usize) -> Scenario {
    Scenario {
        name: "4 concurrent",
        from: CONCURRENT_DELEGATORS[i % CONCURRENT_DELEGATORS.len()],
        to: None,
        task_type: "consciousness",
        operation: "perception",
        budget: 2.0,
        timeout_seconds: 30,
        parameters: json!({"length": 1000, "seed": 100 + i}),
        expected: COMMITTED,
    }
}

/// The cancel scenario: a long task Thor cancels while Legion runs it.
pub fn cancelled() -> Scenario {
    Scenario {
        name: "8 cancel",
        from: "Thor",
        to: Some("Legion"),
        task_type: "consciousness",
        operation: "execution",
        budget: 5.0,
        timeout_seconds: 20,
        parameters: json!({"steps": [{"op": "wait", "args": [10000]}]}),
        expected: rolled_back(RollbackReason::Cancelled),
    }
}

/// The external-program scenario (Legion's `wordcount`, configured in `configs/legion.toml`).
pub fn external_program() -> Scenario {
    Scenario {
        name: "9 external program",
        from: "Thor",
        to: Some("Legion"),
        task_type: "consciousness",
        operation: "wordcount",
        budget: 5.0,
        timeout_seconds: 30,
        parameters: json!({"text": "machines delegate tasks to each other"}),
        expected: COMMITTED,
    }
}

/// The lying-executor scenario (issue #13): Legion, holding its own valid key, answers a
/// perception task of Thor's with a made-up result and quality 1.0 and commits it itself.
/// The ledger's own check of the result refutes it: Thor is refunded, and Legion is placed
/// after every other platform for perception until it earns its way back.
pub fn lying_executor() -> Scenario {
    Scenario {
        name: "10 lying executor caught",
        from: "Thor",
        to: Some("Legion"),
        task_type: "consciousness",
        operation: "perception",
        budget: 5.0,
        timeout_seconds: 30,
        parameters: perception_frame(11),
        expected: rolled_back(RollbackReason::Refuted),
    }
}

/// The witness scenario (issue #13, item 2): Legion, holding its own valid key, answers
/// Thor's `wordcount` tasks (an external program, which the ledger cannot check) with a
/// made-up count and commits it itself; Thor's lock names Sprout, which runs `wordcount`
/// too, as witness. The ledger samples Legion's commits; Thor sends a held one to Sprout,
/// whose worker runs the program and disagrees: Thor is refunded but Sprout's share.
pub fn witness_catches_a_lie() -> Scenario {
    Scenario {
        name: "12 witness catches a lying external program",
        from: "Thor",
        to: Some("Legion"),
        task_type: "consciousness",
        operation: "wordcount",
        budget: 5.0,
        timeout_seconds: 30,
        parameters: json!({"text": "a witness runs the program again"}),
        expected: rolled_back(RollbackReason::WitnessDisagreed),
    }
}

/// Normal tasks the priority scenario queues at Sprout (two places) ahead of its critical one.
pub const CRITICAL_BACKLOG: usize = 12;
/// Samples of each perception frame in the priority scenario: large enough that the backlog
/// takes a while to work through.
const CRITICAL_BACKLOG_SAMPLES: u64 = 1_000_000;

/// The priority scenario's `i`th backlog task, or (`None`) its critical task: Thor (granted
/// `federation:critical`) sends them all to Sprout; the critical one is queued last and must
/// settle before some of the backlog queued ahead of it.
pub fn critical_backlog(i: Option<usize>) -> Scenario {
    Scenario {
        name: "11 critical overtakes a backlog",
        from: "Thor",
        to: Some("Sprout"),
        task_type: "consciousness",
        operation: "perception",
        budget: 12.0,
        timeout_seconds: 60,
        parameters: json!({"length": CRITICAL_BACKLOG_SAMPLES, "seed": 200 + i.unwrap_or(CRITICAL_BACKLOG)}),
        expected: COMMITTED,
    }
}

/// The seed's single delegations, in order: three directions, low quality, a timeout, a
/// permission denial.
pub fn seed() -> Vec<Scenario> {
    let scenario = |name, from, to, task_type, operation, parameters, expected| Scenario {
        name,
        from,
        to: Some(to),
        task_type,
        operation,
        budget: 5.0,
        timeout_seconds: 30,
        parameters,
        expected,
    };
    vec![
        Scenario {
            budget: 10.0,
            ..scenario(
                "1 Thor -> Legion",
                "Thor",
                "Legion",
                "consciousness.sage",
                "planning",
                planning_grid(),
                COMMITTED,
            )
        },
        scenario(
            "2 Sprout -> Legion",
            "Sprout",
            "Legion",
            "consciousness",
            "perception",
            perception_frame(7),
            COMMITTED,
        ),
        scenario(
            "3 Legion -> Thor (bidirectional)",
            "Legion",
            "Thor",
            "consciousness",
            "execution",
            json!({"steps": [{"op": "add", "args": [2, 3]}, {"op": "mul", "args": ["$0", 4], "expect": 20}]}),
            COMMITTED,
        ),
        scenario(
            "5 low quality",
            "Thor",
            "Legion",
            "consciousness",
            "execution",
            json!({"steps": [{"op": "add", "args": [1, 1]}, {"op": "div", "args": [1, 0]}, {"op": "sqrt", "args": [-4]}]}),
            rolled_back(RollbackReason::LowQuality),
        ),
        Scenario {
            timeout_seconds: 1,
            ..scenario(
                "6 timeout",
                "Thor",
                "Legion",
                "consciousness",
                "execution",
                json!({"steps": [{"op": "wait", "args": [3000]}]}),
                rolled_back(RollbackReason::Timeout),
            )
        },
        scenario(
            "7 permission denied",
            "Legion",
            "Sprout",
            "consciousness",
            "planning",
            planning_grid(),
            rolled_back(RollbackReason::PermissionDenied),
        ),
    ]
}
