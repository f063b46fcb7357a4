//! `sagefed init --add-platform` on a federation laid out on several machines: every server
//! config that names the platforms is regenerated (hub-leaf: the hub's users and proof-slot
//! denies, a leaf for the new platform's own machine; cluster: every node's users), and no
//! existing key, credential or certificate changes by a byte. In hub-leaf the new platform's
//! leaf runs from its bundle and delegations from and to it settle.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::topology::{Deployment, free_ports};
use common::{lct, micros, repo_dir, server_binary};
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::identity::federation::{FederationDir, InitOptions, MANIFEST_FILE, TOPOLOGY_PLAN_FILE};
use sage_federation::identity::topology::{SERVER_CONFIG_FILE, TopologyPlan, init_topology};
use sage_federation::ledger::model::LockState;
use sage_federation::nats::topology::{Machine, Topology};
use sage_federation::protocol::task::TaskId;
use serde_json::json;

/// The platform added after the federation runs.
const NEW: &str = "Nano";
const C: &str = "consciousness";

/// Every file under `dir`, by path, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// Files that describe the federation's membership and may change when a platform joins:
/// the manifest, the plan, and server configs (users and permissions).
fn names_the_platforms(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    [MANIFEST_FILE, TOPOLOGY_PLAN_FILE, SERVER_CONFIG_FILE].contains(&name)
}

fn sagefed_init(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .arg("init")
        .args(args)
        .output()
        .expect("run sagefed init")
}

