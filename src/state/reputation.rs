//! Executor reputation in the `sage_reputation` bucket, one record per platform and operation
//! (`<platform>.<operation>`). Only the ledger service writes it, from the settlements it
//! applies: whether the executor was paid, at what quality (the ledger's own check where the
//! operation has one), and whether its result was refuted. A platform therefore cannot rate
//! itself or anyone else; delegators read it when choosing a target, and `sagefed status` and
//! the dashboard show it.
//!
//! Old evidence counts less: every weight decays with a half-life the ledger's operator sets,
//! so a platform's score drifts back toward [`SCORE_UNKNOWN`] when nobody has used it for a
//! while, and recent work outweighs old work. A platform caught lying (a refuted result) is on
//! probation: placed after every other candidate until it has been paid for
//! [`PROBATION_PAID_TASKS`] tasks since.

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use crate::ledger::model::{Lock, LockState, RollbackReason};
use crate::nats::cas::{self, CasError, Step};
use crate::nats::subjects;
use std::time::Duration;

use crate::protocol::clock::Timestamp;

/// The score of a platform nobody has delegated to yet (or not for many half-lives).
pub const SCORE_UNKNOWN: f64 = 0.5;
/// How long until a settlement counts half as much, unless the ledger is told otherwise:
/// a week, so that a platform's last few days of work dominate its score.
pub const HALF_LIFE_SECONDS_DEFAULT: u64 = 7 * 24 * 3600;
/// Paid tasks a platform caught lying needs, after it was caught, to leave probation.
pub const PROBATION_PAID_TASKS: u64 = 20;
/// Below this decayed weight a record says nothing any more: the score is unknown.
const WEIGHT_NEGLIGIBLE: f64 = 1e-6;

/// What the ledger has seen of one executor for one operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reputation {
    pub platform: String,
    pub operation: String,
    /// Settlements counted, ever (not decayed).
    pub settled: u64,
    /// Decayed weight of the settlements counted.
    pub weight: f64,
    /// Decayed weight of those paid.
    pub paid_weight: f64,
    /// Decayed sum of their quality (0 for a task not paid for its quality).
    pub quality_weight: f64,
    /// Results refuted, ever: the executor claimed work the check disproved.
    pub refuted: u64,
    /// When it was last caught lying (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_lying_at: Option<Timestamp>,
    /// Tasks paid since it was last caught lying.
    pub paid_since_caught: u64,
    /// The half-life the weights decay with (the ledger's setting when it wrote this), in
    /// seconds as stored; [`Reputation::record`] takes it as a `Duration`.
    pub half_life_seconds: f64,
    /// When the weights were last brought up to date (Unix seconds).
    pub updated_at: Timestamp,
}

/// One settlement as reputation counts it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settled {
    pub paid: bool,
    /// The quality it was paid for (the ledger's checked quality when there is one); 0 when
    /// not paid for quality.
    pub quality: f64,
    /// Its result was refuted: the executor is caught lying.
    pub refuted: bool,
    pub at: Timestamp,
}

impl Settled {
    /// What a settled lock says about its executor, or `None` when the outcome says nothing
    /// about the executor's work: the delegator cancelled, or the executor refused a task the
    /// delegator had no right to send.
    pub fn of_lock(lock: &Lock) -> Option<Self> {
        let settlement = lock.settlement.as_ref()?;
        let at = settlement.at;
        match lock.state {
            // Held for a witness: not settled yet (the witness's answer says what it was).
            LockState::Pending | LockState::AwaitingWitness => None,
            LockState::Committed => Some(Self {
                paid: true,
                quality: settlement
                    .quality
                    .filter(|q| q.is_finite())
                    .unwrap_or(0.0)
                    .clamp(0.0, 1.0),
                refuted: false,
                at,
            }),
            LockState::Expired => Some(Self::unpaid(false, at)),
            LockState::RolledBack => match settlement.reason? {
                RollbackReason::Cancelled | RollbackReason::PermissionDenied | RollbackReason::Rejected => None,
                // Refuted by the ledger's check, or by a witness's re-execution: caught lying.
                RollbackReason::Refuted | RollbackReason::WitnessDisagreed => Some(Self::unpaid(true, at)),
                RollbackReason::LowQuality
                | RollbackReason::Failure
                | RollbackReason::Timeout
                | RollbackReason::Expired => Some(Self::unpaid(false, at)),
            },
        }
    }

    fn unpaid(refuted: bool, at: Timestamp) -> Self {
        Self {
            paid: false,
            quality: 0.0,
            refuted,
            at,
        }
    }
}

impl Reputation {
    /// The reputation of a platform nobody has delegated `operation` to yet.
    pub fn new(platform: &str, operation: &str) -> Self {
        Self {
            platform: platform.to_owned(),
            operation: operation.to_owned(),
            settled: 0,
            weight: 0.0,
            paid_weight: 0.0,
            quality_weight: 0.0,
            refuted: 0,
            caught_lying_at: None,
            paid_since_caught: 0,
            half_life_seconds: HALF_LIFE_SECONDS_DEFAULT as f64,
            updated_at: Timestamp::EPOCH,
        }
    }

