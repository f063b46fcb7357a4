//! Every NATS subject, stream, consumer and KV bucket name, built by pure functions.
//!
//! Architecture invariant: no other module spells a subject or a bucket name. `subjects.md`
//! documents the same names with who publishes and who subscribes; keep the two in step.
//!
//! Callers pass validated names (`Lct` parts, `TaskId`), which are already safe subject
//! tokens, so nothing here can build a subject with a wildcard or an empty token.

/// Work-queue stream holding delegated tasks, one subject per target platform.
pub const TASKS_STREAM: &str = "SAGE_TASKS";
/// Normal tasks in [`TASKS_STREAM`]: `sage.delegate.<executor>`.
pub const TASKS_SUBJECTS: &str = "sage.delegate.*";
/// Critical tasks in [`TASKS_STREAM`]: `sage.critical.<executor>`, the lane a platform's
/// workers drain first. Only identities granted `federation:critical` may publish here.
pub const CRITICAL_TASKS_SUBJECTS: &str = "sage.critical.*";

/// Stream holding signed execution proofs, addressed to the delegator platform and named by
/// the executor platform that published them (each may publish only under its own name).
pub const PROOFS_STREAM: &str = "SAGE_PROOFS";
/// Subjects captured by [`PROOFS_STREAM`]: `sage.proof.<delegator>.<executor>.<task_id>`.
pub const PROOFS_SUBJECTS: &str = "sage.proof.*.*.*";

/// Stream holding tasks that exhausted their deliveries or could not be parsed.
pub const DEAD_STREAM: &str = "SAGE_DEAD";
/// Subjects captured by [`DEAD_STREAM`].
pub const DEAD_SUBJECTS: &str = "sage.dead.*";

/// KV bucket holding the ATP ledger: accounts, locks, journal, grants, supply.
pub const LEDGER_BUCKET: &str = "sage_ledger";
/// KV bucket holding every platform's public keys with their validity windows.
pub const KEYS_BUCKET: &str = "sage_keys";
/// KV bucket holding the platform registry: capabilities, heartbeat, load.
pub const PLATFORMS_BUCKET: &str = "sage_platforms";
/// KV bucket holding each executor platform's reputation.
pub const REPUTATION_BUCKET: &str = "sage_reputation";
/// KV bucket holding each task's status (queued, running, finished, cancelled).
pub const TASKS_BUCKET: &str = "sage_tasks";
/// KV bucket holding each delegator's signed tasks whose locks name witness terms, keyed
/// [`witnessed_task_key`], so that a delegator restarted while its lock is held can still
/// hand the task to the appointed witness (ARCHITECTURE.md, "Witnesses").
pub const WITNESSED_TASKS_BUCKET: &str = "sage_witnessed_tasks";

/// Name of the micro service answering ledger requests.
pub const LEDGER_SERVICE: &str = "sagefed-ledger";
/// Queue group shared by every ledger service instance.
pub const LEDGER_QUEUE_GROUP: &str = "sagefed-ledger";
/// Prefix of the ledger service's endpoints: `sage.ledger.<operation>`.
pub const LEDGER_ENDPOINT_PREFIX: &str = "sage.ledger";

/// Name (and queue group) of the micro service answering status and cancel requests.
pub const STATUS_SERVICE: &str = "sagefed-status";
/// Prefix of the status service's endpoints.
pub const STATUS_ENDPOINT_PREFIX: &str = "sage.status";

/// Subject a delegator publishes a task for `platform` on.
pub fn delegate(platform: &str) -> String {
    format!("sage.delegate.{platform}")
}

/// Subject a delegator publishes a critical task for `platform` on: its critical lane.
pub fn critical(platform: &str) -> String {
    format!("sage.critical.{platform}")
}

/// The lane a task for `platform` is queued on: [`critical`] or [`delegate`].
pub fn task_queue(platform: &str, critical_lane: bool) -> String {
    if critical_lane {
        critical(platform)
    } else {
        delegate(platform)
    }
}

/// Any platform's critical lane (a delegator granted `federation:critical` may use any).
pub fn critical_any() -> String {
    CRITICAL_TASKS_SUBJECTS.to_owned()
}

/// Subject `executor_platform` publishes the proof of `task_id` on, for `delegator_platform`:
/// the task's proof slot. Only the executor may publish under its own name, so no other
/// platform can occupy or overwrite the slot.
pub fn proof(delegator_platform: &str, executor_platform: &str, task_id: &str) -> String {
    format!("sage.proof.{delegator_platform}.{executor_platform}.{task_id}")
}

