//! Server configs for a federation on several machines, rendered as text (pure: no I/O).
//!
//! Two layouts besides one server ([`Topology::Single`], `sagefed up`):
//! - [`Topology::HubLeaf`]: one hub (Legion) holds JetStream: every stream and bucket, the
//!   ledger. Each Jetson runs a leaf server *without* JetStream that its workers and clients
//!   connect to on loopback; the leaf dials the hub over TLS and authenticates with its
//!   platform's nkey, and the hub gives that link exactly the platform's permissions, so a
//!   leaf machine's owner gains nothing by editing its own server's config. JetStream API
//!   requests cross the link to the hub; while the link is down they find no responder and
//!   fail fast.
//! - [`Topology::Cluster`]: three nodes, routes over mutual TLS (each node's certificate,
//!   signed by the federation CA, is its route credential), R3 streams and buckets.
//!
//! Every machine's server name is derived from the machine's name; nothing is shared between
//! configs but the CA.

use std::fmt::Write as _;
use std::path::Path;

use crate::nats::permissions::Permissions;
use crate::nats::server_config::{self, NatsUser};
use crate::nats::subjects;

/// How the machines of a federation are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// One server: everything on one machine.
    Single,
    /// A JetStream hub and leaf servers on the Jetsons.
    HubLeaf,
    /// Three clustered servers with R3 streams and buckets.
    Cluster,
}

/// Nodes of a cluster: R3 needs three, and more would not add a replica.
pub const CLUSTER_NODES: usize = 3;
/// Replicas of each stream and bucket on a cluster (`sagefed ledger serve --replicas`).
pub const CLUSTER_REPLICAS: usize = 3;
/// The cluster's name (every node's `cluster.name`).
pub const CLUSTER_NAME: &str = "sagefed";
/// The NATS client port by default.
pub const CLIENT_PORT_DEFAULT: u16 = 4222;
/// The hub's leaf node port by default.
pub const LEAF_PORT_DEFAULT: u16 = 7422;
/// The cluster route port by default.
pub const ROUTE_PORT_DEFAULT: u16 = 6222;
/// Seconds a leaf waits between attempts to reach the hub.
pub const LEAF_RECONNECT_SECONDS: u32 = 1;

impl std::str::FromStr for Topology {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "single" => Ok(Self::Single),
            "hub-leaf" => Ok(Self::HubLeaf),
            "cluster" => Ok(Self::Cluster),
            other => Err(format!("unknown topology {other:?}: use single, hub-leaf or cluster")),
        }
    }
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::HubLeaf => "hub-leaf",
            Self::Cluster => "cluster",
        }
    }

    /// Replicas of streams and buckets in this layout.
    pub fn replicas(self) -> usize {
        match self {
            Self::Cluster => CLUSTER_REPLICAS,
            Self::Single | Self::HubLeaf => 1,
        }
    }
}

/// One machine's server: where it listens and what other machines dial.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    /// The machine's name (`Legion`); its server is named `sagefed-<name in lower case>`.
    pub name: String,
    /// The name or address the other machines dial (its certificate covers it).
    pub host: String,
    /// The interface its listeners bind (`0.0.0.0` on a network, `127.0.0.1` in tests).
    pub bind: String,
    /// The NATS client port.
    pub client_port: u16,
    /// The hub's leaf node port, or a cluster node's route port; unused on a leaf.
    pub link_port: u16,
}

impl Machine {
    pub fn server_name(&self) -> String {
        format!("sagefed-{}", self.name.to_lowercase())
    }
    fn link_url(&self, scheme: &str) -> String {
        format!("{scheme}://{}:{}", self.host, self.link_port)
    }
}

/// The interface a deployed server's listeners bind: every interface (the firewall decides
/// who reaches them; docs/deployment.md lists the ports).
pub const BIND_ALL: &str = "0.0.0.0";
/// The interface a leaf's client listener binds: only its own machine connects to it.
pub const LOOPBACK: &str = "127.0.0.1";

impl Machine {
    /// `NAME=HOST[:CLIENT_PORT[:LINK_PORT]]` (`Thor=thor.local`, `n1=127.0.0.1:4222:6222`),
    /// listening on [`BIND_ALL`]; ports default to 4222 and `link_port_default`.
    pub fn parse(spec: &str, link_port_default: u16) -> Result<Self, String> {
        let usage = || format!("{spec:?}: expected NAME=HOST[:CLIENT_PORT[:LINK_PORT]]");
        let (name, rest) = spec.split_once('=').ok_or_else(usage)?;
        let mut parts = rest.split(':');
        let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(usage)?;
        let port = |p: Option<&str>, default: u16| p.map_or(Ok(default), |p| p.parse::<u16>().map_err(|_| usage()));
        let client_port = port(parts.next(), CLIENT_PORT_DEFAULT)?;
        let link_port = port(parts.next(), link_port_default)?;
        if name.is_empty() || parts.next().is_some() {
            return Err(usage());
        }
        Ok(Self {
            name: name.to_owned(),
            host: host.to_owned(),
            bind: BIND_ALL.to_owned(),
            client_port,
            link_port,
        })
    }
}

