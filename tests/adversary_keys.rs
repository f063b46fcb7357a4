//! The key directory under attack. A rogue platform (`Mallory`) holding valid NATS
//! credentials, and someone holding the treasury's, try to get a key trusted that does not
//! chain to the federation's root: writing another identity's key record (the server
//! refuses), writing records into their own namespace that no one endorsed, that the wrong key
//! endorsed, or that claim another platform (every verifier refuses them), deleting a
//! revocation (the server refuses), and signing with a revoked key or with a successor it
//! endorsed (refused). The ledger refuses every request signed with such a key before it
//! looks at any account, and the ledger is exactly as it was afterwards. And a platform the
//! root did not grant `federation:delegate` claims it in its registry record: a worker reads
//! the grant from the root-endorsed key record instead, and refuses its task.

mod common;

use async_nats::jetstream::kv;
use common::attacker::Attacker;
use common::federation::Processes;
use common::lct;
use sage_federation::identity::chain::{self, Endorser, Revocation, Succession};
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::keys::{self, KeyError, KeyRecord};
use sage_federation::ledger::client::LedgerClient;
use sage_federation::ledger::protocol::{Outcome, RejectCode};
use sage_federation::nats::subjects as s;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::{EnvelopeError, Signer};
use sage_federation::protocol::task::{FederationTask, TaskId};
use sage_federation::state::registry::{PlatformRecord, Registry};
use sage_federation::state::task_board::{TaskBoard, TaskParties};
use std::time::Duration;

/// The keys bucket as `identity` may write it.
async fn keys_bucket(p: &Processes, identity: &str) -> kv::Store {
    async_nats::jetstream::new(p.nats.client_as(identity).await)
        .get_key_value(s::KEYS_BUCKET)
        .await
        .expect("bucket")
}

/// Writes `record` under `name` with `identity`'s credentials (the server allows it).
async fn write_raw(p: &Processes, identity: &str, name: &str, record: &KeyRecord) {
    keys_bucket(p, identity)
        .await
        .put(name, serde_json::to_vec(record).expect("json").into())
        .await
        .unwrap_or_else(|e| panic!("{identity} may write {name}: {e}"));
}

/// A verifier started now, as Legion.
async fn fresh_verifier(p: &Processes) -> KeyDirectory {
    KeyDirectory::open(
        &async_nats::jetstream::new(p.nats.client_as("Legion").await),
        &p.nats.root(),
    )
    .await
    .expect("keys")
}

/// A lock `signer` asks for on Mallory's account, and the ledger's reply.
async fn lock_as_mallory(p: &Processes, signer: Signer) -> sage_federation::ledger::protocol::LedgerReply {
    let now = Timestamp::now();
    let terms = sage_federation::ledger::client::LockTerms {
        deadline: now + Duration::from_secs(60),
        expires_at: now + Duration::from_secs(120),
        ..common::lock_terms(
            &TaskId::random().expect("id"),
            &lct("Mallory", "consciousness"),
            &lct("Legion", "consciousness"),
            1.0,
        )
    };
    LedgerClient::new(p.nats.client_as("Mallory").await, signer)
        .lock(&terms)
        .await
        .expect("a signed reply")
}

/// The ledger must refuse the signature before it looks at the account (Mallory holds no
/// ATP, so any other refusal would hide a hole).
async fn assert_lock_refused_for_its_key(p: &Processes, signer: Signer, why: &str) {
    let reply = lock_as_mallory(p, signer).await;
    assert_eq!(reply.outcome, Outcome::Rejected, "{why}: {reply:?}");
    assert_eq!(reply.code, Some(RejectCode::BadSignature), "{why}: {reply:?}");
}

