//! The README's commands run as printed: every shell line that talks to a running federation
//! (`sagefed delegate`, `status`, `cancel`, `balances`, `audit`, `keys list`) runs, through
//! `sh`, from a directory laid out like the repository (`configs/*.toml`), with `sagefed` on
//! `PATH` and `SAGE_NATS__URL` pointing at a test federation, and exits 0; a `delegate`
//! commits.
//!
//! Two substitutions, because the README cannot know them: `t-...` (a task id the reader
//! copies from `delegate`'s output) becomes the last delegated task for `status`, and a task
//! still running for `cancel`. Not run: the `nats` CLI lines (`nats` is not in any package
//! registry CI reaches; the streams, buckets and services they inspect are tested directly),
//! commands that serve until Ctrl-C (`up`, `worker`, `ledger serve`, `dashboard`: their own
//! tests start them) and lines that do not talk to a federation (`cargo`, `keygen`,
//! `config check`: tested in `foundation.rs`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::federation::Processes;
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::task_board::TaskBoard;

/// `sagefed` subcommands that talk to a running federation and end by themselves.
const FEDERATION_COMMANDS: [&str; 6] = ["delegate", "status", "cancel", "balances", "audit", "keys"];
/// The README's stand-in for a task id.
const TASK_ID_PLACEHOLDER: &str = "t-...";

/// Every command line of the README's `sh` blocks: continuations joined, comments removed.
fn shell_lines(readme: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        match (in_block, line.trim()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, text) => {
                let text = text.find(" #").map_or(text, |at| &text[..at]).trim_end();
                if text.starts_with('#') || text.is_empty() {
                    continue;
                }
                match text.strip_suffix('\\') {
                    Some(head) => pending.push_str(head),
                    None => {
                        pending.push_str(text);
                        lines.push(std::mem::take(&mut pending));
                    }
                }
            }
            (false, _) => {}
        }
    }
    lines
}

/// The `sagefed` subcommand of a line, after any `NAME=value` environment assignments.
fn subcommand(line: &str) -> Option<&str> {
    let mut words = line
        .split_whitespace()
        .skip_while(|w| w.contains('=') && !w.starts_with('-'));
    (words.next()? == "sagefed").then(|| words.next()).flatten()
}

#[test]
fn the_readme_shell_lines_are_found_and_classified() {
    let readme = "```sh\nsagefed delegate --config c \\\n    --params '{\"a\":1}' --json   # note\n\
                  # a comment\nsagefed status lct:web4:agent:dp@Thor#consciousness   # why\n```\n\
                  ```\nsagefed audit\n```\n";
    assert_eq!(
        shell_lines(readme),
        [
            "sagefed delegate --config c --params '{\"a\":1}' --json",
            "sagefed status lct:web4:agent:dp@Thor#consciousness"
        ]
    );
    assert_eq!(subcommand("SAGE_X=1 sagefed config check f"), Some("config"));
    assert_eq!(subcommand("nats stream ls"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_readme_command_that_talks_to_a_federation_runs_as_printed() {
    let readme = std::fs::read_to_string(common::repo_dir().join("README.md")).expect("README.md");
    let lines: Vec<String> = shell_lines(&readme)
        .into_iter()
        .filter(|line| subcommand(line).is_some_and(|c| FEDERATION_COMMANDS.contains(&c)))
        .collect();
    for needed in ["delegate", "status", "cancel", "balances", "audit"] {
        assert!(
            lines.iter().any(|l| subcommand(l) == Some(needed)),
            "the README shows no `sagefed {needed}` line any more: {lines:#?}"
        );
    }

    let federation = Processes::start().await;
    // The README's paths: configs/<platform>.toml in the working directory.
    let dir = federation.nats.path().to_owned();
    std::os::unix::fs::symlink(".", dir.join("configs")).expect("configs/ beside the configs");
    // ... and .sagefed/federation/, where `status`, `balances` and `audit` find the admin's
    // credentials as they do where `sagefed up` ran.
    std::fs::create_dir_all(dir.join(".sagefed")).expect("mkdir .sagefed");
    std::os::unix::fs::symlink(dir.join("federation"), dir.join(".sagefed/federation")).expect("symlink");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_sagefed"))
        .parent()
        .expect("bin dir");
    let path = std::env::join_paths(
        std::iter::once(bin_dir.to_owned()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");

    // A task of Thor's that runs long enough to be cancelled by the README's `cancel` line.
    let running: TaskId = "t-readme-cancel".parse().expect("task id");
    let thor = federation.client("Thor").await;
    let long_task = {
        let id = running.clone();
        tokio::spawn(async move {
            thor.delegate_task(DelegationRequest {
                to: Some("Legion".to_owned()),
                task_type: "consciousness".to_owned(),
                operation: "execution".to_owned(),
                budget: 1.0,
                timeout_seconds: 60,
                parameters: serde_json::json!({"steps": [{"op": "wait", "args": [40000]}]})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                task_id: Some(id),
            })
            .await
        })
    };
    let board = TaskBoard::open(&federation.nats.js().await).await.expect("task board");
    let deadline = Instant::now() + Duration::from_secs(30);
    while board.get(&running).await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the long task never reached the board");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut last_delegated = String::new();
    for line in &lines {
        let command = match subcommand(line) {
            Some("cancel") => line.replace(TASK_ID_PLACEHOLDER, running.as_str()),
            _ => line.replace(TASK_ID_PLACEHOLDER, &last_delegated),
        };
        let output = Command::new("sh")
            .args(["-c", &command])
            .current_dir(&dir)
            .env("PATH", &path)
            .env("SAGE_NATS__URL", federation.url())
            .env("SAGE_LOG", "warn")
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "`{command}` exited {:?}:\n{stdout}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        if subcommand(line) == Some("delegate") {
            let id = stdout
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .find(|w| w.starts_with("t-"))
                .unwrap_or_else(|| panic!("`{command}` printed no task id:\n{stdout}"));
            last_delegated = id.to_owned();
            assert!(stdout.contains("committed"), "`{command}` did not commit:\n{stdout}");
        }
    }

    let cancelled = tokio::time::timeout(Duration::from_secs(60), long_task)
        .await
        .expect("the cancelled task ends")
        .expect("join")
        .expect("delegation");
    assert_eq!(
        cancelled.rollback_reason.map(|r| r.to_string()).as_deref(),
        Some("cancelled"),
        "{cancelled:?}"
    );
    federation.assert_audit_clean();
}
