//! The trust boundary under attack. A federation made by `sagefed init` (nkey users, the
//! permission table, TLS) runs as separate processes; a rogue platform (`Mallory`) holding
//! valid credentials of its own, every other identity trying what its role forbids, and an
//! outsider holding none try each attack of issue #8. Every attempt must be refused by
//! nats-server with a permission error naming the subject (not a timeout), the ledger must
//! be exactly as it was, and the federation must still serve a delegation afterwards.

mod common;

use common::attacker::Attacker;
use common::federation::Processes;
use common::lct;
use sage_federation::delegation::client::DelegationRequest;
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::keys::{self, KeyRecord};
use sage_federation::ledger::client::{LedgerClient, LockTerms};
use sage_federation::ledger::model::LockState;
use sage_federation::ledger::protocol::Outcome;
use sage_federation::nats::connection;
use sage_federation::nats::subjects as s;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::registry::Registry;
use serde_json::json;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    WriteLedger,
    PublishForeignKey,
    RegisterAsAnother,
    GrantItself,
    AnswerLedgerRequests,
    ReadForeignInbox,
    ReadForeignProofs,
    PullForeignQueue,
    ManageStreams,
    ForgeDeadLetters,
    SignedLockOnForeignAccount,
    ConnectWithoutCredentials,
    DelegateWithoutGrant,
    GrantWithUnpinnedAdminKey,
    ForgeAdvisories,
}

