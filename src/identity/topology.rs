//! `sagefed init --topology hub-leaf|cluster`: the per-machine server configs, certificates
//! and link credentials on top of a federation made by [`crate::identity::federation::init`].
//!
//! Where things live (ARCHITECTURE.md, "Several machines"):
//! - hub-leaf: `bundles/hub/` is the hub machine's (JetStream, the ledger, admins); each
//!   platform with a machine of its own gets a leaf server in `bundles/<platform>/`
//!   (`nats-server.conf`, `server.pem`/`server.key` for loopback TLS, `leaf-link.conf` 0600
//!   with its nkey seed); platforms on the hub machine connect to the hub.
//! - cluster: `bundles/<machine>/` holds each node's `nats-server.conf` and certificate (its
//!   route credential); `bundles/hub/` keeps the ledger's and admins' credentials, to copy to
//!   every machine that runs a ledger instance.
//!
//! Every platform's `nats.toml` points at the server on its own machine.
//!
//! The plan is kept in the federation directory (`topology.json`), so that [`add_platform`]
//! regenerates every server config that names the platforms (the hub's or every node's
//! users and permissions; in hub-leaf, a leaf for the new platform's machine when it has one)
//! while every existing key, credential and certificate stays byte for byte as it was.

use std::path::{Path, PathBuf};

use crate::identity::federation::{self, FederationDir, HUB_BUNDLE, InitError, InitOptions, Manifest};
use crate::nats::server_config::NatsUser;
use crate::nats::topology::{self, Machine, ServerFiles, Topology};

/// The server config's name in every machine's bundle.
pub const SERVER_CONFIG_FILE: &str = "nats-server.conf";
/// A server's certificate and key in its machine's bundle.
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";
/// The CA certificate in every bundle.
pub const CA_FILE: &str = "ca.pem";
/// The leaf's link credentials (0600), included by its server config.
pub const LEAF_LINK_FILE: &str = "leaf-link.conf";

/// The machines of a topology and where their files will be.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TopologyPlan {
    pub topology: Topology,
    /// Hub-leaf: the hub first, then one machine per leaf (named after its platform).
    /// Cluster: the three nodes. Single: empty.
    pub machines: Vec<Machine>,
    /// Where a bundle's files will be on its machine (`/etc/sagefed`); `None`: where
    /// `sagefed init` wrote them (absolute paths; for trying it out on one machine).
    pub install_dir: Option<PathBuf>,
    /// Each server's JetStream store is `<store_root>/<machine in lower case>`.
    pub store_root: PathBuf,
}

/// Why a plan cannot be made into bundles.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("a cluster needs exactly {n} nodes (--node), got {0}", n = topology::CLUSTER_NODES)]
    ClusterSize(usize),
    #[error("hub-leaf needs a hub machine (the first --node)")]
    NoHub,
    #[error("leaf machine {0} has no platform of that name; a leaf is named after its platform")]
    LeafWithoutPlatform(String),
    #[error("machine name {0:?} appears twice")]
    Duplicate(String),
    #[error(
        "a machine of its own (--node) is for a leaf of a hub-leaf federation; in a {0} \
         federation a new platform connects to {1}"
    )]
    NoMachineHere(&'static str, &'static str),
    #[error("the new platform's machine must be named after it ({0}), got {1}")]
    MachineName(String, String),
}

/// Whether [`write_topology`] makes every server's certificate anew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Certificates {
    /// A new federation: every server gets one.
    Issue,
    /// A platform added: only a server that has none (a new leaf) gets one.
    KeepExisting,
}

/// One rendered server config: the bundle it belongs to and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedServer {
    pub machine: String,
    pub bundle: String,
    pub text: String,
}

impl TopologyPlan {
    /// Checks the plan against the federation's identities.
    pub fn check(&self, identities: &[NatsUser]) -> Result<(), PlanError> {
        for (i, m) in self.machines.iter().enumerate() {
            if self.machines[..i].iter().any(|o| o.name == m.name) {
                return Err(PlanError::Duplicate(m.name.clone()));
            }
        }
        match self.topology {
            Topology::Single => Ok(()),
            Topology::Cluster if self.machines.len() != topology::CLUSTER_NODES => {
                Err(PlanError::ClusterSize(self.machines.len()))
            }
            Topology::Cluster => Ok(()),
            Topology::HubLeaf => {
                let Some((_, leaves)) = self.machines.split_first() else {
                    return Err(PlanError::NoHub);
                };
                match leaves
                    .iter()
                    .find(|m| !identities.iter().any(|i| i.role.is_platform() && i.name == m.name))
                {
                    Some(m) => Err(PlanError::LeafWithoutPlatform(m.name.clone())),
                    None => Ok(()),
                }
            }
        }
    }

