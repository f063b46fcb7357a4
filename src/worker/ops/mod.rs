//! Operation handlers: the work a task asks for, behind one trait.
//!
//! Every handler does real, deterministic work, computes its quality from the result (never a
//! constant, never random) and meters the ATP it consumes from the work actually done, capped
//! at the task's budget. Built-ins run on the blocking pool and stop when their future is
//! dropped or their timeout passes; external programs are killed.
//!
//! - [`planning`]: shortest path on a grid with obstacles; [`planning::verify_path`] re-checks one.
//! - [`perception`]: statistics, features and z-score anomalies of a numeric frame.
//! - [`execution`]: a small deterministic program of arithmetic steps.
//! - [`external`]: a configured program, JSON on stdin and stdout, killed at its limits.
//!
//! [`verify`] checks a built-in operation's result for the ledger (issue #13): the party that
//! pays by the verdict is never the executor.

pub mod execution;
pub mod external;
mod keeper;
pub mod perception;
pub mod planning;
mod sweep;
mod user;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::protocol::atp::Atp;
use crate::protocol::limits::PROOF_RESULT_BYTES_MAX;
use crate::protocol::verdict::Verdict;

/// What one execution of an operation gets.
#[derive(Clone, Debug)]
pub struct OperationInput {
    pub parameters: Map<String, Value>,
    /// The task's ATP budget; consumption never exceeds it.
    pub budget: Atp,
    /// Wall-clock limit for this execution.
    pub timeout: Duration,
    /// Memory limit, in MiB (enforced for external processes).
    pub memory_mb: u64,
}

/// What one successful execution produced.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationOutput {
    pub result: Map<String, Value>,
    /// 0.0 ..= 1.0, computed from the result.
    pub quality: f64,
    /// Metered from the work actually done, capped at the budget.
    pub atp_consumed: Atp,
}

/// Why an execution produced no output.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    #[error("timed out after {after:?}; ask for a longer timeout_seconds or less work")]
    TimedOut { after: Duration },
    #[error("resource limit exceeded: {0}")]
    ResourceLimit(String),
    #[error("operation failed: {0}")]
    Failed(String),
}

/// One operation, by name.
pub trait Operation: Send + Sync {
    fn name(&self) -> &str;

    /// Runs the operation. Dropping the returned future must abort the work (external child
    /// processes are killed).
    fn run(&self, input: OperationInput) -> BoxFuture<'static, Result<OperationOutput, OperationError>>;
}

/// The operations a platform can execute, by name.
#[derive(Clone)]
pub struct Operations {
    by_name: BTreeMap<String, Arc<dyn Operation>>,
}

/// Whether [`verify`] has a check for `operation`'s results (one of the three built-in
/// names); any other operation is only checked by a witness re-running it.
pub fn has_check(operation: &str) -> bool {
    matches!(operation, "planning" | "execution" | "perception")
}

/// The verdict of a party other than the executor on `result`, returned for a task of
/// `operation` with `parameters` and `budget`. The three built-in operation names have a
/// defined result and a check of it (a platform that runs one of them as an external program
/// must return results that pass it); any other operation is [`Verdict::Unverifiable`].
/// CPU-bound (at most one run of the operation's own work without its waits): call it from
/// a blocking thread.
pub fn verify(operation: &str, parameters: &Map<String, Value>, budget: Atp, result: &Map<String, Value>) -> Verdict {
    match operation {
        "planning" => planning::verify_result(parameters, result),
        "execution" => execution::verify_result(parameters, budget, result),
        "perception" => perception::verify_result(parameters, budget, result),
        _ => Verdict::Unverifiable,
    }
}

impl Operations {
    /// The built-in `perception`, `planning` and `execution`.
    pub fn builtin() -> Self {
        let builtins: [Arc<dyn Operation>; 3] = [
            Arc::new(perception::Perception),
            Arc::new(planning::Planning),
            Arc::new(execution::Execution),
        ];
        Self {
            by_name: builtins.into_iter().map(|op| (op.name().to_owned(), op)).collect(),
        }
    }

