//! The example server configs in `nats/hub-leaf/` and `nats/cluster/` are exactly what
//! `sagefed init --topology` renders for the seed's three machines (fixed public nkeys, no
//! secret), so they cannot drift from the code. `SAGEFED_WRITE_EXAMPLES=1 cargo test --test
//! topology_examples` rewrites them after a deliberate change.

mod common;

use std::path::{Path, PathBuf};

use sage_federation::identity::federation::{FederationDir, LEDGER_IDENTITY};
use sage_federation::identity::topology::TopologyPlan;
use sage_federation::nats::permissions::Role;
use sage_federation::nats::server_config::NatsUser;
use sage_federation::nats::topology::{self, Machine, Topology};

/// Set to rewrite the examples instead of comparing.
const WRITE_ENV: &str = "SAGEFED_WRITE_EXAMPLES";

/// The seed's identities with public nkeys from fixed seeds (the seeds are not secrets of
/// any deployment: they exist only here).
fn identities() -> Vec<NatsUser> {
    [
        (LEDGER_IDENTITY, Role::Ledger),
        ("Treasury", Role::Admin),
        ("Legion", Role::Platform),
        ("Thor", Role::Platform),
        ("Sprout", Role::Platform),
    ]
    .into_iter()
    .zip(1u8..)
    .map(|((name, role), n)| NatsUser {
        name: name.to_owned(),
        role,
        nkey: nkeys::KeyPair::new_from_raw(nkeys::KeyPairType::User, [n; 32])
            .expect("a key")
            .public_key(),
    })
    .collect()
}

fn plan(topology: Topology) -> TopologyPlan {
    let link_port = match topology {
        Topology::Cluster => topology::ROUTE_PORT_DEFAULT,
        Topology::HubLeaf | Topology::Single => topology::LEAF_PORT_DEFAULT,
    };
    TopologyPlan {
        topology,
        machines: ["Legion", "Thor", "Sprout"]
            .iter()
            .map(|m| Machine::parse(&format!("{m}={}.local", m.to_lowercase()), link_port).expect("machine"))
            .collect(),
        install_dir: Some(PathBuf::from("/etc/sagefed")),
        store_root: PathBuf::from("/var/lib/sagefed/nats"),
    }
}

/// The example file of one rendered server.
fn example_path(topology: Topology, bundle: &str) -> PathBuf {
    let dir = common::repo_dir().join("nats").join(topology.name());
    match topology {
        Topology::HubLeaf if bundle == "hub" => dir.join("hub.conf"),
        Topology::HubLeaf => dir.join(format!("leaf-{}.conf", bundle.to_lowercase())),
        _ => dir.join(format!("{}.conf", bundle.to_lowercase())),
    }
}

#[test]
fn the_nats_examples_are_what_init_generates() {
    let write = std::env::var_os(WRITE_ENV).is_some();
    let fed = FederationDir::new(Path::new("/nonexistent"));
    let mut checked = 0;
    for topology in [Topology::HubLeaf, Topology::Cluster] {
        let rendered = plan(topology).render(&fed, &identities());
        assert_eq!(rendered.len(), 3, "{topology:?}: three servers");
        for server in rendered {
            let path = example_path(topology, &server.bundle);
            if write {
                std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
                std::fs::write(&path, &server.text).expect("write the example");
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == server.text,
                "{} differs from what `sagefed init --topology {}` generates; run \
                 {WRITE_ENV}=1 cargo test --test topology_examples and review the diff",
                path.display(),
                topology.name()
            );
            // No secret in an example: no nkey seed, no private key.
            assert!(!committed.contains("\"SU"), "{}", path.display());
            assert!(!committed.contains("PRIVATE KEY"), "{}", path.display());
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}
