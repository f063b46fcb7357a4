//! The foundation against a real nats-server: streams and buckets, the key registry in KV,
//! and the `sagefed` binary's commands and errors.

mod common;

use std::process::Command;

use common::TestNats;
use sage_federation::identity::chain::Revocation;
use sage_federation::identity::directory::KeyDirectory;
use sage_federation::identity::keys::{self, KeyError};
use sage_federation::nats::infra;
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::{EnvelopeError, Signer};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[tokio::test]
async fn infrastructure_is_created_once_with_atomic_ledger() {
    let nats = TestNats::start().await;
    let js = nats.js().await;
    let first = infra::ensure(&js, 1).await.expect("ensure");
    let second = infra::ensure(&js, 1).await.expect("ensure again");
    let names = |r: &[infra::Resource]| r.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), names(&second));
    for stream in [subjects::TASKS_STREAM, subjects::PROOFS_STREAM, subjects::DEAD_STREAM] {
        assert!(names(&first).contains(&stream.to_owned()), "{stream}");
    }
    let mut ledger = js
        .get_stream(subjects::kv_stream(subjects::LEDGER_BUCKET))
        .await
        .expect("ledger stream");
    assert!(
        ledger.info().await.expect("info").config.allow_atomic_publish,
        "ledger bucket allows atomic batches"
    );
    let mut tasks = js.get_stream(subjects::TASKS_STREAM).await.expect("tasks stream");
    let config = tasks.info().await.expect("info").config.clone();
    assert_eq!(
        config.retention,
        async_nats::jetstream::stream::RetentionPolicy::WorkQueue
    );
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    from: String,
    created_at: Timestamp,
}

impl sage_federation::protocol::envelope::Signable for Hello {
    const DOMAIN: &'static [u8] = b"sagefed/test-hello/v1\0";
    const KIND: &'static str = "hello";
    fn signer_platform(&self) -> &str {
        &self.from
    }
    fn created_at(&self) -> Timestamp {
        self.created_at
    }
    fn expires_at(&self) -> Option<Timestamp> {
        None
    }
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

#[tokio::test]
async fn keys_published_to_kv_verify_elsewhere_until_revoked() {
    let nats = TestNats::with_infra().await;
    let js = nats.js().await;
    let root = keys::generate().expect("random");
    let thor_side = KeyDirectory::open(&js, &root.verifying_key()).await.expect("open");
    let legion_side = KeyDirectory::open(&nats.js().await, &root.verifying_key())
        .await
        .expect("open");

    let signer = Signer::new("Thor", keys::generate().expect("random")).expect("signer");
    let hello = Hello {
        from: "Thor".into(),
        created_at: sage_federation::protocol::clock::Timestamp::now(),
    };
    let wire = signer.sign(&hello).expect("sign");
    let unknown = legion_side.verify::<Hello>(&wire).await.expect_err("not published yet");
    assert!(
        matches!(unknown, EnvelopeError::Key(KeyError::Unknown { .. })),
        "{unknown}"
    );

    let record = common::endorsed(&root, "Thor", &signer.verifying_key());
    thor_side.publish(&record).await.expect("publish");
    // Legion's directory remembers the id as unknown (the negative cache, rechecked after
    // 5 s), so the record must reach it through the watch, well within that interval.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while let Err(e) = legion_side.verify::<Hello>(&wire).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the published key did not reach the other side through the watch: {e}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A record claiming Thor's key id with another key is refused.
    let mut forged = record.clone();
    forged.public_key = keys::public_key_text(&keys::generate().expect("random").verifying_key());
    assert!(thor_side.publish(&forged).await.is_err());

    // The root's revocation reaches the other side through the watch.
    let revocation = Revocation::signed("Thor", &record.key_id, Timestamp::from_secs(1), &root);
    thor_side.publish_revocation(&revocation).await.expect("revoke");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match legion_side.verify::<Hello>(&wire).await {
            Err(EnvelopeError::Key(KeyError::Revoked { .. })) => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "revocation not seen: {:?}",
                other.err()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Republishing the record changes nothing: the revocation is its own entry.
    thor_side.publish(&record).await.expect("republish");
    assert!(matches!(
        thor_side.verify::<Hello>(&wire).await,
        Err(EnvelopeError::Key(KeyError::Revoked { .. }))
    ));
}

#[tokio::test]
async fn the_server_restarts_with_its_data() {
    let mut nats = TestNats::with_infra().await;
    let kv = nats
        .js()
        .await
        .get_key_value(subjects::PLATFORMS_BUCKET)
        .await
        .expect("bucket");
    kv.put("Thor", "up".into()).await.expect("put");
    nats.server.restart().await.expect("restart");
    let kv = nats
        .js()
        .await
        .get_key_value(subjects::PLATFORMS_BUCKET)
        .await
        .expect("bucket");
    assert_eq!(kv.get("Thor").await.expect("get").as_deref(), Some(&b"up"[..]));
}

fn sagefed(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sagefed"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run sagefed")
}

fn one_line_error(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "expected failure");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr
}

