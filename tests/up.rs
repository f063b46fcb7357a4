//! `sagefed up` as a user runs it: the seed's scenarios end as the seed expects, and Ctrl-C
//! stops everything, the nats-server included.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::federation::{PLATFORMS, write_config};

/// Platform configs in `dir` for `sagefed up --configs dir` (keys and programs resolved there).
fn configs(dir: &std::path::Path) -> std::path::PathBuf {
    let configs = dir.join("configs");
    std::fs::create_dir_all(&configs).expect("mkdir");
    for platform in PLATFORMS {
        // `sagefed up` points each platform at its own server; the URL here is replaced.
        write_config(&configs, platform, "nats://127.0.0.1:4222");
    }
    configs
}

fn up(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sagefed"));
    command
        // A relative data directory, as the README runs it (`.sagefed` by default).
        .current_dir(dir)
        .args(["up", "--port", "0", "--gateway-port", "0", "--data-dir", "data"])
        .arg("--configs")
        .arg(configs(dir))
        .args(extra)
        // A free port unless the test names one: tests run side by side.
        .args(if extra.contains(&"--dashboard") {
            &[][..]
        } else {
            &["--dashboard", "127.0.0.1:0"][..]
        })
        .env("SAGE_TOOLS_DIR", common::repo_dir().join(".tools"))
        .env("SAGE_LOG", "warn");
    command
}

/// Scenario 9 on fresh data: Legion's first `wordcount` is sampled (a new executor: rate 1)
/// and Sprout agrees. Legion is paid all its signed proof says it consumed, more than
/// nothing; Sprout's share comes out of Thor's refund, not out of Legion's pay.
fn assert_external_program_witnessed_and_paid_in_full(stdout: &str) {
    let line = stdout
        .lines()
        .find(|l| l.contains("the ledger sampled Legion's wordcount and witness Sprout agreed"))
        .unwrap_or_else(|| panic!("scenario 9 was not witnessed:\n{stdout}"));
    let number = |after: &str, before: &str| -> f64 {
        let start = line.find(after).expect(after) + after.len();
        let end = start + line[start..].find(before).expect(before);
        line[start..end].parse().unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let (paid, consumed) = (
        number("Legion paid ", " ATP for "),
        number(" ATP for ", " ATP consumed"),
    );
    let share = number("; Sprout ", " ATP out of Thor's refund");
    assert!(consumed > 0.0 && paid == consumed, "{line}");
    assert!(share > 0.0, "{line}");
}

#[test]
fn up_runs_every_seed_scenario_as_expected_and_exits_0() {
    common::server_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = up(dir.path(), &["--exit-after-demo"]).output().expect("run sagefed up");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for scenario in [
        "1 Thor -> Legion",
        "2 Sprout -> Legion",
        "3 Legion -> Thor",
        "4 concurrent",
        "5 low quality",
        "6 timeout",
        "7 permission denied",
        "8 cancel",
        "9 external program",
        "10 lying executor caught",
        "11 critical overtakes a backlog",
        "12 witness catches a lying external program",
    ] {
        let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(scenario)).collect();
        assert!(!lines.is_empty(), "{scenario} missing:\n{stdout}");
        assert!(
            lines.iter().all(|l| l.trim_end().ends_with("yes")),
            "{scenario}:\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().filter(|l| l.starts_with("4 concurrent")).count(), 10);
    assert!(
        stdout.contains("the critical task settled while"),
        "the priority scenario says what it overtook:\n{stdout}"
    );
    assert!(
        stdout.contains("ran the program again: witness Sprout disagreed"),
        "the witness scenario says who caught the lie:\n{stdout}"
    );
    assert_external_program_witnessed_and_paid_in_full(&stdout);
    assert!(stdout.contains("audit: ok"), "{stdout}");
    assert!(stdout.contains("dashboard  http://127.0.0.1:"), "{stdout}");

    // A second run on the same data: grants are not repeated, the ledger still balances. Its
    // dashboard address is taken: it says so and runs without one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("address").to_string();
    let again = up(dir.path(), &["--exit-after-demo", "--dashboard", &taken])
        .output()
        .expect("run sagefed up again");
    let stdout = String::from_utf8_lossy(&again.stdout);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("grant "), "grants are idempotent:\n{stdout}");
    assert!(stderr.contains("no dashboard") && stderr.contains(&taken), "{stderr}");
    assert!(!stdout.contains("dashboard  http"), "{stdout}");
}

#[test]
fn ctrl_c_stops_everything_cleanly() {
    common::server_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = up(dir.path(), &["--no-demo"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sagefed up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut server_pid_line = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if line.starts_with("nats-server") {
            server_pid_line = line.clone();
        }
        if line.starts_with("serving on") {
            break;
        }
    }
    assert!(server_pid_line.contains("listening on"), "{server_pid_line}");
    let url = server_pid_line
        .split_whitespace()
        .find(|w| w.starts_with("nats://"))
        .expect("url")
        .to_owned();
    let port: u16 = url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    // SAFETY: sending SIGINT to our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "sagefed up did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the nats-server is gone too"
    );
}
