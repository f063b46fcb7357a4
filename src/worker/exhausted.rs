//! Tasks whose deliveries ran out: a task whose last delivery timed out (its worker died or
//! hung) stays in the work queue and the server publishes a max-deliveries advisory. The
//! advisory is only a hint: one worker of the platform (a queue group) reads the message it
//! names from the stream, checks that it is a task for this platform that the platform's
//! consumer delivered, and only then copies it to the dead-letter stream, removes it, and
//! refunds it. Only nats-server may publish advisories (no identity's permissions include
//! `$JS.EVENT.>`); the server exposes no per-message delivery count, and in 2.15 the ack
//! floor stays below an exhausted message, so the count checked is the advisory's own.

use async_nats::Client;
use async_nats::jetstream::consumer::pull;
use futures::StreamExt;

use crate::nats::subjects;
use crate::protocol::task::Lane;
use crate::worker::WorkerContext;
use crate::worker::run::{self, DEAD_REASON_HEADER, DEAD_SUBJECT_HEADER};

/// Why an advisory is not acted on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotExhausted {
    #[error("stream sequence {sequence} holds a message on {subject}, not a task on {queue}")]
    ForeignSubject {
        sequence: u64,
        subject: String,
        queue: String,
    },
    #[error("the consumer never delivered stream sequence {sequence} (it delivered up to {delivered})")]
    NeverDelivered { sequence: u64, delivered: u64 },
    #[error("the advisory counts {deliveries} deliveries, fewer than the {max_deliver} allowed")]
    DeliveriesLeft { deliveries: i64, max_deliver: i64 },
}

/// What a max-deliveries advisory says (the fields used).
#[derive(Debug, serde::Deserialize)]
pub struct Advisory {
    pub stream_seq: u64,
    pub deliveries: i64,
}

/// Whether the message on `subject` that `advisory` names is a task on `queue` (one of the
/// platform's lanes) that its consumer (which has delivered stream sequences up to
/// `delivered`) ran out of deliveries for, `max_deliver` being the consumer's limit.
pub fn check_exhausted(
    queue: &str,
    subject: &str,
    advisory: &Advisory,
    delivered: u64,
    max_deliver: i64,
) -> Result<(), NotExhausted> {
    let sequence = advisory.stream_seq;
    if subject != queue {
        return Err(NotExhausted::ForeignSubject {
            sequence,
            subject: subject.to_owned(),
            queue: queue.to_owned(),
        });
    }
    if sequence > delivered {
        return Err(NotExhausted::NeverDelivered { sequence, delivered });
    }
    if advisory.deliveries < max_deliver {
        return Err(NotExhausted::DeliveriesLeft {
            deliveries: advisory.deliveries,
            max_deliver,
        });
    }
    Ok(())
}

/// Handles the max-deliveries advisories of this platform's consumer of `lane`, one worker
/// process per advisory.
pub async fn dead_letter_exhausted(ctx: std::sync::Arc<WorkerContext>, client: Client, lane: Lane) {
    let subject = subjects::max_deliveries_advisory(subjects::TASKS_STREAM, &lane.consumer(ctx.config.platform()));
    let Ok(mut advisories) = client
        .queue_subscribe(subject, subjects::EXHAUSTED_QUEUE_GROUP.to_owned())
        .await
    else {
        tracing::error!("cannot subscribe to max-delivery advisories");
        return;
    };
    while let Some(advisory) = advisories.next().await {
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&advisory.payload) else {
            tracing::warn!("ignoring a max-deliveries advisory that cannot be read");
            continue;
        };
        if let Err(e) = dead_letter_sequence(&ctx, &advisory, lane).await {
            tracing::error!(sequence = advisory.stream_seq, error = %e, "could not dead-letter an exhausted task");
        }
    }
}

async fn dead_letter_sequence(ctx: &WorkerContext, advisory: &Advisory, lane: Lane) -> anyhow::Result<()> {
    let platform = ctx.config.platform();
    let sequence = advisory.stream_seq;
    let stream = ctx.js.get_stream(subjects::TASKS_STREAM).await?;
    let Ok(message) = stream.get_raw_message(sequence).await else {
        return Ok(());
    };
    let consumer = stream
        .get_consumer::<pull::Config>(&lane.consumer(platform))
        .await
        .map_err(|e| anyhow::anyhow!("reading the consumer's state: {e}"))?;
    let delivered = consumer.cached_info().delivered.stream_sequence;
    if let Err(e) = check_exhausted(
        &lane.subject(platform),
        message.subject.as_str(),
        advisory,
        delivered,
        ctx.config.worker.max_deliver,
    ) {
        tracing::warn!(error = %e, "ignoring a max-deliveries advisory");
        return Ok(());
    }
    let mut headers = async_nats::HeaderMap::new();
    let reason = format!(
        "exhausted its {} deliveries without an answer (worker died or hung)",
        ctx.config.worker.max_deliver
    );
    headers.insert(DEAD_REASON_HEADER, reason.as_str());
    headers.insert(DEAD_SUBJECT_HEADER, message.subject.as_str());
    let payload = message.payload.clone();
    ctx.js
        .publish_with_headers(subjects::dead_letter(platform), headers, payload.clone())
        .await?
        .await?;
    stream.delete_message(sequence).await?;
    tracing::warn!(sequence, "{reason}; dead-lettered");
    run::abandon(ctx, &payload, &reason).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_delivered_task_of_this_platform_out_of_deliveries_is_exhausted() {
        let own = Lane::Normal.subject("Legion");
        let advisory = |stream_seq, deliveries| Advisory { stream_seq, deliveries };
        assert_eq!(check_exhausted(&own, &own, &advisory(7, 4), 7, 4), Ok(()));
        assert_eq!(check_exhausted(&own, &own, &advisory(7, 5), 9, 4), Ok(()));
        assert_eq!(
            check_exhausted(&own, &own, &advisory(8, 4), 7, 4),
            Err(NotExhausted::NeverDelivered {
                sequence: 8,
                delivered: 7
            })
        );
        assert_eq!(
            check_exhausted(&own, &own, &advisory(7, 3), 7, 4),
            Err(NotExhausted::DeliveriesLeft {
                deliveries: 3,
                max_deliver: 4
            })
        );
        assert!(matches!(
            check_exhausted(&own, &subjects::delegate("Thor"), &advisory(7, 4), 9, 4),
            Err(NotExhausted::ForeignSubject { .. })
        ));
        // A lane's consumer acts only on tasks of that lane.
        let critical = Lane::Critical.subject("Legion");
        assert_eq!(check_exhausted(&critical, &critical, &advisory(7, 4), 7, 4), Ok(()));
        assert!(matches!(
            check_exhausted(&critical, &own, &advisory(7, 4), 7, 4),
            Err(NotExhausted::ForeignSubject { .. })
        ));
    }
}