/// Filter matching every proof addressed to `delegator_platform`, from any executor.
pub fn proofs_for(delegator_platform: &str) -> String {
    format!("sage.proof.{delegator_platform}.*.*")
}

/// Every proof subject `executor_platform` may publish on (for any delegator).
pub fn proofs_by(executor_platform: &str) -> String {
    format!("sage.proof.*.{executor_platform}.*")
}

/// Whether `subject` is one executor's proof permission, as [`proofs_by`] spells it.
pub fn is_proofs_by(subject: &str) -> bool {
    let Some(rest) = subject.strip_prefix(PROOF_SUBJECT_PREFIX) else {
        return false;
    };
    let tokens: Vec<&str> = rest.split('.').collect();
    matches!(tokens.as_slice(), ["*", executor, "*"] if *executor != "*")
}

/// The (executor platform, task id) tokens of a proof subject, or `None` for another subject.
pub fn proof_subject_parts(subject: &str) -> Option<(&str, &str)> {
    let mut tokens = subject.strip_prefix(PROOF_SUBJECT_PREFIX)?.split('.');
    match (tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (Some(_), Some(executor), Some(task_id), None) => Some((executor, task_id)),
        _ => None,
    }
}

/// What every proof subject starts with.
const PROOF_SUBJECT_PREFIX: &str = "sage.proof.";

/// Subject a dead-lettered task of `platform` is copied to.
pub fn dead_letter(platform: &str) -> String {
    format!("sage.dead.{platform}")
}

/// Subject on which the workers of `platform` are told to abort a running task.
pub fn abort(platform: &str) -> String {
    format!("sage.abort.{platform}")
}

/// Durable pull consumer shared by all workers of `platform`.
pub fn worker_consumer(platform: &str) -> String {
    format!("worker-{platform}")
}

/// Durable pull consumer of `platform`'s critical lane, shared by all its workers, which
/// serve it before [`worker_consumer`].
pub fn critical_consumer(platform: &str) -> String {
    format!("critical-{platform}")
}

/// Core subject on which a delegator hands its signed task to `platform`, the witness the
/// ledger appointed for the task's held commit; `platform`'s workers listen here. Not a
/// stream: a request is worth nothing after the hold, and the delegator sends it again while
/// it waits (ARCHITECTURE.md, "Witnesses").
pub fn witness_request(platform: &str) -> String {
    format!("sage.witness.{platform}")
}

/// Any platform's witness requests (a delegator may appoint any platform).
pub fn witness_request_any() -> String {
    "sage.witness.*".to_owned()
}

/// Key of `delegator`'s signed task `task_id` in [`WITNESSED_TASKS_BUCKET`].
pub fn witnessed_task_key(delegator: &str, task_id: &str) -> String {
    format!("{delegator}.{task_id}")
}

/// Every key of `delegator`'s tasks in [`WITNESSED_TASKS_BUCKET`]: only it writes or reads them.
pub fn witnessed_task_keys_of(delegator: &str) -> String {
    witnessed_task_key(delegator, "*")
}

/// Durable pull consumer through which `platform` settles the proofs addressed to it.
pub fn settle_consumer(platform: &str) -> String {
    format!("settle-{platform}")
}

/// Key of a public key in [`KEYS_BUCKET`].
pub fn key_entry(platform: &str, key_id: &str) -> String {
    format!("{platform}.{key_id}")
}

/// Last token of a revocation's key in [`KEYS_BUCKET`]: three tokens, where a platform may
/// write only two (`<platform>.<key_id>`), so no platform can delete its revocation.
const KEY_REVOCATION_TOKEN: &str = "revoked";

/// Key of the root's revocation of `platform`'s key `key_id` in [`KEYS_BUCKET`].
pub fn key_revocation_entry(platform: &str, key_id: &str) -> String {
    format!("{platform}.{key_id}.{KEY_REVOCATION_TOKEN}")
}

/// Whether a key of [`KEYS_BUCKET`] holds a revocation (else a key record).
pub fn is_key_revocation_entry(key: &str) -> bool {
    key.split('.').count() == 3 && key.ends_with(&format!(".{KEY_REVOCATION_TOKEN}"))
}

/// Pattern of every revocation key in [`KEYS_BUCKET`] (an admin writes them).
pub fn key_revocations_pattern() -> String {
    format!("*.*.{KEY_REVOCATION_TOKEN}")
}

