//! `perception`: statistics, features and z-score anomalies of a numeric frame.
//!
//! Parameters: `frame`, a list of numbers or a list of equally long rows (2-D, read row by
//! row), or instead `length` and `seed` for a synthetic signal (two sines plus noise) with
//! anomalies injected at known places (with neither, [`SYNTHETIC_LENGTH_DEFAULT`] samples from
//! seed [`SYNTHETIC_SEED_DEFAULT`]; either alone takes the other's default); `threshold`, the |z-score| above which a sample is an
//! anomaly (default [`THRESHOLD_DEFAULT`]).
//!
//! Work: mean, standard deviation, min, max, energy (sum of squares), zero crossings, mean
//! crossings and local peaks (within rows), and the anomalies.
//!
//! Quality, times the fraction of samples the budget paid for:
//! - synthetic signal: the F1 score of the detected anomalies against the injected ones.
//! - given frame, where nothing is known to be right: the F1 agreement between the z-score
//!   detector and a robust one (median and median absolute deviation, same threshold). Both
//!   agree (1.0) on well-behaved data, including when neither finds anything; they part when
//!   outliers inflate the standard deviation and hide each other, or the data is far from
//!   normal, which is exactly when the z-scores should be trusted less.
//!
//! ATP: [`COST_PER_SAMPLE`] per sample analysed, capped at the budget. A budget too small for
//! the whole frame analyses the first samples it pays for (`"budget_exhausted": true`).

use std::collections::BTreeSet;
use std::f64::consts::TAU;

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::{
    Cancel, Operation, OperationError, OperationInput, OperationOutput, Params, SplitMix64, affordable, f1_score,
    invalid, metered, run_blocking,
};
use crate::protocol::atp::Atp;
use crate::protocol::verdict::Verdict;

/// Most samples in one frame, given or generated.
pub const FRAME_SAMPLES_MAX: usize = 1_000_000;

/// Fewest samples: a standard deviation needs two.
pub const FRAME_SAMPLES_MIN: usize = 2;

/// Samples of the synthetic signal when the task gives neither `frame` nor `length`.
pub const SYNTHETIC_LENGTH_DEFAULT: u64 = 4_096;

/// Seed of the synthetic signal when the task gives no `seed`.
pub const SYNTHETIC_SEED_DEFAULT: u64 = 7;

/// Largest accepted |sample|: keeps the sum of squares of a whole frame finite.
pub const SAMPLE_MAGNITUDE_MAX: f64 = 1.0e100;

/// Most anomaly positions listed in the result; the count is always complete.
pub const ANOMALIES_LISTED_MAX: usize = 1_000;

/// The |z-score| above which a sample is an anomaly, unless `threshold` says otherwise.
pub const THRESHOLD_DEFAULT: f64 = 3.0;

/// Accepted `threshold` range.
pub const THRESHOLD_RANGE: (f64, f64) = (0.1, 100.0);

/// ATP charged per sample analysed (0.00001 ATP).
pub const COST_PER_SAMPLE: Atp = Atp::from_micros(10);

/// Injected anomalies per synthetic sample (one in a hundred, at least one).
const SYNTHETIC_ANOMALY_RATE: usize = 100;

/// Scales the median absolute deviation to a standard deviation for normal data.
const MAD_TO_STD: f64 = 0.6745;

const PARAMETERS: [&str; 4] = ["frame", "length", "seed", "threshold"];

/// The built-in `perception` operation.
pub struct Perception;

impl Operation for Perception {
    fn name(&self) -> &str {
        "perception"
    }

    fn run(&self, input: OperationInput) -> BoxFuture<'static, Result<OperationOutput, OperationError>> {
        run_blocking(input.timeout, move |cancel| {
            perceive(&input.parameters, input.budget, cancel)
        })
    }
}

/// Samples row by row; a 1-D frame is one row.
struct Frame {
    samples: Vec<f64>,
    cols: usize,
    two_d: bool,
    /// Injected anomaly indices, for a synthetic frame.
    truth: Option<Vec<usize>>,
}

