//! A platform holding valid credentials floods the services (issue #9, item 9): each
//! service's named limit on requests in flight holds, every request still gets an answer
//! (applied, or a clear "busy"), honest requests are served afterwards, and the ledger
//! stays consistent. Made-up key ids cost one key-bucket read per id per interval (the key
//! directory's negative cache), and the key registry refuses records past its bound.

mod common;

use std::time::{Duration, Instant};

use common::{LedgerFixture, TestNats, lct};
use futures::future::join_all;
use sage_federation::delegation::status::{self, STATUS_REQUESTS_IN_FLIGHT_MAX, StatusService, status_busy_error};
use sage_federation::identity::chain::{self, Endorser, Succession};
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::keys::{self, KEY_RECORDS_PER_PLATFORM_MAX, KeyRecord, KeyRegistry};
use sage_federation::identity::unknown_keys::{UNKNOWN_KEY_RECHECK_INTERVAL, UNKNOWN_KEYS_REMEMBERED_MAX};
use sage_federation::ledger::protocol::{LedgerReply, LedgerRequest, Operation, Outcome, REQUEST_TTL, RejectCode};
use sage_federation::ledger::service::{LEDGER_REQUESTS_IN_FLIGHT_MAX, busy_reply};
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::Signer;
use sage_federation::protocol::task::TaskId;

