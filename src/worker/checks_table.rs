//! The executor's checks (`checks.rs`) tested as a table: one row per case, each a change to
//! a task that passes every check, run through the checks in the order the worker runs them,
//! with the time passed in. Each row names the rollback reason and a phrase of the refusal.

use std::time::Instant;

use ed25519_dalek::SigningKey;
use figment::Figment;
use figment::providers::{Format, Toml};

use crate::config::Config;
use crate::identity::keys::KeyRecord;
use crate::ledger::COMMIT_WINDOW;
use crate::ledger::model::{Lock, LockState, RollbackReason};
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::task::FederationTask;
use crate::protocol::task::tests::sample_task;
use crate::worker::admission::{Admissions, RateLimiter};
use crate::worker::checks::{Refusal, check_budget, check_expiry, check_limits, check_permissions, check_rate};
use crate::worker::ops::Operations;
use std::time::Duration;

/// Everything the checks read, for one task arriving at Legion from Thor.
struct Case {
    task: FederationTask,
    /// The record of the key that signed the task, as the key directory holds it.
    signing_key: Option<KeyRecord>,
    lock: Option<Lock>,
    config: Config,
    /// Unix seconds when the worker checks the task.
    now: Timestamp,
    /// Tasks of the same type already running, each holding this budget.
    running: Vec<Atp>,
    /// Requests from Thor already counted by the rate limiter this minute.
    earlier_requests: u32,
}

const LEGION: &str = r#"
[federation]
platform_name = "Legion"
lct_context = "Legion"
keypair_path = "keys/legion.key"

[resources."consciousness.sage"]
atp_budget = 25.0
max_concurrent = 2
"#;

fn config(extra: &str) -> Config {
    Figment::from(Toml::string(&format!("{LEGION}\n{extra}")))
        .extract()
        .expect("config")
}

/// The digest of the case's signed task, as the worker computes it from the wire bytes.
const TASK_DIGEST: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn case() -> Case {
    let task = sample_task("Thor", "Legion");
    let lock = Lock {
        task_id: task.task_id.clone(),
        delegator: task.source_lct.clone(),
        executor: task.target_lct.clone(),
        amount_uatp: task.budget().expect("budget"),
        quality_threshold: 0.7,
        created_at: task.created_at,
        deadline: task.expires_at,
        expires_at: task.expires_at + Duration::from_secs(60),
        state: LockState::Pending,
        settlement: None,
        task_digest: Some(TASK_DIGEST.to_owned()),
        witness_terms: None,
        hold: None,
        operation: None,
    };
    Case {
        now: task.created_at + Duration::from_secs(1),
        task,
        signing_key: Some(KeyRecord {
            delegate: true,
            ..KeyRecord::new(
                "Thor",
                &SigningKey::from_bytes(&[7; 32]).verifying_key(),
                Timestamp::EPOCH,
            )
        }),
        lock: Some(lock),
        config: config(""),
        running: Vec::new(),
        earlier_requests: 0,
    }
}

/// Runs the checks as the worker does: expiry, permissions, budget, rate, limits.
fn check(case: &Case) -> Result<(), Refusal> {
    let admissions = Admissions::default();
    let resource = &case.config.resources.values().next().expect("a resource");
    let _running: Vec<_> = case
        .running
        .iter()
        .map(|budget| {
            admissions
                .admit(
                    &case.task.task_type,
                    *budget,
                    resource.max_concurrent,
                    resource.atp_budget.atp(),
                )
                .expect("running task admitted")
        })
        .collect();
    let limiter = RateLimiter::new(case.config.permissions.requests_per_minute);
    let at = Instant::now();
    for _ in 0..case.earlier_requests {
        limiter.allow(case.task.source_lct.platform(), at);
    }
    check_expiry(&case.task, case.now)?;
    check_permissions(
        &case.task,
        case.signing_key.as_ref(),
        &case.config,
        &Operations::builtin(),
    )?;
    let _admitted = check_budget(&case.task, TASK_DIGEST, case.lock.as_ref(), &case.config, &admissions)?;
    check_rate(&case.task, &limiter, &case.config, at)?;
    check_limits(&case.task, &case.config)
}

