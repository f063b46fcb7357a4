//! Faults the crash tests inject into a real worker process, at points no outside signal can
//! hit reliably (between a commit and its proof). Off unless `SAGEFED_FAULT` names one; the
//! variable is read once.

use std::sync::OnceLock;

/// The environment variable that names the fault to inject.
pub const FAULT_ENV: &str = "SAGEFED_FAULT";
/// The worker process dies (abort: no cleanup, as under SIGKILL) right after the ledger
/// applied its commit, before the proof is published.
pub const DIE_AFTER_COMMIT: &str = "die_after_commit";

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