fn fresh_signer(platform: &str) -> Signer {
    Signer::new(platform, keys::generate().expect("random")).expect("signer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_do_not_chain_to_the_root_are_refused_whoever_writes_them() {
    let mut p = Processes::start().await;
    p.expect_violations = true;
    let before = p.snapshot().await;
    let fed = p.nats.federation.clone().expect("secure");
    let mallory_key = keys::read_secret(&fed.signing_key("Mallory")).expect("Mallory's key");
    let mallory_id = keys::key_id(&mallory_key.verifying_key());
    let directory = KeyDirectory::open(
        &async_nats::jetstream::new(p.nats.client_as("Mallory").await),
        &p.nats.root(),
    )
    .await
    .expect("keys");
    for record in keys::read_records(&fed.signing_key("Mallory")).expect("records") {
        directory
            .publish(&record)
            .await
            .expect("Mallory publishes its own endorsed key");
    }

    // The server refuses key records written for another identity, whatever they say.
    let mut attacker = Attacker::connect(&p, "Mallory").await;
    let stranger = fresh_signer("Treasury");
    for victim in ["Treasury", "Legion"] {
        let forged = chain::endorse(
            KeyRecord::new(victim, &stranger.verifying_key(), Timestamp::EPOCH),
            Endorser::Root,
            &mallory_key,
        );
        let subject = s::kv_subject(s::KEYS_BUCKET, &s::key_entry(victim, &forged.key_id));
        attacker
            .client
            .publish(subject.clone(), serde_json::to_vec(&forged).expect("json").into())
            .await
            .expect("publish");
        attacker.client.flush().await.expect("flush");
        attacker.refused("Publish", &subject).await;
    }

    // In its own namespace (the server allows it): a key signed by no one, a key "endorsed
    // by the root" with Mallory's own key, and a record claiming to be Legion's.
    let unsigned = fresh_signer("Mallory");
    let record = KeyRecord::new("Mallory", &unsigned.verifying_key(), Timestamp::EPOCH);
    write_raw(&p, "Mallory", &s::key_entry("Mallory", &record.key_id), &record).await;
    let self_made = fresh_signer("Mallory");
    let record = chain::endorse(
        KeyRecord::new("Mallory", &self_made.verifying_key(), Timestamp::EPOCH),
        Endorser::Root,
        &mallory_key,
    );
    write_raw(&p, "Mallory", &s::key_entry("Mallory", &record.key_id), &record).await;
    let as_legion = fresh_signer("Legion");
    let mut record = KeyRecord::new("Legion", &as_legion.verifying_key(), Timestamp::EPOCH);
    record.replaces = Some(Succession {
        key_id: mallory_id.clone(),
        old_key_ends: Timestamp::now() + Duration::from_secs(3600),
    });
    let record = chain::endorse(
        record,
        Endorser::Key {
            key_id: mallory_id.clone(),
        },
        &mallory_key,
    );
    write_raw(&p, "Mallory", &s::key_entry("Mallory", &record.key_id), &record).await;
    // With the treasury's NATS credentials: a Treasury key that Mallory's key endorses.
    let treasury_forger = fresh_signer("Treasury");
    let mut record = KeyRecord::new("Treasury", &treasury_forger.verifying_key(), Timestamp::EPOCH);
    record.replaces = Some(Succession {
        key_id: mallory_id.clone(),
        old_key_ends: Timestamp::now() + Duration::from_secs(3600),
    });
    let record = chain::endorse(
        record,
        Endorser::Key {
            key_id: mallory_id.clone(),
        },
        &mallory_key,
    );
    write_raw(&p, "Treasury", &s::key_entry("Treasury", &record.key_id), &record).await;

    let verifier = fresh_verifier(&p).await;
    let registry = verifier.snapshot();
    for (platform, signer) in [
        ("Mallory", &unsigned),
        ("Mallory", &self_made),
        ("Legion", &as_legion),
        ("Treasury", &treasury_forger),
    ] {
        let id = keys::key_id(&signer.verifying_key());
        assert!(
            registry.get(platform, &id).is_none(),
            "{platform}/{id} was trusted without a chain to the root"
        );
    }
    assert!(
        registry.get("Mallory", &mallory_id).is_some(),
        "the genuine key is trusted"
    );
    for (signer, why) in [
        (unsigned, "a key signed by no one"),
        (self_made, "a key endorsed by a platform posing as the root"),
    ] {
        assert_lock_refused_for_its_key(&p, signer, why).await;
    }
    let minted = LedgerClient::new(p.nats.client_as("Treasury").await, treasury_forger)
        .grant("forged-by-chain", &lct("Thor", "consciousness"), 1_000_000.0)
        .await
        .expect("a signed reply");
    assert_eq!(minted.outcome, Outcome::Rejected, "{minted:?}");

    // The control: Mallory's genuine key passes the signature check (and is refused for
    // want of ATP), so the refusals above are about the keys.
    let genuine = lock_as_mallory(&p, Signer::new("Mallory", mallory_key.clone()).expect("signer")).await;
    assert_eq!(genuine.outcome, Outcome::Rejected, "{genuine:?}");
    assert_ne!(genuine.code, Some(RejectCode::BadSignature), "{genuine:?}");

    // The root revokes Mallory's key; an admin writes it where no platform may.
    let root_key = keys::read_secret(&fed.root_key()).expect("root");
    let revocation = Revocation::signed("Mallory", &mallory_id, Timestamp::now(), &root_key);
    KeyDirectory::open(
        &async_nats::jetstream::new(p.nats.client_as("Treasury").await),
        &p.nats.root(),
    )
    .await
    .expect("keys")
    .publish_revocation(&revocation)
    .await
    .expect("an admin writes the root's revocation");
    // Mallory cannot delete or overwrite it.
    let revocation_subject = s::kv_subject(s::KEYS_BUCKET, &s::key_revocation_entry("Mallory", &mallory_id));
    attacker.publish(&revocation_subject, "{}").await;
    // Nor un-revoke by republishing its root-endorsed record, nor escape by endorsing a
    // successor with the revoked key.
    for record in keys::read_records(&fed.signing_key("Mallory")).expect("records") {
        write_raw(&p, "Mallory", &s::key_entry("Mallory", &record.key_id), &record).await;
    }
    let escape = fresh_signer("Mallory");
    let mut record = KeyRecord::new("Mallory", &escape.verifying_key(), Timestamp::EPOCH);
    record.replaces = Some(Succession {
        key_id: mallory_id.clone(),
        old_key_ends: Timestamp::now() + Duration::from_secs(3600),
    });
    let record = chain::endorse(
        record,
        Endorser::Key {
            key_id: mallory_id.clone(),
        },
        &mallory_key,
    );
    write_raw(&p, "Mallory", &s::key_entry("Mallory", &record.key_id), &record).await;

    let after = fresh_verifier(&p).await;
    let proof = common::signed_proof(
        &Signer::new("Mallory", mallory_key.clone()).expect("signer"),
        &TaskId::random().expect("id"),
        &lct("Legion", "consciousness"),
        &lct("Mallory", "consciousness"),
        1.0,
        0.9,
        sage_federation::protocol::proof::ProofStatus::Completed,
    );
    let refused = after
        .verify::<sage_federation::protocol::proof::ExecutionProof>(&proof)
        .await
        .expect_err("revoked");
    assert!(
        matches!(refused, EnvelopeError::Key(KeyError::Revoked { .. })),
        "{refused}"
    );
    assert!(
        after.snapshot().get("Mallory", &record.key_id).is_none(),
        "the escape key is refused"
    );
    assert_lock_refused_for_its_key(
        &p,
        Signer::new("Mallory", mallory_key).expect("signer"),
        "a revoked key",
    )
    .await;
    assert_lock_refused_for_its_key(&p, escape, "a successor endorsed by a revoked key").await;

    let after = p.snapshot().await;
    assert_eq!(after.accounts, before.accounts, "no account changed");
    assert_eq!(after.locks.len(), before.locks.len(), "no lock was taken");
    assert_eq!(after.grants.len(), before.grants.len(), "nothing was granted");
    p.assert_audit_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_delegate_is_granted_by_the_root_not_claimed_in_the_registry() {
    let p = Processes::start().await;
    let fed = p.nats.federation.clone().expect("secure");
    let watcher = common::EXECUTOR_ONLY_PLATFORM;
    let key = fed.signing_key(watcher);
    let signer = Signer::new(watcher, keys::read_secret(&key).expect("key")).expect("signer");
    let js = async_nats::jetstream::new(p.nats.client_as(watcher).await);
    let directory = std::sync::Arc::new(KeyDirectory::open(&js, &p.nats.root()).await.expect("keys"));
    let records = keys::read_records(&key).expect("records");
    assert!(
        records.iter().all(|r| !r.delegate),
        "init granted an executor-only platform nothing"
    );
    for record in &records {
        directory.publish(record).await.expect("its own endorsed key");
    }
    // It claims the permission in its own registry record (the server lets it write that).
    Registry::open(&js, directory)
        .await
        .expect("registry")
        .register_platform(
            &signer,
            &PlatformRecord {
                platform: watcher.to_owned(),
                capabilities: vec!["consciousness".into()],
                operations: vec!["execution".into()],
                delegate: true,
                key_id: keys::key_id(&signer.verifying_key()),
                load: 0,
                capacity: 10,
                heartbeat_at: Timestamp::now(),
            },
        )
        .await
        .expect("its own registry record");
    // The server refuses its tasks, so a platform that may delegate relays one it signed.
    let task_id = TaskId::random().expect("id");
    let task = FederationTask {
        source_lct: lct(watcher, "consciousness"),
        reply_to: s::proof(watcher, "Legion", task_id.as_str()),
        ..common::federation::hand_task(
            &task_id,
            serde_json::json!({"steps": [{"op": "add", "args": [1, 1]}]}),
            30,
            60.0,
        )
    };
    let thor = async_nats::jetstream::new(p.nats.client_as("Thor").await);
    common::federation::publish_to_legion(&thor, signer.sign(&task).expect("sign"), task_id.as_str()).await;

    let board = TaskBoard::open(&p.nats.js().await).await.expect("board");
    // No lock names this task's parties (it was never locked): ask for them by name.
    let parties = TaskParties {
        task_id: task_id.clone(),
        delegator: watcher.to_owned(),
        executor: "Legion".into(),
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some((status, _)) = board.get_between(&parties).await.expect("board")
            && status.reason.contains("federation:delegate")
        {
            assert!(status.reason.contains("root did not grant"), "{status:?}");
            assert!(status.atp_consumed.is_none_or(|c| c == 0.0), "{status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Legion did not refuse the task for its permission: {:?}",
            board.get_between(&parties).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    p.assert_audit_clean();
}
