//! A federation on several nats-server processes, laid out by `sagefed init --topology`
//! (the library's `init_topology`): each server runs the config its machine's bundle holds,
//! on its own free loopback ports and its own store; the ledger runs next to JetStream, and
//! each platform's worker and clients connect to the server of its own machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sage_federation::config::Config;
use sage_federation::delegation::client::FederationClient;
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::federation::{FederationDir, HUB_BUNDLE, InitOptions, LEDGER_IDENTITY};
use sage_federation::identity::keys;
use sage_federation::identity::topology::{SERVER_CONFIG_FILE, TopologyPlan, init_topology};
use sage_federation::ledger::client::LedgerClient;
use sage_federation::ledger::snapshot::LedgerSnapshot;
use sage_federation::nats::connection::{self, NatsAccess};
use sage_federation::nats::topology::{Machine, Topology};
use sage_federation::protocol::envelope::Signer;
use sage_federation::state::registry::Registry;

use super::federation::{Edit, PLATFORMS, write_config_with};
use super::link_proxy::LinkProxy;
use super::{repo_dir, server_binary};

/// How long a server, a leaf link or the cluster has to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `n` distinct free loopback ports (held together while chosen, so none repeats).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("address").port())
        .collect()
}

/// One machine's nats-server process, run from its bundle's config.
pub struct Server {
    pub machine: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub client_port: u16,
    child: Option<Child>,
}

impl Server {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.machine);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let mut child = Command::new(server_binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{}'s nats-server exited with {status}:\n{}",
                    self.machine,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{}'s server did not listen", self.machine);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Makes the running server read its config again, as an operator would after
    /// `sagefed init --add-platform` (`nats-server --signal reload=PID`).
    pub fn reload(&self) {
        let child = self.child.as_ref().expect("a running server to reload");
        let status = Command::new(server_binary())
            .arg("--signal")
            .arg(format!("reload={}", child.id()))
            .status()
            .expect("run nats-server --signal");
        assert!(status.success(), "{} did not take the reload signal", self.machine);
    }

    /// SIGKILL, as a crash or a power cut of the machine would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running deployment of one topology.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub fed: FederationDir,
    pub plan: TopologyPlan,
    /// By machine name.
    pub servers: BTreeMap<String, Server>,
    /// Ledger instances: (machine, process).
    pub ledgers: Vec<(String, Child)>,
    pub workers: BTreeMap<String, Child>,
    pub configs: BTreeMap<String, PathBuf>,
    /// Hub-leaf: each leaf's link to the hub, through a proxy the test can cut.
    pub links: BTreeMap<String, LinkProxy>,
    treasury: Signer,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for child in self.workers.values_mut().chain(self.ledgers.iter_mut().map(|(_, c)| c)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The federation's own parts must never hit a server's permissions, on any server.
        if !std::thread::panicking() {
            for server in self.servers.values() {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                let violations: Vec<&str> = log.lines().filter(|l| l.contains("Permissions Violation")).collect();
                assert!(
                    violations.is_empty(),
                    "permission violations on {}:\n{}",
                    server.machine,
                    violations.join("\n")
                );
            }
        }
    }
}

fn sagefed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sagefed"))
}

/// The machines of `topology` on loopback with free ports: hub-leaf: Legion's hub, then
/// leaves for Thor and Sprout; cluster: a node per platform.
fn machines(topology: Topology) -> Vec<Machine> {
    let ports = free_ports(2 * PLATFORMS.len());
    PLATFORMS
        .iter()
        .enumerate()
        .map(|(i, name)| Machine {
            name: (*name).to_owned(),
            host: "127.0.0.1".to_owned(),
            bind: "127.0.0.1".to_owned(),
            client_port: ports[2 * i],
            // A leaf dials the hub; it listens for no link of its own.
            link_port: if topology == Topology::HubLeaf && i > 0 {
                0
            } else {
                ports[2 * i + 1]
            },
        })
        .collect()
}

impl Deployment {
    /// Makes the federation with `sagefed init`'s topology code, starts every server, the
    /// ledger (one instance on the hub; one per node on a cluster), grants each platform its
    /// configured ATP and starts a worker per platform on its own machine's server.
    pub async fn start(topology: Topology) -> Self {
        Self::start_with(topology, &|_, text| text).await
    }