const C: &str = "consciousness";
/// Signed lock requests sent at once: many times the service's limit.
const FLOOD_REQUESTS: usize = 12 * LEDGER_REQUESTS_IN_FLIGHT_MAX;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_signed_requests_meets_the_ledgers_limit_and_honest_requests_still_pass() {
    let f = LedgerFixture::start().await;
    let treasury = f.client("Treasury").await;
    let reply = treasury
        .grant("genesis", &lct("Mallory", C), 1.0e6)
        .await
        .expect("grant");
    assert_eq!(reply.outcome, Outcome::Applied, "{reply:?}");
    let before = f.snapshot().await;

    // Signed before sending, so that they arrive as one burst.
    let mallory = f.signer("Mallory");
    let now = Timestamp::now();
    let wires: Vec<_> = (0..FLOOD_REQUESTS)
        .map(|_| {
            let request = LedgerRequest {
                requester: "Mallory".to_owned(),
                created_at: now,
                expires_at: now + REQUEST_TTL,
                operation: Operation::Lock {
                    task_id: TaskId::random().expect("id"),
                    delegator: lct("Mallory", C),
                    executor: lct("Legion", C),
                    amount: 1.0,
                    quality_threshold: 0.5,
                    deadline: now + Duration::from_secs(60),
                    expires_at: now + Duration::from_secs(120),
                    task_digest: None,
                    witness: None,
                    operation: None,
                },
            };
            mallory.sign(&request).expect("sign")
        })
        .collect();
    let client = f.nats.client().await;
    let replies: Vec<LedgerReply> = join_all(wires.into_iter().map(|wire| {
        let client = client.clone();
        async move {
            let reply = client
                .request(subjects::ledger_endpoint("lock"), wire)
                .await
                .expect("every request gets an answer");
            serde_json::from_slice(&reply.payload).expect("a ledger reply")
        }
    }))
    .await;
    let applied = replies.iter().filter(|r| r.outcome == Outcome::Applied).count();
    let busy = replies
        .iter()
        .filter(|r| r.code == Some(RejectCode::Busy) && r.message == busy_reply().message)
        .count();
    eprintln!("{FLOOD_REQUESTS} requests: {applied} applied, {busy} busy at the limit");
    assert_eq!(
        applied + busy,
        FLOOD_REQUESTS,
        "only applied or busy: {:?}",
        replies
            .iter()
            .find(|r| r.outcome != Outcome::Applied && r.message != busy_reply().message)
    );
    assert!(
        busy > 0,
        "the flood never reached the limit of {LEDGER_REQUESTS_IN_FLIGHT_MAX}"
    );
    assert!(applied > 0, "the service applied nothing during the flood");

    // The ledger holds exactly what was applied, and serves an honest request at once.
    let after = f.snapshot().await;
    assert_eq!(after.locks.len() - before.locks.len(), applied);
    let reply = f
        .client("Thor")
        .await
        .lock(&common::lock_terms(
            &TaskId::random().expect("id"),
            &lct("Thor", C),
            &lct("Legion", C),
            1.0,
        ))
        .await
        .expect("lock");
    assert_eq!(
        reply.code,
        Some(RejectCode::InsufficientAtp),
        "an honest request is answered on its merits: {reply:?}"
    );
    f.assert_audit_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_status_requests_meets_the_status_services_limit() {
    let nats = common::TestNats::with_infra().await;
    let client = nats.client().await;
    // Task status needs no key: a root nobody's key chains to will do.
    let root = sage_federation::identity::keys::generate()
        .expect("random")
        .verifying_key();
    let service = StatusService::start(client.clone(), &root)
        .await
        .expect("status service");
    let ids: Vec<TaskId> = (0..12 * STATUS_REQUESTS_IN_FLIGHT_MAX)
        .map(|_| TaskId::random().expect("id"))
        .collect();
    let answers = join_all(ids.iter().map(|id| status::task(&client, id))).await;
    let (mut answered, mut busy) = (0, 0);
    for answer in &answers {
        match answer {
            Ok(report) => {
                assert!(report.status.is_none() && report.lock.is_none(), "{report:?}");
                answered += 1;
            }
            Err(e) if e.to_string() == status_busy_error() => busy += 1,
            Err(e) => panic!("neither an answer nor busy: {e}"),
        }
    }
    eprintln!(
        "{} status requests: {answered} answered, {busy} busy at the limit",
        ids.len()
    );
    assert!(
        busy > 0,
        "the flood never reached the limit of {STATUS_REQUESTS_IN_FLIGHT_MAX}"
    );
    assert!(answered > 0, "the service answered nothing during the flood");
    // After the flood, an honest request is answered.
    let report = status::task(&client, &ids[0]).await.expect("answered after the flood");
    assert_eq!(report.task_id, ids[0].to_string());
    service.stop().await;
}

/// Messages signed with made-up key ids: a few ids, each used many times.
const MADE_UP_IDS: usize = 40;
const MESSAGES_PER_MADE_UP_ID: usize = 25;

/// A grant request signed by `signer`: a message that verifies completely once its key is known.
fn signed_request(signer: &Signer) -> bytes::Bytes {
    let now = Timestamp::now();
    let request = LedgerRequest {
        requester: signer.platform().to_owned(),
        created_at: now,
        expires_at: now + REQUEST_TTL / 2,
        operation: Operation::Grant {
            grant_id: "g".to_owned(),
            account: lct(signer.platform(), C),
            amount: 1.0,
        },
    };
    signer.sign(&request).expect("sign")
}

fn random_signer(platform: &str) -> Signer {
    Signer::new(platform, keys::generate().expect("key")).expect("signer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_key_ids_costs_one_key_read_per_id_and_a_genuine_key_still_verifies() {
    let nats = TestNats::with_infra().await;
    let root = keys::generate().expect("root");
    let directory = KeyDirectory::open(&nats.js().await, &root.verifying_key())
        .await
        .expect("directory");

    // Each made-up id used many times, all at once: one bucket read per id.
    let floods: Vec<_> = (0..MADE_UP_IDS)
        .map(|_| signed_request(&random_signer("Mallory")))
        .collect();
    let attempts = floods
        .iter()
        .flat_map(|wire| std::iter::repeat_n(wire, MESSAGES_PER_MADE_UP_ID))
        .map(|wire| directory.verify::<LedgerRequest>(wire));
    for result in join_all(attempts).await {
        let refused = result.expect_err("an unknown key verifies nothing");
        assert!(refused.to_string().contains("no key"), "{refused}");
    }
    let reads = directory.key_lookups();
    assert!(
        (MADE_UP_IDS as u64..=2 * MADE_UP_IDS as u64).contains(&reads),
        "{} messages over {MADE_UP_IDS} made-up ids cost {reads} bucket reads",
        MADE_UP_IDS * MESSAGES_PER_MADE_UP_ID
    );
    // Again within the interval: no read at all.
    for wire in &floods {
        assert!(directory.verify::<LedgerRequest>(wire).await.is_err());
    }
    assert_eq!(directory.key_lookups(), reads, "remembered as unknown");

    // Twice as many distinct ids as the negative cache remembers: its bound caps the reads.
    let started = Instant::now();
    let distinct: Vec<_> = (0..2 * UNKNOWN_KEYS_REMEMBERED_MAX)
        .map(|_| signed_request(&random_signer("Mallory")))
        .collect();
    for chunk in distinct.chunks(256) {
        for result in join_all(chunk.iter().map(|wire| directory.verify::<LedgerRequest>(wire))).await {
            assert!(result.is_err());
        }
    }
    let intervals = (started.elapsed().as_secs_f64() / UNKNOWN_KEY_RECHECK_INTERVAL.as_secs_f64()).ceil();
    let distinct_reads = directory.key_lookups() - reads;
    assert!(
        distinct_reads as f64 <= UNKNOWN_KEYS_REMEMBERED_MAX as f64 * intervals.max(1.0),
        "{} distinct made-up ids cost {distinct_reads} reads in {intervals} intervals",
        distinct.len()
    );

    // A genuine key, unknown when its first message came, verifies once it is published.
    let honest = random_signer("Legion");
    let wire = signed_request(&honest);
    assert!(
        directory.verify::<LedgerRequest>(&wire).await.is_err(),
        "not published yet"
    );
    let publisher = KeyDirectory::open(&nats.js().await, &root.verifying_key())
        .await
        .expect("directory");
    publisher
        .publish(&common::endorsed(&root, "Legion", &honest.verifying_key()))
        .await
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(10);
    while directory.verify::<LedgerRequest>(&wire).await.is_err() {
        assert!(Instant::now() < deadline, "the genuine key never verified");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rotations of one platform's key, each endorsed by the one before: more than it may keep.
const ROTATIONS: usize = KEY_RECORDS_PER_PLATFORM_MAX + 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_rotating_without_end_is_refused_at_the_registry_bound_and_others_are_unaffected() {
    let nats = TestNats::with_infra().await;
    let root = keys::generate().expect("root");
    let directory = KeyDirectory::open(&nats.js().await, &root.verifying_key())
        .await
        .expect("directory");
    let mut old = keys::generate().expect("key");
    let first = common::endorsed(&root, "Mallory", &old.verifying_key());
    directory.publish(&first).await.expect("publish");
    let mut refused = None;
    for _ in 0..ROTATIONS {
        let new = keys::generate().expect("key");
        let record = chain::endorse(
            KeyRecord {
                delegate: true,
                replaces: Some(Succession {
                    key_id: keys::key_id(&old.verifying_key()),
                    old_key_ends: Timestamp::now() + Duration::from_secs(3600),
                }),
                ..KeyRecord::new("Mallory", &new.verifying_key(), Timestamp::EPOCH)
            },
            Endorser::Key {
                key_id: keys::key_id(&old.verifying_key()),
            },
            &old,
        );
        if let Err(e) = directory.publish(&record).await {
            refused = Some(e);
            break;
        }
        old = new;
    }
    let refused = refused.expect("a rotation past the bound is refused");
    assert!(
        refused.to_string().contains("key registry is full"),
        "a clear error: {refused}"
    );
    let mallory = |registry: &KeyRegistry| registry.records().filter(|r| r.platform == "Mallory").count();
    assert_eq!(mallory(&directory.snapshot()), KEY_RECORDS_PER_PLATFORM_MAX);
    // A fresh verifier reading the bucket holds the same bound.
    let fresh = KeyDirectory::open(&nats.js().await, &root.verifying_key())
        .await
        .expect("directory");
    assert_eq!(mallory(&fresh.snapshot()), KEY_RECORDS_PER_PLATFORM_MAX);
    // Another platform's key is still admitted, and nothing of Mallory's was evicted.
    let honest = random_signer("Legion");
    directory
        .publish(&common::endorsed(&root, "Legion", &honest.verifying_key()))
        .await
        .expect("another platform is unaffected");
    assert!(
        directory
            .verify::<LedgerRequest>(&signed_request(&honest))
            .await
            .is_ok()
    );
    assert!(directory.snapshot().get("Mallory", &first.key_id).is_some());
}
