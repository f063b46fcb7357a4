//! CPU cost of the signed envelopes and the ledger rules, without NATS: what every task,
//! proof and ledger request pays in the process. Run with `cargo bench --bench envelope`.
//!
//! The floor is the bare Ed25519 `verify_strict` of the same bytes, measured in the same run.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ed25519_dalek::Signer as _;
use sage_federation::identity::keys::{self, KeyRecord, KeyRegistry};
use sage_federation::nats::subjects;
use sage_federation::protocol::clock::Timestamp;
use sage_federation::protocol::envelope::{Signer, verify};
use sage_federation::protocol::lct::Lct;
use sage_federation::protocol::task::{FederationTask, TaskId};

fn task() -> FederationTask {
    let task_id: TaskId = "t-bench".parse().expect("id");
    let source: Lct = "lct:web4:agent:dp@Thor#consciousness".parse().expect("lct");
    FederationTask {
        reply_to: subjects::proof("Thor", "Legion", task_id.as_str()),
        task_id,
        source_lct: source,
        target_lct: "lct:web4:agent:dp@Legion#consciousness".parse().expect("lct"),
        task_type: "consciousness".into(),
        operation: "planning".into(),
        atp_budget: 10.0,
        timeout_seconds: 30,
        parameters: serde_json::json!({"width": 32, "height": 32, "start": [0, 0], "goal": [31, 31]})
            .as_object()
            .cloned()
            .expect("object"),
        created_at: Timestamp::from_secs(1000),
        expires_at: Timestamp::from_secs(2000),
        critical: false,
    }
}

fn envelopes(c: &mut Criterion) {
    let secret = keys::generate().expect("random");
    let raw = secret.clone();
    let signer = Signer::new("Thor", secret).expect("signer");
    let mut registry = KeyRegistry::new();
    registry.insert(KeyRecord::new("Thor", &signer.verifying_key(), Timestamp::EPOCH));
    let task = task();
    let wire = signer.sign(&task).expect("sign");

    let message = serde_json::to_vec(&task).expect("json");
    let signature = raw.sign(&message);
    let public = raw.verifying_key();
    c.bench_function("floor: ed25519 verify_strict of a task body", |b| {
        b.iter(|| {
            public
                .verify_strict(black_box(&message), black_box(&signature))
                .expect("valid")
        })
    });
    c.bench_function("envelope: sign a task", |b| {
        b.iter(|| signer.sign(black_box(&task)).expect("sign"))
    });
    c.bench_function("envelope: verify a task (all checks)", |b| {
        b.iter(|| verify::<FederationTask>(black_box(&wire), &registry, Timestamp::from_secs(1_500)).expect("verify"))
    });
}

criterion_group!(benches, envelopes);
criterion_main!(benches);
