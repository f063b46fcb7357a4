//! Test harness: a real `nats-server` on a free loopback port with a temporary store, found
//! or installed by the same function the product uses, killed when dropped.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use sage_federation::identity::federation::{FederationDir, InitOptions, LEDGER_IDENTITY, init as federation_init};
use sage_federation::nats::connection::{self, NatsAccess};
use sage_federation::nats::infra;
use sage_federation::nats::server::{self as nats_server, NatsServer, ServerOptions};
use sage_federation::protocol::clock::Timestamp;
use std::time::Duration;

pub mod apt;
pub mod attacker;
pub mod browser;
pub mod federation;
pub mod http;
pub mod link_proxy;
pub mod topology;
pub mod witness;

/// The repository root.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The server binary: `NATS_SERVER_BIN`, `PATH`, or `.tools/` (installed there if missing).
pub fn server_binary() -> PathBuf {
    let tools = std::env::var_os(nats_server::TOOLS_DIR_ENV).map_or_else(|| repo_dir().join(".tools"), PathBuf::from);
    match nats_server::find_or_install(&tools) {
        Ok(path) => path,
        Err(e) => panic!("the tests need nats-server >= 2.12 and could not find or install it: {e}"),
    }
}

/// A running test server and its temporary directory.
pub struct TestNats {
    pub server: NatsServer,
    pub dir: tempfile::TempDir,
    /// The federation `sagefed init` made for a secure server; `None`: open server.
    pub federation: Option<FederationDir>,
}

/// Platforms of a secure test federation: the seed's three and `Mallory`, a platform whose
/// valid credentials an attacker holds.
pub const SECURE_PLATFORMS: [&str; 4] = ["Legion", "Thor", "Sprout", "Mallory"];
/// The platform of [`TestNats::start_secure`] the root grants `federation:critical` (as
/// `configs/thor.toml` asks); the others may not queue critical tasks.
pub const CRITICAL_PLATFORM: &str = "Thor";
/// A platform of a secure test federation that the root did not grant `federation:delegate`.
pub const EXECUTOR_ONLY_PLATFORM: &str = "Watcher";
/// The identity a secure test server's [`TestNats::client`] connects as.
pub const DEFAULT_TEST_IDENTITY: &str = "Thor";

