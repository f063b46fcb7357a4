//! `execution`: a small deterministic program of arithmetic steps.
//!
//! Parameters: `steps`, a list of `{"op": ..., "args": [...], "expect": <number>}` where `op`
//! is one of `add`, `mul`, `min`, `max` (one or more arguments), `sub`, `div`, `pow` (two) or
//! `sqrt`, `abs`, `neg` (one), or `wait` (one: milliseconds, at most [`WAIT_MS_MAX`]; a
//! physical action's duration, such as a robot arm moving); an argument is a number or `"$k"`, the value of step `k`
//! (an earlier one); `expect` is optional. Without `steps`, the program is
//! [`default_steps`]: two checked arithmetic steps. A malformed program is refused before anything
//! runs; a step can still fail while running (division by zero, the square root of a
//! negative, a result that is not finite, a failed step it refers to, or a value that differs
//! from `expect` by more than one part in 10^9).
//!
//! Quality: the fraction of steps that succeeded. ATP: [`EXECUTION_BASE_COST`] plus
//! [`COST_PER_STEP`] per step run, capped at the budget; steps the budget does not pay for
//! fail without running. Platforms may replace this with an external command.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{
    Cancel, Operation, OperationError, OperationInput, OperationOutput, Params, affordable, invalid, metered,
    run_blocking,
};
use crate::protocol::atp::Atp;
use crate::protocol::verdict::Verdict;

/// Most steps in one program.
pub const STEPS_MAX: usize = 1_000;

/// Most arguments of one step.
pub const STEP_ARGS_MAX: usize = 64;

/// Longest one `wait` step may last.
pub const WAIT_MS_MAX: f64 = 60_000.0;

/// How often a `wait` step checks whether it was cancelled.
const WAIT_SLICE: std::time::Duration = std::time::Duration::from_millis(10);

/// ATP charged per step run (0.0001 ATP).
pub const COST_PER_STEP: Atp = Atp::from_micros(100);

/// ATP charged for every run, for checking the program (0.001 ATP).
pub const EXECUTION_BASE_COST: Atp = Atp::from_micros(1_000);

/// Relative difference within which a value meets its `expect`.
const EXPECT_TOLERANCE: f64 = 1e-9;

const PARAMETERS: [&str; 1] = ["steps"];

/// The program run when a task gives no `steps`: `2 + 3 = 5`, then `5 * 4 = 20`, each checked.
pub fn default_steps() -> Value {
    json!([
        {"op": "add", "args": [2, 3], "expect": 5},
        {"op": "mul", "args": ["$0", 4], "expect": 20},
    ])
}
const STEP_KEYS: [&str; 3] = ["op", "args", "expect"];

/// The built-in `execution` operation.
pub struct Execution;

impl Operation for Execution {
    fn name(&self) -> &str {
        "execution"
    }

    fn run(&self, input: OperationInput) -> BoxFuture<'static, Result<OperationOutput, OperationError>> {
        run_blocking(input.timeout, move |cancel| {
            execute(&input.parameters, input.budget, cancel)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Add,
    Mul,
    Min,
    Max,
    Sub,
    Div,
    Pow,
    Sqrt,
    Abs,
    Neg,
    Wait,
}

impl Op {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "add" => Op::Add,
            "mul" => Op::Mul,
            "min" => Op::Min,
            "max" => Op::Max,
            "sub" => Op::Sub,
            "div" => Op::Div,
            "pow" => Op::Pow,
            "sqrt" => Op::Sqrt,
            "abs" => Op::Abs,
            "neg" => Op::Neg,
            "wait" => Op::Wait,
            _ => return None,
        })
    }

    /// Fewest and most arguments.
    fn arity(self) -> (usize, usize) {
        match self {
            Op::Add | Op::Mul | Op::Min | Op::Max => (1, STEP_ARGS_MAX),
            Op::Sub | Op::Div | Op::Pow => (2, 2),
            Op::Sqrt | Op::Abs | Op::Neg | Op::Wait => (1, 1),
        }
    }

    fn apply(self, args: &[f64]) -> Result<f64, String> {
        let value = match self {
            Op::Add => args.iter().sum(),
            Op::Mul => args.iter().product(),
            Op::Min => args.iter().copied().fold(f64::INFINITY, f64::min),
            Op::Max => args.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Op::Sub => args[0] - args[1],
            Op::Div if args[1] == 0.0 => return Err("division by zero".to_owned()),
            Op::Div => args[0] / args[1],
            Op::Pow => args[0].powf(args[1]),
            Op::Sqrt if args[0] < 0.0 => return Err("square root of a negative number".to_owned()),
            Op::Sqrt => args[0].sqrt(),
            Op::Abs => args[0].abs(),
            Op::Neg => -args[0],
            // Run by `evaluate`, which can be cancelled; here only the value.
            Op::Wait => args[0],
        };
        if value.is_finite() {
            Ok(value)
        } else {
            Err(format!("the result is not a finite number ({value})"))
        }
    }
}

