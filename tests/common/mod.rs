//! Test harness: a real `nats-server` on a free loopback port with a temporary store, found
//! or installed by the same function the product uses, killed when dropped.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use sage_federation::nats::infra;
use sage_federation::nats::server::{self as nats_server, NatsServer, ServerOptions};

pub mod browser;
pub mod federation;
pub mod http;

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
}

impl TestNats {
    /// Starts a server with `nats/test.conf` on a free port.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = NatsServer::start(
            &server_binary(),
            ServerOptions {
                config_file: Some(repo_dir().join("nats/test.conf")),
                store_dir: dir.path().join("store"),
                port: None,
                log_file: dir.path().join("server.log"),
            },
        )
        .await
        .expect("nats-server starts");
        Self { server, dir }
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

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.url())
            .await
            .expect("connect to the test server")
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
}

impl LedgerFixture {
    pub async fn start() -> Self {
        let fixture = Self::without_service().await;
        fixture.with_service(true).await
    }

    /// Server, infrastructure and published keys, but no ledger service.
    pub async fn without_service() -> Self {
        let nats = TestNats::with_infra().await;
        let directory = sage_federation::identity::directory::KeyDirectory::open(&nats.js().await)
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
                .publish(&sage_federation::identity::keys::KeyRecord::new(
                    platform,
                    &signer.verifying_key(),
                    0.0,
                ))
                .await
                .expect("publish key");
            signers.insert(platform.to_owned(), signer);
        }
        Self {
            nats,
            service: None,
            signers,
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
                sweep,
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
            sage_federation::protocol::clock::now_seconds(),
        );
        assert!(report.is_clean(), "audit violations: {:#?}", report.violations);
        report
    }
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
        created_at: sage_federation::protocol::clock::now_seconds(),
    };
    executor.sign(&proof).expect("sign proof")
}
