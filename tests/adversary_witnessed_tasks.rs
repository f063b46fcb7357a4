//! The delegators' kept witnessed tasks under attack (issue #13, item 2): a restarted
//! delegator reads its signed task back from `sage_witnessed_tasks` to hand it to the
//! witness, so another platform holding valid credentials (Sprout) must not overwrite,
//! delete or read Thor's. The server refuses every attempt by permission (not by our
//! client's manners), and Thor's kept task is exactly as Thor wrote it afterwards.

mod common;

use bytes::Bytes;
use common::attacker::Attacker;
use common::federation::Processes;
use sage_federation::nats::subjects;
use sage_federation::protocol::task::TaskId;
use sage_federation::state::witnessed_tasks::WitnessedTasks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_platform_cannot_write_or_read_a_delegators_kept_task() {
    let p = Processes::start().await;
    let task_id = TaskId::random().expect("id");
    let thor_js = async_nats::jetstream::new(p.nats.client_as("Thor").await);
    let thor = WitnessedTasks::open(&thor_js, "Thor").await.expect("bucket");
    let genuine = Bytes::from_static(b"Thor's signed task");
    thor.keep(&task_id, genuine.clone())
        .await
        .expect("Thor keeps its own task");

    let mut sprout = Attacker::connect(&p, "Sprout").await;
    let bucket = subjects::WITNESSED_TASKS_BUCKET;
    let stream = subjects::kv_stream(bucket);
    let thors_key = subjects::kv_subject(bucket, &subjects::witnessed_task_key("Thor", task_id.as_str()));
    // Overwrite (a put) or delete (a put with a delete header: the same subject).
    sprout.publish(&thors_key, "other work").await;
    // Read it back by key, by sequence, by the message API or through a consumer.
    for read in [
        subjects::js_direct_get_subject(&stream, &thors_key),
        subjects::js_direct_get(&stream),
        subjects::js_msg_get(&stream),
    ] {
        sprout.publish(&read, "{\"seq\": 1}").await;
    }
    for create in subjects::js_consumer_create_any(&stream) {
        let subject = create.replace(['>', '*'], "steal");
        sprout.publish(&subject, "{}").await;
    }
    assert_eq!(sprout.attempts, 6, "every attempt refused");

    // Sprout may keep its own tasks (under its own name), which nobody reads for Thor's.
    let sprout_js = async_nats::jetstream::new(p.nats.client_as("Sprout").await);
    let own = WitnessedTasks::open(&sprout_js, "Sprout").await.expect("bucket");
    own.keep(&task_id, Bytes::from_static(b"Sprout's"))
        .await
        .expect("its own key");

    assert_eq!(thor.get(&task_id).await.expect("readable"), Some(genuine));
    p.assert_audit_clean();
}