    /// Where `file` of `bundle` is on its machine.
    fn on_machine(&self, fed: &FederationDir, bundle: &str, file: &str) -> PathBuf {
        match &self.install_dir {
            Some(dir) => dir.join(file),
            None => {
                let dir = fed.bundle(bundle);
                std::fs::canonicalize(&dir).unwrap_or(dir).join(file)
            }
        }
    }

    /// The machine whose server `platform` connects to.
    pub fn home_of(&self, platform: &str) -> Option<&Machine> {
        match self.topology {
            Topology::Single => None,
            Topology::HubLeaf => self
                .machines
                .iter()
                .skip(1)
                .find(|m| m.name == platform)
                .or(self.machines.first()),
            Topology::Cluster => self
                .machines
                .iter()
                .find(|m| m.name == platform)
                .or(self.machines.first()),
        }
    }

    /// Every server config of the plan, for `identities`; files are placed as
    /// [`TopologyPlan::install_dir`] says, relative to the bundles in `fed`.
    pub fn render(&self, fed: &FederationDir, identities: &[NatsUser]) -> Vec<RenderedServer> {
        let files = |bundle: &str, machine: &Machine| -> (PathBuf, PathBuf, PathBuf, PathBuf) {
            (
                self.on_machine(fed, bundle, SERVER_CERT_FILE),
                self.on_machine(fed, bundle, SERVER_KEY_FILE),
                self.on_machine(fed, bundle, CA_FILE),
                self.store_root.join(machine.name.to_lowercase()),
            )
        };
        let mut out = Vec::new();
        match self.topology {
            Topology::Single => {}
            Topology::HubLeaf => {
                let Some((hub, leaves)) = self.machines.split_first() else {
                    return out;
                };
                let (cert, key, ca, store) = files(HUB_BUNDLE, hub);
                out.push(RenderedServer {
                    machine: hub.name.clone(),
                    bundle: HUB_BUNDLE.to_owned(),
                    text: topology::hub_config(hub, identities, &server_files(&cert, &key, &ca, &store)),
                });
                for (leaf, user) in leaves
                    .iter()
                    .filter_map(|m| identities.iter().find(|u| u.name == m.name).map(|u| (m, u)))
                {
                    let (cert, key, ca, store) = files(&leaf.name, leaf);
                    out.push(RenderedServer {
                        machine: leaf.name.clone(),
                        bundle: leaf.name.clone(),
                        text: topology::leaf_config(
                            leaf,
                            user,
                            hub,
                            LEAF_LINK_FILE,
                            &server_files(&cert, &key, &ca, &store),
                        ),
                    });
                }
            }
            Topology::Cluster => {
                for node in &self.machines {
                    let (cert, key, ca, store) = files(&node.name, node);
                    out.push(RenderedServer {
                        machine: node.name.clone(),
                        bundle: node.name.clone(),
                        text: topology::cluster_config(
                            node,
                            &self.machines,
                            identities,
                            &server_files(&cert, &key, &ca, &store),
                        ),
                    });
                }
            }
        }
        out
    }
}

fn server_files<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path, store_dir: &'a Path) -> ServerFiles<'a> {
    ServerFiles {
        cert,
        key,
        ca,
        store_dir,
    }
}

/// Creates a federation laid out as `plan` says: [`federation::init`], then each machine's
/// server config, certificate and link credentials, and each platform's `nats.toml` pointing
/// at its own machine's server.
pub fn init_topology(options: &InitOptions, plan: &TopologyPlan) -> Result<Manifest, InitError> {
    let manifest = federation::init(options)?;
    write_topology(&FederationDir::new(&options.dir), &manifest, plan, Certificates::Issue)?;
    Ok(manifest)
}

/// The plan `sagefed init --topology` kept in `fed`; `None` for a single server.
pub fn load_plan(fed: &FederationDir) -> Result<Option<TopologyPlan>, InitError> {
    let path = fed.topology_plan();
    if !path.is_file() {
        return Ok(None);
    }
    let text = federation::read_text(&path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| InitError::Read {
        path,
        why: e.to_string(),
    })
}

