//! What a worker process admits at once: per-delegator rate limits, and per task type a cap on
//! concurrent tasks and on the ATP budget they hold together.
//!
//! Both are per process. A platform running N worker processes admits up to N times the rate
//! (the shared consumer's `max_ack_pending` still caps its concurrent tasks as a whole).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::protocol::atp::Atp;

/// Delegators tracked by the rate limiter before idle ones are forgotten.
const RATE_LIMITED_DELEGATORS_MAX: usize = 10_000;

/// A token bucket per delegator: `per_minute` requests a minute, bursts up to `per_minute`.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `delegator` at `now`; false when it is over its rate.
    pub fn allow(&self, delegator: &str, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let capacity = f64::from(self.per_minute);
        if buckets.len() >= RATE_LIMITED_DELEGATORS_MAX && !buckets.contains_key(delegator) {
            // Forget the buckets that refilled completely: they hold no information.
            buckets
                .retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * capacity / 60.0 < capacity);
        }
        let (tokens, at) = buckets.entry(delegator.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * capacity / 60.0).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Running {
    count: u32,
    budget: Atp,
}

/// Tasks running in this process, per task type.
#[derive(Clone, Default)]
pub struct Admissions {
    running: Arc<Mutex<HashMap<String, Running>>>,
}

/// Why a task was not admitted.
#[derive(Debug, PartialEq)]
pub enum NotAdmitted {
    Concurrency { max: u32 },
    Budget { running: Atp, asked: Atp, max: Atp },
}

impl std::fmt::Display for NotAdmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAdmitted::Concurrency { max } => write!(f, "already running the maximum of {max} tasks of this type"),
            NotAdmitted::Budget { running, asked, max } => write!(
                f,
                "running tasks hold {running} ATP of budget; {asked} more would exceed this platform's {max} ATP for this task type"
            ),
        }
    }
}

impl Admissions {
    /// Admits a task of `task_type` with `budget`, within `max_concurrent` tasks and
    /// `max_budget` ATP in flight. The returned guard releases it when dropped.
    pub fn admit(
        &self,
        task_type: &str,
        budget: Atp,
        max_concurrent: u32,
        max_budget: Atp,
    ) -> Result<Admitted, NotAdmitted> {
        let mut running = self.running.lock().map_err(|_| NotAdmitted::Concurrency { max: 0 })?;
        let entry = running.entry(task_type.to_owned()).or_default();
        if entry.count >= max_concurrent {
            return Err(NotAdmitted::Concurrency { max: max_concurrent });
        }
        let total = entry.budget.checked_add(budget).filter(|t| *t <= max_budget);
        let Some(total) = total else {
            return Err(NotAdmitted::Budget {
                running: entry.budget,
                asked: budget,
                max: max_budget,
            });
        };
        entry.count += 1;
        entry.budget = total;
        Ok(Admitted {
            admissions: self.clone(),
            task_type: task_type.to_owned(),
            budget,
        })
    }

    /// Tasks running now, over all task types.
    pub fn load(&self) -> u32 {
        self.running
            .lock()
            .map(|r| r.values().map(|e| e.count).sum())
            .unwrap_or(0)
    }
}

/// A running task's place; released on drop.
pub struct Admitted {
    admissions: Admissions,
    task_type: String,
    budget: Atp,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut running) = self.admissions.running.lock()
            && let Some(entry) = running.get_mut(&self.task_type)
        {
            entry.count = entry.count.saturating_sub(1);
            entry.budget = entry.budget.checked_sub(self.budget).unwrap_or(Atp::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_refuses_the_61st_request_in_a_minute() {
        let limiter = RateLimiter::new(60);
        let now = Instant::now();
        assert!((0..60).all(|_| limiter.allow("Thor", now)));
        assert!(!limiter.allow("Thor", now));
        assert!(limiter.allow("Sprout", now), "limits are per delegator");
        assert!(
            limiter.allow("Thor", now + std::time::Duration::from_secs(1)),
            "a token refills each second at 60 a minute"
        );
    }

    #[test]
    fn admissions_cap_count_and_budget_and_release_on_drop() {
        let admissions = Admissions::default();
        let atp = |n: f64| Atp::from_f64(n, "x").expect("atp");
        let a = admissions.admit("c", atp(60.0), 2, atp(100.0)).expect("first");
        assert!(matches!(
            admissions.admit("c", atp(50.0), 2, atp(100.0)),
            Err(NotAdmitted::Budget { .. })
        ));
        let b = admissions.admit("c", atp(40.0), 2, atp(100.0)).expect("second");
        assert_eq!(
            admissions.admit("c", atp(1.0), 2, atp(100.0)).err(),
            Some(NotAdmitted::Concurrency { max: 2 })
        );
        assert_eq!(admissions.load(), 2);
        drop(a);
        drop(b);
        assert_eq!(admissions.load(), 0);
        admissions.admit("c", atp(100.0), 2, atp(100.0)).expect("released");
    }
}