#[test]
fn cli_commands_and_their_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let help = sagefed(&["--help"], dir.path());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["up", "keygen", "config"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(command)),
            "--help lists {command}"
        );
    }

    let ok = sagefed(&["keygen", "--platform", "Thor", "--out", "k/thor.key"], dir.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let public = String::from_utf8_lossy(&ok.stdout).trim().to_owned();
    assert!(
        keys::parse_public_key(&public).is_ok(),
        "prints the public key: {public}"
    );

    let again = one_line_error(&sagefed(
        &["keygen", "--platform", "Thor", "--out", "k/thor.key"],
        dir.path(),
    ));
    assert!(again.contains("already exists") && again.contains("--force"), "{again}");
    let forced = sagefed(
        &["keygen", "--platform", "Thor", "--out", "k/thor.key", "--force"],
        dir.path(),
    );
    assert!(forced.status.success());

    let bad_name = one_line_error(&sagefed(&["keygen", "--platform", "Th>or"], dir.path()));
    assert!(bad_name.contains("Th>or"), "{bad_name}");

    let repo = common::repo_dir();
    let check = sagefed(&["config", "check", "configs/thor.toml"], &repo);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    std::fs::write(
        dir.path().join("bad.toml"),
        "[federation]\nplatform_name = \"Thor\"\nlct_context = \"Thor\"\nkeypair_path = \"k\"\n[resources.consciousness]\natp_budget = \"lots\"\nmax_concurrent = 1\n",
    )
    .expect("write");
    let bad_config = one_line_error(&sagefed(&["config", "check", "bad.toml"], dir.path()));
    assert!(
        bad_config.contains("atp_budget") && bad_config.contains("bad.toml"),
        "{bad_config}"
    );

    let missing = one_line_error(&sagefed(&["config", "check", "nope.toml"], dir.path()));
    assert!(missing.contains("nope.toml"), "{missing}");

    for (budget, says) in [
        ("-3", "negative"),
        ("NaN", "not a finite number"),
        ("0", "more than zero"),
        ("1e300", "maximum"),
    ] {
        let args = [
            "delegate",
            "--config",
            "configs/thor.toml",
            "--operation",
            "planning",
            "--budget",
            budget,
        ];
        let refused = one_line_error(&sagefed(&args, &repo));
        assert!(refused.contains("--budget") && refused.contains(says), "{refused}");
    }

    std::fs::write(dir.path().join("junk.key"), "not a key").expect("write");
    let sig = sage_federation::identity::keys::read_secret(&dir.path().join("junk.key")).expect_err("junk");
    assert!(sig.to_string().contains("junk.key"));
}

#[test]
fn an_old_or_missing_nats_server_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.11.4'\n").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let run = |bin: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_sagefed"))
            .args(["up", "--exit-after-demo", "--port", "0", "--configs"])
            .arg(common::repo_dir().join("configs"))
            .current_dir(dir.path())
            .env("NATS_SERVER_BIN", bin)
            .output()
            .expect("run sagefed up")
    };
    let old = one_line_error(&run(&fake));
    assert!(old.contains("v2.11.4") && old.contains("older than"), "{old}");
    let missing = one_line_error(&run(&dir.path().join("nope")));
    assert!(missing.contains("NATS_SERVER_BIN"), "{missing}");
}