    /// The share of the weights still counting at `now`.
    fn decay_factor(&self, now: Timestamp) -> f64 {
        let age = now.duration_since(self.updated_at);
        if self.half_life_seconds <= 0.0 {
            return 1.0;
        }
        // Half-lives elapsed: a ratio of two spans in seconds (the stored half-life is seconds).
        0.5_f64.powf(age.as_secs_f64() / self.half_life_seconds)
    }

    /// 0..1 at `now`: the share of paid tasks times the average quality, each smoothed with
    /// one imagined task (half paid, full quality), so an unknown platform scores
    /// [`SCORE_UNKNOWN`] and a long-idle one drifts back to it.
    pub fn score(&self, now: Timestamp) -> f64 {
        let decay = self.decay_factor(now);
        let weight = self.weight * decay;
        if weight < WEIGHT_NEGLIGIBLE {
            return SCORE_UNKNOWN;
        }
        let paid_share = (self.paid_weight * decay + 1.0) / (weight + 2.0);
        let quality = (self.quality_weight * decay + 1.0) / (weight + 1.0);
        (paid_share * quality).clamp(0.0, 1.0)
    }

    /// Caught lying and not yet paid for [`PROBATION_PAID_TASKS`] tasks since.
    pub fn on_probation(&self) -> bool {
        self.caught_lying_at.is_some() && self.paid_since_caught < PROBATION_PAID_TASKS
    }

    /// Counts one settlement, decaying the older ones to its time first.
    pub fn record(&mut self, settled: Settled, half_life: Duration) {
        let at = settled.at.max(self.updated_at);
        let decay = self.decay_factor(at);
        self.weight = self.weight * decay + 1.0;
        self.paid_weight = self.paid_weight * decay + f64::from(u8::from(settled.paid));
        self.quality_weight = self.quality_weight * decay + settled.quality;
        self.settled += 1;
        if settled.refuted {
            self.refuted += 1;
            self.caught_lying_at = Some(settled.at);
            self.paid_since_caught = 0;
        } else if settled.paid && self.caught_lying_at.is_some() {
            self.paid_since_caught += 1;
        }
        self.half_life_seconds = half_life.as_secs_f64();
        self.updated_at = at;
        debug_assert!(self.paid_weight <= self.weight + 1e-9 && self.quality_weight <= self.weight + 1e-9);
    }
}

/// How placement ranks a candidate: probation first (last place), then the score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    pub score: f64,
    pub on_probation: bool,
}

impl Standing {
    /// The standing of a platform with no record for the operation.
    pub const UNKNOWN: Standing = Standing {
        score: SCORE_UNKNOWN,
        on_probation: false,
    };

    pub fn of(reputation: &Reputation, now: Timestamp) -> Self {
        Self {
            score: reputation.score(now),
            on_probation: reputation.on_probation(),
        }
    }
}

/// One operation's reputation as `sagefed status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReputationSummary {
    pub operation: String,
    /// Settlements counted, ever.
    pub settled: u64,
    /// The score now (0..1; 0.5 is unknown).
    pub score: f64,
    /// Results refuted by a check, ever.
    pub refuted: u64,
    /// Caught lying and not yet back: placed last.
    pub on_probation: bool,
}