    /// Adds (or replaces) `name` with an operation run by an external program. A relative
    /// program path (one with a `/`) is resolved against `base_dir`, and the program runs there,
    /// as the user `run_as` when the worker is root.
    pub fn with_external(
        mut self,
        name: &str,
        command: Vec<String>,
        base_dir: &Path,
        atp_per_second: Atp,
        run_as: &str,
    ) -> Self {
        let op = external::ExternalOperation::new(name, command, base_dir, atp_per_second, run_as);
        self.by_name.insert(name.to_owned(), Arc::new(op));
        self
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Operation>> {
        self.by_name.get(name).cloned()
    }

    /// Every operation name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

impl fmt::Debug for Operations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

/// Set when the caller no longer wants the result (its future was dropped, or it timed out);
/// blocking work polls it so that the thread stops soon after.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub(crate) fn check(&self) -> Result<(), OperationError> {
        if self.0.load(Ordering::Relaxed) {
            Err(OperationError::Failed("cancelled".to_owned()))
        } else {
            Ok(())
        }
    }
}

/// Raises the flag when dropped: on timeout, on completion, and when the future is dropped.
struct RaiseOnDrop(Cancel);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}

/// Runs CPU-bound `work` on the blocking pool, within `timeout`.
pub(crate) fn run_blocking<F>(timeout: Duration, work: F) -> BoxFuture<'static, Result<OperationOutput, OperationError>>
where
    F: FnOnce(&Cancel) -> Result<OperationOutput, OperationError> + Send + 'static,
{
    Box::pin(async move {
        let cancel = Cancel::default();
        let _raise = RaiseOnDrop(cancel.clone());
        let handle = tokio::task::spawn_blocking(move || work(&cancel));
        let output = match tokio::time::timeout(timeout, handle).await {
            Err(_) => return Err(OperationError::TimedOut { after: timeout }),
            Ok(Err(join)) => return Err(OperationError::Failed(format!("the handler panicked: {join}"))),
            Ok(Ok(output)) => output?,
        };
        check_result_size(&output.result)?;
        Ok(output)
    })
}

/// Refuses a result that would not fit in a proof.
pub(crate) fn check_result_size(result: &Map<String, Value>) -> Result<(), OperationError> {
    let bytes = serde_json::to_vec(result).map_err(|e| OperationError::Failed(format!("result: {e}")))?;
    if bytes.len() > PROOF_RESULT_BYTES_MAX {
        return Err(OperationError::ResourceLimit(format!(
            "the result is {} bytes; a proof carries at most {PROOF_RESULT_BYTES_MAX}",
            bytes.len()
        )));
    }
    Ok(())
}

/// ATP for `units` of work at `per_unit` each plus `base`, capped at `budget`.
pub(crate) fn metered(base: Atp, per_unit: Atp, units: u64, budget: Atp) -> Atp {
    let micros = per_unit.micros().saturating_mul(units).saturating_add(base.micros());
    Atp::from_micros(micros).min(budget)
}

/// How many units of work at `per_unit` each the budget pays for after `base`.
pub(crate) fn affordable(base: Atp, per_unit: Atp, budget: Atp) -> u64 {
    let left = budget.checked_sub(base).unwrap_or(Atp::ZERO).micros();
    left.checked_div(per_unit.micros()).unwrap_or(u64::MAX)
}

/// F1 score of `found` against `truth`, both sorted and free of duplicates; 1.0 when both are
/// empty (nothing to find, nothing found).
pub(crate) fn f1_score(found: &[usize], truth: &[usize]) -> (f64, f64, f64) {
    if found.is_empty() && truth.is_empty() {
        return (1.0, 1.0, 1.0);
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < found.len() && j < truth.len() {
        match found[i].cmp(&truth[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let precision = if found.is_empty() {
        0.0
    } else {
        common as f64 / found.len() as f64
    };
    let recall = if truth.is_empty() {
        0.0
    } else {
        common as f64 / truth.len() as f64
    };
    let f1 = if common == 0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (precision, recall, f1)
}

/// splitmix64 (Steele, Lea and Flood 2014): a tiny, seedable generator, so that generated
/// grids and signals are the same on every platform and every release.
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0.0 .. 1.0 (53 random bits).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0 .. n (multiply-shift; the bias is below 2^-32 for the sizes used here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Typed access to a task's parameters; every error names the parameter and what it must be.
pub(crate) struct Params<'a>(&'a Map<String, Value>);

impl<'a> Params<'a> {
    /// Refuses parameters not in `known`, so that a misspelt key is not silently ignored.
    pub(crate) fn new(map: &'a Map<String, Value>, known: &[&str]) -> Result<Self, OperationError> {
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(OperationError::InvalidParameters(format!(
                "unknown parameter `{}`; this operation accepts {}",
                shown_str(unknown),
                known.join(", ")
            )));
        }
        Ok(Self(map))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// A whole number in `min ..= max`, if present.
    pub(crate) fn u64_in(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, OperationError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(invalid(key, &format!("a whole number from {min} to {max}"), value)),
        }
    }

    /// A number in `min ..= max`, if present.
    pub(crate) fn f64_in(&self, key: &str, min: f64, max: f64) -> Result<Option<f64>, OperationError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.as_f64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(invalid(key, &format!("a number from {min} to {max}"), value)),
        }
    }

    /// A string, if present.
    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>, OperationError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(invalid(key, "a string", other)),
        }
    }
}