/// The files a server config points at, where they will be on its machine.
#[derive(Clone, Debug)]
pub struct ServerFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
    /// JetStream's store directory (none on a leaf).
    pub store_dir: &'a Path,
}

/// Limits every server of a topology runs with (the values of `nats/dev.conf`).
const LIMITS: &str = "max_payload: 1MB\nmax_connections: 1024\nmax_pending: 64MB\nwrite_deadline: \"10s\"\n";

fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

fn path(p: &Path) -> String {
    quoted(&p.display().to_string())
}

fn header(role: &str, machine: &Machine) -> String {
    format!(
        "# {role} {name}, generated by `sagefed init`; regenerate rather than edit.\n\
         server_name: {server}\nlisten: {listen}\n{LIMITS}",
        name = machine.name,
        server = quoted(&machine.server_name()),
        listen = quoted(&format!("{}:{}", machine.bind, machine.client_port)),
    )
}

/// JetStream with every write fsynced before its ack (nats/README.md: why), in `domain`.
fn jetstream_block(store_dir: &Path, domain: Option<&str>) -> String {
    format!(
        "jetstream {{\n{}  store_dir: {}\n  max_memory_store: 256MB\n  max_file_store: 8GB\n  sync_interval: always\n}}\n",
        domain.map_or_else(String::new, |d| format!("  domain: {}\n", quoted(d))),
        path(store_dir)
    )
}

/// `p` with each JetStream subject also as it arrives through a leaf's mapping to the
/// hub's domain: what a leaf's clients may do, they may do across the link, and no more.
pub fn through_hub_domain(mut p: Permissions) -> Permissions {
    let mapped: Vec<String> = p
        .publish
        .iter()
        .filter_map(|s| subjects::through_domain(s, subjects::HUB_DOMAIN))
        .collect();
    p.publish.extend(mapped);
    p
}

/// `user`'s permissions on the hub: [`through_hub_domain`], and its proof slots spelled so
/// that the hub sends the proofs stream's interest over the user's leaf link.
///
/// The hub propagates a subscription over a leaf link only if the link's user may publish
/// on the subscription's whole subject (nats-server `canSubscribe`; a wildcard allow such as
/// `sage.proof.*.<me>.*` does not count as matching the stream's `sage.proof.*.*.*`). So
/// an executor may publish on every proof subject except those of each other platform in
/// `platforms`: the allow makes the stream's interest cross the link, the deny confines the
/// executor to its own slots (checked on every message from a leaf, `processInboundLeafMsg`).
/// A platform added later is denied to the others when the hub's config is regenerated.
pub fn hub_permissions(user: &NatsUser, p: Permissions, platforms: &[&str]) -> Permissions {
    let mut p = through_hub_domain(p);
    if p.publish.iter().any(|s| subjects::is_proofs_by(s)) {
        debug_assert!(
            p.publish.contains(&subjects::proofs_by(&user.name)),
            "proof slots of its own name"
        );
        p.publish.push(subjects::PROOFS_SUBJECTS.to_owned());
        p.publish_deny.extend(
            platforms
                .iter()
                .filter(|other| **other != user.name)
                .map(|other| subjects::proofs_by(other)),
        );
    }
    p
}

/// The hub: JetStream, the clients of `users` (every identity), and a leaf node listener.
/// A leaf authenticates with its platform's nkey against the same users (nats-server
/// checks leaf connections against the server's users when the leafnodes block has none),
/// so the link has exactly the platform's permissions: what it may publish reaches the hub,
/// what it may subscribe to reaches the leaf, nothing else crosses.
pub fn hub_config(hub: &Machine, users: &[NatsUser], files: &ServerFiles<'_>) -> String {
    let mut out = header("The hub", hub);
    out.push_str(&jetstream_block(files.store_dir, Some(subjects::HUB_DOMAIN)));
    let platforms: Vec<&str> = users
        .iter()
        .filter(|u| u.role.delegates())
        .map(|u| u.name.as_str())
        .collect();
    out.push_str(&server_config::authorization_block_with(users, &|user, p| {
        hub_permissions(user, p, &platforms)
    }));
    out.push_str(&server_config::tls_block(files.cert, files.key));
    let _ = write!(
        out,
        "# Leaf links: TLS; each leaf authenticates as its platform (authorization above). Leaves\n\
         # dial the address their config names, never one the hub advertises.\n\
         leafnodes {{\n  listen: {}\n  no_advertise: true\n  tls {{\n    cert_file: {}\n    key_file: {}\n    timeout: {}\n  }}\n}}\n",
        quoted(&format!("{}:{}", hub.bind, hub.link_port)),
        path(files.cert),
        path(files.key),
        server_config::TLS_HANDSHAKE_TIMEOUT_SECONDS,
    );
    out
}

