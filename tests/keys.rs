//! Key rotation and revocation end to end, through the `sagefed keys` commands against a
//! secure server: during a rotation's overlap messages signed with either key verify, after
//! its end only the new key's; a key the root revoked is refused by a verifier that was
//! watching and by one that starts after the revocation.

mod common;

use std::process::Command;

use common::TestNats;
use sage_federation::config::Config;
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::keys::{self, KeyError};
use sage_federation::protocol::envelope::{EnvelopeError, Signer};
use sage_federation::protocol::proof::{ExecutionProof, ProofStatus};
use sage_federation::protocol::task::TaskId;

/// Runs `sagefed keys <args>` and fails the test with its output when it fails.
fn sagefed_keys(nats: &TestNats, identity: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .arg("keys")
        .args(args)
        .args(["--nats", &nats.url()])
        .args(nats.cli_access(identity))
        .output()
        .expect("run sagefed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sagefed keys {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A proof signed by Thor's key in `key_path` as it is now.
fn signed_by(key_path: &std::path::Path) -> (String, bytes::Bytes) {
    let signer = Signer::new("Thor", keys::read_secret(key_path).expect("key")).expect("signer");
    let proof = common::signed_proof(
        &signer,
        &TaskId::random().expect("id"),
        &common::lct("Legion", "consciousness"),
        &common::lct("Thor", "consciousness"),
        1.0,
        0.9,
        ProofStatus::Completed,
    );
    (keys::key_id(&signer.verifying_key()), proof)
}

async fn verifier(nats: &TestNats, root: &ed25519_dalek::VerifyingKey) -> KeyDirectory {
    KeyDirectory::open(&async_nats::jetstream::new(nats.client_as("Legion").await), root)
        .await
        .expect("a verifier as Legion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_overlaps_then_ends_and_a_revocation_reaches_a_fresh_verifier() {
    let nats = TestNats::secure_with_infra().await;
    let fed = nats.federation.clone().expect("secure");
    let root =
        keys::parse_public_key(&std::fs::read_to_string(fed.root_public_key()).expect("root.pub")).expect("root");
    let path = common::federation::write_config(nats.path(), "Thor", &nats.url());
    let path_text = path.display().to_string();
    let key_path = Config::load(&path).expect("config").keypair_path();
    sagefed_keys(&nats, "Thor", &["publish", "--config", &path_text]);
    let (first, first_proof) = signed_by(&key_path);
    let watching = verifier(&nats, &root).await;
    watching
        .verify::<ExecutionProof>(&first_proof)
        .await
        .expect("the root-endorsed key verifies");

    // A rotation with an hour's overlap: both keys verify.
    let out = sagefed_keys(
        &nats,
        "Thor",
        &["rotate", "--config", &path_text, "--overlap-seconds", "3600"],
    );
    assert!(out.contains(&first), "{out}");
    let (second, second_proof) = signed_by(&key_path);
    assert_ne!(first, second, "the key file holds the new key");
    let fresh = verifier(&nats, &root).await;
    for proof in [&first_proof, &second_proof] {
        fresh.verify::<ExecutionProof>(proof).await.expect("inside the overlap");
    }

    // A rotation with no overlap: the second key ends at once, the third verifies.
    sagefed_keys(
        &nats,
        "Thor",
        &["rotate", "--config", &path_text, "--overlap-seconds", "0"],
    );
    let (third, third_proof) = signed_by(&key_path);
    let fresh = verifier(&nats, &root).await;
    let ended = fresh
        .verify::<ExecutionProof>(&second_proof)
        .await
        .expect_err("after its end");
    assert!(
        matches!(ended, EnvelopeError::Key(KeyError::OutsideWindow { .. })),
        "{ended}"
    );
    fresh.verify::<ExecutionProof>(&third_proof).await.expect("the new key");
    fresh
        .verify::<ExecutionProof>(&first_proof)
        .await
        .expect("the first key's hour is not over");

    // The root revokes the third key; an admin writes the revocation.
    sagefed_keys(
        &nats,
        "Treasury",
        &[
            "revoke",
            "--root-key",
            &fed.root_key().display().to_string(),
            "--platform",
            "Thor",
            "--key-id",
            &third,
        ],
    );
    let after = verifier(&nats, &root).await;
    let refused = after
        .verify::<ExecutionProof>(&third_proof)
        .await
        .expect_err("revoked, seen by a verifier started afterwards");
    assert!(
        matches!(refused, EnvelopeError::Key(KeyError::Revoked { .. })),
        "{refused}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !matches!(
        watching.verify::<ExecutionProof>(&third_proof).await,
        Err(EnvelopeError::Key(KeyError::Revoked { .. }))
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "the watching verifier did not see the revocation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let listed = sagefed_keys(
        &nats,
        "Treasury",
        &["list", "--root", &fed.root_public_key().display().to_string()],
    );
    let line = listed.lines().find(|l| l.contains(&third)).unwrap_or_default();
    assert!(line.contains("REVOKED"), "{listed}");
    assert!(listed.contains(&format!("endorsed by {first}")), "{listed}");
}
