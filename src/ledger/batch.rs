//! Atomic batch publish (ADR-50) for async-nats 0.51 / nats-server >= 2.12.
//!
//! async-nats 0.51 ships the header constants (`NATS_BATCH_ID`, ...) and the
//! `allow_atomic_publish` stream flag, but no batch publisher. This module is a
//! minimal one, verified against nats-server 2.15.1 (`tests/ledger_batch.rs` keeps it true).
//!
//! Wire protocol (verified):
//!
//! * Every message carries `Nats-Batch-Id: <id>` (1..=64 chars) and
//!   `Nats-Batch-Sequence: <n>` with n = 1, 2, 3, ... without gaps.
//! * Message 1 is sent as a *request*. On success the server replies with an
//!   EMPTY body (no headers, no status). On failure (e.g. atomic publish not
//!   enabled -> 10174, id too long -> 10179, too many batches in flight ->
//!   10210) it replies with a JSON error ack `{"error":{...}}`.
//! * Messages 2..n-1 need NO reply subject: they are plain publishes. (If a
//!   reply subject is set, the server answers with an empty body.)
//! * The last message additionally carries `Nats-Batch-Commit: 1`, is sent as a
//!   request and gets the real PubAck:
//!   `{"stream":"S","seq":<last>,"batch":"<id>","count":<n>}`.
//! * Consistency checks (`Nats-Expected-Last-Subject-Sequence`, ...) of ALL
//!   messages are evaluated at commit time against the stream state *before*
//!   the batch; any failure rejects the whole batch and the error is reported
//!   on the commit reply only (message 1 still gets its empty ack).
//! * A committed batch occupies contiguous stream sequences: message i
//!   (0-based) is stored at `last_sequence - count + 1 + i`.
//! * CAS errors: 10071 "wrong last sequence: <current seq>" (stale revision,
//!   or expect 0 on an existing / deleted / TTL-purged key), 10164 "wrong last
//!   sequence" (a subject is CAS-checked after an earlier message of the same
//!   batch already wrote it). Other rejections: 10174 disabled, 10175 missing
//!   sequence, 10176 incomplete (gap, unknown/abandoned batch, dropped message),
//!   10179 bad id, 10199 > 1000 msgs, 10200 bad commit value, 10210 (code 429)
//!   more than 50 batches open on the stream.
//! * Limits: 1000 msgs/batch, 50 open batches per stream, 1000 per server,
//!   10 s idle timeout. No byte limit beyond max_payload per message, but
//!   fire-and-forget messages beyond the stream ingest queue (128 MiB) are
//!   dropped -> flow control below.
//! * KV: use subjects `$KV.<bucket>.<key>`; a KV delete is an empty message
//!   with `KV-Operation: DEL`. Re-creating a deleted/expired key needs the
//!   revision of its delete/purge marker, not 0.
//! * Cost: on a FILE stream the server stages every batch in a temporary file
//!   store (streams/<S>/batches/<rand>/, O_SYNC + fsync), ~2 ms per batch
//!   regardless of size; on a memory stream ~0.1-0.2 ms.
//!
//! Why the core `Client` and not `jetstream::Context`:
//! `Context::publish*` always expects a JSON PubAck; the empty reply to
//! message 1 fails to parse there, and it would also create an ack
//! subscription per intermediate message. The core client lets us send one
//! request (msg 1), n-2 fire-and-forget publishes and one request (commit) over
//! the same connection; NATS preserves per-connection ordering, so the server
//! sees them in order. (The commit could go through the Context, which parses
//! `batch`/`count` with the default `server_2_14` feature, but it only maps
//! err_code 10071 -- not 10164 -- to `WrongLastSequence`.)

use std::fmt;
use std::time::Duration;

use async_nats::header::{
    HeaderMap, HeaderValue, NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
};
use async_nats::{Client, Request, RequestErrorKind, StatusCode};
use bytes::Bytes;
use serde::Deserialize;

/// Server-side limit on the batch id length.
pub const BATCH_ID_CHARS_MAX: usize = 64;
/// Server default for messages per batch (`jetstream.limits.batch.max_msgs`).
pub const BATCH_MESSAGES_MAX: usize = 1000;
/// Default time to wait for each of the two server replies.
pub const BATCH_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// err_code: "wrong last sequence: {seq}" (JSStreamWrongLastSequenceErrF).
pub const ERR_WRONG_LAST_SEQUENCE: u64 = 10071;
/// err_code: "wrong last sequence" (JSStreamWrongLastSequenceConstantErr), e.g.
/// when the subject already has an expected-check in flight.
pub const ERR_WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
/// err_code: atomic publish too many inflight (HTTP-ish code 429).
pub const ERR_TOO_MANY_INFLIGHT: u64 = 10210;

