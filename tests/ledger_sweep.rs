//! The lock sweeper stays on time while the server under it crashes: a lock made after the
//! server came back is refunded soon after its expiry. (The chaos run, with the hub
//! SIGKILLed every ~16 s, saw a refund land 62 s past its expiry: the sweeper's bucket watch
//! died with the server and went unnoticed until its missed heartbeats, 10 s later, and each
//! crash restarted its scan from nothing.)

mod common;

use std::time::{Duration, Instant};

use common::{LedgerFixture, lct, lock_terms};
use sage_federation::ledger::client::LockTerms;
use sage_federation::ledger::model::LockState;
use sage_federation::ledger::protocol::Outcome;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::task::TaskId;

const C: &str = "consciousness";
/// Server crashes in a row, each followed by a lock that must expire on time.
const CRASHES: usize = 3;
/// Seconds a lock made right after a crash lives.
const LOCK_LIFE_SECONDS: f64 = 1.0;
/// The latest a refund may land after its lock's expiry: the sweep interval (0.5 s), the
/// sweeper noticing the new connection, and the expire command's round trip, with room for
/// a loaded machine. (Before the fix: 3.5 to 9 s, the watch's missed-heartbeat detection.)
const REFUND_LAG_MAX_SECONDS: f64 = 3.0;
/// How long the server stays down after a crash: longer than the client library's quick
/// retries of the watch's consumer (0.5 + 1 + 1.5 + 2 s), after which it waits 10 s between.
const DOWN_FOR: Duration = Duration::from_secs(6);
/// How long the ledger has to answer again after a crash.
const RECOVER_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_made_after_a_server_crash_is_refunded_soon_after_its_expiry() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("SAGE_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let mut f = LedgerFixture::start().await;
    let treasury = f.client("Treasury").await;
    let grant = treasury
        .grant("genesis-Thor", &lct("Thor", C), 100.0)
        .await
        .expect("grant");
    assert_eq!(grant.outcome, Outcome::Applied, "{grant:?}");
    let supply = f.snapshot().await.supply.total_uatp;

    for crash in 0..CRASHES {
        f.nats.server.kill();
        tokio::time::sleep(DOWN_FOR).await;
        f.nats.server.restart().await.expect("the server restarts");
        let thor = f.client("Thor").await;
        let task_id: TaskId = format!("after-crash-{crash}").parse().expect("task id");
        // The ledger service reconnects on its own; the lock goes through once it has.
        let give_up = Instant::now() + RECOVER_WITHIN;
        let expires_at = loop {
            let now = Timestamp::now();
            let terms = LockTerms {
                deadline: now + Duration::from_secs_f64(LOCK_LIFE_SECONDS / 2.0),
                expires_at: now + Duration::from_secs_f64(LOCK_LIFE_SECONDS),
                ..lock_terms(&task_id, &lct("Thor", C), &lct("Legion", C), 1.0)
            };
            match thor.lock(&terms).await {
                Ok(reply) if reply.outcome == Outcome::Applied => break terms.expires_at,
                other => {
                    assert!(
                        Instant::now() < give_up,
                        "the ledger never answered after crash {crash}: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let lock = loop {
            let snapshot = f.snapshot().await;
            let lock = snapshot.locks.values().find(|l| l.task_id == task_id).cloned();
            if let Some(lock) = lock.filter(|l| l.state != LockState::Pending) {
                break lock;
            }
            assert!(
                Timestamp::now() < expires_at + Duration::from_secs(30),
                "crash {crash}: the sweeper never refunded the lock"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(lock.state, LockState::Expired, "crash {crash}: {lock:?}");
        let settled_at = lock.settlement.as_ref().expect("a settlement").at;
        let lag = settled_at.seconds_since(lock.expires_at);
        eprintln!("crash {crash}: refunded {lag:.2} s after its expiry");
        assert!(
            lag <= REFUND_LAG_MAX_SECONDS,
            "crash {crash}: refunded {lag:.2} s after its expiry (at most {REFUND_LAG_MAX_SECONDS} s)"
        );
    }
    assert_eq!(f.snapshot().await.supply.total_uatp, supply, "ATP minted or lost");
    f.assert_audit_clean().await;
}
