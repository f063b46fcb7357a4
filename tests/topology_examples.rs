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

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn init_with_a_topology_writes_each_machines_bundle_with_secrets_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (topology, servers) in [
        ("hub-leaf", ["hub", "Thor", "Sprout"]),
        ("cluster", ["Legion", "Thor", "Sprout"]),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sagefed"))
            .args(["init", "--out", topology, "--topology", topology])
            .current_dir(dir.path())
            .output()
            .expect("run sagefed init");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let fed = FederationDir::new(&dir.path().join(topology));
        for bundle in servers {
            let b = fed.bundle(bundle);
            let config = std::fs::read_to_string(b.join("nats-server.conf")).expect("server config");
            assert!(config.contains("/etc/sagefed/server.pem"), "{topology} {bundle}");
            assert!(!config.contains("\"SU"), "no seed in {topology} {bundle}'s config");
            assert_eq!(mode(&b.join("server.key")), 0o600, "{topology} {bundle}");
        }
        if topology == "hub-leaf" {
            for leaf in ["Thor", "Sprout"] {
                let link = fed.bundle(leaf).join("leaf-link.conf");
                assert_eq!(mode(&link), 0o600);
                assert!(std::fs::read_to_string(link).expect("link").contains("nkey: \"SU"));
            }
            // Legion runs on the hub: no server of its own.
            assert!(!fed.bundle("Legion").join("nats-server.conf").exists());
        } else {
            assert!(!fed.bundle("hub").join("nats-server.conf").exists());
        }
    }
}
