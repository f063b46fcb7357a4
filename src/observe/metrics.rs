//! Prometheus metrics: every name, its labels and its unit, and the one recorder a process
//! installs. Code elsewhere records through the functions here, so that a name is spelt once.
//!
//! Names follow Prometheus conventions: a `sagefed_` prefix, the unit as a suffix
//! (`_seconds`, `_microatp`, `_commands`), `_total` on counters. ATP is counted in micro-ATP,
//! the ledger's own whole unit, because Prometheus counters here are whole numbers.
//! Recording without an installed recorder (library tests, embedders) does nothing.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

pub const DELEGATIONS: &str = "sagefed_delegations_total";
pub const DELEGATION_DURATION: &str = "sagefed_delegation_duration_seconds";
pub const PAID: &str = "sagefed_paid_microatp_total";
pub const REFUNDED: &str = "sagefed_refunded_microatp_total";
pub const LOCKED: &str = "sagefed_locked_microatp";
pub const SUPPLY: &str = "sagefed_supply_microatp";
pub const LEDGER_TRANSITIONS: &str = "sagefed_ledger_transitions_total";
pub const LEDGER_TRANSITION_DURATION: &str = "sagefed_ledger_transition_duration_seconds";
pub const LEDGER_GROUP_COMMANDS: &str = "sagefed_ledger_group_commit_commands";
pub const LEDGER_GROUP_DURATION: &str = "sagefed_ledger_group_commit_duration_seconds";
pub const TASK_DELIVERIES: &str = "sagefed_task_deliveries_total";
pub const TASK_REDELIVERIES: &str = "sagefed_task_redeliveries_total";
pub const TASK_QUEUE_DEPTH: &str = "sagefed_task_queue_depth";
pub const REFUSALS: &str = "sagefed_refusals_total";
pub const DEAD_LETTERS: &str = "sagefed_dead_letters_total";

/// Histogram buckets for latencies, in seconds: 1 ms to 30 s (a task's timeout scale).
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Histogram buckets for a ledger group's size, in commands (up to the sequencer's group limit).
const GROUP_COMMANDS_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Why a task or a ledger request was refused, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The signature or the signer's key did not verify.
    Signature,
    /// Not a well-formed message of the expected kind.
    Malformed,
    /// A task id seen before.
    Replay,
    /// Past its expiry when it arrived.
    Expired,
    /// The delegator lacks a permission for the operation.
    Permission,
    /// The lock is missing or too small, or the platform is at capacity.
    Budget,
    /// The delegator sent more tasks per minute than allowed.
    RateLimit,
    /// Over a memory or time limit.
    Limits,
    /// Sent to the wrong platform.
    WrongPlatform,
    /// The ledger's rules refused the transition (balance, state, requester).
    Rules,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Signature => "signature",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Replay => "replay",
            RefusalReason::Expired => "expired",
            RefusalReason::Permission => "permission",
            RefusalReason::Budget => "budget",
            RefusalReason::RateLimit => "rate_limit",
            RefusalReason::Limits => "limits",
            RefusalReason::WrongPlatform => "wrong_platform",
            RefusalReason::Rules => "rules",
        }
    }
}

/// Which side refused: the executor's worker or the ledger service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuser {
    Worker,
    Ledger,
}

