//! The deployment's grant step (docs/deployment.md, step 3) on a fresh hub-leaf deployment,
//! where nothing has published the admin's key record yet: `sagefed grant` signed with the
//! hub bundle's `Treasury.key` publishes the root-endorsed record beside it
//! (`Treasury.key.records.json`, checked against the bundle's `root.pub`), and the ledger
//! applies the grant. Then the platforms delegate across the leaf link and the audit is clean.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::lct;
use common::topology::Deployment;
use sage_federation::delegation::scenarios;
use sage_federation::identity::federation::HUB_BUNDLE;
use sage_federation::identity::keys;
use sage_federation::ledger::model::LockState;
use sage_federation::nats::topology::Topology;

const GRANT_ATP: u64 = 1000;

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `sagefed grant` as the deployment guide prints it, against the hub, with `key` and
/// `extra` arguments.
fn grant(d: &Deployment, key: &Path, extra: &[&str]) -> Output {
    let hub = d.fed.bundle(HUB_BUNDLE);
    Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(["grant", "--nats", &d.servers["Legion"].url(), "--creds"])
        .arg(hub.join("Treasury.nk"))
        .arg("--ca")
        .arg(hub.join("ca.pem"))
        .arg("--key")
        .arg(key)
        .args(["--to", &lct("Thor", "consciousness").to_string()])
        .args(["--amount", &GRANT_ATP.to_string()])
        .args(extra)
        .output()
        .expect("run sagefed grant")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_grants_from_the_hub_bundle_alone_then_a_leaf_delegates() {
    let mut d = Deployment::start_servers_and_ledger(Topology::HubLeaf).await;
    let hub = d.fed.bundle(HUB_BUNDLE);
    let key = hub.join("Treasury.key");
    assert_eq!(d.snapshot().await.supply.total_uatp.micros(), 0);

    // The same key without its endorsement beside it: the ledger knows no record of it and
    // refuses; nothing is granted.
    let bare = d.path().join("bare");
    std::fs::create_dir_all(&bare).expect("dir");
    std::fs::copy(&key, bare.join("Treasury.key")).expect("copy the key");
    let refused = grant(&d, &bare.join("Treasury.key"), &[]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("no key"), "{}", text(&refused));
    assert_eq!(d.snapshot().await.supply.total_uatp.micros(), 0, "{}", text(&refused));

    // The endorsement checked against a stranger's root: refused before anything is sent.
    let stranger = bare.join("stranger-root.pub");
    let stranger_root = keys::generate().expect("key").verifying_key();
    std::fs::write(&stranger, keys::public_key_text(&stranger_root) + "\n").expect("write");
    let wrong_root = grant(&d, &key, &["--root", stranger.to_str().expect("utf-8 path")]);
    assert!(!wrong_root.status.success(), "{}", text(&wrong_root));
    assert!(text(&wrong_root).contains("key record"), "{}", text(&wrong_root));
    assert_eq!(d.snapshot().await.supply.total_uatp.micros(), 0);

    // As the guide prints it: the bundle's key, its records and root.pub beside it.
    let granted = grant(&d, &key, &["--grant-id", "genesis-thor"]);
    assert!(granted.status.success(), "{}", text(&granted));
    assert!(text(&granted).contains("Applied"), "{}", text(&granted));
    let thor = lct("Thor", "consciousness").to_string();
    assert_eq!(
        d.balances().await.get(&thor).copied(),
        Some(GRANT_ATP as i64 * 1_000_000)
    );
    // Idempotent: the same grant id grants once.
    let again = grant(&d, &key, &["--grant-id", "genesis-thor"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(d.snapshot().await.supply.total_uatp.micros(), GRANT_ATP * 1_000_000);

    // The rest of the deployment: workers on their own machines' servers, a delegation from
    // a leaf to the hub's platform, the audit.
    d.grant_and_start_workers(&|_, text| text).await;
    let scenario = &scenarios::seed()[0];
    let outcome = common::outcome_of(&d.delegate_cli(scenario.from, &scenario.cli_args()));
    assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
    d.assert_audit_clean().await;
}