/// The subject a KV key is stored under, for writes that bypass the KV API (atomic batches).
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// The stream backing a KV bucket.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// Ledger key of the account of the LCT whose key path is `lct_key_path`
/// (`<platform>.<owner>.<task_type>`, see `Lct::key_path`).
pub fn ledger_account(lct_key_path: &str) -> String {
    format!("{LEDGER_ACCOUNT_PREFIX}{lct_key_path}")
}

/// Prefix of every account key in the ledger bucket.
pub const LEDGER_ACCOUNT_PREFIX: &str = "accounts.";
/// Prefix of every lock key in the ledger bucket.
pub const LEDGER_LOCK_PREFIX: &str = "locks.";
/// Prefix of every journal key in the ledger bucket.
pub const LEDGER_JOURNAL_PREFIX: &str = "journal.";
/// Prefix of every grant key in the ledger bucket.
pub const LEDGER_GRANT_PREFIX: &str = "grants.";
/// Prefix of every witness record key in the ledger bucket.
pub const LEDGER_WITNESS_PREFIX: &str = "witness.";
/// Ledger key holding the total ATP ever granted.
pub const LEDGER_SUPPLY: &str = "supply";

/// `sage_reputation` key of a platform's reputation for one operation.
pub fn reputation_key(platform: &str, operation: &str) -> String {
    format!("{platform}.{operation}")
}

/// Ledger key of the lock (escrow) of a task.
pub fn ledger_lock(task_id: &str) -> String {
    format!("{LEDGER_LOCK_PREFIX}{task_id}")
}

/// `sage_tasks` key of the delegator's part of a task's status (`<task_id>.<delegator>`):
/// only the delegator may write it ([`task_part_writer`]).
pub fn task_delegator_part(task_id: &str, delegator: &str) -> String {
    format!("{task_id}.{delegator}")
}

/// `sage_tasks` key of the executor's part of a task's status
/// (`<task_id>.<delegator>.<executor>`): only the executor may write it.
pub fn task_executor_part(task_id: &str, delegator: &str, executor: &str) -> String {
    format!("{task_id}.{delegator}.{executor}")
}

/// The `sage_tasks` key patterns `platform` may write: parts whose last token is its name.
pub fn task_part_writer(platform: &str) -> [String; 2] {
    [format!("*.{platform}"), format!("*.*.{platform}")]
}

/// Ledger key of the journal entry of a task's lock.
pub fn ledger_journal_lock(task_id: &str) -> String {
    format!("{LEDGER_JOURNAL_PREFIX}{task_id}.lock")
}

/// Ledger key of the journal entry of a task's settlement (commit, rollback or expire).
/// One key for all three: a lock can be settled once, which the key's uniqueness enforces.
pub fn ledger_journal_settle(task_id: &str) -> String {
    format!("{LEDGER_JOURNAL_PREFIX}{task_id}.settle")
}

/// Ledger key of a grant.
pub fn ledger_grant(grant_id: &str) -> String {
    format!("{LEDGER_GRANT_PREFIX}{grant_id}")
}

/// Ledger key of an executor's witness record for one operation.
pub fn ledger_witness(platform: &str, operation: &str) -> String {
    format!("{LEDGER_WITNESS_PREFIX}{platform}.{operation}")
}

/// Endpoint subject of a ledger operation.
pub fn ledger_endpoint(operation: &str) -> String {
    format!("{LEDGER_ENDPOINT_PREFIX}.{operation}")
}

/// Every subject of the JetStream API (stream, bucket and consumer management).
pub const JS_API_ALL: &str = "$JS.API.>";
/// JetStream account information, asked by every JetStream client on first use.
pub const JS_API_INFO: &str = "$JS.API.INFO";
/// Stream information of any stream (opening a stream or a bucket asks it).
pub const JS_API_STREAM_INFO_ANY: &str = "$JS.API.STREAM.INFO.*";
/// Flow-control replies of push consumers (KV watches).
pub const JS_FLOW_CONTROL_ALL: &str = "$JS.FC.>";
/// Service discovery of NATS micro services (`nats micro ls`, `$SRV.PING.<service>`).
pub const SERVICE_DISCOVERY_ALL: &str = "$SRV.>";