fn read_frame(params: &Params) -> Result<Frame, OperationError> {
    match (params.get("frame"), params.has("length") || params.has("seed")) {
        (Some(_), true) => Err(OperationError::InvalidParameters(
            "give either `frame` or `length` with `seed`, not both".to_owned(),
        )),
        (Some(frame), false) => given_frame(frame),
        (None, _) => {
            let length = params
                .u64_in("length", FRAME_SAMPLES_MIN as u64, FRAME_SAMPLES_MAX as u64)?
                .unwrap_or(SYNTHETIC_LENGTH_DEFAULT);
            let seed = params.u64_in("seed", 0, u64::MAX)?.unwrap_or(SYNTHETIC_SEED_DEFAULT);
            Ok(synthetic(length as usize, seed))
        }
    }
}

fn given_frame(frame: &Value) -> Result<Frame, OperationError> {
    let rows = frame
        .as_array()
        .filter(|rows| !rows.is_empty())
        .ok_or_else(|| invalid("frame", "a non-empty list of numbers or of rows of numbers", frame))?;
    let two_d = rows[0].is_array();
    let cols = if two_d {
        rows[0].as_array().map_or(0, Vec::len)
    } else {
        rows.len()
    };
    let total = if two_d {
        rows.len().saturating_mul(cols)
    } else {
        rows.len()
    };
    if total > FRAME_SAMPLES_MAX {
        return Err(OperationError::InvalidParameters(format!(
            "`frame` has {total} samples; at most {FRAME_SAMPLES_MAX} are allowed, so send smaller frames"
        )));
    }
    if total < FRAME_SAMPLES_MIN {
        return Err(OperationError::InvalidParameters(format!(
            "`frame` has {total} samples; at least {FRAME_SAMPLES_MIN} are needed"
        )));
    }
    let sample = |value: &Value, at: &str| -> Result<f64, OperationError> {
        value
            .as_f64()
            .filter(|x| x.is_finite() && x.abs() <= SAMPLE_MAGNITUDE_MAX)
            .ok_or_else(|| {
                let expected = format!("a finite number with magnitude at most {SAMPLE_MAGNITUDE_MAX:e}");
                invalid(at, &expected, value)
            })
    };
    let mut samples = Vec::with_capacity(total);
    if two_d {
        for (r, row) in rows.iter().enumerate() {
            let at = format!("frame[{r}]");
            let row = row
                .as_array()
                .filter(|row| row.len() == cols)
                .ok_or_else(|| invalid(&at, &format!("a row of {cols} numbers, like frame[0]"), row))?;
            for (c, value) in row.iter().enumerate() {
                samples.push(sample(value, &format!("frame[{r}][{c}]"))?);
            }
        }
    } else {
        for (i, value) in rows.iter().enumerate() {
            samples.push(sample(value, &format!("frame[{i}]"))?);
        }
    }
    Ok(Frame {
        samples,
        cols,
        two_d,
        truth: None,
    })
}

/// Two sines plus Gaussian noise, with one sample in [`SYNTHETIC_ANOMALY_RATE`] pushed 3 to 8
/// units (about 4 to 10 standard deviations) up or down.
fn synthetic(length: usize, seed: u64) -> Frame {
    let mut rng = SplitMix64::new(seed);
    let n = length as f64;
    let (k1, k2) = ((1 + rng.below(8)) as f64, (9 + rng.below(24)) as f64);
    let (p1, p2) = (rng.next_f64() * TAU, rng.next_f64() * TAU);
    let mut samples: Vec<f64> = (0..length)
        .map(|i| {
            let t = i as f64 / n;
            // Box-Muller; 1 - u is in (0, 1], so the logarithm is finite.
            let noise = (-2.0 * (1.0 - rng.next_f64()).ln()).sqrt() * (TAU * rng.next_f64()).cos();
            (TAU * k1 * t + p1).sin() + 0.3 * (TAU * k2 * t + p2).sin() + 0.1 * noise
        })
        .collect();
    let count = (length / SYNTHETIC_ANOMALY_RATE).max(1);
    let mut truth = BTreeSet::new();
    while truth.len() < count {
        truth.insert(rng.below(length as u64) as usize);
    }
    for &i in &truth {
        let sign = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        samples[i] += sign * (3.0 + 5.0 * rng.next_f64());
    }
    Frame {
        samples,
        cols: length,
        two_d: false,
        truth: Some(truth.into_iter().collect()),
    }
}