impl ReputationSummary {
    pub fn of(reputation: &Reputation, now: Timestamp) -> Self {
        Self {
            operation: reputation.operation.clone(),
            settled: reputation.settled,
            score: reputation.score(now),
            refuted: reputation.refuted,
            on_probation: reputation.on_probation(),
        }
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

    /// `platform`'s reputation for `operation`; an unknown one's is empty.
    pub async fn get(&self, platform: &str, operation: &str) -> Result<Reputation, ReputationError> {
        let key = subjects::reputation_key(platform, operation);
        let stored = cas::read::<Reputation>(&self.kv, &key).await?;
        Ok(stored.map_or_else(|| Reputation::new(platform, operation), |(reputation, _)| reputation))
    }

    /// Every record of `platform`, one per operation it was paid or refused for.
    pub async fn of_platform(&self, platform: &str) -> Result<Vec<Reputation>, ReputationError> {
        use futures::StreamExt;
        let nats = |e: Box<dyn std::error::Error + Send + Sync>| CasError::Nats {
            bucket: self.kv.name.clone(),
            key: format!("{platform}.*"),
            source: e,
        };
        let mut keys = self.kv.keys().await.map_err(|e| nats(Box::new(e)))?;
        let prefix = format!("{platform}.");
        let mut records = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| nats(Box::new(e)))?;
            if let Some(operation) = key.strip_prefix(&prefix) {
                records.push(self.get(platform, operation).await?);
            }
        }
        Ok(records)
    }

    /// Adds settlements of `platform`'s `operation` tasks to its reputation in one write.
    /// Only the ledger service may (the server refuses anyone else).
    pub async fn record_many(
        &self,
        platform: &str,
        operation: &str,
        settled: &[Settled],
        half_life: Duration,
    ) -> Result<Reputation, ReputationError> {
        let key = subjects::reputation_key(platform, operation);
        let updated = cas::update(&self.kv, &key, |current: Option<Reputation>| {
            let mut reputation = current.unwrap_or_else(|| Reputation::new(platform, operation));
            for one in settled {
                reputation.record(*one, half_life);
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

    const HALF_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The half-life in seconds, to build test times from.
    const HALF_LIFE_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

    fn settled(paid: bool, quality: f64, at: Timestamp) -> Settled {
        Settled {
            paid,
            quality,
            refuted: false,
            at,
        }
    }

    #[test]
    fn scores_follow_paid_share_and_quality() {
        let mut good = Reputation::new("Thor", "planning");
        let mut bad = Reputation::new("Sprout", "planning");
        assert_eq!(good.score(Timestamp::from_secs(0)), SCORE_UNKNOWN);
        for i in 0..10 {
            good.record(
                settled(true, 0.95, Timestamp::from_unix_seconds(f64::from(i)).expect("a time")),
                HALF_LIFE,
            );
            bad.record(
                settled(false, 0.0, Timestamp::from_unix_seconds(f64::from(i)).expect("a time")),
                HALF_LIFE,
            );
        }
        assert!(
            good.score(Timestamp::from_secs(10)) > 0.8,
            "{}",
            good.score(Timestamp::from_secs(10))
        );
        assert!(
            bad.score(Timestamp::from_secs(10)) < 0.1,
            "{}",
            bad.score(Timestamp::from_secs(10))
        );
    }

    #[test]
    fn old_evidence_fades_toward_unknown_and_recent_work_dominates() {
        let mut r = Reputation::new("Thor", "planning");
        for i in 0..20 {
            r.record(
                settled(false, 0.0, Timestamp::from_unix_seconds(f64::from(i)).expect("a time")),
                HALF_LIFE,
            );
        }
        let fresh = r.score(Timestamp::from_secs(20));
        let after_ten_half_lives =
            r.score(Timestamp::from_unix_seconds(20.0 + 10.0 * HALF_LIFE_SECONDS).expect("a time"));
        assert!(fresh < 0.1, "{fresh}");
        assert!(
            (after_ten_half_lives - SCORE_UNKNOWN).abs() < 0.05,
            "{after_ten_half_lives}"
        );
        // Four half-lives later the twenty bad tasks weigh 1.25: five good ones outweigh them.
        let later = 4.0 * HALF_LIFE_SECONDS;
        for i in 0..5 {
            r.record(
                settled(
                    true,
                    1.0,
                    Timestamp::from_unix_seconds(later + f64::from(i)).expect("a time"),
                ),
                HALF_LIFE,
            );
        }
        assert!((r.weight - 6.25).abs() < 0.01, "{}", r.weight);
        assert!(
            r.score(Timestamp::from_unix_seconds(later + 5.0).expect("a time")) > SCORE_UNKNOWN,
            "{}",
            r.score(Timestamp::from_unix_seconds(later + 5.0).expect("a time"))
        );
    }

    #[test]
    fn a_refuted_result_puts_the_executor_on_probation_until_it_earns_its_way_back() {
        let mut r = Reputation::new("Sprout", "planning");
        r.record(settled(true, 1.0, Timestamp::from_secs(1)), HALF_LIFE);
        assert!(!r.on_probation());
        r.record(
            Settled {
                paid: false,
                quality: 0.0,
                refuted: true,
                at: Timestamp::from_secs(2),
            },
            HALF_LIFE,
        );
        assert!(r.on_probation());
        assert_eq!((r.refuted, r.caught_lying_at), (1, Some(Timestamp::from_secs(2))));
        for i in 0..PROBATION_PAID_TASKS {
            assert!(r.on_probation(), "after {i} paid tasks");
            r.record(
                settled(true, 1.0, Timestamp::from_unix_seconds(3.0 + i as f64).expect("a time")),
                HALF_LIFE,
            );
        }
        assert!(!r.on_probation());
    }

    #[test]
    fn a_settlement_dated_before_the_last_update_does_not_undo_decay() {
        let mut r = Reputation::new("Thor", "planning");
        r.record(settled(true, 1.0, Timestamp::from_secs(100)), HALF_LIFE);
        r.record(settled(true, 1.0, Timestamp::from_secs(50)), HALF_LIFE);
        assert_eq!(r.updated_at, Timestamp::from_secs(100));
        assert!((r.weight - 2.0).abs() < 1e-9);
    }
}
