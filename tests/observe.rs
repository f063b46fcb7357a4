//! Seeing the federation, as a user and a scraper do: `/metrics` of `sagefed worker
//! --metrics`, `sagefed ledger serve --metrics` and `sagefed dashboard` move when tasks run;
//! the dashboard page in a real headless Chromium shows a delegation and the balances change
//! without a reload, and cancels a task from the page; `bench --json` prints only JSON.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::federation::{Processes, publish_to_legion};
use common::http::{announced_url, get, sample};

/// A `sagefed dashboard` process and the URL it announced.
struct DashboardProcess {
    child: Child,
    url: String,
}

impl Drop for DashboardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sagefed dashboard` on a free loopback port with `args` (`--config F`, or `--nats U`
/// and credentials).
fn spawn_dashboard<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> DashboardProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(["dashboard", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("SAGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sagefed dashboard");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(url) = announced_url(&line, "dashboard on ") {
                let _ = tx.send(Ok(url));
            }
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(url)) => DashboardProcess { child, url },
        other => panic!("sagefed dashboard did not announce its address: {other:?}"),
    }
}

/// `sagefed dashboard` without a platform: read-only, as the ledger admin.
fn read_only_dashboard(federation: &Processes) -> DashboardProcess {
    let mut args: Vec<std::ffi::OsString> = vec!["--nats".into(), federation.url().into()];
    args.extend(federation.nats.cli_access("Treasury"));
    let fed = federation.nats.federation.as_ref().expect("secure");
    args.extend(["--root".into(), fed.root_public_key().into_os_string()]);
    spawn_dashboard(&args)
}

async fn scrape(url: &str) -> String {
    let (status, body) = get(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// The delegate CLI's JSON outcome; asserts it exited as `committed` says.
fn delegate(federation: &Processes, platform: &str, args: &[&str]) -> serde_json::Value {
    let output = federation.delegate_cli(platform, args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let outcome: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "--json stdout is not JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(
        output.status.success(),
        outcome["settlement"] == "committed",
        "{outcome}"
    );
    outcome
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_delegations_refusals_and_ledger_transitions() {
    let federation = Processes::start().await;
    let ledger_url = federation.metrics_url("ledger.log").await;
    let legion_url = federation.metrics_url("worker-Legion.log").await;
    let sprout_url = federation.metrics_url("worker-Sprout.log").await;
    let dashboard = read_only_dashboard(&federation);
    let dashboard_metrics = format!("{}metrics", dashboard.url);

    let ledger_before = scrape(&ledger_url).await;
    let legion_before = scrape(&legion_url).await;
    let sprout_before = scrape(&sprout_url).await;
    let locks = r#"sagefed_ledger_transitions_total{operation="lock",outcome="applied"}"#;
    let commits = r#"sagefed_ledger_transitions_total{operation="commit",outcome="applied"}"#;
    let groups = "sagefed_ledger_group_commit_commands_count";
    let deliveries = r#"sagefed_task_deliveries_total{platform="Legion"}"#;
    let malformed = r#"sagefed_refusals_total{by="worker",reason="malformed"}"#;
    let permission = r#"sagefed_refusals_total{by="worker",reason="permission"}"#;
    let dead = r#"sagefed_dead_letters_total{platform="Legion"}"#;

    // One paid task, one refused for a permission, one unreadable message.
    let paid = delegate(
        &federation,
        "Thor",
        &["--to", "Legion", "--operation", "execution", "--budget", "1"],
    );
    assert_eq!(paid["settlement"], "committed", "{paid}");
    let refused = delegate(
        &federation,
        "Legion",
        &["--to", "Sprout", "--operation", "planning", "--budget", "1"],
    );
    assert_eq!(refused["rollback_reason"], "permission_denied", "{refused}");
    let js = federation.nats.js().await;
    publish_to_legion(&js, "not a signed envelope".into(), "garbage-1").await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ledger, legion, sprout) = (
            scrape(&ledger_url).await,
            scrape(&legion_url).await,
            scrape(&sprout_url).await,
        );
        let moved = [
            sample(&ledger, locks) >= sample(&ledger_before, locks) + 2.0,
            sample(&ledger, commits) > sample(&ledger_before, commits),
            sample(&ledger, groups) > sample(&ledger_before, groups),
            sample(&legion, deliveries) >= sample(&legion_before, deliveries) + 2.0,
            sample(&legion, malformed) > sample(&legion_before, malformed),
            sample(&legion, dead) > sample(&legion_before, dead),
            sample(&sprout, permission) > sample(&sprout_before, permission),
        ];
        if moved.iter().all(|m| *m) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters did not move as expected {moved:?}:\nledger:\n{ledger}\nLegion:\n{legion}\nSprout:\n{sprout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Histograms carry their unit, counters end in _total, and every family is described.
    let ledger = scrape(&ledger_url).await;
    assert!(
        ledger.contains("# TYPE sagefed_ledger_transition_duration_seconds histogram"),
        "{ledger}"
    );
    assert!(ledger.contains(r#"sagefed_ledger_transition_duration_seconds_bucket{operation="lock",le="0.001"}"#));
    assert!(
        ledger.contains("# HELP sagefed_ledger_group_commit_commands "),
        "{ledger}"
    );

    // The dashboard's gauges follow the ledger: all granted ATP, none locked once settled.
    let granted: u64 = federation.snapshot().await.supply.total_uatp.micros();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(&dashboard_metrics).await;
        if sample(&text, "sagefed_supply_microatp") == granted as f64 && text.contains("sagefed_locked_microatp 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard gauges never matched {granted}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The admin's dashboard reads the dead letters: the unreadable message is there, with why.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = get(&format!("{}api/view", dashboard.url)).await;
        let view: serde_json::Value = serde_json::from_str(&view).expect("JSON");
        let letters = view["dead_letters"].as_array().cloned().unwrap_or_default();
        if letters
            .iter()
            .any(|l| l["reason"].as_str().is_some_and(|r| r.contains("malformed")))
        {
            assert!(view["dead_letters_unreadable"].is_null(), "{view}");
            break;
        }
        assert!(Instant::now() < deadline, "the dead letter never showed: {view}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    federation.assert_audit_clean();
}

#[test]
fn bench_json_prints_only_json_on_stdout() {
    common::server_binary();
    let output = Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(["bench", "delegation", "--tasks", "20", "--concurrency", "4", "--json"])
        .env("SAGE_TOOLS_DIR", common::repo_dir().join(".tools"))
        .output()
        .expect("run sagefed bench");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let figures: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not only JSON ({e}):\n{stdout}"));
    assert!(figures.as_array().is_some_and(|f| f.len() >= 4), "{figures}");
    assert!(
        stderr.contains("delegations committed"),
        "the summary goes to stderr: {stderr}"
    );
    assert!(
        !stderr.contains(" done"),
        "no progress line without a terminal: {stderr}"
    );
}

/// The text of Thor's `consciousness` balance cell on the page, once it is shown.
const THOR_BALANCE: &str = r#"const cell = document.querySelector('tr[data-account="lct:web4:agent:dp@Thor#consciousness"] td.balance');
return cell ? cell.textContent : null;"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_delegations_and_balances_live_and_cancels_as_its_platform() {
    let federation = Processes::start().await;
    let thor_config = federation.configs["Thor"].display().to_string();
    let dashboard = spawn_dashboard(&["--config", &thor_config]);
    let browser = common::browser::Browser::start().await;
    browser.client.goto(&dashboard.url).await.expect("open the dashboard");
    browser
        .wait_for(
            "the live connection",
            "return document.getElementById('connection').textContent === 'live';",
            serde_json::Value::Null,
        )
        .await;
    let before = browser
        .wait_for("Thor's balance", THOR_BALANCE, serde_json::Value::Null)
        .await;

    // A delegation from another process: the page shows it and the new balance, pushed.
    let outcome = delegate(
        &federation,
        "Thor",
        &["--to", "Legion", "--operation", "execution", "--budget", "1"],
    );
    let task_id = outcome["task_id"].as_str().expect("a task id").to_owned();
    let row = browser
        .wait_for(
            "the committed delegation",
            "const row = document.querySelector(`#recent tr[data-task=\"${arguments[0]}\"]`);
             return row && row.textContent.includes('committed') ? row.textContent : null;",
            serde_json::json!(task_id),
        )
        .await;
    assert!(
        row.as_str()
            .is_some_and(|r| r.contains("Thor → Legion") && r.contains("execution")),
        "{row}"
    );
    let after = browser
        .wait_for(
            "Thor's new balance",
            &format!("const now = (() => {{ {THOR_BALANCE} }})(); return now !== arguments[0] ? now : null;"),
            before.clone(),
        )
        .await;
    let (before, after): (f64, f64) = (
        before.as_str().and_then(|b| b.parse().ok()).expect("a number"),
        after.as_str().and_then(|a| a.parse().ok()).expect("a number"),
    );
    let consumed = outcome["atp_consumed"].as_f64().expect("consumed");
    assert!(
        (before - after - consumed).abs() < 0.0015,
        "{before} -> {after}, paid {consumed}"
    );

    // Cancel from the page: a long task Thor delegated gets a button; pressing it refunds.
    let long_task = {
        let thor = federation.configs["Thor"].clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_sagefed"))
                .args([
                    "delegate",
                    "--json",
                    "--to",
                    "Legion",
                    "--operation",
                    "execution",
                    "--budget",
                    "1",
                ])
                .args([
                    "--timeout",
                    "60",
                    "--params",
                    r#"{"steps":[{"op":"wait","args":[40000]}]}"#,
                ])
                .arg("--config")
                .arg(thor)
                .output()
                .expect("run sagefed delegate")
        })
    };
    browser
        .wait_for(
            "a cancel button on Thor's task in flight",
            "const button = document.querySelector('#in-flight tr button');
             if (!button) return null;
             button.click();
             return true;",
            serde_json::Value::Null,
        )
        .await;
    let output = tokio::task::spawn_blocking(move || long_task.join().expect("the delegate thread"))
        .await
        .expect("join");
    let cancelled: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(cancelled["rollback_reason"], "cancelled", "{cancelled}");
    let cancelled_id = cancelled["task_id"].as_str().expect("a task id").to_owned();
    browser
        .wait_for(
            "the cancelled task's outcome",
            "const row = document.querySelector(`#recent tr[data-task=\"${arguments[0]}\"]`);
             return row && row.textContent.includes('cancelled');",
            serde_json::json!(cancelled_id),
        )
        .await;

    // Not from a page under a host name (DNS rebinding), nor without the header a form cannot send.
    let cancel_url = format!("{}api/cancel/t-readme", dashboard.url);
    let rebound = common::http::request("POST", &cancel_url, &["Host: evil.example", "x-sagefed-cancel: 1"]).await;
    assert_eq!(rebound.0, 403, "{rebound:?}");
    let form = common::http::request("POST", &cancel_url, &[]).await;
    assert_eq!(form.0, 403, "{form:?}");

    // A platform may not read SAGE_DEAD (the server refuses it): the page says so instead.
    browser
        .wait_for(
            "why the dead letters are not shown",
            "return document.getElementById('dead').textContent.includes('cannot read SAGE_DEAD');",
            serde_json::Value::Null,
        )
        .await;

    // All of it without a reload: the page was loaded once and rendered many pushed views.
    let loads = browser
        .eval(
            "return [window.sagefedLoads, window.sagefedViews];",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(loads[0], 1, "the page reloaded: {loads}");
    assert!(loads[1].as_u64().is_some_and(|views| views > 2), "{loads}");

    let screenshot = browser.client.screenshot().await.expect("a screenshot");
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG");
    // `SAGEFED_SCREENSHOT=docs/dashboard.png cargo test --test observe` refreshes the README's.
    if let Some(path) = std::env::var_os("SAGEFED_SCREENSHOT") {
        std::fs::write(common::repo_dir().join(path), &screenshot).expect("write the screenshot");
    }
    federation.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_without_a_platform_config_cancels_nothing() {
    let federation = Processes::start().await;
    let dashboard = read_only_dashboard(&federation);
    let (status, body) = common::http::request(
        "POST",
        &format!("{}api/cancel/t-1", dashboard.url),
        &["x-sagefed-cancel: 1"],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--config"), "{body}");
    let (_, view) = get(&format!("{}api/view", dashboard.url)).await;
    let view: serde_json::Value = serde_json::from_str(&view).expect("JSON");
    assert!(view["cancel_as"].is_null(), "{view}");
}
