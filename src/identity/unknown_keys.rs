//! The key directory's negative cache: key ids the `sage_keys` bucket did not hold when last
//! read, so a flood of messages signed with made-up key ids costs at most one bucket read per
//! id per [`UNKNOWN_KEY_RECHECK_INTERVAL`], and at most [`UNKNOWN_KEYS_REMEMBERED_MAX`] reads
//! per interval in all.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a key id the bucket did not hold stays unknown before it is read again. Keys
/// published meanwhile still arrive at once through the directory's watch.
pub const UNKNOWN_KEY_RECHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Unknown key ids remembered at once. When full (and none is older than the interval), a new
/// unknown id is not read at all: it stays unknown unless the watch brings its record.
pub const UNKNOWN_KEYS_REMEMBERED_MAX: usize = 4096;

/// Key ids (by platform) recently found absent, and when.
#[derive(Debug, Default)]
pub struct UnknownKeys {
    absent: HashMap<(String, String), Instant>,
}

impl UnknownKeys {
    /// Whether `platform`'s key `key_id` may be read from the bucket at `now`: not found
    /// absent (or being read) within the interval, and room to remember it. A yes reserves
    /// the read: messages arriving meanwhile with the same id do not read it again.
    pub fn may_read(&mut self, platform: &str, key_id: &str, now: Instant) -> bool {
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < UNKNOWN_KEY_RECHECK_INTERVAL;
        if self
            .absent
            .get(&(platform.to_owned(), key_id.to_owned()))
            .is_some_and(fresh)
        {
            return false;
        }
        if self.absent.len() >= UNKNOWN_KEYS_REMEMBERED_MAX {
            self.absent.retain(|_, at| fresh(at));
        }
        if self.absent.len() >= UNKNOWN_KEYS_REMEMBERED_MAX {
            return false;
        }
        self.absent.insert((platform.to_owned(), key_id.to_owned()), now);
        true
    }

    /// Remembers that the bucket did not hold `platform`'s key `key_id` at `now`.
    pub fn absent(&mut self, platform: &str, key_id: &str, now: Instant) {
        debug_assert!(self.absent.len() <= UNKNOWN_KEYS_REMEMBERED_MAX);
        let id = (platform.to_owned(), key_id.to_owned());
        if let Some(at) = self.absent.get_mut(&id) {
            *at = now;
        } else if self.absent.len() < UNKNOWN_KEYS_REMEMBERED_MAX {
            self.absent.insert(id, now);
        }
    }

    pub fn len(&self) -> usize {
        self.absent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.absent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_id_is_read_once_per_interval_and_the_cache_stays_bounded() {
        let start = Instant::now();
        let mut unknown = UnknownKeys::default();
        assert!(unknown.may_read("Thor", "a", start));
        assert!(!unknown.may_read("Thor", "a", start), "being read");
        unknown.absent("Thor", "a", start);
        assert!(!unknown.may_read("Thor", "a", start + Duration::from_secs(1)));
        assert!(unknown.may_read("Legion", "a", start), "per platform");
        assert!(unknown.may_read("Thor", "a", start + UNKNOWN_KEY_RECHECK_INTERVAL));
        for i in 0..2 * UNKNOWN_KEYS_REMEMBERED_MAX {
            unknown.may_read("Thor", &i.to_string(), start);
        }
        assert_eq!(unknown.len(), UNKNOWN_KEYS_REMEMBERED_MAX);
        assert!(!unknown.may_read("Thor", "new", start), "full: no read");
        let later = start + UNKNOWN_KEY_RECHECK_INTERVAL;
        assert!(unknown.may_read("Thor", "new", later), "old entries make room");
        assert!(unknown.len() < UNKNOWN_KEYS_REMEMBERED_MAX);
    }
}