    /// Like [`Deployment::start`], each platform's config text passed through `edit`.
    pub async fn start_with(topology: Topology, edit: &Edit) -> Self {
        let mut deployment = Self::start_servers_and_ledger(topology).await;
        deployment.grant_and_start_workers(edit).await;
        deployment
    }

    /// The servers and the ledger of `topology`, as a deployment has them before its admin
    /// grants anything: no platform has ATP, no key record but the ledger's own is published,
    /// no worker runs.
    pub async fn start_servers_and_ledger(topology: Topology) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fed = FederationDir::new(&dir.path().join("federation"));
        let plan = TopologyPlan {
            topology,
            machines: machines(topology),
            install_dir: None,
            store_root: dir.path().join("store"),
        };
        init_topology(
            &InitOptions {
                dir: fed.dir.clone(),
                platforms: PLATFORMS.iter().map(|p| (*p).to_owned()).collect(),
                executors: Vec::new(),
                critical: Vec::new(),
                admins: vec!["Treasury".to_owned()],
                hosts: Vec::new(),
                url: "nats://127.0.0.1:4222".to_owned(),
                server_base: std::fs::read_to_string(repo_dir().join("nats/test.conf")).expect("test.conf"),
                force: false,
            },
            &plan,
        )
        .expect("sagefed init --topology");
        let mut servers = BTreeMap::new();
        for machine in &plan.machines {
            let bundle = if topology == Topology::HubLeaf && Some(machine) == plan.machines.first() {
                HUB_BUNDLE
            } else {
                machine.name.as_str()
            };
            servers.insert(
                machine.name.clone(),
                Server {
                    machine: machine.name.clone(),
                    config: fed.bundle(bundle).join(SERVER_CONFIG_FILE),
                    log: dir.path().join(format!("server-{}.log", machine.name)),
                    client_port: machine.client_port,
                    child: None,
                },
            );
        }
        // The treasury's signing key `sagefed init` made and the root endorsed.
        let treasury_key = keys::read_secret(&fed.signing_key("Treasury")).expect("treasury key");
        let treasury = Signer::new("Treasury", treasury_key).expect("signer");
        let mut deployment = Self {
            dir,
            fed,
            plan,
            servers,
            ledgers: Vec::new(),
            workers: BTreeMap::new(),
            configs: BTreeMap::new(),
            links: BTreeMap::new(),
            treasury,
        };
        if topology == Topology::HubLeaf {
            deployment.proxy_leaf_links().await;
        }
        for server in deployment.servers.values_mut() {
            server.start();
        }
        deployment.wait_jetstream_everywhere().await;
        let ledger_machines: Vec<String> = match topology {
            Topology::Cluster => PLATFORMS.iter().map(|p| (*p).to_owned()).collect(),
            Topology::HubLeaf | Topology::Single => vec![PLATFORMS[0].to_owned()],
        };
        // The first instance creates the streams and buckets; the others find them.
        for machine in ledger_machines {
            deployment.spawn_ledger(&machine);
            deployment.wait_ledger().await;
        }
        deployment
    }

    /// Points each leaf's remote at a proxy in front of the hub's leaf port (the config
    /// `init` wrote, with only the port changed).
    async fn proxy_leaf_links(&mut self) {
        let hub = self.plan.machines[0].clone();
        let hub_url = format!("tls://{}:{}", hub.host, hub.link_port);
        for leaf in self.plan.machines.iter().skip(1) {
            let proxy = LinkProxy::start(hub.link_port).await;
            let config = &self.servers[&leaf.name].config;
            let text = std::fs::read_to_string(config).expect("leaf config");
            assert!(text.contains(&hub_url), "the leaf dials the hub at {hub_url}:\n{text}");
            let text = text.replace(&hub_url, &format!("tls://{}:{}", hub.host, proxy.port));
            std::fs::write(config, text).expect("leaf config");
            self.links.insert(leaf.name.clone(), proxy);
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The machine whose server `identity` connects to: a platform's own; the ledger's and
    /// the admin's: the hub (or the first node).
    pub fn home(&self, identity: &str) -> &Server {
        let machine = self.plan.home_of(identity).map_or(PLATFORMS[0], |m| m.name.as_str());
        &self.servers[machine]
    }

    pub fn access(&self, identity: &str, server: &Server) -> NatsAccess {
        NatsAccess::secure(&server.url(), &self.fed.creds(identity), &self.fed.ca_cert())
    }

    /// A client of `identity` on `server`.
    pub async fn connect_to(&self, identity: &str, server: &Server) -> async_nats::Client {
        connection::connect(&self.access(identity, server), identity)
            .await
            .unwrap_or_else(|e| panic!("{identity} connects to {}: {e}", server.machine))
    }

    /// A client of `identity` on its own machine's server.
    pub async fn connect(&self, identity: &str) -> async_nats::Client {
        self.connect_to(identity, self.home(identity)).await
    }

    /// The admin's client on the first running server with JetStream.
    pub async fn admin(&self) -> async_nats::Client {
        let server = self
            .plan
            .machines
            .iter()
            .map(|m| &self.servers[&m.name])
            .find(|s| s.is_running() && (self.plan.topology == Topology::Cluster || s.machine == PLATFORMS[0]))
            .expect("a running server with JetStream");
        self.connect_to("Treasury", server).await
    }

    /// Waits until JetStream answers on every server: on a leaf, through its link.
    pub async fn wait_jetstream_everywhere(&self) {
        for server in self.servers.values().filter(|s| s.is_running()) {
            let identity = if self.plan.topology == Topology::HubLeaf && server.machine != PLATFORMS[0] {
                server.machine.as_str()
            } else {
                "Treasury"
            };
            let client = self.connect_to(identity, server).await;
            let deadline = Instant::now() + START_TIMEOUT;
            let mut last;
            loop {
                let ready = match client.request("$JS.API.INFO", "".into()).await {
                    Ok(reply) => {
                        last = String::from_utf8_lossy(&reply.payload).into_owned();
                        !last.contains("\"error\"")
                    }
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                };
                if ready {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "JetStream never answered on {} ({last}):\n{}",
                    server.machine,
                    self.server_logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Every server's log, for a failure message.
    pub fn server_logs(&self) -> String {
        self.servers
            .values()
            .map(|s| {
                let log = std::fs::read_to_string(&s.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- {} ---\n{}\n",
                    s.machine,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    /// Every ledger instance's log.
    pub fn ledger_logs(&self) -> String {
        self.plan
            .machines
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(self.path().join(format!("ledger-{}.log", m.name)));
                format!("--- ledger on {} ---\n{}\n", m.name, log.unwrap_or_default())
            })
            .collect()
    }

    /// Starts a ledger instance on `machine`'s server.
    pub fn spawn_ledger(&mut self, machine: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("ledger-{machine}.log")))
            .expect("log");
        let child = sagefed()
            .args(["ledger", "serve", "--nats", &self.servers[machine].url()])
            .args(["--creds"])
            .arg(self.fed.creds(LEDGER_IDENTITY))
            .arg("--ca")
            .arg(self.fed.ca_cert())
            .args(["--replicas", &self.plan.topology.replicas().to_string()])
            .args(["--admin", "Treasury", "--admin-key"])
            .arg(keys::public_key_text(&self.treasury.verifying_key()))
            .arg("--root")
            .arg(self.fed.root_public_key())
            .env("SAGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the ledger");
        self.ledgers.push((machine.to_owned(), child));
    }

    /// The federation's root public key, which every key record must chain to.
    pub fn root(&self) -> ed25519_dalek::VerifyingKey {
        let text = std::fs::read_to_string(self.fed.root_public_key()).expect("root.pub");
        keys::parse_public_key(&text).expect("root public key")
    }

    /// SIGKILLs the ledger instances on `machine`.
    pub fn kill_ledgers_on(&mut self, machine: &str) {
        for (_, child) in self.ledgers.iter_mut().filter(|(m, _)| m == machine) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.ledgers.retain(|(m, _)| m != machine);
    }

    /// Waits until a ledger instance answers.
    pub async fn wait_ledger(&self) {
        let client = self.admin().await;
        let deadline = Instant::now() + START_TIMEOUT;
        while client.request("$SRV.PING.sagefed-ledger", "".into()).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the ledger service did not come up:\n{}\n{}",
                self.ledger_logs(),
                self.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes the treasury's key, grants each platform its configured ATP and starts a
    /// worker per platform on its own machine's server.
    pub async fn grant_and_start_workers(&mut self, edit: &Edit) {
        let admin = self.admin().await;
        let js = async_nats::jetstream::new(admin.clone());
        let directory = KeyDirectory::open(&js, &self.root()).await.expect("keys");
        for record in keys::read_records(&self.fed.signing_key("Treasury")).expect("treasury's endorsed record") {
            directory.publish(&record).await.expect("publish the treasury's key");
        }
        let ledger = LedgerClient::new(admin, self.treasury.clone());
        for platform in PLATFORMS {
            let path = write_config_with(self.dir.path(), platform, &self.home(platform).url(), edit);
            super::grant_configured(&ledger, &path).await;
            self.configs.insert(platform.to_owned(), path);
            self.spawn_worker(platform);
        }
        self.wait_healthy(&PLATFORMS).await;
    }

    /// A platform `sagefed init --add-platform` added, on `machine` (a leaf of its own in
    /// hub-leaf; `None`: it connects to the hub or first node): starts its server from its
    /// bundle, grants it its configured ATP and starts its worker with `config`.
    pub async fn add_platform(&mut self, platform: &str, machine: Option<Machine>, config: PathBuf) {
        if let Some(machine) = machine {
            let mut server = Server {
                machine: machine.name.clone(),
                config: self.fed.bundle(&machine.name).join(SERVER_CONFIG_FILE),
                log: self.path().join(format!("server-{}.log", machine.name)),
                client_port: machine.client_port,
                child: None,
            };
            server.start();
            self.servers.insert(machine.name.clone(), server);
            self.plan.machines.push(machine);
            self.wait_jetstream_everywhere().await;
        }
        let ledger = LedgerClient::new(self.admin().await, self.treasury.clone());
        super::grant_configured(&ledger, &config).await;
        self.configs.insert(platform.to_owned(), config);
        self.spawn_worker(platform);
        self.wait_healthy(&[platform]).await;
    }

    /// Starts (or restarts) `platform`'s worker on its own machine's server.
    pub fn spawn_worker(&mut self, platform: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("worker-{platform}.log")))
            .expect("log");
        let child = sagefed()
            .args(["worker", "--config"])
            .arg(&self.configs[platform])
            .env("SAGE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn a worker");
        if let Some(mut old) = self.workers.insert(platform.to_owned(), child) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// SIGKILLs `platform`'s worker.
    pub fn kill_worker(&mut self, platform: &str) {
        if let Some(mut child) = self.workers.remove(platform) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every platform in `platforms` heartbeats.
    pub async fn wait_healthy(&self, platforms: &[&str]) {
        let js = async_nats::jetstream::new(self.admin().await);
        let directory = std::sync::Arc::new(KeyDirectory::open(&js, &self.root()).await.expect("keys"));
        let registry = Registry::open(&js, directory).await.expect("registry");
        super::wait_registry_healthy(&registry, platforms, START_TIMEOUT, self.path()).await;
    }

    pub fn config(&self, platform: &str) -> Config {
        Config::load(&self.configs[platform]).expect("config")
    }

    /// A delegation client of `platform` on its own machine's server.
    pub async fn client(&self, platform: &str) -> FederationClient {
        FederationClient::new(self.config(platform), self.connect(platform).await)
            .await
            .expect("client")
    }

    /// Runs `sagefed delegate --json --config <platform> ...` as its own process.
    pub fn delegate_cli(&self, platform: &str, args: &[String]) -> std::process::Output {
        sagefed()
            .args(["delegate", "--json", "--config"])
            .arg(&self.configs[platform])
            .args(args)
            .output()
            .expect("run sagefed delegate")
    }

    pub async fn snapshot(&self) -> LedgerSnapshot {
        // A read right after a node loss or a restart can land in a leader election.
        let js = async_nats::jetstream::new(self.admin().await);
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            match LedgerSnapshot::read(&js).await {
                Ok(snapshot) => return snapshot,
                Err(e) if std::time::Instant::now() < give_up => {
                    eprintln!("ledger snapshot not readable yet ({e}); retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("ledger snapshot: {e}"),
            }
        }
    }

    /// Every account's balance, in micro-ATP.
    pub async fn balances(&self) -> BTreeMap<String, i64> {
        super::balances_of(&self.snapshot().await)
    }

    /// `sagefed audit` as its own process, as the admin, against a server with JetStream.
    pub async fn assert_audit_clean(&self) {
        let server = self
            .servers
            .values()
            .find(|s| s.is_running() && (self.plan.topology == Topology::Cluster || s.machine == PLATFORMS[0]))
            .expect("a running server");
        let output = sagefed()
            .args(["audit", "--nats", &server.url(), "--creds"])
            .arg(self.fed.creds("Treasury"))
            .arg("--ca")
            .arg(self.fed.ca_cert())
            .output()
            .expect("run sagefed audit");
        assert!(
            output.status.success(),
            "audit failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