fn assert_success(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Adds [`NEW`] with `extra` arguments and checks what changed: nothing but membership files
/// among those that existed; new files only of the new platform; the new platform's nkey in
/// every server config listed in `configs` (relative to the federation directory).
fn add_and_check(fed: &FederationDir, extra: &[&str], configs: &[String]) {
    let before = files(&fed.dir);
    let out = fed.dir.to_str().expect("utf-8 path");
    let mut args = vec!["--out", out, "--add-platform", NEW];
    args.extend_from_slice(extra);
    assert_success(&sagefed_init(&args), "sagefed init --add-platform");
    let after = files(&fed.dir);
    for (path, bytes) in before.iter().filter(|(p, _)| !names_the_platforms(p)) {
        assert_eq!(after.get(path), Some(bytes), "{} changed", path.display());
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        assert!(
            path.to_string_lossy().contains(NEW),
            "{} appeared for another platform",
            path.display()
        );
    }
    let nkey = fed
        .load()
        .expect("manifest")
        .identities
        .into_iter()
        .find(|i| i.name == NEW)
        .expect("the new platform in the manifest")
        .nkey;
    for config in configs {
        let path = fed.dir.join(config);
        let text = String::from_utf8_lossy(&after[&path]).into_owned();
        assert!(text.contains(&nkey), "{config} does not let {NEW} in");
        assert!(
            !String::from_utf8_lossy(&before[&path]).contains(&nkey),
            "{config} knew {NEW} before"
        );
    }
    for path in after.keys().filter(|p| p.ends_with(SERVER_CONFIG_FILE)) {
        let output = Command::new(server_binary())
            .arg("-t")
            .arg("-c")
            .arg(path)
            .output()
            .expect("run nats-server -t");
        assert_success(&output, &format!("nats-server -t -c {}", path.display()));
    }
}

/// The new platform's sagefed config as its operator writes it from its bundle: Sprout's
/// example with the name changed and the bundle's `nats.toml` pasted in.
fn config_from_bundle(d: &Deployment) -> PathBuf {
    let bundle = d.fed.bundle(NEW);
    let nats_toml = std::fs::read_to_string(bundle.join("nats.toml")).expect("the bundle's nats.toml");
    let url = nats_toml
        .lines()
        .find_map(|l| l.strip_prefix("url = "))
        .expect("a url in nats.toml");
    let file = |name: &str| format!("{:?}", bundle.join(name).display().to_string());
    let text = std::fs::read_to_string(repo_dir().join("configs/sprout.toml"))
        .expect("sprout.toml")
        .replace("\"Sprout\"", &format!("{NEW:?}"))
        .replace("\"../.sagefed/keys/sprout.key\"", &file(&format!("{NEW}.key")))
        .replace("\"../.sagefed/federation/root/root.key.pub\"", &file("root.pub"))
        .replace("\"nats://127.0.0.1:4222\"", url)
        .replace(
            "\"../.sagefed/federation/creds/Sprout.nk\"",
            &file(&format!("{NEW}.nk")),
        )
        .replace("\"../.sagefed/federation/ca/ca.pem\"", &file("ca.pem"))
        + &format!(
            "\n[worker]\nack_wait_seconds = {}\nmax_deliver = {}\n",
            common::federation::TEST_ACK_WAIT_SECONDS,
            common::federation::TEST_MAX_DELIVER
        );
    assert!(!text.contains("Sprout\""), "Sprout's name left in:\n{text}");
    let path = d.path().join(format!("{}.toml", NEW.to_lowercase()));
    std::fs::write(&path, text).expect("write the config");
    path
}

fn perception_for(to: &str) -> DelegationRequest {
    DelegationRequest {
        to: Some(to.into()),
        task_type: C.into(),
        operation: "perception".into(),
        budget: 1.0,
        timeout_seconds: 30,
        parameters: json!({"length": 100, "seed": 1}).as_object().cloned().expect("object"),
        task_id: Some(TaskId::random().expect("id")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_added_to_hub_and_leaves_runs_its_own_leaf_and_settles_both_ways() {
    let mut d = Deployment::start(Topology::HubLeaf).await;
    let port = free_ports(1)[0];
    let configs = vec![format!("bundles/hub/{SERVER_CONFIG_FILE}")];
    add_and_check(&d.fed, &["--node", &format!("{NEW}=127.0.0.1:{port}")], &configs);
    let bundle = d.fed.bundle(NEW);
    let leaf = std::fs::read_to_string(bundle.join(SERVER_CONFIG_FILE)).expect("a leaf config for the new machine");
    assert!(leaf.contains(&format!("127.0.0.1:{port}")), "{leaf}");

    // The operator reloads the hub and starts the new machine's leaf from its bundle.
    d.servers["Legion"].reload();
    let machine = Machine {
        name: NEW.to_owned(),
        host: "127.0.0.1".to_owned(),
        bind: "127.0.0.1".to_owned(),
        client_port: port,
        link_port: 0,
    };
    let config = config_from_bundle(&d);
    d.add_platform(NEW, Some(machine), config).await;

    let mut expected = d.balances().await;
    let supply = d.snapshot().await.supply.total_uatp;
    for (from, to) in [(NEW, "Legion"), ("Thor", NEW), (NEW, "Sprout")] {
        let o = d
            .client(from)
            .await
            .delegate_task(perception_for(to))
            .await
            .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
        assert_eq!(o.settlement, LockState::Committed, "{from} -> {to}: {o:?}");
        assert_eq!((o.from.as_str(), o.to.as_str()), (from, to));
        let consumed = micros(o.atp_consumed);
        assert!(consumed > 0, "{o:?}");
        *expected.entry(lct(from, C).to_string()).or_default() -= consumed;
        *expected.entry(lct(to, C).to_string()).or_default() += consumed;
        assert_eq!(d.balances().await, expected, "after {from} -> {to}");
    }
    assert_eq!(d.snapshot().await.supply.total_uatp, supply, "ATP minted or lost");
    d.assert_audit_clean().await;
}

/// A cluster's three node configs all let the new platform in (it connects to the first
/// node: its `nats.toml` says so); a leaf of its own is refused there and changes nothing.
#[test]
fn a_platform_added_to_a_cluster_is_in_every_node_config_and_nobody_is_rekeyed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fed = FederationDir::new(&dir.path().join("federation"));
    let ports = free_ports(6);
    let machines: Vec<Machine> = ["Legion", "Thor", "Sprout"]
        .iter()
        .zip(ports.chunks(2))
        .map(|(name, p)| Machine {
            name: (*name).to_owned(),
            host: "127.0.0.1".to_owned(),
            bind: "127.0.0.1".to_owned(),
            client_port: p[0],
            link_port: p[1],
        })
        .collect();
    init_topology(
        &InitOptions {
            dir: fed.dir.clone(),
            platforms: machines.iter().map(|m| m.name.clone()).collect(),
            executors: Vec::new(),
            critical: Vec::new(),
            admins: vec!["Treasury".to_owned()],
            hosts: Vec::new(),
            url: "nats://127.0.0.1:4222".to_owned(),
            server_base: std::fs::read_to_string(repo_dir().join("nats/test.conf")).expect("test.conf"),
            force: false,
        },
        &TopologyPlan {
            topology: Topology::Cluster,
            machines: machines.clone(),
            install_dir: None,
            store_root: dir.path().join("store"),
        },
    )
    .expect("sagefed init --topology cluster");

    let out = fed.dir.to_str().expect("utf-8 path");
    let before = files(&fed.dir);
    let refused = sagefed_init(&["--out", out, "--add-platform", NEW, "--node", "Nano=127.0.0.1"]);
    assert!(!refused.status.success(), "a cluster took a leaf");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("connects to the first node"), "{stderr}");
    assert_eq!(
        files(&fed.dir),
        before,
        "a refused --add-platform changed the federation"
    );

    let configs: Vec<String> = machines
        .iter()
        .map(|m| format!("bundles/{}/{SERVER_CONFIG_FILE}", m.name))
        .collect();
    add_and_check(&fed, &[], &configs);
    let nats_toml = std::fs::read_to_string(fed.bundle(NEW).join("nats.toml")).expect("nats.toml");
    assert!(
        nats_toml.contains(&format!("nats://127.0.0.1:{}", machines[0].client_port)),
        "{nats_toml}"
    );
    assert!(
        !fed.bundle("hub").join(SERVER_CONFIG_FILE).exists(),
        "a single-server config reappeared in the hub bundle of a cluster"
    );
}
