//! Faults the tests inject into real processes (a worker, the ledger service), at points no
//! outside signal can hit reliably (between a commit and its proof; the one request a test
//! watches). Off unless `SAGEFED_FAULT` names one; the variable is read once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable that names the fault to inject.
pub const FAULT_ENV: &str = "SAGEFED_FAULT";
/// The worker process dies (abort: no cleanup, as under SIGKILL) right after the ledger
/// applied its commit, before the proof is published.
pub const DIE_AFTER_COMMIT: &str = "die_after_commit";
/// The ledger service answers `busy` to its first [`BUSY_ROLLBACKS`] rollback requests, as it
/// does past its in-flight limit.
pub const LEDGER_BUSY_ROLLBACKS: &str = "ledger_busy_rollbacks";
/// How many rollbacks [`LEDGER_BUSY_ROLLBACKS`] answers `busy`: fewer than a forwarded cancel's
/// attempts, so a caller that retries gets through and one that does not is refused.
pub const BUSY_ROLLBACKS: u32 = 2;

fn configured() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT.get_or_init(|| std::env::var(FAULT_ENV).ok()).as_deref()
}

/// Dies here when `point` is the configured fault.
pub fn die_at(point: &str) {
    if configured() == Some(point) {
        tracing::error!(fault = point, "{FAULT_ENV} asks this worker to die here");
        std::process::abort();
    }
}

/// Whether this rollback request is to be answered `busy` ([`LEDGER_BUSY_ROLLBACKS`]).
pub fn busy_rollback() -> bool {
    static ANSWERED_BUSY: AtomicU32 = AtomicU32::new(0);
    if configured() != Some(LEDGER_BUSY_ROLLBACKS) || ANSWERED_BUSY.fetch_add(1, Ordering::Relaxed) >= BUSY_ROLLBACKS {
        return false;
    }
    tracing::warn!(
        fault = LEDGER_BUSY_ROLLBACKS,
        "{FAULT_ENV} asks this ledger to answer a rollback busy"
    );
    true
}