impl TestNats {
    /// Starts an open server (no credentials, no TLS) with `nats/test.conf` on a free port:
    /// for tests of the library's logic.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = repo_dir().join("nats/test.conf");
        let server = Self::spawn(&dir, config).await;
        Self {
            server,
            dir,
            federation: None,
        }
    }

    /// Starts a server as `sagefed init` configures it: nkey users with the permission
    /// table, TLS with the federation's CA. Clients connect as an identity.
    pub async fn start_secure() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fed_dir = dir.path().join("federation");
        federation_init(&InitOptions {
            dir: fed_dir.clone(),
            platforms: SECURE_PLATFORMS
                .iter()
                .chain(std::iter::once(&EXECUTOR_ONLY_PLATFORM))
                .map(|p| (*p).to_owned())
                .collect(),
            executors: vec![EXECUTOR_ONLY_PLATFORM.to_owned()],
            critical: vec![CRITICAL_PLATFORM.to_owned()],
            admins: vec!["Treasury".to_owned()],
            hosts: Vec::new(),
            url: "nats://127.0.0.1:4222".to_owned(),
            server_base: std::fs::read_to_string(repo_dir().join("nats/test.conf")).expect("test.conf"),
            force: false,
        })
        .expect("sagefed init");
        let fed = FederationDir::new(&fed_dir);
        let server = Self::spawn(&dir, fed.server_config()).await;
        Self {
            server,
            dir,
            federation: Some(fed),
        }
    }

    async fn spawn(dir: &tempfile::TempDir, config: PathBuf) -> NatsServer {
        NatsServer::start(
            &server_binary(),
            ServerOptions {
                config_file: Some(config),
                store_dir: dir.path().join("store"),
                port: None,
                log_file: dir.path().join("server.log"),
            },
        )
        .await
        .expect("nats-server starts")
    }

    /// How `identity` connects: its credentials and the CA on a secure server.
    pub fn access(&self, identity: &str) -> NatsAccess {
        match &self.federation {
            Some(fed) => NatsAccess::secure(&self.url(), &fed.creds(identity), &fed.ca_cert()),
            None => NatsAccess::open(&self.url()),
        }
    }

    /// A client connected as `identity` (ignored on an open server).
    pub async fn client_as(&self, identity: &str) -> async_nats::Client {
        connection::connect_options(&self.access(identity), identity)
            .expect("connect options")
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .expect("connect to the test server")
    }

    /// Command-line arguments giving `identity`'s credentials and the CA, if secure.
    pub fn cli_access(&self, identity: &str) -> Vec<std::ffi::OsString> {
        let access = self.access(identity);
        let mut args = Vec::new();
        if let Some(creds) = access.creds {
            args.extend(["--creds".into(), creds.into_os_string()]);
        }
        if let Some(ca) = access.ca {
            args.extend(["--ca".into(), ca.into_os_string()]);
        }
        args
    }

    /// Starts a secure server and creates every stream and bucket, as the ledger does.
    pub async fn secure_with_infra() -> Self {
        let nats = Self::start_secure().await;
        infra::ensure(&jetstream::new(nats.client_as(LEDGER_IDENTITY).await), 1)
            .await
            .expect("streams and buckets");
        nats
    }

    /// Starts a server and creates every stream and bucket.
    pub async fn with_infra() -> Self {
        let nats = Self::start().await;
        infra::ensure(&nats.js().await, 1).await.expect("streams and buckets");
        nats
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The root public key of a secure server's federation.
    pub fn root(&self) -> ed25519_dalek::VerifyingKey {
        let fed = self.federation.as_ref().expect("a secure server has a federation");
        let text = std::fs::read_to_string(fed.root_public_key()).expect("root.pub");
        sage_federation::identity::keys::parse_public_key(&text).expect("root public key")
    }

    /// A key directory trusting this server's federation root, read as the admin.
    pub async fn key_directory(&self) -> std::sync::Arc<sage_federation::identity::directory::KeyDirectory> {
        std::sync::Arc::new(
            sage_federation::identity::directory::KeyDirectory::open(&self.js().await, &self.root())
                .await
                .expect("keys"),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A client; on a secure server it connects as [`DEFAULT_TEST_IDENTITY`].
    pub async fn client(&self) -> async_nats::Client {
        self.client_as(DEFAULT_TEST_IDENTITY).await
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }
}

/// Platforms every ledger test knows, with signing keys published to the registry.
pub const PLATFORMS: [&str; 5] = ["Treasury", "Legion", "Thor", "Sprout", "Mallory"];

/// A test server with the ledger service running in this process and a signer and a
/// ledger client per platform. `Treasury` is the only ledger admin.
pub struct LedgerFixture {
    pub nats: TestNats,
    pub service: Option<sage_federation::ledger::service::LedgerService>,
    pub signers: std::collections::HashMap<String, sage_federation::protocol::envelope::Signer>,
    /// The root every key of the fixture chains to.
    pub root: ed25519_dalek::SigningKey,
}

impl LedgerFixture {
    pub async fn start() -> Self {
        let fixture = Self::without_service().await;
        fixture.with_service(true).await
    }

    /// Server, infrastructure and published keys, but no ledger service.
    pub async fn without_service() -> Self {
        let nats = TestNats::with_infra().await;
        let root = sage_federation::identity::keys::generate().expect("random");
        let directory =
            sage_federation::identity::directory::KeyDirectory::open(&nats.js().await, &root.verifying_key())
                .await
                .expect("keys");
        let mut signers = std::collections::HashMap::new();
        for platform in PLATFORMS {
            let signer = sage_federation::protocol::envelope::Signer::new(
                platform,
                sage_federation::identity::keys::generate().expect("random"),
            )
            .expect("signer");
            directory
                .publish(&endorsed(&root, platform, &signer.verifying_key()))
                .await
                .expect("publish key");
            signers.insert(platform.to_owned(), signer);
        }
        Self {
            nats,
            service: None,
            signers,
            root,
        }
    }

    pub async fn with_service(mut self, sweep: bool) -> Self {
        self.service = Some(self.start_service(sweep).await);
        self
    }

    pub async fn start_service(&self, sweep: bool) -> sage_federation::ledger::service::LedgerService {
        sage_federation::ledger::service::LedgerService::start(
            self.nats.client().await,
            sage_federation::ledger::service::LedgerOptions {
                admins: ["Treasury".to_owned()].into_iter().collect(),
                admin_keys: Default::default(),
                root: self.root.verifying_key(),
                sweep,
                reputation_half_life: std::time::Duration::from_secs(
                    sage_federation::state::reputation::HALF_LIFE_SECONDS_DEFAULT,
                ),
            },
        )
        .await
        .expect("ledger service")
    }

    pub fn signer(&self, platform: &str) -> &sage_federation::protocol::envelope::Signer {
        &self.signers[platform]
    }

    pub async fn client(&self, platform: &str) -> sage_federation::ledger::client::LedgerClient {
        sage_federation::ledger::client::LedgerClient::new(self.nats.client().await, self.signer(platform).clone())
    }

    pub async fn snapshot(&self) -> sage_federation::ledger::snapshot::LedgerSnapshot {
        sage_federation::ledger::snapshot::LedgerSnapshot::read(&self.nats.js().await)
            .await
            .expect("snapshot")
    }

    /// Runs the audit and fails the test on any violation.
    pub async fn assert_audit_clean(&self) -> sage_federation::ledger::audit::AuditReport {
        let report = sage_federation::ledger::audit::audit(
            &self.snapshot().await,
            sage_federation::protocol::clock::Timestamp::now(),
        );
        assert!(report.is_clean(), "audit violations: {:#?}", report.violations);
        report
    }
}

/// `platform`'s key record for `key`, endorsed by `root` with `federation:delegate`.
pub fn endorsed(
    root: &ed25519_dalek::SigningKey,
    platform: &str,
    key: &ed25519_dalek::VerifyingKey,
) -> sage_federation::identity::keys::KeyRecord {
    sage_federation::identity::chain::endorse(
        sage_federation::identity::keys::KeyRecord {
            delegate: true,
            ..sage_federation::identity::keys::KeyRecord::new(platform, key, Timestamp::EPOCH)
        },
        sage_federation::identity::chain::Endorser::Root,
        root,
    )
}

/// `lct:web4:agent:dp@<platform>#<task_type>`.
pub fn lct(platform: &str, task_type: &str) -> sage_federation::protocol::lct::Lct {
    sage_federation::protocol::lct::Lct::new("dp", platform, task_type).expect("lct")
}

/// A proof of `task_id` signed by `executor`'s platform.
pub fn signed_proof(
    executor: &sage_federation::protocol::envelope::Signer,
    task_id: &sage_federation::protocol::task::TaskId,
    delegator: &sage_federation::protocol::lct::Lct,
    executor_lct: &sage_federation::protocol::lct::Lct,
    consumed: f64,
    quality: f64,
    status: sage_federation::protocol::proof::ProofStatus,
) -> bytes::Bytes {
    let proof = sage_federation::protocol::proof::ExecutionProof {
        task_id: task_id.clone(),
        executor_lct: executor_lct.clone(),
        delegator_lct: delegator.clone(),
        status,
        reason: if status == sage_federation::protocol::proof::ProofStatus::Completed {
            String::new()
        } else {
            "test".into()
        },
        atp_consumed: consumed,
        execution_time: 0.01,
        quality_score: quality,
        result: serde_json::Map::new(),
        created_at: sage_federation::protocol::clock::Timestamp::now(),
    };
    executor.sign(&proof).expect("sign proof")
}

/// The terms of a lock of `atp` ATP on task `task_id` from `delegator` to `executor`,
/// threshold 0.7, deadline in 60 s and expiry in 120 s; tests change one term with `..`.
pub fn lock_terms(
    task_id: &sage_federation::protocol::task::TaskId,
    delegator: &sage_federation::protocol::lct::Lct,
    executor: &sage_federation::protocol::lct::Lct,
    atp: f64,
) -> sage_federation::ledger::client::LockTerms {
    let now = sage_federation::protocol::clock::Timestamp::now();
    sage_federation::ledger::client::LockTerms {
        task_id: task_id.clone(),
        delegator: delegator.clone(),
        executor: executor.clone(),
        amount: sage_federation::protocol::atp::Atp::from_f64(atp, "amount").expect("a valid amount"),
        quality_threshold: 0.7,
        deadline: now + Duration::from_secs(60),
        expires_at: now + Duration::from_secs(120),
    }
}

/// The outcome `sagefed delegate --json` printed, or a panic showing what it printed instead.
pub fn outcome_of(output: &std::process::Output) -> sage_federation::delegation::client::DelegationOutcome {
    assert!(output.status.code().is_some(), "sagefed delegate crashed");
    serde_json::from_slice::<serde_json::Value>(&output.stdout)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_else(|| {
            panic!(
                "no outcome: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// `atp` in micro-ATP.
pub fn micros(atp: f64) -> i64 {
    (atp * 1e6).round() as i64
}

/// Every account's balance (available, not locked) in `snapshot`, in micro-ATP.
pub fn balances_of(
    snapshot: &sage_federation::ledger::snapshot::LedgerSnapshot,
) -> std::collections::BTreeMap<String, i64> {
    snapshot
        .accounts
        .values()
        .map(|a| (a.lct.to_string(), a.balance_uatp.micros() as i64))
        .collect()
}

/// A delegation from the caller to Legion of "add 1 and 2" (execution, `consciousness`) under
/// `task_id`, with `budget` ATP and `timeout_seconds`.
pub fn add_on_legion(
    task_id: &sage_federation::protocol::task::TaskId,
    budget: f64,
    timeout_seconds: u64,
) -> sage_federation::delegation::client::DelegationRequest {
    sage_federation::delegation::client::DelegationRequest {
        to: Some("Legion".into()),
        task_type: "consciousness".into(),
        operation: "execution".into(),
        budget,
        timeout_seconds,
        parameters: serde_json::json!({"steps": [{"op": "add", "args": [1, 2]}]})
            .as_object()
            .cloned()
            .expect("object"),
        task_id: Some(task_id.clone()),
    }
}

/// Waits, at most `timeout`, until every platform in `platforms` has a healthy record with
/// capacity in `registry`; the failure names `logs`, where the processes' logs are.
pub async fn wait_registry_healthy(
    registry: &sage_federation::state::registry::Registry,
    platforms: &[&str],
    timeout: std::time::Duration,
    logs: &Path,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut healthy = 0;
        for platform in platforms {
            if registry
                .get(platform)
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.is_healthy(sage_federation::protocol::clock::Timestamp::now()) && r.capacity > 0)
            {
                healthy += 1;
            }
        }
        if healthy == platforms.len() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers did not come up; see {}",
            logs.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Legion's completed proof of Thor's `task_id` in `task_type`, with `result`, claiming
/// `consumed` ATP and quality `quality` (unsigned: tests sign it as they need).
pub fn completed_proof(
    task_id: &sage_federation::protocol::task::TaskId,
    task_type: &str,
    consumed: f64,
    quality: f64,
    result: serde_json::Map<String, serde_json::Value>,
) -> sage_federation::protocol::proof::ExecutionProof {
    sage_federation::protocol::proof::ExecutionProof {
        task_id: task_id.clone(),
        executor_lct: lct("Legion", task_type),
        delegator_lct: lct("Thor", task_type),
        status: sage_federation::protocol::proof::ProofStatus::Completed,
        reason: String::new(),
        atp_consumed: consumed,
        execution_time: 0.5,
        quality_score: quality,
        result,
        created_at: sage_federation::protocol::clock::Timestamp::now(),
    }
}

/// Grants the platform of the config at `path` the ATP its config says, as the admin.
pub async fn grant_configured(ledger: &sage_federation::ledger::client::LedgerClient, path: &Path) {
    let config = sage_federation::config::Config::load(path).expect("config loads");
    for (task_type, resource) in &config.resources {
        let lct = config.lct(task_type.as_str()).expect("lct");
        let reply = ledger
            .grant(
                &format!("genesis-{}", lct.key_path().replace('.', "_")),
                &lct,
                resource.atp_budget.atp().as_f64(),
            )
            .await
            .expect("grant");
        assert_eq!(
            reply.outcome,
            sage_federation::ledger::protocol::Outcome::Applied,
            "{reply:?}"
        );
    }
}

/// [`add_on_legion`] (5 ATP, 30 s) that first waits `wait_ms`: long enough for an attacker to
/// act while it runs.
pub fn waiting_on_legion(
    task_id: &sage_federation::protocol::task::TaskId,
    wait_ms: u64,
) -> sage_federation::delegation::client::DelegationRequest {
    sage_federation::delegation::client::DelegationRequest {
        parameters: serde_json::json!({"steps": [{"op": "wait", "args": [wait_ms]}, {"op": "add", "args": [1, 2]}]})
            .as_object()
            .cloned()
            .expect("object"),
        ..add_on_legion(task_id, 5.0, 30)
    }
}
