//! `LedgerClient`: how platforms talk to the ledger service. Signs each request with the
//! platform's key and retries what is safe to retry (every ledger request is idempotent):
//! timeouts, no responders, and "busy" replies, with exponential backoff.

use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::ledger::model::{JournalEntry, RollbackReason, SignedProof, Transition};
use crate::ledger::protocol::{LedgerReply, LedgerRequest, Operation, REQUEST_TTL, RejectCode, WitnessRequest};
use crate::nats::subjects;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::Signer;
use crate::protocol::lct::Lct;
use crate::protocol::task::TaskId;

/// How long one request waits for the ledger's reply.
pub const LEDGER_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per request before giving up.
pub const LEDGER_ATTEMPTS_MAX: u32 = 6;
/// First pause between attempts; doubles each time.
const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum LedgerClientError {
    #[error("cannot sign the ledger request: {0}")]
    Sign(#[source] crate::protocol::envelope::EnvelopeError),
    /// A signed proof to embed in a request is not a JSON envelope (it repeats: not transient).
    #[error("the proof to embed is not a JSON envelope: {0}")]
    Embed(#[source] serde_json::Error),
    #[error("the ledger service did not answer after {attempts} attempts ({last}); is `sagefed ledger serve` running?")]
    Unreachable {
        attempts: u32,
        #[source]
        last: LastAttempt,
    },
    #[error("the ledger's reply could not be read ({source}): {payload}")]
    BadReply {
        /// The reply as received (lossy UTF-8), to show what came back.
        payload: String,
        #[source]
        source: serde_json::Error,
    },
    /// The ledger's bucket could not be opened (the server or its JetStream unreachable).
    #[error("cannot open the ledger's bucket ({0}); retry when the server is back")]
    Bucket(#[source] async_nats::jetstream::context::KeyValueError),
    /// A record could not be read from the ledger's bucket.
    #[error("cannot read {key} from the ledger's bucket ({source}); retry when the server is back")]
    Read {
        key: String,
        #[source]
        source: async_nats::jetstream::kv::EntryError,
    },
    /// A record in the ledger's bucket does not decode: corrupt or from another version.
    #[error("the ledger record {key} does not decode: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Why the last attempt of a ledger request failed.
#[derive(Debug, thiserror::Error)]
pub enum LastAttempt {
    /// The ledger answered that it is busy (its group commit full); its message.
    #[error("the ledger was busy: {0}")]
    Busy(String),
    #[error("the request failed: {0}")]
    Request(#[source] async_nats::RequestError),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
}

impl LedgerClientError {
    /// Whether the same request may succeed later: when no ledger answered or its bucket
    /// could not be read (a reply or record that does not decode, or a request that cannot
    /// be signed, repeats).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Bucket(_) | Self::Read { .. })
    }
}

/// Signs and sends ledger requests for one platform.
/// The terms a delegator locks ATP on, each named so that none can be swapped. (The wire
/// carries the amount as decimal ATP, as the seed does; [`LedgerClient::request`] sends any
/// other value.)
#[derive(Clone, Debug)]
pub struct LockTerms {
    pub task_id: TaskId,
    pub delegator: Lct,
    pub executor: Lct,
    pub amount: Atp,
    /// A proof at or above this quality may be committed.
    pub quality_threshold: f64,
    /// Unix seconds after which the delegator may roll back for timeout.
    pub deadline: Timestamp,
    /// Unix seconds after which nobody may commit and the sweeper refunds the lock.
    pub expires_at: Timestamp,
}

#[derive(Clone)]
pub struct LedgerClient {
    client: Client,
    signer: Signer,
    timeout: Duration,
}

impl LedgerClient {
    pub fn new(client: Client, signer: Signer) -> Self {
        Self {
            client,
            signer,
            timeout: LEDGER_REQUEST_TIMEOUT,
        }
    }

    /// Waits `timeout` for each reply instead of [`LEDGER_REQUEST_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn platform(&self) -> &str {
        self.signer.platform()
    }

    /// Sends `operation`, retrying transient failures. A rejection is a reply, not an error.
    pub async fn request(&self, operation: Operation) -> Result<LedgerReply, LedgerClientError> {
        let subject = subjects::ledger_endpoint(operation.name());
        let mut pause = RETRY_PAUSE_FIRST;
        let mut last = LastAttempt::Timeout(self.timeout);
        for attempt in 1..=LEDGER_ATTEMPTS_MAX {
            let created_at = Timestamp::now();
            let request = LedgerRequest {
                requester: self.signer.platform().to_owned(),
                created_at,
                expires_at: created_at + REQUEST_TTL,
                operation: operation.clone(),
            };
            let wire = self.signer.sign(&request).map_err(LedgerClientError::Sign)?;
            let sent = tokio::time::timeout(self.timeout, self.client.request(subject.clone(), wire)).await;
            match sent {
                Ok(Ok(message)) => {
                    let reply: LedgerReply =
                        serde_json::from_slice(&message.payload).map_err(|source| LedgerClientError::BadReply {
                            payload: String::from_utf8_lossy(&message.payload).into_owned(),
                            source,
                        })?;
                    if reply.code != Some(RejectCode::Busy) || attempt == LEDGER_ATTEMPTS_MAX {
                        return Ok(reply);
                    }
                    last = LastAttempt::Busy(reply.message);
                }
                Ok(Err(e)) => last = LastAttempt::Request(e),
                Err(_) => last = LastAttempt::Timeout(self.timeout),
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        Err(LedgerClientError::Unreachable {
            attempts: LEDGER_ATTEMPTS_MAX,
            last,
        })
    }

    /// Grants `amount` ATP to `account` (the signer must be a ledger admin).
    pub async fn grant(&self, grant_id: &str, account: &Lct, amount: f64) -> Result<LedgerReply, LedgerClientError> {
        self.request(Operation::Grant {
            grant_id: grant_id.to_owned(),
            account: account.clone(),
            amount,
        })
        .await
    }

    /// Locks `terms.amount` of the delegator's ATP for the task.
    pub async fn lock(&self, terms: &LockTerms) -> Result<LedgerReply, LedgerClientError> {
        self.lock_with_digest(terms, None, None, None).await
    }

    /// Locks `terms` for the signed task `task` (its wire bytes): the lock names the task's
    /// digest, so the commit must carry the task and a built-in operation's result is paid by
    /// the ledger's check of it. `operation` is the task's (the executor's reputation is kept
    /// per operation; a commit carrying a task of another operation is refused).
    pub async fn lock_for_task(
        &self,
        terms: &LockTerms,
        task: &Bytes,
        operation: &str,
    ) -> Result<LedgerReply, LedgerClientError> {
        let digest = crate::protocol::envelope::digest(task);
        self.lock_with_digest(terms, Some(digest), Some(operation.to_owned()), None)
            .await
    }

    /// [`Self::lock_for_task`] with witness terms: if the task's operation has no cheap
    /// check, the ledger may hold the commit for one of `witness.candidates` to re-execute it
    /// (`Operation::Witness`), for `witness.share` ATP out of the lock.
    pub async fn lock_with_witness(
        &self,
        terms: &LockTerms,
        task: &Bytes,
        operation: &str,
        witness: WitnessRequest,
    ) -> Result<LedgerReply, LedgerClientError> {
        let digest = crate::protocol::envelope::digest(task);
        self.lock_with_digest(terms, Some(digest), Some(operation.to_owned()), Some(witness))
            .await
    }

    async fn lock_with_digest(
        &self,
        terms: &LockTerms,
        task_digest: Option<String>,
        operation: Option<String>,
        witness: Option<WitnessRequest>,
    ) -> Result<LedgerReply, LedgerClientError> {
        self.request(Operation::Lock {
            task_id: terms.task_id.clone(),
            delegator: terms.delegator.clone(),
            executor: terms.executor.clone(),
            amount: terms.amount.as_f64(),
            quality_threshold: terms.quality_threshold,
            deadline: terms.deadline,
            expires_at: terms.expires_at,
            task_digest,
            operation,
            witness,
        })
        .await
    }

    /// The appointed witness's answer for a commit held for it: its own signed proof of the
    /// same task.
    pub async fn witness(&self, task_id: &TaskId, proof: &Bytes) -> Result<LedgerReply, LedgerClientError> {
        let proof = embedded_envelope(proof)?;
        self.request(Operation::Witness {
            task_id: task_id.clone(),
            proof,
        })
        .await
    }

    /// Commits `task_id` with the executor's signed proof envelope (for a lock that names no
    /// task; see [`Self::commit_with_task`]).
    pub async fn commit(&self, task_id: &TaskId, proof: &Bytes) -> Result<LedgerReply, LedgerClientError> {
        self.commit_carrying(task_id, proof, None).await
    }

    /// Commits `task_id` with the executor's signed proof envelope and the delegator's signed
    /// task it answers, which the ledger checks the result against.
    pub async fn commit_with_task(
        &self,
        task_id: &TaskId,
        proof: &Bytes,
        task: &Bytes,
    ) -> Result<LedgerReply, LedgerClientError> {
        self.commit_carrying(task_id, proof, Some(task)).await
    }

    async fn commit_carrying(
        &self,
        task_id: &TaskId,
        proof: &Bytes,
        task: Option<&Bytes>,
    ) -> Result<LedgerReply, LedgerClientError> {
        let proof = embedded_envelope(proof)?;
        let task = task.map(embedded_envelope).transpose()?;
        self.request(Operation::Commit {
            task_id: task_id.clone(),
            proof,
            task,
        })
        .await
    }

    /// Rolls `task_id` back, with the executor's signed proof as evidence when there is one.
    pub async fn rollback(
        &self,
        task_id: &TaskId,
        reason: RollbackReason,
        evidence: Option<&Bytes>,
    ) -> Result<LedgerReply, LedgerClientError> {
        let evidence = evidence.map(embedded_envelope).transpose()?;
        self.request(Operation::Rollback {
            task_id: task_id.clone(),
            reason,
            evidence,
        })
        .await
    }
}

/// A signed envelope's wire bytes as a JSON value to embed in a request, verbatim (its
/// signature covers these exact bytes).
fn embedded_envelope(wire: &Bytes) -> Result<Box<RawValue>, LedgerClientError> {
    // from_slice checks UTF-8 and JSON at once; the copy keeps the signed bytes verbatim.
    let raw: &RawValue = serde_json::from_slice(wire).map_err(LedgerClientError::Embed)?;
    Ok(raw.to_owned())
}

/// Read-only access to ledger records, for platforms (only the ledger service writes).
#[derive(Clone)]
pub struct LedgerReader {
    kv: async_nats::jetstream::kv::Store,
}

impl LedgerReader {
    pub async fn open(js: &async_nats::jetstream::Context) -> Result<Self, LedgerClientError> {
        let kv = js
            .get_key_value(subjects::LEDGER_BUCKET)
            .await
            .map_err(LedgerClientError::Bucket)?;
        Ok(Self { kv })
    }

    async fn read<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LedgerClientError> {
        let value = self.kv.get(key).await.map_err(|source| LedgerClientError::Read {
            key: key.to_owned(),
            source,
        })?;
        value
            .map(|v| {
                serde_json::from_slice(&v).map_err(|source| LedgerClientError::Corrupt {
                    key: key.to_owned(),
                    source,
                })
            })
            .transpose()
    }

    /// The lock of `task_id`, if any.
    pub async fn lock(&self, task_id: &TaskId) -> Result<Option<crate::ledger::model::Lock>, LedgerClientError> {
        self.read(&subjects::ledger_lock(task_id.as_str())).await
    }

    /// The signed proof the commit of `task_id` paid for, kept in its settle journal entry
    /// (`None` when the task was not committed, or was committed before proofs were kept).
    pub async fn paid_proof(&self, task_id: &TaskId) -> Result<Option<SignedProof>, LedgerClientError> {
        let entry: Option<JournalEntry> = self.read(&subjects::ledger_journal_settle(task_id.as_str())).await?;
        Ok(entry
            .filter(|entry| entry.transition == Transition::Commit)
            .and_then(|entry| entry.proof))
    }

    /// The account of `lct`, if any.
    pub async fn account(&self, lct: &Lct) -> Result<Option<crate::ledger::model::Account>, LedgerClientError> {
        self.read(&crate::ledger::model::account_key(lct)).await
    }
}
