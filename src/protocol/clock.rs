//! Wall-clock time as the wire carries it: Unix seconds as `f64` (the seed's `created_at`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn now_seconds() -> f64 {
    // A clock before 1970 is a broken machine; treating it as the epoch makes every
    // time-window check fail closed (tasks look expired) instead of panicking.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