enum Operand {
    Number(f64),
    Step(usize),
}

struct Step {
    op: Op,
    args: Vec<Operand>,
    expect: Option<f64>,
}

const OPS: &str = "add, mul, min, max, sub, div, pow, sqrt, abs, neg or wait";

fn parse_steps(parameters: &Map<String, Value>) -> Result<Vec<Step>, OperationError> {
    let params = Params::new(parameters, &PARAMETERS)?;
    let expected = format!("a list of 1 to {STEPS_MAX} steps {{\"op\", \"args\", \"expect\"}}");
    let default = default_steps();
    let list = params.get("steps").unwrap_or(&default);
    let list = list
        .as_array()
        .filter(|l| (1..=STEPS_MAX).contains(&l.len()))
        .ok_or_else(|| invalid("steps", &expected, list))?;
    let mut steps = Vec::with_capacity(list.len());
    for (i, value) in list.iter().enumerate() {
        let at = format!("steps[{i}]");
        let step = value
            .as_object()
            .ok_or_else(|| invalid(&at, "an object {\"op\", \"args\", \"expect\"}", value))?;
        if let Some(key) = step.keys().find(|k| !STEP_KEYS.contains(&k.as_str())) {
            return Err(OperationError::InvalidParameters(format!(
                "{at} has an unknown key `{key}`; a step has op, args and expect"
            )));
        }
        let op_value = step.get("op").unwrap_or(&Value::Null);
        let op = op_value
            .as_str()
            .and_then(Op::parse)
            .ok_or_else(|| invalid(&format!("{at}.op"), OPS, op_value))?;
        let (fewest, most) = op.arity();
        let args_value = step.get("args").unwrap_or(&Value::Null);
        let args_expected = if fewest == most {
            format!("a list of {fewest} arguments for {op_value}")
        } else {
            format!("a list of {fewest} to {most} arguments for {op_value}")
        };
        let args = args_value
            .as_array()
            .filter(|a| (fewest..=most).contains(&a.len()))
            .ok_or_else(|| invalid(&format!("{at}.args"), &args_expected, args_value))?;
        let args = args
            .iter()
            .enumerate()
            .map(|(j, arg)| operand(arg, i).map_err(|e| invalid(&format!("{at}.args[{j}]"), &e, arg)))
            .collect::<Result<_, _>>()?;
        let expect = match step.get("expect") {
            None => None,
            Some(e) => Some(
                e.as_f64()
                    .ok_or_else(|| invalid(&format!("{at}.expect"), "a number", e))?,
            ),
        };
        steps.push(Step { op, args, expect });
    }
    Ok(steps)
}

/// A number, or `"$k"` naming a step before step `current`.
fn operand(value: &Value, current: usize) -> Result<Operand, String> {
    let expected = || format!("a number or \"$k\" with k below {current}");
    match value {
        Value::Number(n) => n.as_f64().map(Operand::Number).ok_or_else(expected),
        Value::String(s) => s
            .strip_prefix('$')
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|&k| k < current)
            .map(Operand::Step)
            .ok_or_else(expected),
        _ => Err(expected()),
    }
}

