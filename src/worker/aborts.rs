//! Abort handles of the runs in flight in one worker process. A task can run twice in one
//! process (delivered again while its first run still works), so each run has its own
//! handle: ending one run never touches another, and only an explicit abort fires a signal
//! (a handle that is merely dropped never does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use crate::protocol::task::TaskId;

/// The runs in flight, by task, then by run number.
#[derive(Default)]
pub struct Aborts {
    next_run: AtomicU64,
    runs: Mutex<HashMap<TaskId, HashMap<u64, oneshot::Sender<()>>>>,
}

/// One registered run: unregisters itself, and only itself, when dropped.
pub struct RunGuard<'a> {
    aborts: &'a Aborts,
    task_id: TaskId,
    run: u64,
}

/// Fires when, and only when, [`Aborts::abort`] names the run's task.
pub struct AbortSignal(oneshot::Receiver<()>);

impl AbortSignal {
    /// Resolves on an explicit abort; never, if the handle is dropped without one.
    pub async fn fired(self) {
        if self.0.await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Aborts {
    /// Registers a run of `task_id`.
    pub fn register(&self, task_id: &TaskId) -> (RunGuard<'_>, AbortSignal) {
        let run = self.next_run.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut runs) = self.runs.lock() {
            runs.entry(task_id.clone()).or_default().insert(run, tx);
        }
        let guard = RunGuard {
            aborts: self,
            task_id: task_id.clone(),
            run,
        };
        (guard, AbortSignal(rx))
    }

    /// Aborts every run of `task_id` in flight here; returns how many.
    pub fn abort(&self, task_id: &TaskId) -> usize {
        let runs = self.runs.lock().ok().and_then(|mut runs| runs.remove(task_id));
        runs.into_iter()
            .flat_map(HashMap::into_values)
            .map(|tx| tx.send(()))
            .filter(Result::is_ok)
            .count()
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut runs) = self.aborts.runs.lock()
            && let Some(of_task) = runs.get_mut(&self.task_id)
        {
            of_task.remove(&self.run);
            if of_task.is_empty() {
                runs.remove(&self.task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn ending_a_second_run_of_a_task_does_not_abort_the_first() {
        let aborts = Aborts::default();
        let task: TaskId = "t-twice".parse().expect("id");
        let (first, first_signal) = aborts.register(&task);
        let (second, second_signal) = aborts.register(&task);
        drop(second);
        drop(second_signal);
        let mut first_signal = Box::pin(first_signal.fired());
        assert!(
            (&mut first_signal).now_or_never().is_none(),
            "the second run's cleanup aborted the first"
        );
        assert_eq!(
            aborts.abort(&task),
            1,
            "the explicit abort reaches the run still in flight"
        );
        assert!(first_signal.now_or_never().is_some(), "the abort fired");
        drop(first);
    }

    #[test]
    fn a_dropped_handle_is_not_an_abort() {
        let aborts = Aborts::default();
        let task: TaskId = "t-dropped".parse().expect("id");
        let (guard, signal) = aborts.register(&task);
        if let Ok(mut runs) = aborts.runs.lock() {
            runs.clear();
        }
        assert!(
            Box::pin(signal.fired()).now_or_never().is_none(),
            "dropping the sender fired the abort"
        );
        drop(guard);
        assert_eq!(aborts.abort(&task), 0, "nothing left to abort");
    }
}
