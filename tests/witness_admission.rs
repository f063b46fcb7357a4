//! Issue #13, item 2: a witness run goes through the worker's own admission (its task
//! type's concurrency and budget caps, the delegator's rate, its limits), so a flood of
//! valid witness requests runs no more at once than the platform allows. Sprout, allowed one
//! `consciousness` task at a time, is appointed witness of two held tasks whose requests
//! arrive together; its program records when each run starts and ends. Sprout runs them one
//! after the other, and the second, refused while the first runs, is not lost: Thor's client
//! sends it again every 5 s and Sprout answers both within the hold. Real processes, a real
//! server with credentials, the real ledger service.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::federation::Processes;
use common::witness::{Parties, federation_edit, held, locked_task_and_wire, terms};
use sage_federation::ledger::model::LockState;
use sage_federation::protocol::task::TaskId;

/// How long Sprout's program works on each task: long enough that two requests arriving
/// together would overlap if both ran.
const RUN_SECONDS: f64 = 2.0;

/// Sprout's `wordcount`: appends `S<start>` and `E<end>` (Unix seconds) to `log` around a
/// pause of [`RUN_SECONDS`], then answers the true count as Legion's hand proofs do.
fn recording_program(log: &Path) -> String {
    format!(
        r#"["python3", "-c", "import json, sys, time; t = json.load(sys.stdin)['parameters']['text']; f = open('{log}', 'a'); f.write('S%f ' % time.time()); f.flush(); time.sleep({RUN_SECONDS}); f.write('E%f ' % time.time()); f.close(); print(json.dumps({{'result': {{'words': len(t.split())}}, 'quality': 1.0}}))"]"#,
        log = log.display()
    )
}

/// The runs `log` recorded, as (start, end) pairs in start order.
fn runs(log: &Path) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(log).expect("Sprout's program ran");
    let stamps = |prefix: char| -> Vec<f64> {
        text.split_whitespace()
            .filter_map(|token| token.strip_prefix(prefix))
            .map(|s| s.parse().expect("a time"))
            .collect()
    };
    let (mut starts, mut ends) = (stamps('S'), stamps('E'));
    starts.sort_by(f64::total_cmp);
    ends.sort_by(f64::total_cmp);
    assert_eq!(starts.len(), ends.len(), "every run ended: {text}");
    starts.into_iter().zip(ends).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_with_room_for_one_task_runs_two_held_tasks_one_after_the_other() {
    // The program runs as an unprivileged user when the worker is root: it may write here.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let log = dir.path().join("runs");
    let program = recording_program(&log);
    let others = federation_edit(None, 60.0);
    let edit = move |platform: &str, text: String| match platform {
        "Sprout" => {
            let start = text.find("[operations.wordcount]").expect("Sprout runs wordcount");
            let line = text[start..].find("command = ").expect("its command") + start;
            let end = text[line..].find('\n').expect("end of line") + line;
            let text = format!("{}command = {program}{}", &text[..line], &text[end..]);
            text.replace("max_concurrent = 2", "max_concurrent = 1")
        }
        _ => others(platform, text),
    };
    let p = Processes::start_with(&edit).await;
    let parties = Parties::connect(&p).await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let task_id = TaskId::random().expect("id");
        let (task, wire) = locked_task_and_wire(&parties, &task_id, terms(0.0, 60.0)).await;
        held(&parties, &task_id, &wire, "Sprout").await;
        tasks.push((task, wire));
    }

    // Thor's client sends both requests at once, and again every 5 s while a lock is held.
    let thor = p.client("Thor").await;
    let (first, second) = tokio::join!(
        thor.follow_held_task(&tasks[0].0, &tasks[0].1),
        thor.follow_held_task(&tasks[1].0, &tasks[1].1),
    );
    for outcome in [first.expect("followed"), second.expect("followed")] {
        assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
        let witness = outcome.witness.clone().expect("witnessed");
        // Answered by the witness, not paid by the hold's expiry.
        assert_eq!(
            (witness.witness.as_str(), witness.agreed),
            ("Sprout", Some(true)),
            "{outcome:?}"
        );
    }

    let runs = runs(&log);
    assert_eq!(runs.len(), 2, "Sprout ran each task once: {runs:?}");
    assert!(
        runs[0].1 <= runs[1].0,
        "Sprout ran two tasks at once with room for one: {runs:?}"
    );
    p.assert_audit_clean();
}