/// A leaf on a Jetson: no JetStream (every stream and bucket is on the hub), its platform's
/// clients on loopback, and the link to `hub` authenticated by the nkey seed in `seed_file`
/// (a 0600 file holding `nkey: "S..."` next to the config, which includes it by that
/// relative name, so that the config itself holds no secret).
pub fn leaf_config(leaf: &Machine, user: &NatsUser, hub: &Machine, seed_file: &str, files: &ServerFiles<'_>) -> String {
    // Only the machine's own processes connect to a leaf: it listens on loopback.
    let local = Machine {
        bind: LOOPBACK.to_owned(),
        ..leaf.clone()
    };
    let mut out = header("Leaf", &local);
    out.push_str(
        "# No JetStream here: the clients' JetStream subjects are rewritten into the hub's domain\n\
         # and cross the link (a leaf link lets no plain $JS.API or $KV through); while the link\n\
         # is down they find no responder and fail fast.\nmappings {\n",
    );
    for (from, to) in subjects::js_domain_mappings(subjects::HUB_DOMAIN) {
        let _ = writeln!(out, "  {}: {}", quoted(&from), quoted(&to));
    }
    out.push_str("}\n");
    out.push_str(&server_config::authorization_block_with(
        std::slice::from_ref(user),
        &|_, p| through_hub_domain(p),
    ));
    out.push_str(&server_config::tls_block(files.cert, files.key));
    let _ = write!(
        out,
        "leafnodes {{\n  reconnect: \"{LEAF_RECONNECT_SECONDS}s\"\n  remotes: [\n    {{\n      url: {}\n      include {}\n      tls {{ ca_file: {} }}\n      deny_imports: [\"$SYS.>\"]\n      deny_exports: [\"$SYS.>\"]\n    }}\n  ]\n}}\n",
        quoted(&hub.link_url("tls")),
        quoted(seed_file),
        path(files.ca),
    );
    out
}

/// One node of a cluster: JetStream, the clients of `users`, and routes to the other
/// `nodes` over TLS in which both ends must show a certificate of the federation CA.
pub fn cluster_config(node: &Machine, nodes: &[Machine], users: &[NatsUser], files: &ServerFiles<'_>) -> String {
    debug_assert!(nodes.contains(node), "a node of its own cluster");
    let mut out = header("Cluster node", node);
    out.push_str(&jetstream_block(files.store_dir, None));
    out.push_str(&server_config::authorization_block(users));
    out.push_str(&server_config::tls_block(files.cert, files.key));
    let routes: Vec<String> = nodes
        .iter()
        .filter(|n| *n != node)
        .map(|n| format!("    {}", quoted(&n.link_url("nats-route"))))
        .collect();
    let _ = write!(
        out,
        "# Routes: mutual TLS; a node's certificate from the federation CA is its credential.\n\
         cluster {{\n  name: {}\n  listen: {}\n  routes: [\n{}\n  ]\n  tls {{\n    cert_file: {}\n    key_file: {}\n    ca_file: {}\n    verify: true\n    timeout: {}\n  }}\n}}\n",
        quoted(CLUSTER_NAME),
        quoted(&format!("{}:{}", node.bind, node.link_port)),
        routes.join("\n"),
        path(files.cert),
        path(files.key),
        path(files.ca),
        server_config::TLS_HANDSHAKE_TIMEOUT_SECONDS,
    );
    out
}

/// The file a leaf includes for its link credentials (kept 0600).
pub fn leaf_seed_include(seed: &str) -> String {
    format!("nkey: {}\n", quoted(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topologies_parse_by_name() {
        for t in [Topology::Single, Topology::HubLeaf, Topology::Cluster] {
            assert_eq!(t.name().parse::<Topology>(), Ok(t));
        }
        assert!("mesh".parse::<Topology>().is_err());
        assert_eq!(Topology::Cluster.replicas(), 3);
    }

    #[test]
    fn the_hub_domain_carries_exactly_the_jetstream_subjects() {
        assert_eq!(
            subjects::through_domain("$JS.API.INFO", "hub").as_deref(),
            Some("$JS.hub.API.INFO")
        );
        assert_eq!(
            subjects::through_domain("$KV.sage_tasks.*", "hub").as_deref(),
            Some("$JS.hub.API.$KV.sage_tasks.*")
        );
        assert_eq!(subjects::through_domain("sage.ledger.lock", "hub"), None);
        assert_eq!(
            subjects::through_domain("$JS.ACK.SAGE_TASKS.worker-Thor.>", "hub"),
            None
        );
    }

    #[test]
    fn machines_parse_with_default_ports() {
        let m = Machine::parse("Thor=thor.local", LEAF_PORT_DEFAULT).expect("parses");
        assert_eq!(
            (m.host.as_str(), m.client_port, m.link_port),
            ("thor.local", 4222, 7422)
        );
        let m = Machine::parse("n2=127.0.0.1:4223:6223", ROUTE_PORT_DEFAULT).expect("parses");
        assert_eq!((m.client_port, m.link_port), (4223, 6223));
        for bad in ["Thor", "Thor=", "=h", "T=h:x", "T=h:1:2:3"] {
            assert!(Machine::parse(bad, 1).is_err(), "{bad}");
        }
    }
}