type Change = fn(&mut Case);
/// A refusal expected: the rollback reason and a phrase of the reason given.
type Refused = Option<(RollbackReason, &'static str)>;

#[test]
fn each_check_refuses_with_its_reason() {
    use RollbackReason::{PermissionDenied, Rejected, Timeout};
    let rows: Vec<(&str, Change, Refused)> = vec![
        ("a good task", |_| {}, None),
        ("at its expiry", |c| c.now = c.task.expires_at, None),
        (
            "past its expiry",
            |c| c.now = c.task.expires_at + Duration::from_secs_f64(0.5),
            Some((Timeout, "expired")),
        ),
        (
            "signed by a key the directory does not hold",
            |c| c.signing_key = None,
            Some((PermissionDenied, "not in the key directory")),
        ),
        (
            "from a delegator whose key the root did not grant federation:delegate (whatever its registry record claims)",
            |c| c.signing_key.as_mut().expect("record").delegate = false,
            Some((PermissionDenied, "the root did not grant it")),
        ),
        (
            "critical, from a delegator whose key the root did not grant federation:critical",
            |c| c.task.critical = true,
            Some((PermissionDenied, "lacks the federation:critical permission")),
        ),
        (
            "critical, from a delegator whose key holds federation:critical",
            |c| {
                c.task.critical = true;
                c.signing_key.as_mut().expect("record").critical = true;
            },
            None,
        ),
        (
            "from a delegator this platform does not accept",
            |c| c.config = config("[permissions]\ndelegators = [\"Sprout\"]"),
            Some((PermissionDenied, "does not accept tasks from Thor")),
        ),
        (
            "from an accepted delegator",
            |c| c.config = config("[permissions]\ndelegators = [\"Thor\"]"),
            None,
        ),
        (
            "for an operation this platform does not execute",
            |c| c.config = config("[permissions]\nexecute = [\"perception\"]"),
            Some((PermissionDenied, "lacks the planning:execute")),
        ),
        (
            "for an operation nobody implements",
            |c| {
                c.config = config("[permissions]\nexecute = [\"teleport\"]");
                c.task.operation = "teleport".into();
            },
            Some((PermissionDenied, "lacks the teleport:execute")),
        ),
        (
            "with no ATP locked",
            |c| c.lock = None,
            Some((Rejected, "would run unpaid")),
        ),
        (
            "with its lock already settled",
            |c| c.lock.as_mut().expect("lock").state = LockState::RolledBack,
            Some((Rejected, "already RolledBack")),
        ),
        (
            "with a lock for another executor",
            |c| c.lock.as_mut().expect("lock").executor = c.task.source_lct.clone(),
            Some((Rejected, "does not match")),
        ),
        (
            "with a lock that names another task",
            |c| c.lock.as_mut().expect("lock").task_digest = Some("2".repeat(64)),
            Some((Rejected, "does not match")),
        ),
        (
            "with a lock taken for another operation",
            |c| c.lock.as_mut().expect("lock").operation = Some(format!("not-{}", c.task.operation)),
            Some((Rejected, "does not match")),
        ),
        (
            "with a lock taken for its own operation",
            |c| c.lock.as_mut().expect("lock").operation = Some(c.task.operation.clone()),
            None,
        ),
        (
            "with a lock that names no task (an older delegator)",
            |c| c.lock.as_mut().expect("lock").task_digest = None,
            None,
        ),
        (
            "with less locked than its budget",
            |c| c.lock.as_mut().expect("lock").amount_uatp = Atp::from_micros(9_999_999),
            Some((Rejected, "does not match")),
        ),
        (
            "with a lock falling due before the task expires",
            |c| c.lock.as_mut().expect("lock").deadline = c.task.expires_at - Duration::from_secs(1),
            Some((Rejected, "before the task's expiry")),
        ),
        (
            "with a lock expiring 2 s after the task is created",
            |c| {
                let lock = c.lock.as_mut().expect("lock");
                lock.deadline = c.task.expires_at;
                lock.expires_at = c.task.created_at + Duration::from_secs(2);
            },
            Some((Rejected, "commit window")),
        ),
        (
            "with a lock expiring inside the commit window",
            |c| {
                let lock = c.lock.as_mut().expect("lock");
                lock.expires_at = lock.deadline + COMMIT_WINDOW - Duration::from_millis(1);
            },
            Some((Rejected, "commit window")),
        ),
        (
            "with a lock leaving exactly the commit window",
            |c| {
                let lock = c.lock.as_mut().expect("lock");
                lock.expires_at = lock.deadline + COMMIT_WINDOW;
            },
            None,
        ),
        (
            "with a lock asking quality 1.0",
            |c| c.lock.as_mut().expect("lock").quality_threshold = 1.0,
            Some((Rejected, "above the 0.9 Legion accepts")),
        ),
        (
            "with a lock asking the quality this platform accepts, to the unit",
            |c| c.lock.as_mut().expect("lock").quality_threshold = 0.9,
            None,
        ),
        (
            "of a task type this platform does not execute",
            |c| c.task.task_type = "consciousness".into(),
            Some((Rejected, "does not execute consciousness tasks")),
        ),
        (
            "beyond the concurrency",
            |c| c.running = vec![Atp::from_micros(1), Atp::from_micros(1)],
            Some((Rejected, "maximum of 2 tasks")),
        ),
        (
            "beyond the budget in flight",
            |c| c.running = vec![Atp::from_micros(15_000_001)],
            Some((Rejected, "would exceed")),
        ),
        (
            "within the budget in flight, to the unit",
            |c| c.running = vec![Atp::from_micros(15_000_000)],
            None,
        ),
        (
            "over the delegator's rate",
            |c| c.earlier_requests = 60,
            Some((Rejected, "over its rate of 60")),
        ),
        ("at the delegator's rate", |c| c.earlier_requests = 59, None),
        (
            "with a timeout above this platform's maximum",
            |c| c.config = config("[permissions]\ntimeout_seconds_max = 29"),
            Some((Rejected, "above this platform's maximum of 29")),
        ),
        (
            "with a timeout at this platform's maximum",
            |c| c.config = config("[permissions]\ntimeout_seconds_max = 30"),
            None,
        ),
    ];
    for (name, change, expected) in rows {
        let mut case = case();
        change(&mut case);
        match (check(&case), expected) {
            (Ok(()), None) => {}
            (Err(refusal), Some((rollback, phrase))) => {
                assert_eq!(refusal.rollback, rollback, "{name}: {}", refusal.reason);
                assert!(
                    refusal.reason.contains(phrase),
                    "{name}: {:?} lacks {phrase:?}",
                    refusal.reason
                );
            }
            (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
        }
    }
}