/// Listing streams and consumers and reading consumer information: what an operator's
/// `nats stream ls`, `nats kv ls`, `nats consumer info` ask.
pub const JS_API_OPERATOR_READS: [&str; 5] = [
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.CONSUMER.NAMES.*",
    "$JS.API.CONSUMER.LIST.*",
    "$JS.API.CONSUMER.INFO.*.*",
];

/// The JetStream domain of a hub-leaf federation's hub: leaves reach its JetStream through
/// `$JS.sagehub.API` (a leaf link denies the plain `$JS.API.>` and `$KV.>`).
pub const HUB_DOMAIN: &str = "sagehub";
/// Every KV write subject.
pub const KV_ALL: &str = "$KV.>";

/// The prefix of `domain`'s JetStream API as a leaf reaches it.
fn js_domain_api(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

/// What a leaf rewrites its clients' JetStream subjects to, so they cross the link to
/// `domain`: (from, to) pairs for the leaf's `mappings`.
pub fn js_domain_mappings(domain: &str) -> [(String, String); 2] {
    [
        (JS_API_ALL.to_owned(), all_under(&js_domain_api(domain))),
        (KV_ALL.to_owned(), format!("{}.{KV_ALL}", js_domain_api(domain))),
    ]
}

/// `subject` as a leaf's mapping sends it to `domain` (`$JS.API.INFO` ->
/// `$JS.hub.API.INFO`, `$KV.b.k` -> `$JS.hub.API.$KV.b.k`), or `None` when no mapping
/// applies to it.
pub fn through_domain(subject: &str, domain: &str) -> Option<String> {
    let api = JS_API_ALL.trim_end_matches('>');
    let kv = KV_ALL.trim_end_matches('>');
    if let Some(rest) = subject.strip_prefix(api) {
        Some(format!("{}.{rest}", js_domain_api(domain)))
    } else if subject.starts_with(kv) {
        Some(format!("{}.{subject}", js_domain_api(domain)))
    } else {
        None
    }
}

/// Every subject under `prefix` (a subject with `.>` appended).
pub fn all_under(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// Any platform's task subject (a delegator may delegate to any platform).
pub fn delegate_any() -> String {
    TASKS_SUBJECTS.to_owned()
}

/// Any platform's abort subject (the status service tells the executor to abort).
pub fn abort_any() -> String {
    abort("*")
}

/// Every status service endpoint.
pub fn status_any() -> String {
    all_under(STATUS_ENDPOINT_PREFIX)
}

/// Every ledger service endpoint.
pub fn ledger_any() -> String {
    format!("{LEDGER_ENDPOINT_PREFIX}.*")
}

/// A KV subject pattern: `key_pattern` may end in `*` or `>`.
pub fn kv_pattern(bucket: &str, key_pattern: &str) -> String {
    kv_subject(bucket, key_pattern)
}

/// Direct reads of a stream by sequence (no subject in the API subject).
pub fn js_direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// Direct reads of the last message of subjects matching `subject_pattern` in `stream`.
pub fn js_direct_get_subject(stream: &str, subject_pattern: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}.{subject_pattern}")
}

/// Reads of one message of `stream` by sequence or subject (`STREAM.MSG.GET`).
pub fn js_msg_get(stream: &str) -> String {
    format!("$JS.API.STREAM.MSG.GET.{stream}")
}

/// Deletion of one message of `stream` by sequence.
pub fn js_msg_delete(stream: &str) -> String {
    format!("$JS.API.STREAM.MSG.DELETE.{stream}")
}

/// Creating (or updating) the consumer `consumer` on `stream` with exactly the filter
/// `filter`: the server refuses a request whose body's filter differs from the subject's.
pub fn js_consumer_create(stream: &str, consumer: &str, filter: &str) -> String {
    format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}.{filter}")
}

/// Creating any consumer on `stream` (KV watches create ordered consumers with random names).
pub fn js_consumer_create_any(stream: &str) -> [String; 2] {
    [
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
    ]
}

/// Information about one consumer.
pub fn js_consumer_info(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}")
}

