//! Test harness: a real `nats-server` on a free loopback port with a temporary store, found
//! or installed by the same function the product uses, killed when dropped.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use sage_federation::infra;
use sage_federation::nats_server::{self, NatsServer, ServerOptions};

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
