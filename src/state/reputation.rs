//! Executor reputation in the `sage_reputation` bucket, updated by delegators after each
//! settlement (the seed's step 13) and read when choosing a target.

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use crate::nats::cas::{self, CasError, Step};
use crate::nats::subjects;

/// Weight of the newest quality in the moving average.
const QUALITY_WEIGHT: f64 = 0.2;
/// The score of a platform nobody has delegated to yet.
pub const SCORE_UNKNOWN: f64 = 0.5;

/// What delegators have seen of one executor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    pub platform: String,
    /// Tasks settled.
    pub tasks: u64,
    /// Of which paid (committed).
    pub paid: u64,
    /// Moving average of the quality of its proofs (0 for a task without one).
    pub quality_avg: f64,
}

impl Reputation {
    /// The reputation of a platform nobody has delegated to yet.
    pub fn new(platform: &str) -> Self {
        Self {
            platform: platform.to_owned(),
            ..Self::default()
        }
    }

    /// 0..1: the (smoothed) share of paid tasks times the average quality.
    pub fn score(&self) -> f64 {
        if self.tasks == 0 {
            return SCORE_UNKNOWN;
        }
        (self.paid as f64 + 1.0) / (self.tasks as f64 + 2.0) * self.quality_avg
    }

    fn record(&mut self, paid: bool, quality: Option<f64>) {
        let quality = quality.filter(|q| q.is_finite()).unwrap_or(0.0).clamp(0.0, 1.0);
        self.quality_avg = if self.tasks == 0 {
            quality
        } else {
            self.quality_avg + QUALITY_WEIGHT * (quality - self.quality_avg)
        };
        self.tasks += 1;
        self.paid += u64::from(paid);
    }
}

/// Why a reputation could not be read or recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReputationError {
    #[error("opening the reputation bucket: {0}")]
    Open(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Kv(#[from] CasError),
}

/// The `sage_reputation` bucket.
#[derive(Clone)]
pub struct Reputations {
    kv: kv::Store,
}

impl Reputations {
    pub async fn open(js: &jetstream::Context) -> Result<Self, ReputationError> {
        let kv = js
            .get_key_value(subjects::REPUTATION_BUCKET)
            .await
            .map_err(|e| ReputationError::Open(Box::new(e)))?;
        Ok(Self { kv })
    }

    /// `platform`'s reputation; an unknown platform's is empty.
    pub async fn get(&self, platform: &str) -> Result<Reputation, ReputationError> {
        let stored = cas::read::<Reputation>(&self.kv, platform).await?;
        Ok(stored.map_or_else(|| Reputation::new(platform), |(reputation, _)| reputation))
    }

    /// Adds one settled task to `platform`'s reputation.
    pub async fn record(
        &self,
        platform: &str,
        paid: bool,
        quality: Option<f64>,
    ) -> Result<Reputation, ReputationError> {
        self.record_many(platform, &[(paid, quality.unwrap_or(0.0))]).await
    }

    /// Adds several settled tasks (paid, quality) to `platform`'s reputation in one write.
    pub async fn record_many(&self, platform: &str, settled: &[(bool, f64)]) -> Result<Reputation, ReputationError> {
        let updated = cas::update(&self.kv, platform, |current: Option<Reputation>| {
            let mut reputation = current.unwrap_or_else(|| Reputation::new(platform));
            reputation.platform = platform.to_owned();
            for (paid, quality) in settled {
                reputation.record(*paid, Some(*quality));
            }
            Step::Write(reputation.clone(), reputation)
        })
        .await?;
        Ok(updated.answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_paid_share_and_quality() {
        let mut good = Reputation::default();
        let mut bad = Reputation::default();
        assert_eq!(good.score(), SCORE_UNKNOWN);
        for _ in 0..10 {
            good.record(true, Some(0.95));
            bad.record(false, Some(0.3));
        }
        assert!(good.score() > 0.8, "{}", good.score());
        assert!(bad.score() < 0.1, "{}", bad.score());
        bad.record(false, Some(f64::NAN));
        assert!(bad.quality_avg.is_finite());
    }
}