/// Whether `wait` steps take their time (a run) or are skipped (a check of a result: a wait's
/// value does not depend on how long it took).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waits {
    Sleep,
    Skip,
}

fn execute(parameters: &Map<String, Value>, budget: Atp, cancel: &Cancel) -> Result<OperationOutput, OperationError> {
    execute_with(parameters, budget, cancel, Waits::Sleep)
}

/// The verdict on a returned execution `result` for the task's `parameters` and `budget`:
/// the program is run again here without its waits, and every step's outcome must match
/// (values within `EXPECT_TOLERANCE`, failures where it failed). The quality is the one the
/// checker computed. Costs one pass over at most [`STEPS_MAX`] steps.
pub fn verify_result(parameters: &Map<String, Value>, budget: Atp, result: &Map<String, Value>) -> Verdict {
    let expected = match execute_with(parameters, budget, &Cancel::default(), Waits::Skip) {
        Ok(expected) => expected,
        Err(e) => return Verdict::refuted(format!("the task's program does not run: {e}")),
    };
    let steps = |r: &Map<String, Value>| r.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
    let (want, got) = (steps(&expected.result), steps(result));
    if want.len() != got.len() {
        return Verdict::refuted(format!(
            "{} step results for a program of {} steps",
            got.len(),
            want.len()
        ));
    }
    for (i, (want, got)) in want.iter().zip(&got).enumerate() {
        let value = |v: &Value| v.get("value").and_then(Value::as_f64);
        let agrees = match (value(want), value(got)) {
            (Some(w), Some(g)) => {
                (w - g).abs() <= EXPECT_TOLERANCE * w.abs().max(1.0) && want.get("passed") == got.get("passed")
            }
            (None, None) => got.get("error").is_some(),
            _ => false,
        };
        if !agrees {
            return Verdict::refuted(format!("step {i}: the result says {got}, the checker finds {want}"));
        }
    }
    Verdict::verified(expected.quality)
}

fn execute_with(
    parameters: &Map<String, Value>,
    budget: Atp,
    cancel: &Cancel,
    waits: Waits,
) -> Result<OperationOutput, OperationError> {
    let steps = parse_steps(parameters)?;
    cancel.check()?;
    let paid = affordable(EXECUTION_BASE_COST, COST_PER_STEP, budget);
    let mut values: Vec<Option<f64>> = Vec::with_capacity(steps.len());
    let mut results = Vec::with_capacity(steps.len());
    let (mut succeeded, mut run) = (0usize, 0u64);
    for step in &steps {
        let outcome = if run < paid {
            run += 1;
            evaluate(step, &values, cancel, waits)?
        } else {
            Err("not run: the ATP budget was used up".to_owned())
        };
        let entry = match &outcome {
            Ok(value) => match step.expect {
                None => json!({"value": value}),
                Some(expected) => {
                    let passed = (value - expected).abs() <= EXPECT_TOLERANCE * expected.abs().max(1.0);
                    json!({"value": value, "expected": expected, "passed": passed})
                }
            },
            Err(why) => json!({"error": why}),
        };
        let passed = entry.get("passed").and_then(Value::as_bool).unwrap_or(outcome.is_ok());
        succeeded += usize::from(passed);
        values.push(outcome.ok());
        results.push(entry);
    }
    let mut result = Map::new();
    result.insert("steps".into(), json!(steps.len()));
    result.insert("succeeded".into(), json!(succeeded));
    result.insert("failed".into(), json!(steps.len() - succeeded));
    result.insert("results".into(), Value::Array(results));
    Ok(OperationOutput {
        result,
        quality: succeeded as f64 / steps.len() as f64,
        atp_consumed: metered(EXECUTION_BASE_COST, COST_PER_STEP, run, budget),
    })
}

