//! Where a task goes, as pure functions of the registry's records and the time: one
//! eligibility rule ([`eligibility`]) for a platform named with `--to` and for automatic
//! placement, then the least loaded eligible platform, better reputation first ([`best`]).
//!
//! The one difference between the two paths is the operation: automatic placement only
//! considers platforms whose record lists the operation, while a named platform receives the
//! task even when its record does not list it, and refuses it itself with a signed
//! `permission_denied` proof that refunds the lock (the seed's permission-denial scenario).
//! The executor's own permission check is the one that protects it; the record is only what
//! the platform says about itself.

use crate::protocol::clock::Timestamp;
use crate::state::registry::PlatformRecord;
use crate::state::reputation::Standing;

/// What placement needs to know about a task.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    /// The delegating platform: never its own executor.
    pub delegator: &'a str,
    pub task_type: &'a str,
    pub operation: &'a str,
}

/// Why a platform cannot take a task.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Ineligible {
    #[error("it is the delegator itself")]
    Delegator,
    #[error("no live worker (last heartbeat {seconds_ago:.0} s ago)")]
    /// Signed seconds (negative for a heartbeat from the future), for the message only.
    NotLive { seconds_ago: f64 },
    #[error("does not execute {task_type} tasks")]
    TaskType { task_type: String },
    #[error("does not offer the {operation} operation")]
    Operation { operation: String },
}

/// Why no platform was chosen; the text follows "no platform can take this task: ".
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NoPlatform {
    #[error("{platform} is not registered (no worker has run for it)")]
    NotRegistered { platform: String },
    #[error("{platform}: {why}")]
    Named { platform: String, why: Ineligible },
    #[error("none is healthy and offers {operation} for {task_type} tasks{}", considered_text(.considered))]
    NoneEligible {
        operation: String,
        task_type: String,
        /// Each platform looked at (but the delegator), with why it was left out.
        considered: Vec<(String, Ineligible)>,
    },
}

fn considered_text(considered: &[(String, Ineligible)]) -> String {
    if considered.is_empty() {
        return String::new();
    }
    let each: Vec<String> = considered.iter().map(|(p, why)| format!("{p} ({why})")).collect();
    format!("; considered: {}", each.join(", "))
}

/// Whether `record` may execute the task at `now` (Unix seconds), the operation aside.
pub fn eligibility(record: &PlatformRecord, wanted: &Wanted<'_>, now: Timestamp) -> Result<(), Ineligible> {
    if record.platform == wanted.delegator {
        return Err(Ineligible::Delegator);
    }
    if !record.is_healthy(now) {
        return Err(Ineligible::NotLive {
            seconds_ago: now.seconds_since(record.heartbeat_at),
        });
    }
    if !record.capabilities.iter().any(|c| c == wanted.task_type) {
        return Err(Ineligible::TaskType {
            task_type: wanted.task_type.to_owned(),
        });
    }
    Ok(())
}

/// The platform named with `--to`, if it is eligible.
pub fn named(
    platform: &str,
    record: Option<PlatformRecord>,
    wanted: &Wanted<'_>,
    now: Timestamp,
) -> Result<PlatformRecord, NoPlatform> {
    let Some(record) = record else {
        return Err(NoPlatform::NotRegistered {
            platform: platform.to_owned(),
        });
    };
    match eligibility(&record, wanted, now) {
        Ok(()) => Ok(record),
        Err(why) => Err(NoPlatform::Named {
            platform: platform.to_owned(),
            why,
        }),
    }
}

/// Every eligible platform that offers the operation, or why there is none.
pub fn candidates(
    records: &[PlatformRecord],
    wanted: &Wanted<'_>,
    now: Timestamp,
) -> Result<Vec<PlatformRecord>, NoPlatform> {
    let mut considered = Vec::new();
    let mut eligible = Vec::new();
    for record in records {
        let offers = || {
            if record.operations.iter().any(|o| o == wanted.operation) {
                Ok(())
            } else {
                Err(Ineligible::Operation {
                    operation: wanted.operation.to_owned(),
                })
            }
        };
        match eligibility(record, wanted, now).and_then(|()| offers()) {
            Ok(()) => eligible.push(record.clone()),
            Err(Ineligible::Delegator) => {}
            Err(why) => considered.push((record.platform.clone(), why)),
        }
    }
    if eligible.is_empty() {
        return Err(NoPlatform::NoneEligible {
            operation: wanted.operation.to_owned(),
            task_type: wanted.task_type.to_owned(),
            considered,
        });
    }
    Ok(eligible)
}

/// The least loaded of `scored` (a record with its reputation standing for the operation),
/// the better reputation first among equals, then by name so that the choice is the same on
/// every delegator. A platform on probation (caught lying) comes after every other, however
/// idle it is.
pub fn best(scored: Vec<(PlatformRecord, Standing)>) -> Option<PlatformRecord> {
    scored.into_iter().min_by(rank).map(|(record, _)| record)
}

/// All of `scored`, best first by the order [`best`] picks by (the witnesses a delegator
/// names for a sampled task, in that order).
pub fn ranked(mut scored: Vec<(PlatformRecord, Standing)>) -> Vec<PlatformRecord> {
    scored.sort_by(rank);
    scored.into_iter().map(|(record, _)| record).collect()
}

