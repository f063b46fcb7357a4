//! A connection as some identity that counts the attempts it makes and waits, for each, for
//! nats-server's permission error naming the subject (not a timeout): the adversary suites'
//! attacker.

use std::time::Duration;

use async_nats::Event;
use tokio::sync::mpsc;

use sage_federation::nats::connection;

use super::federation::Processes;

/// How long the server has to send its permission error for one attempt.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection as some identity, with the server's errors collected.
pub struct Attacker {
    pub name: String,
    pub client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
    pub attempts: usize,
}

impl Attacker {
    pub async fn connect(p: &Processes, identity: &str) -> Self {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = connection::connect_options(&p.nats.access(identity), "attacker")
            .expect("options")
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(p.url())
            .await
            .expect("the attacker's own credentials are valid");
        Self {
            name: identity.to_owned(),
            client,
            errors,
            attempts: 0,
        }
    }

    /// Waits for the server's permission error about `what` `subject`.
    pub async fn refused(&mut self, what: &str, subject: &str) {
        self.attempts += 1;
        let expected = format!("Permissions Violation for {what} to \"{subject}\"");
        let deadline = tokio::time::Instant::now() + REFUSAL_TIMEOUT;
        loop {
            let error = tokio::time::timeout_at(deadline, self.errors.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no permission error for {what} to {subject}", self.name))
                .expect("error channel");
            if error.contains(&expected) {
                return;
            }
        }
    }

    pub async fn publish(&mut self, subject: &str, payload: &'static str) {
        self.client
            .publish(subject.to_owned(), payload.into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
        self.refused("Publish", subject).await;
    }

    pub async fn subscribe(&mut self, subject: &str) {
        let subscription = self.client.subscribe(subject.to_owned()).await.expect("subscribe");
        self.client.flush().await.expect("flush");
        self.refused("Subscription", subject).await;
        drop(subscription);
    }
}