/// One message of an atomic batch.
#[derive(Debug, Clone)]
pub struct BatchMessage {
    /// Full subject, e.g. `$KV.bucket.accounts.A`.
    pub subject: String,
    pub payload: Bytes,
    /// CAS on the subject's last stream sequence (= KV revision).
    /// `Some(0)` means "subject must not exist yet" (KV create).
    pub expected_last_subject_sequence: Option<u64>,
    /// Extra headers (e.g. `KV-Operation: DEL`). Must not contain
    /// `Nats-Msg-Id` / `Nats-Expected-Last-Msg-Id` (server rejects: 10177).
    /// Batch headers set here are overwritten.
    pub headers: Option<HeaderMap>,
}

impl BatchMessage {
    pub fn new(subject: impl Into<String>, payload: Bytes) -> Self {
        Self {
            subject: subject.into(),
            payload,
            expected_last_subject_sequence: None,
            headers: None,
        }
    }

    /// Require the subject's last sequence to be `seq` (0 = must not exist).
    pub fn expect_last_subject_sequence(mut self, seq: u64) -> Self {
        self.expected_last_subject_sequence = Some(seq);
        self
    }

    /// Add an arbitrary header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.get_or_insert_with(HeaderMap::new).insert(name, value);
        self
    }

    /// KV delete marker (`KV-Operation: DEL`, empty payload).
    pub fn kv_delete(subject: impl Into<String>) -> Self {
        Self::new(subject, Bytes::new()).header("KV-Operation", "DEL")
    }
}

/// Successful commit of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    pub stream: String,
    pub batch_id: String,
    /// Stream sequence of the last (commit) message.
    pub last_sequence: u64,
    /// Number of messages stored.
    pub count: u64,
}

impl BatchAck {
    /// Stream sequence (= KV revision) of message `index` (0-based, in the
    /// order given to `publish_atomic`). Committed batches are contiguous.
    pub fn sequence_of(&self, index: usize) -> Option<u64> {
        let index = index as u64;
        if index >= self.count {
            return None;
        }
        Some(self.last_sequence + 1 - self.count + index)
    }
}

