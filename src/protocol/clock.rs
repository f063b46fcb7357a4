//! Wall-clock time: [`Timestamp`], an instant that the wire carries as Unix seconds in a JSON
//! number (the seed's `created_at`), and does arithmetic only with [`Duration`].
//!
//! [`Timestamp::now`] is the one clock read; the pure core takes `now` as a parameter.

use std::cmp::Ordering;
use std::fmt;
use std::ops::{Add, Sub};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant on the wall clock, held as Unix seconds exactly as the wire carries them, so a
/// record read and written back is byte-identical (signatures cover those bytes).
///
/// Always finite and not before the epoch: [`Timestamp::from_unix_seconds`] checks it, and a
/// decoded timestamp that is not is refused with an error naming the value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timestamp(f64);

/// Why a number of seconds is not a [`Timestamp`].
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{seconds} is not a time: a timestamp is a finite, non-negative number of Unix seconds")]
pub struct NotATimestamp {
    /// The number refused.
    pub seconds: f64,
}

impl Timestamp {
    /// The Unix epoch, 1970-01-01T00:00:00Z.
    pub const EPOCH: Self = Self(0.0);

    /// Now, from the system clock: the only clock read in the crate.
    pub fn now() -> Self {
        // A clock before 1970 is a broken machine; treating it as the epoch makes every
        // time-window check fail closed (tasks look expired) instead of panicking.
        Self(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        )
    }

    /// The instant `seconds` after the epoch, as the wire or a config spells it.
    pub fn from_unix_seconds(seconds: f64) -> Result<Self, NotATimestamp> {
        if seconds.is_finite() && seconds >= 0.0 {
            // `+ 0.0` turns -0.0 into 0.0, so that equality and order agree.
            Ok(Self(seconds + 0.0))
        } else {
            Err(NotATimestamp { seconds })
        }
    }

    /// The instant `seconds` whole seconds after the epoch (constants, tests).
    pub const fn from_secs(seconds: u64) -> Self {
        Self(seconds as f64)
    }

    /// Seconds since the epoch, as the wire spells them.
    pub fn as_unix_seconds(self) -> f64 {
        self.0
    }

    /// How long after `earlier` this is; zero when it is not after (clocks skew).
    pub fn duration_since(self, earlier: Self) -> Duration {
        Duration::try_from_secs_f64(self.0 - earlier.0).unwrap_or(Duration::ZERO)
    }

    /// How long from now (`self`) until `later`; zero when `later` has passed.
    pub fn until(self, later: Self) -> Duration {
        later.duration_since(self)
    }

    /// This instant cut to whole seconds (earlier or equal): a signed record's time must read
    /// back bit for bit, and serde_json reads a number with a fraction only approximately.
    pub fn whole_seconds(self) -> Self {
        Self(self.0.floor())
    }

    /// Seconds from `earlier` to this, negative when this is before: for a signed age (how
    /// long ago a heartbeat was, for a message that may read from the future).
    pub fn seconds_since(self, earlier: Self) -> f64 {
        self.0 - earlier.0
    }
}

// Finite and never -0.0 (checked where built), so `total_cmp` is the numeric order.
impl Eq for Timestamp {}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;

    fn add(self, rhs: Duration) -> Self {
        Self(self.0 + rhs.as_secs_f64())
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Self;

    /// Saturates at the epoch: no instant before it exists here.
    fn sub(self, rhs: Duration) -> Self {
        Self((self.0 - rhs.as_secs_f64()).max(0.0))
    }
}

impl fmt::Display for Timestamp {
    /// Unix seconds, as the logs have always printed them (`{:.3}` gives milliseconds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = f64::deserialize(deserializer)?;
        Self::from_unix_seconds(seconds).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_unix_seconds_it_holds_bit_for_bit() {
        for seconds in [0.0, 1.5, 1_700_000_000.123_456_7, 1_799_999_999.999_999_8] {
            let t = Timestamp::from_unix_seconds(seconds).expect("a time");
            let json = serde_json::to_string(&t).expect("serialises");
            assert_eq!(json, serde_json::to_string(&seconds).expect("serialises"));
            let back: Timestamp = serde_json::from_str(&json).expect("decodes");
            assert_eq!(back.as_unix_seconds().to_bits(), seconds.to_bits());
        }
    }

    #[test]
    fn a_negative_or_non_number_time_is_refused_where_decoded() {
        for json in ["-1.0", "-0.001", "\"12\"", "null", "1e400"] {
            assert!(serde_json::from_str::<Timestamp>(json).is_err(), "{json} decoded");
        }
        for seconds in [f64::NAN, f64::INFINITY, -1.0] {
            assert!(Timestamp::from_unix_seconds(seconds).is_err(), "{seconds} accepted");
        }
    }

    #[test]
    fn arithmetic_is_with_durations_and_saturates() {
        let t = Timestamp::from_unix_seconds(100.0).expect("a time");
        let later = t + Duration::from_millis(2500);
        assert_eq!(later.as_unix_seconds(), 102.5);
        assert_eq!(later.duration_since(t), Duration::from_millis(2500));
        assert_eq!(t.duration_since(later), Duration::ZERO);
        assert_eq!(t.until(later), Duration::from_millis(2500));
        assert_eq!(t.seconds_since(later), -2.5);
        assert_eq!(t - Duration::from_secs(1000), Timestamp::EPOCH);
        assert!(t < later);
        assert_eq!(format!("{later:.3}"), "102.500");
        assert_eq!(format!("{later}"), "102.5");
    }
}