/// Pull requests on one consumer.
pub fn js_consumer_next(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

/// Acknowledgements of deliveries of one consumer (the reply subject of each delivery).
pub fn js_ack(stream: &str, consumer: &str) -> String {
    format!("$JS.ACK.{stream}.{consumer}.>")
}

/// The advisory the server publishes when a delivery of `consumer` ran out of attempts.
pub fn max_deliveries_advisory(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

/// The inbox prefix of the connection whose NATS public key is `nkey_public`: replies to its
/// requests arrive only under it, and only it may subscribe there.
pub fn inbox_prefix(nkey_public: &str) -> String {
    format!("_INBOX.{nkey_public}")
}

/// `sagefed bench`: the work-queue stream of the bare task round trip, on a server of its own.
pub const BENCH_ROUND_TRIP_STREAM: &str = "BENCH_ROUND_TRIP";
/// `sagefed bench`: the subject of [`BENCH_ROUND_TRIP_STREAM`].
pub const BENCH_ROUND_TRIP_SUBJECT: &str = "bench.rt.task";

/// `sagefed bench`: the `sage_platforms` key the compare-and-swap floor updates (a bench
/// server only; it is not a platform's record).
pub const BENCH_CAS_FLOOR_KEY: &str = "bench-floor";

/// `sagefed bench`: the `sage_platforms` key many writers update at once (a bench server
/// only), to measure blind compare-and-swap retries on one hot key.
pub const BENCH_CAS_HOT_KEY: &str = "bench-hot";
/// `sagefed bench`: the pull consumer of [`BENCH_ROUND_TRIP_STREAM`].
pub const BENCH_ROUND_TRIP_CONSUMER: &str = "bench-worker";

/// `sagefed bench`: a key of the ledger bucket the batch floor writes (message `k` of batch
/// `i` of `size`), on a bench server only; never a ledger record.
pub fn bench_floor_key(size: usize, i: usize, k: usize) -> String {
    format!("bench.floor.{size}.{i}.{k}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_md_documents_every_name() {
        let doc = include_str!("../../subjects.md");
        let names = [
            TASKS_STREAM,
            TASKS_SUBJECTS.trim_end_matches('*'),
            CRITICAL_TASKS_SUBJECTS.trim_end_matches('*'),
            "critical-",
            PROOFS_STREAM,
            PROOFS_SUBJECTS.trim_end_matches("*.*"),
            DEAD_STREAM,
            DEAD_SUBJECTS.trim_end_matches('*'),
            LEDGER_BUCKET,
            KEYS_BUCKET,
            PLATFORMS_BUCKET,
            REPUTATION_BUCKET,
            TASKS_BUCKET,
            WITNESSED_TASKS_BUCKET,
            LEDGER_SERVICE,
            STATUS_SERVICE,
            LEDGER_ACCOUNT_PREFIX,
            LEDGER_LOCK_PREFIX,
            LEDGER_JOURNAL_PREFIX,
            LEDGER_GRANT_PREFIX,
            LEDGER_WITNESS_PREFIX,
            LEDGER_SUPPLY,
            "sage.abort.",
            "sage.witness.",
            "worker-",
            "settle-",
            "sage.status.lct",
            "sage.status.task",
            "sage.status.cancel",
            "sage.ledger.grant",
            "sage.ledger.lock",
            "sage.ledger.commit",
            "sage.ledger.rollback",
            "sage.ledger.witness",
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES",
            BENCH_ROUND_TRIP_STREAM,
            BENCH_ROUND_TRIP_SUBJECT,
            "bench.floor.",
            BENCH_CAS_FLOOR_KEY,
            BENCH_CAS_HOT_KEY,
            BENCH_ROUND_TRIP_CONSUMER,
        ];
        for name in names {
            assert!(doc.contains(name), "subjects.md does not mention {name}");
        }
    }

    #[test]
    fn subjects_match_their_stream_filters() {
        assert_eq!(delegate("Thor"), "sage.delegate.Thor");
        assert_eq!(critical("Thor"), "sage.critical.Thor");
        assert_eq!(task_queue("Thor", true), critical("Thor"));
        assert_eq!(task_queue("Thor", false), delegate("Thor"));
        assert_eq!(critical_consumer("Thor"), "critical-Thor");
        assert_eq!(witness_request("Thor"), "sage.witness.Thor");
        assert_eq!(proof("Legion", "Thor", "t-1"), "sage.proof.Legion.Thor.t-1");
        assert_eq!(proof_subject_parts("sage.proof.Legion.Thor.t-1"), Some(("Thor", "t-1")));
        assert_eq!(proof_subject_parts("sage.proof.Legion.t-1"), None);
        assert_eq!(kv_subject(LEDGER_BUCKET, "locks.t-1"), "$KV.sage_ledger.locks.t-1");
        assert_eq!(kv_stream(LEDGER_BUCKET), "KV_sage_ledger");
        assert_eq!(ledger_endpoint("lock"), "sage.ledger.lock");
    }
}