#[tokio::test]
async fn a_record_that_does_not_decode_is_an_error_naming_its_key_and_stays_as_it_was() {
    use sage_federation::protocol::task::TaskId;
    use sage_federation::state::registry::Registry;
    use sage_federation::state::reputation::Reputations;
    use sage_federation::state::task_board::{TaskBoard, TaskParties};

    let nats = TestNats::with_infra().await;
    let js = nats.js().await;
    let garbage = bytes::Bytes::from_static(b"{\"tasks\": \"many\"");
    for bucket in [
        subjects::REPUTATION_BUCKET,
        subjects::TASKS_BUCKET,
        subjects::PLATFORMS_BUCKET,
    ] {
        let kv = js.get_key_value(bucket).await.expect("bucket");
        kv.put("t-Legion", garbage.clone()).await.expect("put garbage");
    }
    let unchanged = |bucket: &'static str| {
        let js = js.clone();
        let garbage = garbage.clone();
        async move {
            let kv = js.get_key_value(bucket).await.expect("bucket");
            let stored = kv.get("t-Legion").await.expect("get").expect("still there");
            assert_eq!(stored, garbage, "{bucket} was written over");
        }
    };

    let reputations = Reputations::open(&js).await.expect("open");
    let reputation_kv = js.get_key_value(subjects::REPUTATION_BUCKET).await.expect("bucket");
    let key = subjects::reputation_key("t-Legion", "planning");
    reputation_kv
        .put(key.as_str(), garbage.clone())
        .await
        .expect("put garbage");
    let err = reputations
        .get("t-Legion", "planning")
        .await
        .expect_err("corrupt")
        .to_string();
    assert!(err.contains(&key) && err.contains("does not decode"), "{err}");
    let settled = sage_federation::state::reputation::Settled {
        paid: true,
        quality: 0.9,
        refuted: false,
        at: Timestamp::from_secs(1),
    };
    let err = reputations
        .record_many("t-Legion", "planning", &[settled], Duration::from_secs(3600))
        .await
        .expect_err("corrupt");
    assert!(err.to_string().contains(&format!("sage_reputation key {key}")), "{err}");
    let stored = reputation_kv
        .get(key.as_str())
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(stored, garbage, "the corrupt reputation was written over");
    unchanged(subjects::REPUTATION_BUCKET).await;

    let board = TaskBoard::open(&js).await.expect("open");
    let task_id: TaskId = "t-Legion".parse().expect("id");
    let part = subjects::task_delegator_part("t-Legion", "Thor");
    let tasks = js.get_key_value(subjects::TASKS_BUCKET).await.expect("bucket");
    tasks.put(part.as_str(), garbage.clone()).await.expect("put garbage");
    let parties = TaskParties {
        task_id: task_id.clone(),
        delegator: "Thor".into(),
        executor: "Legion".into(),
    };
    let err = board.get_between(&parties).await.expect_err("corrupt").to_string();
    assert!(err.contains(&part) && err.contains("does not decode"), "{err}");
    let err = board
        .mark_settled(&task_id, "Thor")
        .await
        .expect_err("corrupt")
        .to_string();
    assert!(err.contains(&part), "{err}");
    unchanged(subjects::TASKS_BUCKET).await;
    let stored = tasks.get(part.as_str()).await.expect("get").expect("still there");
    assert_eq!(stored, garbage, "the delegator's part was written over");

    let root = keys::generate().expect("random").verifying_key();
    let directory = std::sync::Arc::new(KeyDirectory::open(&js, &root).await.expect("keys"));
    let registry = Registry::open(&js, directory).await.expect("open");
    let err = registry.get("t-Legion").await.expect_err("corrupt").to_string();
    assert!(err.contains("t-Legion") && err.contains("does not decode"), "{err}");
    assert_eq!(
        registry.all().await.expect("the others").len(),
        0,
        "left out of placement"
    );
    unchanged(subjects::PLATFORMS_BUCKET).await;
}