/// Evaluates one step. The outer error aborts the whole program (cancelled); the inner one is
/// the step's own failure.
fn evaluate(
    step: &Step,
    values: &[Option<f64>],
    cancel: &Cancel,
    waits: Waits,
) -> Result<Result<f64, String>, OperationError> {
    let args = match arguments(step, values) {
        Ok(args) => args,
        Err(why) => return Ok(Err(why)),
    };
    if step.op == Op::Wait {
        let ms = args[0];
        if !(0.0..=WAIT_MS_MAX).contains(&ms) {
            return Ok(Err(format!("wait takes 0 to {WAIT_MS_MAX} ms, not {ms}")));
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs_f64(ms / 1000.0);
        while waits == Waits::Sleep && std::time::Instant::now() < until {
            cancel.check()?;
            std::thread::sleep(WAIT_SLICE.min(until.saturating_duration_since(std::time::Instant::now())));
        }
    }
    Ok(step.op.apply(&args))
}

fn arguments(step: &Step, values: &[Option<f64>]) -> Result<Vec<f64>, String> {
    let mut args = Vec::with_capacity(step.args.len());
    for arg in &step.args {
        args.push(match *arg {
            Operand::Number(x) => x,
            // Parsing checked that k is an earlier step, so the index exists.
            Operand::Step(k) => values
                .get(k)
                .copied()
                .flatten()
                .ok_or_else(|| format!("step {k}, an argument, failed"))?,
        });
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PLENTY: Atp = Atp::from_micros(1_000_000_000);

    fn run(parameters: Value, budget: Atp) -> Result<OperationOutput, OperationError> {
        let parameters = parameters.as_object().cloned().expect("an object");
        execute(&parameters, budget, &Cancel::default())
    }

    #[test]
    fn no_parameters_run_the_default_program_and_every_step_succeeds() {
        let out = run(json!({}), Atp::from_micros(1_000_000)).expect("runs");
        assert_eq!(
            out,
            run(json!({"steps": default_steps()}), Atp::from_micros(1_000_000)).expect("runs")
        );
        assert_eq!(out.quality, 1.0);
    }

    #[test]
    fn a_program_runs_and_every_step_counts() {
        let program = json!({"steps": [
            {"op": "add", "args": [2, 3]},
            {"op": "mul", "args": ["$0", 4], "expect": 20},
            {"op": "sqrt", "args": ["$1"]},
            {"op": "div", "args": [1, 0]},
            {"op": "neg", "args": ["$3"]},
            {"op": "max", "args": [1, 7, "$0"], "expect": 8},
        ]});
        let out = run(program, PLENTY).expect("runs");
        let results = &out.result["results"];
        assert_eq!(results[1], json!({"value": 20.0, "expected": 20.0, "passed": true}));
        assert_eq!(results[2]["value"], 20f64.sqrt());
        assert_eq!(results[3], json!({"error": "division by zero"}));
        assert_eq!(results[4], json!({"error": "step 3, an argument, failed"}));
        assert_eq!(results[5]["passed"], false);
        assert_eq!(out.result["succeeded"], 3);
        assert_eq!(out.quality, 0.5);
        assert_eq!(
            out.atp_consumed.micros(),
            EXECUTION_BASE_COST.micros() + 6 * COST_PER_STEP.micros()
        );
        let all_good = run(
            json!({"steps": [{"op": "pow", "args": [2, 10], "expect": 1024}]}),
            PLENTY,
        )
        .expect("runs");
        assert_eq!(all_good.quality, 1.0);
    }

    #[tokio::test]
    async fn a_wait_step_waits_and_stops_at_the_timeout() {
        let input = |ms: f64, timeout_ms: u64| OperationInput {
            parameters: json!({"steps": [{"op": "wait", "args": [ms]}, {"op": "add", "args": [1, 1]}]})
                .as_object()
                .cloned()
                .expect("object"),
            budget: PLENTY,
            timeout: Duration::from_millis(timeout_ms),
            memory_mb: 64,
        };
        let out = Execution.run(input(30.0, 5_000)).await.expect("runs");
        assert_eq!(out.result["results"][0]["value"], 30.0);
        assert_eq!(out.quality, 1.0);
        let started = std::time::Instant::now();
        let err = Execution.run(input(20_000.0, 100)).await.expect_err("times out");
        assert!(matches!(err, OperationError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let out = run(json!({"steps": [{"op": "wait", "args": [-1]}]}), PLENTY).expect("runs");
        assert_eq!(out.quality, 0.0, "a negative wait fails the step");
    }

    #[test]
    fn malformed_programs_are_refused_before_running() {
        let cases = [
            (json!({"steps": []}), "`steps` must be a list of 1 to 1000"),
            (
                json!({"steps": [{"op": "log", "args": [1]}]}),
                "`steps[0].op` must be add, mul",
            ),
            (json!({"steps": [{"op": "sub", "args": [1]}]}), "a list of 2 arguments"),
            (
                json!({"steps": [{"op": "add", "args": ["$0"]}]}),
                "`steps[0].args[0]` must be a number or \"$k\"",
            ),
            (
                json!({"steps": [{"op": "add", "args": [1], "expext": 1}]}),
                "unknown key `expext`",
            ),
            (
                json!({"steps": [{"op": "add", "args": [1], "expect": "1"}]}),
                "`steps[0].expect` must be a number",
            ),
        ];
        for (parameters, expected) in cases {
            match run(parameters.clone(), PLENTY) {
                Err(OperationError::InvalidParameters(why)) => assert!(why.contains(expected), "{parameters}: {why}"),
                other => panic!("{parameters}: expected InvalidParameters, got {other:?}"),
            }
        }
    }

    #[test]
    fn steps_the_budget_does_not_pay_for_fail_and_consumption_stays_within_it() {
        let steps: Vec<Value> = (0..10).map(|i| json!({"op": "add", "args": [i, 1]})).collect();
        let budget = Atp::from_micros(EXECUTION_BASE_COST.micros() + 4 * COST_PER_STEP.micros() + 50);
        let out = run(json!({"steps": steps}), budget).expect("runs");
        assert_eq!(out.result["succeeded"], 4);
        assert_eq!(out.quality, 0.4);
        assert!(out.atp_consumed <= budget);
        assert_eq!(out.result["results"][4]["error"], "not run: the ATP budget was used up");
    }

    #[tokio::test]
    async fn runs_through_the_trait() {
        let input = OperationInput {
            parameters: json!({"steps": [{"op": "abs", "args": [-2]}]})
                .as_object()
                .cloned()
                .expect("object"),
            budget: PLENTY,
            timeout: Duration::from_secs(10),
            memory_mb: 512,
        };
        let out = Execution.run(input).await.expect("runs");
        assert_eq!(out.result["results"][0]["value"], 2.0);
    }

    #[test]
    fn the_check_reruns_the_program_without_its_waits_and_refutes_a_wrong_value() {
        let program = json!({"steps": [
            {"op": "wait", "args": [60_000]},
            {"op": "add", "args": [1, 2]},
            {"op": "div", "args": [1, 0]},
            {"op": "mul", "args": ["$1", 7]},
        ]});
        let parameters = program.as_object().cloned().expect("an object");
        // The honest result, computed without the minute's wait (the check must not wait).
        let honest = execute_with(&parameters, PLENTY, &Cancel::default(), Waits::Skip).expect("runs");
        let started = std::time::Instant::now();
        assert_eq!(
            verify_result(&parameters, PLENTY, &honest.result),
            Verdict::verified(0.75)
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the check waited"
        );
        let mut wrong = honest.result.clone();
        wrong["results"][3] = json!({"value": 22.0});
        assert!(
            matches!(verify_result(&parameters, PLENTY, &wrong), Verdict::Refuted { why } if why.starts_with("step 3"))
        );
        let mut failed_hidden = honest.result.clone();
        failed_hidden["results"][2] = json!({"value": 0.0});
        assert!(matches!(
            verify_result(&parameters, PLENTY, &failed_hidden),
            Verdict::Refuted { .. }
        ));
        let mut missing = honest.result;
        missing.insert("results".into(), json!([]));
        assert!(matches!(
            verify_result(&parameters, PLENTY, &missing),
            Verdict::Refuted { .. }
        ));
    }
}