impl Refuser {
    fn as_str(self) -> &'static str {
        match self {
            Refuser::Worker => "worker",
            Refuser::Ledger => "ledger",
        }
    }
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus recorder: {0}")]
pub struct MetricsError(#[from] BuildError);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's Prometheus recorder (once; later calls return the same handle) and
/// describes every metric. The caller serves [`PrometheusHandle::render`] and runs
/// [`PrometheusHandle::run_upkeep`] now and then (the HTTP server here does both).
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS_SECONDS)?
        .set_buckets_for_metric(Matcher::Full(LEDGER_GROUP_COMMANDS.to_owned()), &GROUP_COMMANDS_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(
        DELEGATIONS,
        "Delegations settled, by outcome and rollback reason (delegator side)"
    );
    describe_histogram!(
        DELEGATION_DURATION,
        Unit::Seconds,
        "From a delegation's first request to its settled outcome"
    );
    describe_counter!(
        PAID,
        "ATP paid to executors for committed tasks, in micro-ATP (delegator side)"
    );
    describe_counter!(REFUNDED, "ATP refunded to delegators, in micro-ATP (delegator side)");
    describe_gauge!(
        LOCKED,
        "ATP locked in escrow now, in micro-ATP (from the ledger's buckets)"
    );
    describe_gauge!(SUPPLY, "ATP granted in total, in micro-ATP (from the ledger's buckets)");
    describe_counter!(LEDGER_TRANSITIONS, "Ledger requests handled, by operation and outcome");
    describe_histogram!(
        LEDGER_TRANSITION_DURATION,
        Unit::Seconds,
        "Ledger request latency in the service, by operation"
    );
    describe_histogram!(
        LEDGER_GROUP_COMMANDS,
        Unit::Count,
        "Commands decided and written together in one ledger group commit"
    );
    describe_histogram!(
        LEDGER_GROUP_DURATION,
        Unit::Seconds,
        "Time to decide and write one ledger group"
    );
    describe_counter!(TASK_DELIVERIES, "Task messages a worker received, by platform");
    describe_counter!(TASK_REDELIVERIES, "Task messages received more than once, by platform");
    describe_gauge!(
        TASK_QUEUE_DEPTH,
        "Tasks waiting in a platform's work queue, as of the last delivery"
    );
    describe_counter!(REFUSALS, "Tasks and ledger requests refused, by who refused and why");
    describe_counter!(
        DEAD_LETTERS,
        "Task messages moved to the dead-letter stream, by platform"
    );
}

/// A delegation reached its settled outcome (`outcome`: committed, rolled_back, expired;
/// `reason`: the rollback reason, empty when paid).
pub fn delegation_settled(outcome: &str, reason: &str, latency: Duration, paid_micros: u64, refunded_micros: u64) {
    counter!(DELEGATIONS, "outcome" => outcome.to_owned(), "reason" => reason.to_owned()).increment(1);
    histogram!(DELEGATION_DURATION).record(latency.as_secs_f64());
    counter!(PAID).increment(paid_micros);
    counter!(REFUNDED).increment(refunded_micros);
}

/// A delegation ended in an error before it settled (no platform, lock refused, ...).
pub fn delegation_failed(kind: &str) {
    counter!(DELEGATIONS, "outcome" => "error", "reason" => kind.to_owned()).increment(1);
}

/// The ledger's escrow now, from a snapshot.
pub fn ledger_totals(locked_micros: u64, supply_micros: u64) {
    gauge!(LOCKED).set(locked_micros as f64);
    gauge!(SUPPLY).set(supply_micros as f64);
}

/// The ledger service answered one request.
pub fn ledger_transition(operation: &str, outcome: &str, latency: Duration) {
    counter!(LEDGER_TRANSITIONS, "operation" => operation.to_owned(), "outcome" => outcome.to_owned()).increment(1);
    histogram!(LEDGER_TRANSITION_DURATION, "operation" => operation.to_owned()).record(latency.as_secs_f64());
}

/// The sequencer decided and wrote one group of `commands`.
pub fn ledger_group(commands: usize, took: Duration) {
    histogram!(LEDGER_GROUP_COMMANDS).record(commands as f64);
    histogram!(LEDGER_GROUP_DURATION).record(took.as_secs_f64());
}

/// A worker of `platform` received a task message for the `delivered`th time, with `pending`
/// more waiting in its queue.
pub fn task_delivered(platform: &str, delivered: i64, pending: u64) {
    counter!(TASK_DELIVERIES, "platform" => platform.to_owned()).increment(1);
    if delivered > 1 {
        counter!(TASK_REDELIVERIES, "platform" => platform.to_owned()).increment(1);
    }
    gauge!(TASK_QUEUE_DEPTH, "platform" => platform.to_owned()).set(pending as f64);
}

/// A task or a ledger request was refused.
pub fn refused(by: Refuser, reason: RefusalReason) {
    counter!(REFUSALS, "by" => by.as_str(), "reason" => reason.as_str()).increment(1);
}

/// A worker of `platform` dead-lettered a task message.
pub fn dead_lettered(platform: &str) {
    counter!(DEAD_LETTERS, "platform" => platform.to_owned()).increment(1);
}