/// The error for parameter `what` that is not `expected`.
pub(crate) fn invalid(what: &str, expected: &str, got: &Value) -> OperationError {
    OperationError::InvalidParameters(format!("`{what}` must be {expected}, got {}", shown(got)))
}

/// The required parameter `key` is missing.
pub(crate) fn missing(key: &str, expected: &str) -> OperationError {
    OperationError::InvalidParameters(format!("`{key}` is missing; it must be {expected}"))
}

/// A value for an error message, shortened: parameters may be large.
pub(crate) fn shown(value: &Value) -> String {
    shown_str(&value.to_string())
}

fn shown_str(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 48;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        text.to_owned()
    } else {
        let head: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_holds_the_builtins_and_externals_replace_them() {
        let ops = Operations::builtin();
        assert_eq!(ops.names(), ["execution", "perception", "planning"]);
        assert_eq!(
            ops.get("planning").map(|op| op.name().to_owned()).as_deref(),
            Some("planning")
        );
        assert!(ops.get("dreaming").is_none());

        let ops = ops
            .with_external(
                "execution",
                vec!["true".to_owned()],
                Path::new("/"),
                Atp::from_micros(1),
                "nobody",
            )
            .with_external(
                "vision",
                vec!["true".to_owned()],
                Path::new("/"),
                Atp::from_micros(1),
                "nobody",
            );
        assert_eq!(ops.names(), ["execution", "perception", "planning", "vision"]);
        assert_eq!(
            format!("{ops:?}"),
            r#"{"execution", "perception", "planning", "vision"}"#
        );
    }

    #[test]
    fn metering_never_exceeds_the_budget() {
        let budget = Atp::from_micros(5_000);
        let (base, per) = (Atp::from_micros(1_000), Atp::from_micros(100));
        assert_eq!(metered(base, per, 10, budget), Atp::from_micros(2_000));
        assert_eq!(metered(base, per, u64::MAX, budget), budget);
        assert_eq!(affordable(base, per, budget), 40);
        assert_eq!(affordable(base, per, Atp::from_micros(500)), 0);
    }

    #[test]
    fn f1_counts_matches() {
        assert_eq!(f1_score(&[], &[]), (1.0, 1.0, 1.0));
        assert_eq!(f1_score(&[1, 2], &[]).2, 0.0);
        let (p, r, f1) = f1_score(&[1, 2, 3, 4], &[2, 4]);
        assert_eq!((p, r), (0.5, 1.0));
        assert!((f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_and_malformed_parameters_are_named() {
        let map = serde_json::json!({"widht": 3});
        let map = map.as_object().expect("object");
        let err = Params::new(map, &["width"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("`widht`") && err.contains("width"), "{err}");

        let map = serde_json::json!({"width": -3});
        let map = map.as_object().expect("object");
        let params = Params::new(map, &["width"]).expect("known");
        let err = params.u64_in("width", 1, 10).expect_err("negative").to_string();
        assert!(
            err.contains("`width` must be a whole number from 1 to 10, got -3"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dropping_a_blocking_run_raises_the_cancel_flag() {
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let run = run_blocking(Duration::from_secs(60), move |cancel| {
            let started = std::time::Instant::now();
            while cancel.check().is_ok() {
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = seen_tx.send(false);
                    return Err(OperationError::Failed("never cancelled".to_owned()));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = seen_tx.send(true);
            Err(OperationError::Failed("cancelled".to_owned()))
        });
        let timed_out = tokio::time::timeout(Duration::from_millis(50), run).await;
        assert!(timed_out.is_err(), "the work loops until cancelled");
        let seen = tokio::task::spawn_blocking(move || seen_rx.recv_timeout(Duration::from_secs(10)))
            .await
            .expect("join");
        assert_eq!(seen, Ok(true));
    }
}
