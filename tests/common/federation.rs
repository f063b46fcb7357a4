//! A federation of separate OS processes: a real nats-server, `sagefed ledger serve`, and a
//! `sagefed worker` per platform (Legion, Thor, Sprout) with its own config and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sage_federation::config::Config;
use sage_federation::delegation::client::FederationClient;
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::federation::{FederationDir, endorse_identity_key};
use sage_federation::identity::keys;
use sage_federation::ledger::client::LedgerClient;
use sage_federation::ledger::snapshot::LedgerSnapshot;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::Signer;
use sage_federation::state::registry::Registry;

use sage_federation::identity::federation::LEDGER_IDENTITY;

use super::{TestNats, repo_dir};

pub const PLATFORMS: [&str; 3] = ["Legion", "Thor", "Sprout"];

/// Seconds a worker has to acknowledge a task in these tests: short, so a killed worker's
/// task comes back quickly.
pub const TEST_ACK_WAIT_SECONDS: u64 = 3;
/// Deliveries of one task before it is dead-lettered, in these tests.
pub const TEST_MAX_DELIVER: u64 = 4;

/// Changes a platform's config text before it is written.
pub type Edit = dyn Fn(&str, String) -> String;

pub struct Processes {
    pub nats: TestNats,
    pub ledger: Child,
    pub workers: BTreeMap<String, Child>,
    /// Additional worker processes (a second worker of a platform).
    pub extra_workers: Vec<Child>,
    pub configs: BTreeMap<String, PathBuf>,
    /// An attack test sets this: its attempts are refused with permission violations.
    pub expect_violations: bool,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self
            .workers
            .values_mut()
            .chain(self.extra_workers.iter_mut())
            .chain(std::iter::once(&mut self.ledger))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The federation's own parts must never hit the server's permissions: a violation
        // here means the permission table and the code disagree (a silent failure).
        let log = std::fs::read_to_string(self.nats.server.log_file()).unwrap_or_default();
        let violations: Vec<&str> = log.lines().filter(|l| l.contains("Permissions Violation")).collect();
        if !std::thread::panicking() && !self.expect_violations {
            assert!(
                violations.is_empty(),
                "permission violations:\n{}",
                violations.join("\n")
            );
        }
    }
}

fn sagefed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sagefed"))
}

/// Writes the repository's config for `platform` into `dir`, pointing at this test's server,
/// key and programs.
pub fn write_config(dir: &Path, platform: &str, url: &str) -> PathBuf {
    write_config_with(dir, platform, url, &|_, text| text)
}

/// Like [`write_config`], with `edit` applied to the TOML text.
pub fn write_config_with(dir: &Path, platform: &str, url: &str, edit: &Edit) -> PathBuf {
    let name = format!("{}.toml", platform.to_lowercase());
    let text = std::fs::read_to_string(repo_dir().join("configs").join(&name)).expect("config");
    let key = dir.join(format!("keys/{}.key", platform.to_lowercase()));
    let text =
        text.replace(
            &format!("\"../.sagefed/keys/{}.key\"", platform.to_lowercase()),
            &format!("{:?}", key.display().to_string()),
        )
        .replace("\"nats://127.0.0.1:4222\"", &format!("{url:?}"))
        // Credentials from the test's federation (`TestNats::start_secure` makes it in `dir`).
        .replace(
            &format!("\"../.sagefed/federation/creds/{platform}.nk\""),
            &format!(
                "{:?}",
                dir.join(format!("federation/creds/{platform}.nk"))
                    .display()
                    .to_string()
            ),
        )
        .replace(
            "\"../.sagefed/federation/root/root.key.pub\"",
            &format!("{:?}", dir.join("federation/root/root.key.pub").display().to_string()),
        )
        .replace(
            "\"../.sagefed/federation/ca/ca.pem\"",
            &format!("{:?}", dir.join("federation/ca/ca.pem").display().to_string()),
        )
        .replace(
            "\"../examples/ops/echo_quality.py\"",
            &format!(
                "{:?}",
                repo_dir().join("examples/ops/echo_quality.py").display().to_string()
            ),
        ) + &format!("\n[worker]\nack_wait_seconds = {TEST_ACK_WAIT_SECONDS}\nmax_deliver = {TEST_MAX_DELIVER}\n");
    let text = edit(platform, text);
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    // The key, endorsed by the test federation's root when `dir` holds one (`sagefed up`
    // endorses the keys of the configs it runs itself).
    let fed = FederationDir::new(&dir.join("federation"));
    if fed.exists() {
        endorse_identity_key(&fed, platform, &key).expect("key");
    } else {
        keys::read_or_create_secret(&key).expect("key");
    }
    path
}