/// Everything computed from the samples.
struct Analysis {
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
    energy: f64,
    zero_crossings: u64,
    mean_crossings: u64,
    local_peaks: u64,
    /// Indices with |z| above the threshold, ascending.
    anomalies: Vec<usize>,
    /// Indices with |robust z| above the threshold, ascending.
    robust_anomalies: Vec<usize>,
}

fn analyse(samples: &[f64], cols: usize, threshold: f64, cancel: &Cancel) -> Result<Analysis, OperationError> {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    // Two passes: the one-pass formula loses everything to cancellation on large offsets.
    let std = (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let energy = samples.iter().map(|x| x * x).sum();
    let (mut zero_crossings, mut mean_crossings, mut local_peaks) = (0, 0, 0);
    for row in samples.chunks(cols) {
        for pair in row.windows(2) {
            zero_crossings += u64::from((pair[0] < 0.0) != (pair[1] < 0.0));
            mean_crossings += u64::from((pair[0] < mean) != (pair[1] < mean));
        }
        local_peaks += row.windows(3).filter(|w| w[1] > w[0] && w[1] > w[2]).count() as u64;
    }
    cancel.check()?;
    // A constant frame has no anomalies: every z-score would be 0 / 0.
    let anomalies = if std > 0.0 {
        (0..samples.len())
            .filter(|&i| ((samples[i] - mean) / std).abs() > threshold)
            .collect()
    } else {
        Vec::new()
    };

    let mut sorted = samples.to_vec();
    let median = select_median(&mut sorted);
    for x in &mut sorted {
        *x = (*x - median).abs();
    }
    let mad = select_median(&mut sorted);
    cancel.check()?;
    let robust_anomalies = (0..samples.len())
        .filter(|&i| {
            let deviation = samples[i] - median;
            // With more than half the samples equal, any other value stands out.
            if mad > 0.0 {
                (MAD_TO_STD * deviation / mad).abs() > threshold
            } else {
                deviation != 0.0
            }
        })
        .collect();
    Ok(Analysis {
        mean,
        std,
        min,
        max,
        energy,
        zero_crossings,
        mean_crossings,
        local_peaks,
        anomalies,
        robust_anomalies,
    })
}

/// The median, reordering `values` (not empty, all finite).
fn select_median(values: &mut [f64]) -> f64 {
    let mid = values.len() / 2;
    let odd = values.len() % 2 == 1;
    let (below, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    if odd {
        *upper
    } else {
        let lower = below.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + *upper) / 2.0
    }
}

fn perceive(parameters: &Map<String, Value>, budget: Atp, cancel: &Cancel) -> Result<OperationOutput, OperationError> {
    let params = Params::new(parameters, &PARAMETERS)?;
    let threshold = params
        .f64_in("threshold", THRESHOLD_RANGE.0, THRESHOLD_RANGE.1)?
        .unwrap_or(THRESHOLD_DEFAULT);
    let frame = read_frame(&params)?;
    cancel.check()?;
    let total = frame.samples.len();
    let processed = total.min(usize::try_from(affordable(Atp::ZERO, COST_PER_SAMPLE, budget)).unwrap_or(usize::MAX));
    let atp_consumed = metered(Atp::ZERO, COST_PER_SAMPLE, processed as u64, budget);

    let mut result = Map::new();
    let source = if frame.truth.is_some() { "synthetic" } else { "frame" };
    result.insert("source".into(), json!(source));
    result.insert("samples".into(), json!(total));
    result.insert("samples_processed".into(), json!(processed));
    result.insert("budget_exhausted".into(), json!(processed < total));
    result.insert("rows".into(), json!(total.div_ceil(frame.cols)));
    result.insert("cols".into(), json!(frame.cols));
    result.insert("threshold".into(), json!(threshold));
    if processed < FRAME_SAMPLES_MIN {
        return Ok(OperationOutput {
            result,
            quality: 0.0,
            atp_consumed,
        });
    }

    let analysis = analyse(&frame.samples[..processed], frame.cols, threshold, cancel)?;
    for (key, value) in [
        ("mean", analysis.mean),
        ("std", analysis.std),
        ("min", analysis.min),
        ("max", analysis.max),
        ("energy", analysis.energy),
    ] {
        result.insert(key.into(), json!(value));
    }
    result.insert("zero_crossings".into(), json!(analysis.zero_crossings));
    result.insert("mean_crossings".into(), json!(analysis.mean_crossings));
    result.insert("local_peaks".into(), json!(analysis.local_peaks));
    result.insert("anomaly_count".into(), json!(analysis.anomalies.len()));
    result.insert("anomalies".into(), listed(&analysis.anomalies, frame.two_d, frame.cols));
    result.insert(
        "anomalies_truncated".into(),
        json!(analysis.anomalies.len() > ANOMALIES_LISTED_MAX),
    );

    let coverage = processed as f64 / total as f64;
    let quality = match &frame.truth {
        Some(truth) => {
            let truth: Vec<usize> = truth.iter().copied().filter(|&i| i < processed).collect();
            let (precision, recall, f1) = f1_score(&analysis.anomalies, &truth);
            result.insert("injected_anomaly_count".into(), json!(truth.len()));
            result.insert("injected_anomalies".into(), listed(&truth, false, frame.cols));
            result.insert("precision".into(), json!(precision));
            result.insert("recall".into(), json!(recall));
            result.insert("f1".into(), json!(f1));
            result.insert("quality_basis".into(), json!("f1_against_injected"));
            f1 * coverage
        }
        None => {
            let (_, _, agreement) = f1_score(&analysis.anomalies, &analysis.robust_anomalies);
            result.insert("robust_anomaly_count".into(), json!(analysis.robust_anomalies.len()));
            result.insert("detector_agreement".into(), json!(agreement));
            result.insert("quality_basis".into(), json!("detector_agreement"));
            agreement * coverage
        }
    };
    Ok(OperationOutput {
        result,
        quality,
        atp_consumed,
    })
}

/// Relative difference allowed between a claimed statistic and the checker's (summation order
/// differs between implementations).
const STATISTIC_TOLERANCE: f64 = 1e-6;

/// The verdict on a returned perception `result` for the task's `parameters` and `budget`:
/// the frame is analysed again here (regenerated from its seed, or as given), and the counts
/// and listed anomalies must match exactly, the statistics within `STATISTIC_TOLERANCE`.
/// The quality is the one the checker computed. Costs one analysis of the frame (at most
/// [`FRAME_SAMPLES_MAX`] samples).
pub fn verify_result(parameters: &Map<String, Value>, budget: Atp, result: &Map<String, Value>) -> Verdict {
    let expected = match perceive(parameters, budget, &Cancel::default()) {
        Ok(expected) => expected,
        Err(e) => return Verdict::refuted(format!("the task's frame cannot be analysed: {e}")),
    };
    for (key, want) in &expected.result {
        let got = result.get(key);
        let agrees = match (want.as_f64(), got.and_then(Value::as_f64)) {
            // Counts are integers in JSON; statistics are floats.
            (Some(w), Some(g)) if !want.is_u64() => (w - g).abs() <= STATISTIC_TOLERANCE * w.abs().max(1.0),
            _ => got == Some(want),
        };
        if !agrees {
            return Verdict::refuted(format!(
                "{key}: the result says {}, the checker finds {want}",
                got.map_or_else(|| "nothing".to_owned(), Value::to_string)
            ));
        }
    }
    Verdict::verified(expected.quality)
}

/// The first [`ANOMALIES_LISTED_MAX`] indices, as `[row, col]` for a 2-D frame.
fn listed(indices: &[usize], two_d: bool, cols: usize) -> Value {
    let shown = indices.iter().take(ANOMALIES_LISTED_MAX);
    if two_d {
        json!(shown.map(|&i| [i / cols, i % cols]).collect::<Vec<_>>())
    } else {
        json!(shown.collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PLENTY: Atp = Atp::from_micros(1_000_000_000);

    fn run(parameters: Value, budget: Atp) -> Result<OperationOutput, OperationError> {
        let parameters = parameters.as_object().cloned().expect("an object");
        perceive(&parameters, budget, &Cancel::default())
    }

    fn invalid_reason(parameters: Value) -> String {
        match run(parameters.clone(), PLENTY) {
            Err(OperationError::InvalidParameters(why)) => why,
            other => panic!("{parameters}: expected InvalidParameters, got {other:?}"),
        }
    }

    #[test]
    fn injected_anomalies_are_found() {
        for seed in [1, 2, 3] {
            let out = run(json!({"length": 10_000, "seed": seed}), PLENTY).expect("runs");
            assert_eq!(out.result["injected_anomaly_count"], 100);
            assert!(out.quality >= 0.9, "seed {seed}: {:?}", out.result);
            assert_eq!(out.result["f1"], json!(out.quality));
            assert_eq!(out.atp_consumed, Atp::from_micros(10_000 * COST_PER_SAMPLE.micros()));
        }
    }

    #[test]
    fn a_threshold_that_misses_anomalies_lowers_quality() {
        let strict = run(json!({"length": 10_000, "seed": 1, "threshold": 7.0}), PLENTY).expect("runs");
        let usual = run(json!({"length": 10_000, "seed": 1}), PLENTY).expect("runs");
        assert!(
            strict.quality < usual.quality - 0.2,
            "{} vs {}",
            strict.quality,
            usual.quality
        );
        assert!(strict.result["recall"].as_f64() < usual.result["recall"].as_f64());
    }

    #[test]
    fn the_same_seed_gives_the_same_signal() {
        let a = run(json!({"length": 5_000, "seed": 9}), PLENTY).expect("runs");
        let b = run(json!({"length": 5_000, "seed": 9}), PLENTY).expect("runs");
        let c = run(json!({"length": 5_000, "seed": 10}), PLENTY).expect("runs");
        assert_eq!(a, b);
        assert_ne!(a.result["injected_anomalies"], c.result["injected_anomalies"]);
    }

    #[test]
    fn a_given_frame_is_described_and_its_outlier_found() {
        let mut frame: Vec<f64> = (0..200).map(|i| ((i as f64) * 0.3).sin()).collect();
        frame[77] = 25.0;
        let out = run(json!({"frame": frame}), PLENTY).expect("runs");
        assert_eq!(out.result["anomalies"], json!([77]));
        assert_eq!(out.result["max"], 25.0);
        assert_eq!(out.result["quality_basis"], "detector_agreement");
        assert_eq!(out.quality, 1.0);
        assert!(out.result["zero_crossings"].as_u64() > Some(10));
        assert!(out.result["local_peaks"].as_u64() > Some(5));

        // A frame made of two clusters: the robust detector flags what the z-score does not,
        // and quality says the z-scores are not to be trusted here.
        let mut split: Vec<f64> = vec![0.0; 60];
        split.extend([10.0; 40]);
        let out = run(json!({"frame": split}), PLENTY).expect("runs");
        assert_eq!(out.result["anomaly_count"], 0);
        assert!(out.quality < 0.5, "{:?}", out.result);
    }

    #[test]
    fn a_2d_frame_reports_anomalies_by_row_and_column() {
        let mut rows = vec![vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]; 20];
        rows[4][3] = 90.0;
        let out = run(json!({"frame": rows}), PLENTY).expect("runs");
        assert_eq!(out.result["rows"], 20);
        assert_eq!(out.result["cols"], 6);
        assert_eq!(out.result["anomalies"], json!([[4, 3]]));
        // Peaks are counted within rows: two per row, none across a row boundary.
        assert_eq!(out.result["local_peaks"], 40);
    }

    #[test]
    fn bad_frames_are_refused_saying_what_is_wrong() {
        assert!(invalid_reason(json!({"frame": [1.0, "NaN", 3.0]})).contains("`frame[1]` must be a finite number"));
        assert!(invalid_reason(json!({"frame": [1.0, null]})).contains("`frame[1]`"));
        assert!(invalid_reason(json!({"frame": [[1.0, 2.0], [3.0]]})).contains("`frame[1]` must be a row of 2"));
        assert!(invalid_reason(json!({"frame": [[1.0, 2.0], [3.0, "x"]]})).contains("`frame[1][1]`"));
        assert!(invalid_reason(json!({"frame": [1.0, 1e200]})).contains("magnitude"));
        assert!(invalid_reason(json!({"frame": [1.0]})).contains("at least 2"));
        assert!(invalid_reason(json!({"frame": []})).contains("non-empty"));
        let long = vec![0.5; FRAME_SAMPLES_MAX + 1];
        assert!(invalid_reason(json!({"frame": long})).contains("at most 1000000"));
        assert!(invalid_reason(json!({"length": FRAME_SAMPLES_MAX + 1, "seed": 1})).contains("`length` must be"));
        assert!(invalid_reason(json!({"frame": [1, 2], "seed": 1})).contains("not both"));
        assert!(invalid_reason(json!({"frame": [1, 2], "threshold": 0})).contains("`threshold`"));
    }

    #[test]
    fn no_parameters_analyse_the_default_synthetic_signal() {
        let out = run(json!({}), Atp::from_micros(1_000_000_000)).expect("runs");
        let explicit = run(
            json!({"length": SYNTHETIC_LENGTH_DEFAULT, "seed": SYNTHETIC_SEED_DEFAULT}),
            Atp::from_micros(1_000_000_000),
        )
        .expect("runs");
        assert_eq!(out, explicit);
        assert_eq!(out.result["samples_processed"], SYNTHETIC_LENGTH_DEFAULT);
        assert!(
            out.quality >= 0.9,
            "the default signal's anomalies are found: {}",
            out.quality
        );
    }

    #[test]
    fn a_small_budget_analyses_a_prefix_and_never_overspends() {
        for micros in [0, 15, 5_000, 99_999] {
            let budget = Atp::from_micros(micros);
            let out = run(json!({"length": 10_000, "seed": 1}), budget).expect("runs");
            assert!(out.atp_consumed <= budget);
            assert_eq!(out.result["budget_exhausted"], true);
            let processed = out.result["samples_processed"].as_u64().expect("n");
            assert_eq!(processed, micros / COST_PER_SAMPLE.micros());
            assert!(out.quality <= processed as f64 / 10_000.0, "{}", out.quality);
        }
    }

    #[tokio::test]
    async fn runs_through_the_trait() {
        let input = OperationInput {
            parameters: json!({"length": 1_000_000, "seed": 5})
                .as_object()
                .cloned()
                .expect("object"),
            budget: PLENTY,
            timeout: Duration::from_secs(60),
            memory_mb: 512,
        };
        let out = Perception.run(input).await.expect("runs");
        assert_eq!(out.result["anomalies_truncated"], true);
        let listed = out.result["anomalies"].as_array().map(Vec::len);
        assert_eq!(listed, Some(ANOMALIES_LISTED_MAX));
        assert_eq!(out.result["injected_anomaly_count"], 10_000);
        assert!(out.quality > 0.9);
    }

    #[test]
    fn the_check_analyses_the_frame_again_and_refutes_made_up_anomalies() {
        let task = json!({"length": 2_000, "seed": 3});
        let parameters = task.as_object().cloned().expect("an object");
        let honest = run(task, PLENTY).expect("runs");
        assert_eq!(
            verify_result(&parameters, PLENTY, &honest.result),
            Verdict::verified(honest.quality)
        );
        // Statistics within the tolerance pass; a different anomaly list does not.
        let mut rounded = honest.result.clone();
        let mean = rounded["mean"].as_f64().expect("mean");
        rounded.insert("mean".into(), json!(mean * (1.0 + 1e-9)));
        assert_eq!(
            verify_result(&parameters, PLENTY, &rounded),
            Verdict::verified(honest.quality)
        );
        let mut made_up = honest.result.clone();
        made_up.insert("anomalies".into(), json!([1, 2, 3]));
        assert!(
            matches!(verify_result(&parameters, PLENTY, &made_up), Verdict::Refuted { why } if why.starts_with("anomalies"))
        );
        let mut perfect = honest.result;
        perfect.insert("f1".into(), json!(1.0));
        perfect.insert("anomaly_count".into(), json!(0));
        assert!(matches!(
            verify_result(&parameters, PLENTY, &perfect),
            Verdict::Refuted { .. }
        ));
    }
}