/// JetStream API error as returned in a PubAck: `{"error":{...}}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub err_code: u64,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug)]
pub enum BatchError {
    /// Caller error, nothing was sent.
    InvalidInput(String),
    /// A consistency (CAS) check failed: err_code 10071 or 10164.
    /// Nothing from the batch was stored.
    WrongLastSequence(ApiError),
    /// Any other JetStream error (10174 not enabled, 10176 incomplete/abandoned,
    /// 10199 too large, 10210 too many inflight, 10177 unsupported header, ...).
    /// `stage` is "start" (reply to msg 1), "flow" (flow-control request) or "commit".
    Server { stage: &'static str, error: ApiError },
    /// No stream listens on the subject (503 no responders).
    NoStream { stage: &'static str },
    /// No reply in time. For stage "commit" the outcome is UNKNOWN: the batch
    /// may have been committed. Re-read state (with CAS a retry is safe: it
    /// fails with WrongLastSequence if the first attempt went through).
    Timeout { stage: &'static str },
    /// Connection / client-side failure (publish failed, max_payload, ...).
    Transport {
        stage: &'static str,
        source: async_nats::Error,
    },
    /// Reply we could not interpret.
    Protocol { stage: &'static str, detail: String },
}

impl BatchError {
    /// True for errors where retrying the same batch later may succeed
    /// (after re-reading state for CAS conflicts).
    pub fn is_retryable(&self) -> bool {
        match self {
            BatchError::WrongLastSequence(_) | BatchError::Timeout { .. } => true,
            BatchError::Server { error, .. } => error.err_code == ERR_TOO_MANY_INFLIGHT,
            _ => false,
        }
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::InvalidInput(m) => write!(f, "invalid batch: {m}"),
            BatchError::WrongLastSequence(e) => write!(
                f,
                "batch rejected, CAS conflict: code={} err_code={} {}",
                e.code, e.err_code, e.description
            ),
            BatchError::Server { stage, error } => write!(
                f,
                "batch rejected at {stage}: code={} err_code={} {}",
                error.code, error.err_code, error.description
            ),
            BatchError::NoStream { stage } => write!(f, "no stream for subject ({stage})"),
            BatchError::Timeout { stage } => write!(f, "timed out waiting for {stage} reply"),
            BatchError::Transport { stage, source } => write!(f, "transport error ({stage}): {source}"),
            BatchError::Protocol { stage, detail } => write!(f, "unexpected reply ({stage}): {detail}"),
        }
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BatchError::Transport { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// Raw reply: either a PubAck or an error.
#[derive(Debug, Deserialize)]
struct RawAck {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    count: Option<u64>,
}

fn classify(stage: &'static str, error: ApiError) -> BatchError {
    match error.err_code {
        ERR_WRONG_LAST_SEQUENCE | ERR_WRONG_LAST_SEQUENCE_CONSTANT => BatchError::WrongLastSequence(error),
        _ => BatchError::Server { stage, error },
    }
}

fn build_headers(batch_id: &HeaderValue, seq: usize, commit: bool, msg: &mut BatchMessage) -> HeaderMap {
    let mut h = msg.headers.take().unwrap_or_default();
    h.insert(NATS_BATCH_ID, batch_id.clone());
    h.insert(NATS_BATCH_SEQUENCE, HeaderValue::from(seq as u64));
    if commit {
        h.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
    }
    if let Some(expected) = msg.expected_last_subject_sequence {
        h.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, HeaderValue::from(expected));
    }
    h
}

/// Send a request and map transport failures.
async fn request(
    client: &Client,
    stage: &'static str,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    timeout: Duration,
) -> Result<async_nats::Message, BatchError> {
    let req = Request::new().headers(headers).payload(payload).timeout(Some(timeout));
    client.send_request(subject, req).await.map_err(|e| match e.kind() {
        RequestErrorKind::TimedOut => BatchError::Timeout { stage },
        RequestErrorKind::NoResponders => BatchError::NoStream { stage },
        _ => BatchError::Transport {
            stage,
            source: e.into(),
        },
    })
}

/// Tuning knobs for [`publish_atomic_with_options`].
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Time to wait for each server reply (start, flow-control, commit).
    pub timeout: Duration,
    /// Flow control: an intermediate message is sent as a request (and its
    /// empty ack awaited) once this many payload+header bytes were sent
    /// fire-and-forget. Without it a large batch can overflow the stream's
    /// ingest queue (default 128 MiB / 100k msgs, `max_buffered_size`), the
    /// server drops messages ("IPQ size limit reached") and the commit fails
    /// with 10176 (incomplete). 0 disables.
    pub flow_control_bytes: usize,
    /// Same, counted in messages. 0 disables.
    pub flow_control_msgs: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            timeout: BATCH_REPLY_TIMEOUT,
            flow_control_bytes: 8 * 1024 * 1024,
            flow_control_msgs: 0,
        }
    }
}

/// Atomically publish `msgs` as one batch with default options.
pub async fn publish_atomic(client: &Client, batch_id: &str, msgs: Vec<BatchMessage>) -> Result<BatchAck, BatchError> {
    publish_atomic_with_options(client, batch_id, msgs, &BatchOptions::default()).await
}

/// Like [`publish_atomic`] with a custom reply timeout.
pub async fn publish_atomic_with_timeout(
    client: &Client,
    batch_id: &str,
    msgs: Vec<BatchMessage>,
    timeout: Duration,
) -> Result<BatchAck, BatchError> {
    let opts = BatchOptions {
        timeout,
        ..BatchOptions::default()
    };
    publish_atomic_with_options(client, batch_id, msgs, &opts).await
}

/// Check a zero-byte ack (reply to message 1 or a flow-control request).
fn expect_empty_ack(stage: &'static str, reply: &async_nats::Message) -> Result<(), BatchError> {
    if reply.status == Some(StatusCode::NO_RESPONDERS) {
        return Err(BatchError::NoStream { stage });
    }
    if reply.payload.is_empty() {
        return Ok(());
    }
    let raw: RawAck = serde_json::from_slice(&reply.payload).map_err(|e| BatchError::Protocol {
        stage,
        detail: format!("{e}: {}", String::from_utf8_lossy(&reply.payload)),
    })?;
    Err(match raw.error {
        Some(err) => classify(stage, err),
        None => BatchError::Protocol {
            stage,
            detail: "non-empty reply without error to a non-commit message".into(),
        },
    })
}

/// Atomically publish `msgs` as one batch. Either all messages are stored
/// (contiguously, in order) or none.
///
/// `batch_id` must be unique among in-flight batches of the stream (use a
/// nuid/uuid); 1..=64 chars. All subjects must belong to the same stream.
pub async fn publish_atomic_with_options(
    client: &Client,
    batch_id: &str,
    mut msgs: Vec<BatchMessage>,
    opts: &BatchOptions,
) -> Result<BatchAck, BatchError> {
    let timeout = opts.timeout;
    if msgs.is_empty() {
        return Err(BatchError::InvalidInput("empty batch".into()));
    }
    if batch_id.is_empty() || batch_id.len() > BATCH_ID_CHARS_MAX {
        return Err(BatchError::InvalidInput(format!(
            "batch id must be 1..={BATCH_ID_CHARS_MAX} chars, got {}",
            batch_id.len()
        )));
    }
    if batch_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BatchError::InvalidInput("batch id contains whitespace".into()));
    }
    if msgs.len() > BATCH_MESSAGES_MAX {
        // Server default limit; larger batches get err_code 10199 at commit.
        return Err(BatchError::InvalidInput(format!(
            "batch has {} messages, server default limit is {BATCH_MESSAGES_MAX}",
            msgs.len()
        )));
    }
    let id_value = HeaderValue::from(batch_id);
    let n = msgs.len();
    let (mut unacked_bytes, mut unacked_msgs) = (0usize, 0usize);

