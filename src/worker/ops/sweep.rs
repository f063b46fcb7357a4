//! Kills every descendant of an external program's keeper, including one that left the
//! program's process group or session (`setsid`), which a process-group kill misses.
//!
//! The keeper (see `keeper`) is a child subreaper and the program's parent, so every
//! descendant of the run, orphaned or not, stays findable in `/proc` by parent pid below it.
//! [`kill_tree`] serves the timeout and the abort: it stops the keeper (so that it neither
//! forks nor reaps), then kills every live descendant, round after round, until none is left.
//! A run that ends with the program's exit is cleared by the keeper itself.

use std::collections::HashMap;

/// Rounds of listing and killing descendants before giving up on a tree that keeps forking;
/// each round kills every process the previous one found, so a real tree ends in a few.
const SWEEP_ROUNDS_MAX: usize = 1_000;

/// SIGSTOP to `root`, then SIGKILL to each of its live descendants until none is left.
/// Returns how many rounds found descendants to kill.
///
/// The caller guarantees that `root` is an unreaped child of ours. The stopped root does not
/// reap, so the pids of its killed children (and of orphans re-parented to it) stay taken
/// until it is reaped and are never someone else's when signalled.
pub(super) fn kill_tree(root: libc::pid_t) -> usize {
    // SAFETY: kill(2) has no memory effects; `root` is an unreaped child (see above).
    unsafe {
        libc::kill(root, libc::SIGSTOP);
    }
    for round in 0..SWEEP_ROUNDS_MAX {
        let found = live_descendants(root);
        if found.is_empty() {
            return round;
        }
        for pid in found {
            // SAFETY: kill(2) has no memory effects; `pid` was a live descendant of `root`
            // an instant ago, and its parent is stopped or killed, so none reaped it since.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    SWEEP_ROUNDS_MAX
}

/// Every live (not zombie) process that descends from `root`, by parent pid in `/proc`.
fn live_descendants(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<(libc::pid_t, bool)>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else {
            continue;
        };
        // A process can exit between the listing and this read: then it is no longer there.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((parent, live)) = parse_stat(&stat) {
            children.entry(parent).or_default().push((pid, live));
        }
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for &(pid, live) in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if live {
                found.push(pid);
            }
            queue.push(pid);
        }
    }
    found
}

/// `(parent pid, alive)` from a `/proc/PID/stat` line; the command name in parentheses may
/// itself hold spaces and parentheses, so the fields are read after the last `)`.
fn parse_stat(stat: &str) -> Option<(libc::pid_t, bool)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((parent, !matches!(state, "Z" | "X" | "x")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_parent_and_liveness() {
        assert_eq!(parse_stat("12 (a) b) S 7 12 12 0"), Some((7, true)));
        assert_eq!(parse_stat("12 (sleep) Z 1 12 12 0"), Some((1, false)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