impl Processes {
    pub async fn start() -> Self {
        Self::start_with(&|_, text| text).await
    }

    /// Starts the federation with each platform's config text passed through `edit`.
    pub async fn start_with(edit: &Edit) -> Self {
        Self::start_with_ledger_fault(edit, None).await
    }

    /// Starts the federation like [`Processes::start_with`], its ledger service with the
    /// fault `ledger_fault` injected (`sage_federation::fault`).
    pub async fn start_with_ledger_fault(edit: &Edit, ledger_fault: Option<&str>) -> Self {
        let nats = TestNats::start_secure().await;
        let url = nats.url();
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(nats.path().join(name))
                .expect("log")
        };
        // The treasury's signing key `sagefed init` made, pinned in the ledger's config.
        let fed = nats.federation.clone().expect("a secure server has a federation");
        let treasury_key = fed.signing_key("Treasury");
        let treasury = Signer::new("Treasury", keys::read_secret(&treasury_key).expect("key")).expect("signer");
        let ledger = sagefed()
            .args(["ledger", "serve", "--nats", &url, "--admin", "Treasury", "--admin-key"])
            .arg(keys::public_key_text(&treasury.verifying_key()))
            .arg("--root")
            .arg(fed.root_public_key())
            .args(["--metrics", "127.0.0.1:0"])
            .args(nats.cli_access(LEDGER_IDENTITY))
            .env("SAGE_LOG", "info")
            .envs(ledger_fault.map(|fault| (sage_federation::fault::FAULT_ENV, fault)))
            .stdout(Stdio::null())
            .stderr(log("ledger.log"))
            .spawn()
            .expect("spawn the ledger");
        let client = nats.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.request("$SRV.PING.sagefed-ledger", "".into()).await.is_err() {
            assert!(Instant::now() < deadline, "the ledger service did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut processes = Self {
            nats,
            ledger,
            workers: BTreeMap::new(),
            extra_workers: Vec::new(),
            configs: BTreeMap::new(),
            expect_violations: false,
        };
        let treasury_client = processes.nats.client_as("Treasury").await;
        let js = async_nats::jetstream::new(treasury_client.clone());
        let root = keys::parse_public_key(&std::fs::read_to_string(fed.root_public_key()).expect("root.pub"))
            .expect("root public key");
        let directory = KeyDirectory::open(&js, &root).await.expect("keys");
        for record in keys::read_records(&treasury_key).expect("treasury's endorsed record") {
            directory.publish(&record).await.expect("publish treasury key");
        }
        let treasury = LedgerClient::new(treasury_client, treasury);
        for platform in PLATFORMS {
            let path = write_config_with(processes.nats.path(), platform, &url, edit);
            super::grant_configured(&treasury, &path).await;
            processes.configs.insert(platform.to_owned(), path);
            processes.spawn_worker(platform);
        }
        processes.wait_healthy(&PLATFORMS).await;
        processes
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    pub fn config(&self, platform: &str) -> Config {
        Config::load(&self.configs[platform]).expect("config")
    }

    pub fn spawn_worker(&mut self, platform: &str) -> u32 {
        let child = self.worker_process(platform);
        self.replace_worker(platform, child)
    }

    /// Makes `child` `platform`'s worker, killing the one it had.
    fn replace_worker(&mut self, platform: &str, child: Child) -> u32 {
        let pid = child.id();
        if let Some(mut old) = self.workers.insert(platform.to_owned(), child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        pid
    }

    /// Starts one more worker of `platform`, beside the one it has.
    pub fn spawn_extra_worker(&mut self, platform: &str) -> u32 {
        let child = self.worker_process(platform);
        let pid = child.id();
        self.extra_workers.push(child);
        pid
    }

    /// Starts `platform`'s worker with the fault `fault` injected (`sage_federation::fault`),
    /// in place of the one it has.
    pub fn spawn_worker_with_fault(&mut self, platform: &str, fault: &str) -> u32 {
        let mut command = self.worker_command(platform);
        let child = command
            .env(sage_federation::fault::FAULT_ENV, fault)
            .spawn()
            .expect("spawn a worker");
        self.replace_worker(platform, child)
    }

    /// Whether `platform`'s worker process has exited.
    pub fn worker_exited(&mut self, platform: &str) -> bool {
        self.workers
            .get_mut(platform)
            .is_none_or(|child| child.try_wait().ok().flatten().is_some())
    }

    fn worker_process(&self, platform: &str) -> Child {
        self.worker_command(platform).spawn().expect("spawn a worker")
    }

    fn worker_command(&self, platform: &str) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.nats.path().join(format!("worker-{platform}.log")))
            .expect("log");
        let mut command = sagefed();
        command
            .args(["worker", "--metrics", "127.0.0.1:0", "--config"])
            .arg(&self.configs[platform])
            .env("SAGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// SIGKILLs `platform`'s worker.
    pub fn kill_worker(&mut self, platform: &str) {
        if let Some(mut child) = self.workers.remove(platform) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `/metrics` URL the process logging to `log` (`ledger.log`, `worker-Legion.log`)
    /// announced on stderr.
    pub async fn metrics_url(&self, log: &str) -> String {
        let path = self.nats.path().join(log);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(url) = super::http::announced_url(&text, "metrics on ") {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "{log} never announced its metrics address:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn worker_log(&self, platform: &str) -> String {
        std::fs::read_to_string(self.nats.path().join(format!("worker-{platform}.log"))).unwrap_or_default()
    }

    /// Waits until every platform in `platforms` heartbeats.
    pub async fn wait_healthy(&self, platforms: &[&str]) {
        let registry = Registry::open(&self.nats.js().await, self.nats.key_directory().await)
            .await
            .expect("registry");
        super::wait_registry_healthy(&registry, platforms, Duration::from_secs(60), self.nats.path()).await;
    }

    /// A delegation client for `platform` in this test process.
    pub async fn client(&self, platform: &str) -> FederationClient {
        FederationClient::new(self.config(platform), self.nats.client_as(platform).await)
            .await
            .expect("client")
    }

    /// Runs `sagefed delegate --config <platform> ...` as its own process.
    pub fn delegate_cli(&self, platform: &str, args: &[&str]) -> std::process::Output {
        sagefed()
            .args(["delegate", "--json", "--config"])
            .arg(&self.configs[platform])
            .args(args)
            .output()
            .expect("run sagefed delegate")
    }

    pub async fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot::read(&self.nats.js().await).await.expect("snapshot")
    }

    /// Every account's balance (available, not locked), in micro-ATP.
    pub async fn balances(&self) -> std::collections::BTreeMap<String, i64> {
        super::balances_of(&self.snapshot().await)
    }

    /// Balance (available, not locked) of `platform`'s account of `task_type`, in micro-ATP.
    pub async fn balance(&self, platform: &str, task_type: &str) -> u64 {
        let snapshot = self.snapshot().await;
        let key = sage_federation::ledger::model::account_key(&super::lct(platform, task_type));
        snapshot.accounts.get(&key).map_or(0, |a| a.balance_uatp.micros())
    }

    /// `sagefed audit` as its own process; fails the test on any violation.
    pub fn assert_audit_clean(&self) {
        let output = sagefed()
            .args(["audit", "--nats", &self.url()])
            .args(self.nats.cli_access("Treasury"))
            .output()
            .expect("run sagefed audit");
        assert!(
            output.status.success(),
            "audit failed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

/// A task from Thor to Legion built by hand (as an attacker, or a test, would), alive for
/// `ttl_seconds`.
pub fn hand_task(
    task_id: &sage_federation::protocol::task::TaskId,
    parameters: serde_json::Value,
    timeout_seconds: u64,
    ttl_seconds: f64,
) -> sage_federation::protocol::task::FederationTask {
    let now = Timestamp::now();
    sage_federation::protocol::task::FederationTask {
        reply_to: sage_federation::nats::subjects::proof("Thor", "Legion", task_id.as_str()),
        task_id: task_id.clone(),
        source_lct: super::lct("Thor", "consciousness"),
        target_lct: super::lct("Legion", "consciousness"),
        task_type: "consciousness".into(),
        operation: "execution".into(),
        atp_budget: 5.0,
        timeout_seconds,
        parameters: parameters.as_object().cloned().expect("object"),
        created_at: now,
        expires_at: now + Duration::from_secs_f64(ttl_seconds),
        critical: false,
    }
}

/// Publishes raw bytes straight onto Legion's task subject with message id `id`.
pub async fn publish_to_legion(
    js: &async_nats::jetstream::Context,
    bytes: bytes::Bytes,
    id: &str,
) -> async_nats::jetstream::publish::PublishAck {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    js.publish_with_headers(sage_federation::nats::subjects::delegate("Legion"), headers, bytes)
        .await
        .expect("publish")
        .await
        .expect("ack")
}

impl Processes {
    /// Thor's signer, read from its key file.
    pub fn thor(&self) -> Signer {
        self.signer("Thor")
    }

    /// `platform`'s signer, read from its key file.
    pub fn signer(&self, platform: &str) -> Signer {
        Signer::new(
            platform,
            keys::read_secret(&self.config(platform).keypair_path()).expect("key"),
        )
        .expect("signer")
    }
}