/// Adds `platform` to the federation in `dir` ([`federation::add_platform`]) and regenerates
/// the servers' configs of its layout: the hub's and every leaf's in hub-leaf (with a new
/// leaf when `machine`, named after the platform, is given; without one the platform
/// connects to the hub), every node's in a cluster (the platform connects to the first
/// node). Nobody's key, credential or certificate changes. Then reload the hub's server, or
/// every node's (`nats-server --signal reload`), and install the new bundle.
pub fn add_platform(
    dir: &Path,
    platform: &str,
    role: crate::nats::permissions::Role,
    machine: Option<Machine>,
) -> Result<Manifest, InitError> {
    let fed = FederationDir::new(dir);
    let Some(mut plan) = load_plan(&fed)? else {
        if machine.is_some() {
            return Err(InitError::Topology(PlanError::NoMachineHere(
                "single-server",
                "the one server",
            )));
        }
        return federation::add_platform(dir, platform, role);
    };
    if let Some(machine) = machine {
        match plan.topology {
            Topology::HubLeaf if machine.name == platform => plan.machines.push(machine),
            Topology::HubLeaf => {
                return Err(InitError::Topology(PlanError::MachineName(
                    platform.to_owned(),
                    machine.name,
                )));
            }
            Topology::Cluster => {
                return Err(InitError::Topology(PlanError::NoMachineHere(
                    "cluster",
                    "the first node",
                )));
            }
            Topology::Single => {
                return Err(InitError::Topology(PlanError::NoMachineHere(
                    "single-server",
                    "the one server",
                )));
            }
        }
    }
    // Checked before anything is written: a bad plan leaves the federation as it was.
    let mut identities = fed.load()?.identities;
    identities.push(NatsUser {
        name: platform.to_owned(),
        role,
        nkey: String::new(),
    });
    plan.check(&identities)?;
    let manifest = federation::add_platform(dir, platform, role)?;
    write_topology(&fed, &manifest, &plan, Certificates::KeepExisting)?;
    Ok(manifest)
}

/// Writes the servers' files of `plan` into the bundles of the federation in `fed`, and the
/// plan itself.
pub fn write_topology(
    fed: &FederationDir,
    manifest: &Manifest,
    plan: &TopologyPlan,
    certificates: Certificates,
) -> Result<(), InitError> {
    plan.check(&manifest.identities)?;
    if plan.topology == Topology::Single {
        return Ok(());
    }
    let plan_text = serde_json::to_string_pretty(plan).map_err(|source| InitError::Encode {
        what: "the topology plan",
        source,
    })?;
    federation::write_file(&fed.topology_plan(), &(plan_text + "\n"), false)?;
    let ca = federation::read_text(&fed.ca_cert())?;
    for server in plan.render(fed, &manifest.identities) {
        let machine = plan
            .machines
            .iter()
            .find(|m| m.name == server.machine)
            .ok_or_else(|| InitError::UnknownMachine(server.machine.clone()))?;
        let bundle = fed.bundle(&server.bundle);
        let has_certificate = bundle.join(SERVER_CERT_FILE).is_file() && bundle.join(SERVER_KEY_FILE).is_file();
        if certificates == Certificates::Issue || !has_certificate {
            let route = plan.topology == Topology::Cluster;
            let (cert, key) = federation::issue_certificate(fed, std::slice::from_ref(&machine.host), route)?;
            federation::write_file(&bundle.join(SERVER_CERT_FILE), &cert, false)?;
            federation::write_file(&bundle.join(SERVER_KEY_FILE), &key, true)?;
        }
        federation::write_file(&bundle.join(CA_FILE), &ca, false)?;
        federation::write_file(&bundle.join(SERVER_CONFIG_FILE), &server.text, false)?;
        if plan.topology == Topology::HubLeaf && server.bundle != HUB_BUNDLE {
            let (seed, _) = crate::nats::connection::read_nkey(&fed.creds(&machine.name)).map_err(InitError::Creds)?;
            federation::write_file(&bundle.join(LEAF_LINK_FILE), &topology::leaf_seed_include(&seed), true)?;
        }
    }
    if plan.topology == Topology::Cluster {
        // The hub bundle's single-server config would mislead: each node has its own.
        for file in [SERVER_CONFIG_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE] {
            let _ = std::fs::remove_file(fed.bundle(HUB_BUNDLE).join(file));
        }
    }
    for identity in manifest.identities.iter().filter(|i| i.role.is_platform()) {
        if let Some(home) = plan.home_of(&identity.name) {
            federation::write_platform_nats_toml(
                fed,
                &identity.name,
                &format!("nats://127.0.0.1:{}", home.client_port),
            )?;
        }
    }
    Ok(())
}