/// Everything a platform must not do, tried as `identity` against `victim`. Returns the
/// kinds tried.
async fn forbidden_for_a_platform(a: &mut Attacker, victim: &str, victim_nkey: &str) -> Vec<Kind> {
    let account = s::kv_subject(s::LEDGER_BUCKET, &format!("accounts.{}.dp.consciousness", a.name));
    a.publish(&account, r#"{"balance_uatp":1000000000}"#).await;
    a.publish(&s::kv_subject(s::LEDGER_BUCKET, s::LEDGER_SUPPLY), "{}")
        .await;
    a.publish(&s::kv_subject(s::LEDGER_BUCKET, "locks.t-forged"), "{}")
        .await;
    a.publish(&s::kv_subject(s::KEYS_BUCKET, "Treasury.0000000000000000"), "{}")
        .await;
    a.publish(
        &s::kv_subject(s::KEYS_BUCKET, &format!("{victim}.0000000000000000")),
        "{}",
    )
    .await;
    a.publish(&s::kv_subject(s::PLATFORMS_BUCKET, victim), r#"{"delegate":true}"#)
        .await;
    a.publish(&s::ledger_endpoint("grant"), "{}").await;
    for subject in [s::ledger_endpoint("lock"), s::ledger_any(), s::all_under("sage.ledger")] {
        a.subscribe(&subject).await;
    }
    for subject in [
        "_INBOX.>".to_owned(),
        s::all_under(&s::inbox_prefix(victim_nkey)),
        ">".to_owned(),
    ] {
        a.subscribe(&subject).await;
    }
    a.subscribe(&s::proofs_for(victim)).await;
    a.subscribe(s::PROOFS_SUBJECTS).await;
    a.publish(
        &s::js_direct_get_subject(s::PROOFS_STREAM, &s::proof(victim, &a.name.clone(), "t-1")),
        "",
    )
    .await;
    // A task's proof slot names its executor: nobody else may publish there.
    a.publish(&s::proof(&a.name.clone(), victim, "t-1"), "{}").await;
    a.publish(&s::js_msg_get(s::PROOFS_STREAM), "{}").await;
    // Nor read or delete another platform's queued tasks by sequence: workers dead-letter a
    // task past its deliveries from the delivery itself, so no platform holds these.
    a.publish(&s::js_msg_get(s::TASKS_STREAM), r#"{"seq":1}"#).await;
    a.publish(&s::js_msg_delete(s::TASKS_STREAM), r#"{"seq":1}"#).await;
    let worker = s::worker_consumer(victim);
    a.publish(&s::js_consumer_next(s::TASKS_STREAM, &worker), "{}").await;
    a.publish(
        &s::js_consumer_create(s::TASKS_STREAM, &worker, &s::delegate(victim)),
        "{}",
    )
    .await;
    a.publish(
        &s::js_consumer_create(s::TASKS_STREAM, "mallory-tap", &s::delegate(victim)),
        "{}",
    )
    .await;
    a.publish(&format!("$JS.ACK.{}.{worker}.1.1.1.1.1", s::TASKS_STREAM), "+ACK")
        .await;
    a.subscribe(&s::abort(victim)).await;
    a.subscribe(&s::max_deliveries_advisory(s::TASKS_STREAM, &worker)).await;
    // Only the server sends advisories. No worker listens to them any more (workers count
    // deliveries themselves), but nobody may forge one either.
    for consumer in [worker.clone(), s::worker_consumer(&a.name)] {
        a.publish(
            &s::max_deliveries_advisory(s::TASKS_STREAM, &consumer),
            r#"{"stream_seq":1,"deliveries":99}"#,
        )
        .await;
    }
    for subject in [
        format!("$JS.API.STREAM.DELETE.{}", s::TASKS_STREAM),
        format!("$JS.API.STREAM.DELETE.{}", s::kv_stream(s::LEDGER_BUCKET)),
        format!("$JS.API.STREAM.PURGE.{}", s::kv_stream(s::LEDGER_BUCKET)),
        format!("$JS.API.STREAM.UPDATE.{}", s::PROOFS_STREAM),
        "$JS.API.STREAM.CREATE.EVIL".to_owned(),
        format!("$JS.API.CONSUMER.DELETE.{}.{worker}", s::TASKS_STREAM),
        format!("$JS.API.STREAM.MSG.DELETE.{}", s::kv_stream(s::LEDGER_BUCKET)),
    ] {
        a.publish(&subject, "{}").await;
    }
    a.publish(&s::dead_letter(victim), "{}").await;
    vec![
        Kind::WriteLedger,
        Kind::PublishForeignKey,
        Kind::RegisterAsAnother,
        Kind::GrantItself,
        Kind::AnswerLedgerRequests,
        Kind::ReadForeignInbox,
        Kind::ReadForeignProofs,
        Kind::PullForeignQueue,
        Kind::ManageStreams,
        Kind::ForgeDeadLetters,
        Kind::ForgeAdvisories,
    ]
}

/// `platform`'s signing key as `sagefed init` made it, its root-endorsed record published by
/// `client` (as that identity may).
async fn init_signer(p: &Processes, client: &async_nats::Client, platform: &str) -> Signer {
    let fed = p.nats.federation.as_ref().expect("a secure federation");
    let key = fed.signing_key(platform);
    let signer = Signer::new(platform, keys::read_secret(&key).expect("key")).expect("signer");
    let directory = KeyDirectory::open(&async_nats::jetstream::new(client.clone()), &p.nats.root())
        .await
        .expect("keys");
    for record in keys::read_records(&key).expect("records") {
        directory
            .publish(&record)
            .await
            .expect("an identity may publish its own keys");
    }
    signer
}

/// Every key record in the directory, as `platform/key_id`, sorted.
async fn key_records(p: &Processes) -> Vec<String> {
    let js = async_nats::jetstream::new(p.nats.client_as("Treasury").await);
    let directory = KeyDirectory::open(&js, &p.nats.root()).await.expect("keys");
    let mut records: Vec<String> = directory
        .snapshot()
        .records()
        .map(|r| format!("{}/{}", r.platform, r.key_id))
        .collect();
    records.sort();
    records
}

fn nkey_of(p: &Processes, identity: &str) -> String {
    let fed = p.nats.federation.as_ref().expect("a secure federation");
    connection::read_nkey(&fed.creds(identity)).expect("creds").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_refused_the_ledger_is_untouched_and_delegation_still_works() {
    let mut p = Processes::start().await;
    p.expect_violations = true;
    let before = p.snapshot().await;
    let keys_before = key_records(&p).await;
    let mut kinds = std::collections::BTreeSet::new();
    let mut attempts = 0;

    // A rogue platform with valid credentials of its own, and every genuine platform trying
    // what only another may do.
    for (attacker, victim) in [
        ("Mallory", "Legion"),
        ("Thor", "Legion"),
        ("Legion", "Sprout"),
        ("Sprout", "Thor"),
    ] {
        let mut a = Attacker::connect(&p, attacker).await;
        kinds.extend(forbidden_for_a_platform(&mut a, victim, &nkey_of(&p, victim)).await);
        attempts += a.attempts;
    }

    // The admin grants, nothing more: it cannot write the ledger, serve it, or touch streams.
    let mut admin = Attacker::connect(&p, "Treasury").await;
    admin
        .publish(
            &s::kv_subject(s::LEDGER_BUCKET, "accounts.Treasury.dp.consciousness"),
            "{}",
        )
        .await;
    admin.subscribe(&s::ledger_any()).await;
    admin.publish(&s::ledger_endpoint("lock"), "{}").await;
    admin
        .publish(&format!("$JS.API.STREAM.DELETE.{}", s::TASKS_STREAM), "{}")
        .await;
    admin.subscribe(&s::proofs_for("Thor")).await;
    admin
        .publish(&s::kv_subject(s::KEYS_BUCKET, "Legion.0000000000000000"), "{}")
        .await;
    attempts += admin.attempts;

    // A platform the root did not grant federation:delegate cannot queue a task or lock ATP,
    // whatever its registry record claims.
    let mut executor = Attacker::connect(&p, common::EXECUTOR_ONLY_PLATFORM).await;
    executor.publish(&s::delegate("Legion"), "{}").await;
    executor.publish(&s::ledger_endpoint("lock"), "{}").await;
    attempts += executor.attempts;
    kinds.insert(Kind::DelegateWithoutGrant);

    // Mallory's signed lock on Legion's account: the server lets it ask, the ledger refuses.
    let mallory_client = p.nats.client_as("Mallory").await;
    let mallory = init_signer(&p, &mallory_client, "Mallory").await;
    let now = Timestamp::now();
    let reply = LedgerClient::new(mallory_client, mallory)
        .lock(&LockTerms {
            quality_threshold: 0.0,
            deadline: now + Duration::from_secs(60),
            expires_at: now + Duration::from_secs(120),
            ..common::lock_terms(
                &TaskId::random().expect("id"),
                &lct("Legion", "consciousness"),
                &lct("Mallory", "consciousness"),
                50.0,
            )
        })
        .await
        .expect("a signed reply");
    assert_eq!(reply.outcome, Outcome::Rejected, "{reply:?}");
    attempts += 1;
    kinds.insert(Kind::SignedLockOnForeignAccount);

    // Mallory registers under its own key (all the server lets it write) claiming to be
    // Legion, with room for everything: nobody reads it as Legion.
    let registry = Registry::open(
        &async_nats::jetstream::new(p.nats.client_as("Mallory").await),
        p.nats.key_directory().await,
    )
    .await
    .expect("registry");
    let mut claim = registry
        .get("Legion")
        .await
        .expect("read")
        .expect("Legion is registered");
    claim.capacity = 1_000_000;
    let value = serde_json::to_vec(&claim).expect("json");
    async_nats::jetstream::new(p.nats.client_as("Mallory").await)
        .get_key_value(s::PLATFORMS_BUCKET)
        .await
        .expect("bucket")
        .put("Mallory", value.into())
        .await
        .expect("Mallory may write its own registry key");
    let listed = registry.all().await.expect("registry");
    assert!(
        listed.iter().all(|r| r.capacity != 1_000_000),
        "a record about another platform was believed: {listed:?}"
    );
    assert!(registry.get("Mallory").await.expect("read").is_none());
    attempts += 1;
    kinds.insert(Kind::RegisterAsAnother);

    // Someone holding the treasury's NATS credentials but not its pinned signing key writes
    // a second Treasury key record (the server allows that identity to) and grants with it.
    // The record carries no root endorsement: every verifier refuses it, whoever wrote it.
    let stolen = p.nats.client_as("Treasury").await;
    let forger = Signer::new("Treasury", keys::generate().expect("random")).expect("signer");
    let record = KeyRecord::new("Treasury", &forger.verifying_key(), Timestamp::EPOCH);
    async_nats::jetstream::new(stolen.clone())
        .get_key_value(s::KEYS_BUCKET)
        .await
        .expect("bucket")
        .put(
            s::key_entry("Treasury", &record.key_id),
            serde_json::to_vec(&record).expect("json").into(),
        )
        .await
        .expect("the server lets the treasury's credentials write a Treasury key record");
    let minted = LedgerClient::new(stolen, forger)
        .grant("forged-grant", &lct("Thor", "consciousness"), 1_000_000.0)
        .await
        .expect("a signed reply");
    assert_eq!(minted.outcome, Outcome::Rejected, "{minted:?}");
    attempts += 1;
    kinds.insert(Kind::GrantWithUnpinnedAdminKey);

    // An outsider: no credentials, an unknown key, or no TLS.
    let fed = p.nats.federation.clone().expect("secure");
    let no_creds = connection::NatsAccess {
        creds: None,
        ..p.nats.access("Thor")
    };
    let unknown = p.nats.path().join("unknown.nk");
    std::fs::write(&unknown, nkeys::KeyPair::new_user().seed().expect("seed")).expect("write");
    let unknown_key = connection::NatsAccess::secure(&p.url(), &unknown, &fed.ca_cert());
    let no_ca = connection::NatsAccess {
        ca: None,
        ..p.nats.access("Thor")
    };
    for (what, access, expected) in [
        ("no credentials", no_creds, "authorization"),
        ("an unknown key", unknown_key, "authorization"),
        ("no trust in the federation's CA", no_ca, "unknownissuer"),
    ] {
        let refused = connection::connect_options(&access, "outsider")
            .expect("options")
            .connect(p.url())
            .await
            .map(|_| ())
            .expect_err(&format!("an outsider with {what} was let in"));
        assert!(
            refused.to_string().to_lowercase().contains(expected),
            "an outsider with {what}: {refused}"
        );
        attempts += 1;
    }
    kinds.insert(Kind::ConnectWithoutCredentials);

    // Nothing changed: ledger, supply, keys of others.
    let after = p.snapshot().await;
    assert_eq!(after.accounts, before.accounts, "no account changed");
    assert_eq!(format!("{:?}", after.supply), format!("{:?}", before.supply));
    assert_eq!(after.locks.len(), before.locks.len(), "no lock was taken");
    assert_eq!(after.grants.len(), before.grants.len(), "nothing was granted");
    let mut keys_after = key_records(&p).await;
    keys_after.retain(|k| !k.starts_with("Mallory/") && (!k.starts_with("Treasury/") || keys_before.contains(k)));
    assert_eq!(
        keys_after, keys_before,
        "nobody's key changed but Mallory's own and the forger's Treasury record"
    );

    // The federation still serves a delegation, and the audit is clean.
    let outcome = p
        .client("Thor")
        .await
        .delegate_task(DelegationRequest {
            to: Some("Legion".into()),
            task_type: "consciousness".into(),
            operation: "execution".into(),
            budget: 5.0,
            timeout_seconds: 30,
            parameters: json!({"steps": [{"op": "add", "args": [1, 1]}]})
                .as_object()
                .cloned()
                .expect("object"),
            task_id: None,
        })
        .await
        .expect("delegation");
    assert_eq!(outcome.settlement, LockState::Committed, "{outcome:?}");
    p.assert_audit_clean();
    eprintln!(
        "adversary: {attempts} attempts of {} kinds, every one refused or ignored",
        kinds.len()
    );
    assert_eq!(kinds.len(), 15, "{kinds:?}");
    assert!(attempts >= 100, "{attempts} attempts");
}