/// Placement's order: off probation first, then the least utilised, the better
/// reputation, the name.
fn rank(
    (a, a_standing): &(PlatformRecord, Standing),
    (b, b_standing): &(PlatformRecord, Standing),
) -> std::cmp::Ordering {
    a_standing
        .on_probation
        .cmp(&b_standing.on_probation)
        .then(a.utilisation().total_cmp(&b.utilisation()))
        .then(b_standing.score.total_cmp(&a_standing.score))
        .then(a.platform.cmp(&b.platform))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::registry::HEARTBEAT_STALE;
    use std::time::Duration;

    const NOW: Timestamp = Timestamp::from_secs(1000);
    const WANTED: Wanted<'static> = Wanted {
        delegator: "Thor",
        task_type: "consciousness",
        operation: "planning",
    };

    fn record(platform: &str, load: u32) -> PlatformRecord {
        PlatformRecord {
            platform: platform.into(),
            capabilities: vec!["consciousness".into(), "consciousness.sage".into()],
            operations: vec!["planning".into(), "execution".into()],
            delegate: true,
            key_id: "k".into(),
            load,
            capacity: 4,
            heartbeat_at: NOW,
        }
    }

    type Change = fn(&mut PlatformRecord);

    #[test]
    fn one_eligibility_rule_for_named_and_automatic_placement() {
        // (case, change to Legion's record, why it is ineligible, chosen automatically)
        let rows: Vec<(&str, Change, Option<Ineligible>, bool)> = vec![
            ("a live platform offering both", |_| {}, None, true),
            (
                "the delegator itself",
                |r| r.platform = "Thor".into(),
                Some(Ineligible::Delegator),
                false,
            ),
            (
                "a heartbeat just within the staleness bound",
                |r| r.heartbeat_at = NOW - HEARTBEAT_STALE,
                None,
                true,
            ),
            (
                "a stale heartbeat",
                |r| r.heartbeat_at = NOW - HEARTBEAT_STALE - Duration::from_secs(1),
                Some(Ineligible::NotLive {
                    seconds_ago: HEARTBEAT_STALE.as_secs_f64() + 1.0,
                }),
                false,
            ),
            (
                "another task type only",
                |r| r.capabilities = vec!["consciousness.sage".into()],
                Some(Ineligible::TaskType {
                    task_type: "consciousness".into(),
                }),
                false,
            ),
            // Named, the executor refuses the operation itself with a signed proof.
            (
                "not offering the operation",
                |r| r.operations = vec!["execution".into()],
                None,
                false,
            ),
            ("fully loaded, yet live", |r| r.load = r.capacity, None, true),
        ];
        for (case, change, why, automatic) in rows {
            let mut legion = record("Legion", 0);
            change(&mut legion);
            let platform = legion.platform.clone();
            assert_eq!(eligibility(&legion, &WANTED, NOW).err(), why, "{case}");
            let named = named(&platform, Some(legion.clone()), &WANTED, NOW);
            match &why {
                None => assert_eq!(named.as_ref().ok(), Some(&legion), "{case}"),
                Some(why) => assert_eq!(
                    named,
                    Err(NoPlatform::Named {
                        platform: platform.clone(),
                        why: why.clone()
                    }),
                    "{case}"
                ),
            }
            let chosen = candidates(std::slice::from_ref(&legion), &WANTED, NOW);
            assert_eq!(chosen.is_ok(), automatic, "{case}: {chosen:?}");
        }
        assert_eq!(
            named("Nova", None, &WANTED, NOW),
            Err(NoPlatform::NotRegistered {
                platform: "Nova".into()
            })
        );
    }

    #[test]
    fn no_candidate_says_why_each_was_left_out() {
        let mut sprout = record("Sprout", 0);
        sprout.operations = vec!["perception".into()];
        let mut legion = record("Legion", 0);
        legion.heartbeat_at = Timestamp::from_secs(0);
        let err = candidates(&[record("Thor", 0), sprout, legion], &WANTED, NOW).expect_err("none");
        assert_eq!(
            err.to_string(),
            "none is healthy and offers planning for consciousness tasks; considered: \
             Sprout (does not offer the planning operation), Legion (no live worker (last heartbeat 1000 s ago))"
        );
        let err = candidates(&[record("Thor", 0)], &WANTED, NOW).expect_err("only the delegator");
        assert_eq!(
            err.to_string(),
            "none is healthy and offers planning for consciousness tasks"
        );
    }

    #[test]
    fn probation_then_the_least_loaded_then_reputation_then_name() {
        type Scored = Vec<(PlatformRecord, Standing)>;
        let ok = |score| Standing {
            score,
            on_probation: false,
        };
        let caught = |score| Standing {
            score,
            on_probation: true,
        };
        let rows: Vec<(&str, Scored, Option<&str>)> = vec![
            ("nobody", vec![], None),
            (
                "less load beats reputation",
                vec![(record("A", 2), ok(0.9)), (record("B", 1), ok(0.1))],
                Some("B"),
            ),
            (
                "equal load: better reputation",
                vec![(record("A", 1), ok(0.2)), (record("B", 1), ok(0.8))],
                Some("B"),
            ),
            (
                "all equal: by name",
                vec![(record("B", 1), ok(0.5)), (record("A", 1), ok(0.5))],
                Some("A"),
            ),
            (
                "caught lying: last, however idle and well scored",
                vec![(record("A", 0), caught(0.9)), (record("B", 3), ok(0.1))],
                Some("B"),
            ),
            (
                "only liars left: the least loaded of them",
                vec![(record("A", 2), caught(0.9)), (record("B", 1), caught(0.1))],
                Some("B"),
            ),
        ];
        for (case, scored, expected) in rows {
            assert_eq!(best(scored).map(|r| r.platform).as_deref(), expected, "{case}");
        }
    }
}