    for (i, m) in msgs.iter_mut().enumerate() {
        let is_commit = i + 1 == n;
        let headers = build_headers(&id_value, i + 1, is_commit, m);
        let subject = std::mem::take(&mut m.subject);
        let payload = std::mem::take(&mut m.payload);

        if is_commit {
            // Last message (also the first one for a 1-message batch):
            // commit request, answered with the real PubAck or the error.
            let reply = request(client, "commit", subject, headers, payload, timeout).await?;
            return parse_commit_ack(batch_id, &reply);
        }

        if i == 0 {
            // Message 1 must be a request: this is where "not enabled"
            // (10174), bad id (10179) and "too many inflight" (10210) surface.
            // Success = zero-byte reply.
            let reply = request(client, "start", subject, headers, payload, timeout).await?;
            expect_empty_ack("start", &reply)?;
            continue;
        }

        // Messages 2..n-1: fire-and-forget (no reply subject needed). Errors
        // on these (gap, dropped message, abandoned batch) surface on the
        // commit reply as 10176. Periodically send one as a request instead
        // (flow control) to bound what is queued at the server and fail fast.
        unacked_bytes += payload.len() + subject.len();
        unacked_msgs += 1;
        let flow = (opts.flow_control_bytes > 0 && unacked_bytes >= opts.flow_control_bytes)
            || (opts.flow_control_msgs > 0 && unacked_msgs >= opts.flow_control_msgs);
        if flow {
            let reply = request(client, "flow", subject, headers, payload, timeout).await?;
            expect_empty_ack("flow", &reply)?;
            unacked_bytes = 0;
            unacked_msgs = 0;
        } else {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| BatchError::Transport {
                    stage: "publish",
                    source: e.into(),
                })?;
        }
    }
    // Not reachable: `msgs` is non-empty, so the loop returns at the commit.
    Err(BatchError::InvalidInput("empty batch".into()))
}

/// Parse the reply to the commit message.
fn parse_commit_ack(batch_id: &str, reply: &async_nats::Message) -> Result<BatchAck, BatchError> {
    const STAGE: &str = "commit";
    if reply.status == Some(StatusCode::NO_RESPONDERS) {
        return Err(BatchError::NoStream { stage: STAGE });
    }
    let raw: RawAck = serde_json::from_slice(&reply.payload).map_err(|e| BatchError::Protocol {
        stage: STAGE,
        detail: format!("{e}: {:?}", String::from_utf8_lossy(&reply.payload)),
    })?;
    if let Some(err) = raw.error {
        return Err(classify(STAGE, err));
    }
    // A plain PubAck without `count` means the message was stored as a normal
    // (non-batch) publish, which should not happen on an allow_atomic stream.
    let count = raw.count.ok_or_else(|| BatchError::Protocol {
        stage: STAGE,
        detail: "PubAck without batch count".into(),
    })?;
    Ok(BatchAck {
        stream: raw.stream,
        batch_id: raw.batch.unwrap_or_else(|| batch_id.to_string()),
        last_sequence: raw.seq,
        count,
    })
}

/// A fresh unique batch id (the 22-char NUID of a new inbox name).
pub fn new_batch_id(client: &Client) -> String {
    let inbox = client.new_inbox();
    inbox.rsplit('.').next().unwrap_or(inbox.as_str()).to_string()
}
