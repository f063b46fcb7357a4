//! [`rules::decide`](crate::ledger::rules::decide) tested as a table, in the way TigerBeetle's
//! `state_machine_tests.zig` reads: one in-memory book, one row per case, run in order. Each
//! row names the command, the time, and the outcome expected; after each row the book must
//! conserve ATP (balances + locked = supply), a refused or replayed command must leave it
//! exactly as it was, and a settled lock must split its amount exactly (paid + refunded).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::identity::keys::{KeyRecord, KeyRegistry, generate};
use crate::ledger::model::{
    Account, GrantRecord, JournalEntry, Lock, LockState, Record, RollbackReason, Supply, WitnessRecord,
    WitnessSettlement, WitnessTerms,
};
use crate::ledger::protocol::{Outcome, RejectCode};
use crate::ledger::rules::{Book, COMMIT_WINDOW, CheckedWork, Command, Decision, LOCK_TTL_MAX, conserves, decide};
use crate::ledger::witness::Draw;
use crate::protocol::atp::Atp;
use crate::protocol::clock::Timestamp;
use crate::protocol::envelope::{Signer, Verified, verify};
use crate::protocol::lct::Lct;
use crate::protocol::proof::{ExecutionProof, ProofStatus};
use crate::protocol::task::TaskId;
use crate::protocol::verdict::Verdict;

/// The ledger bucket, in memory: what the store would hold after each batch.
#[derive(Clone, Debug, Default, PartialEq)]
struct MemoryBook {
    accounts: BTreeMap<String, Account>,
    locks: BTreeMap<String, Lock>,
    grants: BTreeMap<String, GrantRecord>,
    journal: BTreeMap<String, JournalEntry>,
    supply: Supply,
    witness_records: BTreeMap<String, WitnessRecord>,
}

impl Book for MemoryBook {
    fn account(&self, lct: &Lct) -> Option<Account> {
        self.accounts.get(&lct.to_string()).cloned()
    }

    fn lock(&self, task_id: &TaskId) -> Option<Lock> {
        self.locks.get(task_id.as_str()).cloned()
    }

    fn grant(&self, grant_id: &str) -> Option<GrantRecord> {
        self.grants.get(grant_id).cloned()
    }

    fn supply(&self) -> Supply {
        self.supply
    }

    fn witness_record(&self, executor: &str, operation: &str) -> Option<WitnessRecord> {
        self.witness_records
            .get(&crate::nats::subjects::ledger_witness(executor, operation))
            .cloned()
    }
}

impl MemoryBook {
    /// Applies one batch as the store does: each key once, create-only keys must be new.
    fn apply(&mut self, writes: Vec<Record>) {
        let keys: BTreeSet<String> = writes.iter().map(Record::key).collect();
        assert_eq!(keys.len(), writes.len(), "a batch writes each key once: {writes:?}");
        for record in writes {
            let key = record.key();
            match record {
                Record::Account(a) => {
                    self.accounts.insert(a.lct.to_string(), a);
                }
                Record::Lock(l) => {
                    self.locks.insert(l.task_id.as_str().to_owned(), l);
                }
                Record::Journal(j) => {
                    assert!(self.journal.insert(key, j).is_none(), "a journal entry is created once");
                }
                Record::Grant(g) => {
                    assert!(
                        self.grants.insert(g.grant_id.clone(), g).is_none(),
                        "a grant is created once"
                    );
                }
                Record::Supply(s) => self.supply = s,
                Record::Witness(w) => {
                    self.witness_records.insert(key, w);
                }
            }
        }
    }

    /// balances + locked = supply, and each account's locked ATP is its pending locks' sum.
    fn assert_conserved(&self, row: &str) {
        let held: u128 = self
            .accounts
            .values()
            .map(|a| u128::from(a.balance_uatp.micros()) + u128::from(a.locked_uatp.micros()))
            .sum();
        assert_eq!(
            held,
            u128::from(self.supply.total_uatp.micros()),
            "conservation after {row}"
        );
        for account in self.accounts.values() {
            let pending: Vec<&Lock> = self
                .locks
                .values()
                .filter(|l| l.delegator == account.lct && l.state.holds_escrow())
                .collect();
            let locked: u64 = pending.iter().map(|l| l.amount_uatp.micros()).sum();
            assert_eq!(
                account.locked_uatp.micros(),
                locked,
                "{} locked after {row}",
                account.lct
            );
            assert_eq!(
                account.pending_locks,
                pending.len() as u64,
                "{} pending after {row}",
                account.lct
            );
        }
        for lock in self.locks.values() {
            match (&lock.settlement, lock.state) {
                (None, state) if state.holds_escrow() => {}
                (Some(s), state) if state.is_terminal() => assert_eq!(
                    s.paid_uatp.micros() + WitnessSettlement::paid(s).micros() + s.refunded_uatp.micros(),
                    lock.amount_uatp.micros(),
                    "paid + witness paid + refunded = locked for {} after {row}",
                    lock.task_id
                ),
                _ => panic!(
                    "lock {} has state {:?} and settlement {:?}",
                    lock.task_id, lock.state, lock.settlement
                ),
            }
        }
    }
}

/// What a row expects `decide` to answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Applied,
    Already,
    Rejected(RejectCode),
}

/// One case: a command at a time, and its expected outcome.
struct Row {
    name: &'static str,
    now: Timestamp,
    command: Command,
    expect: Expect,
}

const ADMIN: &str = "admin";
const T0: Timestamp = Timestamp::from_secs(1_000);
/// A lock's deadline and expiry in the rows, relative to [`T0`] (30 s and 90 s after it).
const DEADLINE: Timestamp = Timestamp::from_secs(1_030);
const EXPIRES: Timestamp = Timestamp::from_secs(1_090);

fn atp(whole: u64) -> Atp {
    Atp::from_micros(whole * 1_000_000)
}

fn lct(platform: &str) -> Lct {
    Lct::new("dp", platform, "consciousness").expect("lct")
}

fn task(id: &str) -> TaskId {
    id.parse().expect("task id")
}

/// Signs and verifies proofs the way the ledger service receives them.
struct Proofs {
    signers: BTreeMap<&'static str, Signer>,
    keys: KeyRegistry,
}

impl Proofs {
    fn new() -> Self {
        let mut signers = BTreeMap::new();
        let mut keys = KeyRegistry::new();
        for platform in ["Thor", "Legion", "Sprout", "Odin"] {
            let signer = Signer::new(platform, generate().expect("random")).expect("signer");
            keys.insert(KeyRecord::new(platform, &signer.verifying_key(), Timestamp::EPOCH));
            signers.insert(platform, signer);
        }
        Self { signers, keys }
    }

    /// A verified proof from Legion for Thor's task `id`.
    fn by_legion(&self, id: &str, status: ProofStatus, quality: f64, consumed: f64) -> Verified<ExecutionProof> {
        self.by("Legion", id, status, quality, consumed, serde_json::Map::new())
    }

    /// A verified proof from `by` for Thor's task `id` with `result`.
    fn by(
        &self,
        by: &str,
        id: &str,
        status: ProofStatus,
        quality: f64,
        consumed: f64,
        result: serde_json::Map<String, serde_json::Value>,
    ) -> Verified<ExecutionProof> {
        let proof = ExecutionProof {
            task_id: task(id),
            executor_lct: lct(by),
            delegator_lct: lct("Thor"),
            status,
            reason: if status == ProofStatus::Completed {
                String::new()
            } else {
                format!("{status:?}")
            },
            atp_consumed: consumed,
            execution_time: 0.01,
            quality_score: quality,
            result,
            created_at: T0,
        };
        let wire = self.signers[by].sign(&proof).expect("sign");
        verify(&wire, &self.keys, T0).expect("verify")
    }
}

fn grant(by: &str, id: &str, to: &str, amount: Atp) -> Command {
    Command::Grant {
        requester: by.to_owned(),
        grant_id: id.to_owned(),
        account: lct(to),
        amount,
    }
}

/// Thor locks `amount` for Legion on task `id`, threshold 0.7.
fn lock(id: &str, amount: Atp) -> Command {
    lock_with(id, amount, |_| {})
}

/// [`lock`], then `edit` changes one term (`requester` is the delegator's platform unless
/// `edit` sets another delegator on purpose).
fn lock_with(id: &str, amount: Atp, edit: impl FnOnce(&mut Lock)) -> Command {
    let mut lock = Lock {
        task_id: task(id),
        delegator: lct("Thor"),
        executor: lct("Legion"),
        amount_uatp: amount,
        quality_threshold: 0.7,
        created_at: Timestamp::from_secs(0),
        deadline: DEADLINE,
        expires_at: EXPIRES,
        state: LockState::Pending,
        settlement: None,
        task_digest: None,
        witness_terms: None,
        hold: None,
        operation: None,
    };
    edit(&mut lock);
    Command::Lock {
        requester: lock.delegator.platform().to_owned(),
        lock,
    }
}

/// `command` as sent by `requester` instead.
fn as_requester(requester: &str, mut command: Command) -> Command {
    if let Command::Lock { requester: r, .. } = &mut command {
        *r = requester.to_owned();
    }
    command
}

fn commit(by: &str, id: &str, proof: Verified<ExecutionProof>) -> Command {
    Command::Commit {
        requester: by.to_owned(),
        task_id: task(id),
        proof,
        work: None,
    }
}

/// A task digest for the rows: `fill` repeated (64 hex digits).
fn digest(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

/// Thor locks 10 ATP for Legion on task `id`, naming the task by `digest(fill)`.
fn lock_naming(id: &str, fill: char) -> Command {
    lock_with(id, atp(10), |l| l.task_digest = Some(digest(fill)))
}

/// [`commit`], carrying the task `digest(fill)` that the service checked as `verdict`.
fn commit_checked(by: &str, id: &str, proof: Verified<ExecutionProof>, fill: char, verdict: Verdict) -> Command {
    Command::Commit {
        requester: by.to_owned(),
        task_id: task(id),
        proof,
        work: Some(CheckedWork {
            task_digest: digest(fill),
            operation: "planning".to_owned(),
            verdict,
            draw: Draw { sample: 0.0, pick: 0 },
        }),
    }
}

fn rollback(by: &str, id: &str, reason: RollbackReason, evidence: Option<Verified<ExecutionProof>>) -> Command {
    Command::Rollback {
        requester: by.to_owned(),
        task_id: task(id),
        reason,
        evidence,
    }
}

fn expire(id: &str) -> Command {
    Command::Expire { task_id: task(id) }
}

fn row(name: &'static str, now: Timestamp, command: Command, expect: Expect) -> Row {
    Row {
        name,
        now,
        command,
        expect,
    }
}

fn rows(p: &Proofs) -> Vec<Row> {
    use Expect::{Already, Applied, Rejected};
    use ProofStatus::{Cancelled, Completed, Failed, TimedOut};
    use RejectCode::*;
    use RollbackReason as Why;
    let good = |id| p.by_legion(id, Completed, 0.9, 4.0);
    vec![
        // Grants.
        row(
            "grant by a non-admin",
            T0,
            grant("Thor", "g1", "Thor", atp(100)),
            Rejected(NotAuthorized),
        ),
        row(
            "grant of zero",
            T0,
            grant(ADMIN, "g1", "Thor", Atp::ZERO),
            Rejected(InvalidAmount),
        ),
        row("grant", T0, grant(ADMIN, "g1", "Thor", atp(100)), Applied),
        row("grant replayed", T0, grant(ADMIN, "g1", "Thor", atp(100)), Already),
        row(
            "grant id reused, other amount",
            T0,
            grant(ADMIN, "g1", "Thor", atp(5)),
            Rejected(Conflict),
        ),
        row(
            "grant id reused, other account",
            T0,
            grant(ADMIN, "g1", "Legion", atp(100)),
            Rejected(Conflict),
        ),
        row(
            "grant to a second account",
            T0,
            grant(ADMIN, "g2", "Legion", atp(10)),
            Applied,
        ),
        // Locks.
        row(
            "lock of another's ATP",
            T0,
            as_requester("Legion", lock("t1", atp(10))),
            Rejected(NotAuthorized),
        ),
        row(
            "lock to the same account",
            T0,
            lock_with("t1", atp(10), |l| l.executor = lct("Thor")),
            Rejected(SameAccount),
        ),
        row("lock of zero", T0, lock("t1", Atp::ZERO), Rejected(InvalidAmount)),
        row(
            "lock with a threshold above 1",
            T0,
            lock_with("t1", atp(10), |l| l.quality_threshold = 1.5),
            Rejected(InvalidRequest),
        ),
        row(
            "lock with a NaN threshold",
            T0,
            lock_with("t1", atp(10), |l| l.quality_threshold = f64::NAN),
            Rejected(InvalidRequest),
        ),
        row(
            "lock with its deadline passed",
            T0,
            lock_with("t1", atp(10), |l| l.deadline = T0),
            Rejected(InvalidRequest),
        ),
        row(
            "lock expiring before its deadline",
            T0,
            lock_with("t1", atp(10), |l| l.expires_at = DEADLINE - Duration::from_secs(1)),
            Rejected(InvalidRequest),
        ),
        row(
            "lock living longer than the maximum",
            T0,
            lock_with("t1", atp(10), |l| {
                l.expires_at = T0 + LOCK_TTL_MAX + Duration::from_secs(1)
            }),
            Rejected(InvalidRequest),
        ),
        row(
            // An infinite expiry is no `Timestamp` (refused where decoded, see `clock.rs`);
            // the latest one there is must still be refused here.
            "lock with an expiry at the end of time",
            T0,
            lock_with("t1", atp(10), |l| {
                l.expires_at = Timestamp::from_unix_seconds(f64::MAX).expect("a time")
            }),
            Rejected(InvalidRequest),
        ),
        row(
            "lock from an account that does not exist",
            T0,
            lock_with("t1", atp(10), |l| l.delegator = lct("Sprout")),
            Rejected(InsufficientAtp),
        ),
        row(
            "lock of more than the balance",
            T0,
            lock("t1", atp(101)),
            Rejected(InsufficientAtp),
        ),
        row("lock", T0, lock("t1", atp(10)), Applied),
        row(
            "lock replayed",
            T0 + Duration::from_secs(1),
            lock("t1", atp(10)),
            Already,
        ),
        row(
            "lock id reused, other terms",
            T0,
            lock("t1", atp(11)),
            Rejected(Conflict),
        ),
        // Commits.
        row(
            "commit of an unknown lock",
            T0,
            commit("Legion", "t9", good("t9")),
            Rejected(UnknownLock),
        ),
        row(
            "commit by a third platform",
            T0,
            commit("Sprout", "t1", good("t1")),
            Rejected(NotAuthorized),
        ),
        row(
            "commit with another task's proof",
            T0,
            commit("Legion", "t1", good("t2")),
            Rejected(ProofMismatch),
        ),
        row(
            "commit of a failed proof",
            T0,
            commit("Legion", "t1", p.by_legion("t1", Failed, 0.0, 0.0)),
            Rejected(InvalidRequest),
        ),
        row(
            "commit below the threshold",
            T0,
            commit("Legion", "t1", p.by_legion("t1", Completed, 0.5, 4.0)),
            Rejected(QualityBelowThreshold),
        ),
        row(
            "commit of more than locked",
            T0,
            commit("Legion", "t1", p.by_legion("t1", Completed, 0.9, 10.5)),
            Rejected(ConsumedExceedsLocked),
        ),
        row(
            "commit",
            T0 + Duration::from_secs(2),
            commit("Legion", "t1", good("t1")),
            Applied,
        ),
        row(
            "commit replayed by the delegator",
            T0 + Duration::from_secs(3),
            commit("Thor", "t1", good("t1")),
            Already,
        ),
        row(
            "rollback of a committed lock",
            T0,
            rollback("Legion", "t1", Why::Failure, None),
            Rejected(AlreadySettled),
        ),
        // Rollbacks.
        row("lock t2", T0, lock("t2", atp(10)), Applied),
        row(
            "rollback by a third platform",
            T0,
            rollback("Sprout", "t2", Why::Cancelled, None),
            Rejected(NotAuthorized),
        ),
        row(
            "rollback claiming expiry",
            T0,
            rollback("Thor", "t2", Why::Expired, None),
            Rejected(InvalidRequest),
        ),
        row(
            "delegator's low-quality rollback without evidence",
            T0,
            rollback("Thor", "t2", Why::LowQuality, None),
            Rejected(EvidenceRequired),
        ),
        row(
            "delegator's low-quality rollback, a good proof",
            T0,
            rollback("Thor", "t2", Why::LowQuality, Some(good("t2"))),
            Rejected(EvidenceRequired),
        ),
        row(
            "delegator's failure rollback, a completed proof",
            T0,
            rollback("Thor", "t2", Why::Failure, Some(good("t2"))),
            Rejected(EvidenceRequired),
        ),
        row(
            "delegator's timeout rollback before the deadline",
            DEADLINE - Duration::from_secs(1),
            rollback("Thor", "t2", Why::Timeout, None),
            Rejected(EvidenceRequired),
        ),
        row(
            "rollback with another task's proof",
            T0,
            rollback("Thor", "t2", Why::LowQuality, Some(good("t1"))),
            Rejected(ProofMismatch),
        ),
        row(
            "delegator's low-quality rollback with evidence",
            T0,
            rollback(
                "Thor",
                "t2",
                Why::LowQuality,
                Some(p.by_legion("t2", Completed, 0.5, 4.0)),
            ),
            Applied,
        ),
        row(
            "rollback replayed",
            T0,
            rollback("Thor", "t2", Why::LowQuality, None),
            Already,
        ),
        row(
            "commit of a rolled-back lock",
            T0,
            commit("Legion", "t2", good("t2")),
            Rejected(AlreadySettled),
        ),
        row("lock t3", T0, lock("t3", atp(10)), Applied),
        row(
            "executor's rollback needs no evidence",
            T0,
            rollback("Legion", "t3", Why::Rejected, None),
            Applied,
        ),
        row("lock t4", T0, lock("t4", atp(10)), Applied),
        row(
            "delegator's timeout rollback in the executor's commit window",
            DEADLINE + COMMIT_WINDOW - Duration::from_millis(500),
            rollback("Thor", "t4", Why::Timeout, None),
            Rejected(EvidenceRequired),
        ),
        row(
            "delegator's timeout rollback after the commit window",
            DEADLINE + COMMIT_WINDOW,
            rollback("Thor", "t4", Why::Timeout, None),
            Applied,
        ),
        row("lock t4w", T0, lock("t4w", atp(10)), Applied),
        row(
            "delegator's timeout rollback past the deadline, in the commit window",
            DEADLINE + Duration::from_millis(500),
            rollback("Thor", "t4w", Why::Timeout, None),
            Rejected(EvidenceRequired),
        ),
        row(
            "executor commits work finished by the deadline, in its commit window",
            DEADLINE + COMMIT_WINDOW - Duration::from_millis(500),
            commit("Legion", "t4w", good("t4w")),
            Applied,
        ),
        row("lock t5", T0, lock("t5", atp(10)), Applied),
        row(
            "delegator's timeout rollback with a timed-out proof",
            T0,
            rollback("Thor", "t5", Why::Timeout, Some(p.by_legion("t5", TimedOut, 0.0, 0.0))),
            Applied,
        ),
        row("lock t6", T0, lock("t6", atp(10)), Applied),
        row(
            "delegator's cancel of a running task without the executor's acknowledgement",
            T0,
            rollback("Thor", "t6", Why::Cancelled, None),
            Rejected(EvidenceRequired),
        ),
        row(
            "delegator's cancel with a completed proof as its evidence",
            T0,
            rollback("Thor", "t6", Why::Cancelled, Some(good("t6"))),
            Rejected(EvidenceRequired),
        ),
        row(
            "delegator's cancel in the executor's commit window",
            DEADLINE + Duration::from_secs(1),
            rollback("Thor", "t6", Why::Cancelled, None),
            Rejected(EvidenceRequired),
        ),
        row(
            "delegator's cancel acknowledged by the executor's signed cancelled proof",
            T0,
            rollback(
                "Thor",
                "t6",
                Why::Cancelled,
                Some(p.by_legion("t6", Cancelled, 0.0, 0.0)),
            ),
            Applied,
        ),
        // Checked results: a lock that names its task is paid by the ledger's verdict.
        row("lock naming its task", T0, lock_naming("v1", 'a'), Applied),
        row(
            "commit of a named task without the task",
            T0,
            commit("Legion", "v1", good("v1")),
            Rejected(InvalidRequest),
        ),
        row(
            "commit carrying another task",
            T0,
            commit_checked("Legion", "v1", good("v1"), 'b', Verdict::verified(1.0)),
            Rejected(InvalidRequest),
        ),
        row(
            "commit whose result the check refutes (it claims 0.9): refunded",
            T0,
            commit_checked("Legion", "v1", good("v1"), 'a', Verdict::refuted("garbage")),
            Applied,
        ),
        row(
            "commit of a refuted task again",
            T0,
            commit_checked("Legion", "v1", good("v1"), 'a', Verdict::verified(1.0)),
            Rejected(AlreadySettled),
        ),
        row("lock v2", T0, lock_naming("v2", 'c'), Applied),
        row(
            "commit the check scores below the threshold (it claims 0.9): refunded",
            T0,
            commit_checked("Legion", "v2", good("v2"), 'c', Verdict::verified(0.5)),
            Applied,
        ),
        row("lock v3", T0, lock_naming("v3", 'd'), Applied),
        row(
            "commit claiming less than the check finds: paid by the check",
            T0,
            commit_checked(
                "Legion",
                "v3",
                p.by_legion("v3", Completed, 0.5, 4.0),
                'd',
                Verdict::verified(1.0),
            ),
            Applied,
        ),
        row("lock v4", T0, lock_naming("v4", 'e'), Applied),
        row(
            "delegator's rollback claiming a refutation",
            T0,
            rollback("Thor", "v4", Why::Refuted, None),
            Rejected(InvalidRequest),
        ),
        row(
            "commit of an unverifiable operation: as claimed",
            T0,
            commit_checked("Legion", "v4", good("v4"), 'e', Verdict::Unverifiable),
            Applied,
        ),
        // The operation a lock declares (reputation is kept per operation).
        row(
            "lock declaring an operation that is not one token",
            T0,
            lock_with("v5", atp(10), |l| l.operation = Some("plan ning".into())),
            Rejected(InvalidRequest),
        ),
        row(
            "lock declaring perception for its task",
            T0,
            lock_with("v5", atp(10), |l| {
                l.task_digest = Some(digest('f'));
                l.operation = Some("perception".into());
            }),
            Applied,
        ),
        row(
            "commit carrying a planning task for a perception lock",
            T0,
            commit_checked("Legion", "v5", good("v5"), 'f', Verdict::verified(1.0)),
            Rejected(InvalidRequest),
        ),
        row(
            "the executor refuses v5: refunded whole",
            T0,
            rollback("Legion", "v5", Why::Rejected, None),
            Applied,
        ),
        // Expiry.
        row("lock t7", T0, lock("t7", atp(10)), Applied),
        row(
            "expire before the expiry",
            EXPIRES,
            expire("t7"),
            Rejected(InvalidRequest),
        ),
        row(
            "commit after the expiry",
            EXPIRES + Duration::from_secs(1),
            commit("Legion", "t7", good("t7")),
            Rejected(LockExpired),
        ),
        row("expire", EXPIRES + Duration::from_secs(1), expire("t7"), Applied),
        row(
            "expire replayed",
            EXPIRES + Duration::from_secs(2),
            expire("t7"),
            Already,
        ),
        row(
            "rollback of an expired lock",
            EXPIRES + Duration::from_secs(2),
            rollback("Legion", "t7", Why::Failure, None),
            Already,
        ),
        row(
            "commit of an expired lock",
            EXPIRES + Duration::from_secs(2),
            commit("Legion", "t7", good("t7")),
            Rejected(AlreadySettled),
        ),
        row("expire of an unknown lock", T0, expire("t9"), Rejected(UnknownLock)),
        row(
            "expire of a committed lock",
            EXPIRES + Duration::from_secs(2),
            expire("t1"),
            Already,
        ),
        // Overflow.
        row(
            "grant overflowing the supply",
            T0,
            grant(ADMIN, "g3", "Sprout", Atp::from_micros(u64::MAX)),
            Rejected(Overflow),
        ),
        // Everything locked: the last of Thor's balance, to the unit (100, less 4 paid for
        // each of t1, t4w, v3 and v4).
        row("lock all that is left", T0, lock("t8", atp(84)), Applied),
        row(
            "lock one unit more",
            T0,
            lock("t9", Atp::from_micros(1)),
            Rejected(InsufficientAtp),
        ),
    ]
}

/// Runs `rows` in order on an empty book, checking each; the book after them, and the
/// rejection codes seen.
fn run(rows: Vec<Row>) -> (MemoryBook, BTreeSet<String>) {
    let admins = BTreeSet::from([ADMIN.to_owned()]);
    let mut book = MemoryBook::default();
    let mut seen = BTreeSet::new();
    for row in rows {
        let before = book.clone();
        let decision = decide(&row.command, &book, &admins, row.now);
        let got = match decision {
            Decision::Apply { writes, reply } => {
                assert_eq!(reply.outcome, Outcome::Applied, "{}", row.name);
                book.apply(writes);
                assert_ne!(book, before, "{}: applied but nothing changed", row.name);
                Expect::Applied
            }
            Decision::Reply(reply) => {
                assert_eq!(book, before, "{}", row.name);
                match (reply.outcome, reply.code) {
                    (Outcome::AlreadyApplied, None) => Expect::Already,
                    (Outcome::Rejected, Some(code)) => Expect::Rejected(code),
                    other => panic!("{}: a reply without a write is {other:?}", row.name),
                }
            }
        };
        assert_eq!(got, row.expect, "{}", row.name);
        if let Expect::Rejected(code) = got {
            seen.insert(format!("{code:?}"));
        }
        book.assert_conserved(row.name);
    }
    (book, seen)
}

#[test]
fn every_transition_rejection_and_replay_conserves_atp() {
    let (book, seen) = run(rows(&Proofs::new()));
    // Every code the rules can give appears in the table (Busy is the service's, not a rule's).
    let codes = [
        "InvalidRequest",
        "InvalidAmount",
        "NotAuthorized",
        "InsufficientAtp",
        "UnknownLock",
        "AlreadySettled",
        "LockExpired",
        "ConsumedExceedsLocked",
        "QualityBelowThreshold",
        "ProofMismatch",
        "EvidenceRequired",
        "Conflict",
        "SameAccount",
        "Overflow",
    ];
    for code in codes {
        assert!(seen.contains(code), "no row is rejected with {code}");
    }
    assert_the_final_book(&book);
}

/// The book after every row: balances, how each lock settled.
fn assert_the_final_book(book: &MemoryBook) {
    // The final balances: Thor paid 4 for each of t1, t4w, v3 and v4, and was refunded
    // everything else but t8's 84 (v1 and v2 too: refuted, and checked below the threshold).
    let thor = book.account(&lct("Thor")).expect("Thor");
    let legion = book.account(&lct("Legion")).expect("Legion");
    assert_eq!(
        (thor.balance_uatp, thor.locked_uatp, thor.spent_uatp),
        (Atp::ZERO, atp(84), atp(16))
    );
    assert_eq!((legion.balance_uatp, legion.earned_uatp), (atp(26), atp(16)));
    // How the checked locks settled, and with which quality: the check's, not the claim.
    let settlement = |id: &str| {
        let s = book.locks[id].settlement.clone().expect("settled");
        (s.reason, s.quality, s.paid_uatp)
    };
    assert_eq!(settlement("v1"), (Some(RollbackReason::Refuted), None, Atp::ZERO));
    assert_eq!(
        settlement("v2"),
        (Some(RollbackReason::LowQuality), Some(0.5), Atp::ZERO)
    );
    assert_eq!(settlement("v3"), (None, Some(1.0), atp(4)));
    assert_eq!(settlement("v4"), (None, Some(0.9), atp(4)));
    assert_eq!(book.supply.total_uatp, atp(110));
    let settled: Vec<(&str, LockState)> = book.locks.iter().map(|(id, l)| (id.as_str(), l.state)).collect();
    assert_eq!(
        settled,
        [
            ("t1", LockState::Committed),
            ("t2", LockState::RolledBack),
            ("t3", LockState::RolledBack),
            ("t4", LockState::RolledBack),
            ("t4w", LockState::Committed),
            ("t5", LockState::RolledBack),
            ("t6", LockState::RolledBack),
            ("t7", LockState::Expired),
            ("t8", LockState::Pending),
            ("v1", LockState::RolledBack),
            ("v2", LockState::RolledBack),
            ("v3", LockState::Committed),
            ("v4", LockState::Committed),
            ("v5", LockState::RolledBack),
        ]
    );
    assert_eq!(book.locks["v5"].operation.as_deref(), Some("perception"));
}

/// Thor locks 10 ATP for Legion on task `id` (named by `digest('w')`) with witness terms:
/// Sprout or Odin may witness, for 1 ATP, numbers within 1%, held 30 s.
fn lock_witnessed(id: &str, edit: impl FnOnce(&mut Lock)) -> Command {
    lock_with(id, atp(10), |l| {
        l.task_digest = Some(digest('w'));
        l.witness_terms = Some(Box::new(WitnessTerms {
            candidates: vec!["Sprout".to_owned(), "Odin".to_owned()],
            share_uatp: atp(1),
            tolerance: 0.01,
            hold_seconds: 30.0,
        }));
        edit(l);
    })
}

/// Legion commits task `id` of the unverifiable `wordcount`, with the ledger's draw `sample`
/// (the first candidate is picked).
fn commit_drawn(id: &str, proof: Verified<ExecutionProof>, sample: f64) -> Command {
    Command::Commit {
        requester: "Legion".to_owned(),
        task_id: task(id),
        proof,
        work: Some(CheckedWork {
            task_digest: digest('w'),
            verdict: Verdict::Unverifiable,
            operation: "wordcount".to_owned(),
            draw: Draw { sample, pick: 0 },
        }),
    }
}

fn answer(by: &str, id: &str, proof: Verified<ExecutionProof>) -> Command {
    Command::Witness {
        requester: by.to_owned(),
        task_id: task(id),
        proof,
    }
}

fn words(count: f64) -> serde_json::Map<String, serde_json::Value> {
    serde_json::json!({"words": count, "text": "the quick brown fox"})
        .as_object()
        .cloned()
        .expect("an object")
}

fn witness_rows(p: &Proofs) -> Vec<Row> {
    use Expect::{Already, Applied, Rejected};
    use ProofStatus::{Completed, Failed};
    use RejectCode::*;
    use RollbackReason as Why;
    let costing = |id, consumed| p.by("Legion", id, Completed, 1.0, consumed, words(100.0));
    let claim = |id| costing(id, 4.0);
    let witness = |by, id, count| p.by(by, id, Completed, 1.0, 2.0, words(count));
    vec![
        row("grant", T0, grant(ADMIN, "g1", "Thor", atp(100)), Applied),
        // Terms.
        row(
            "witness terms naming no task",
            T0,
            lock_witnessed("w0", |l| l.task_digest = None),
            Rejected(InvalidRequest),
        ),
        row(
            "the executor named as a witness of its own task",
            T0,
            lock_witnessed("w0", |l| {
                l.witness_terms
                    .iter_mut()
                    .for_each(|t| t.candidates.push("Legion".into()))
            }),
            Rejected(InvalidRequest),
        ),
        row(
            "the delegator named as a witness",
            T0,
            lock_witnessed("w0", |l| {
                l.witness_terms
                    .iter_mut()
                    .for_each(|t| t.candidates = vec!["Thor".into()])
            }),
            Rejected(InvalidRequest),
        ),
        row(
            "no candidate",
            T0,
            lock_witnessed("w0", |l| l.witness_terms.iter_mut().for_each(|t| t.candidates.clear())),
            Rejected(InvalidRequest),
        ),
        row(
            "a witness share above the lock",
            T0,
            lock_witnessed("w0", |l| {
                l.witness_terms.iter_mut().for_each(|t| t.share_uatp = atp(11))
            }),
            Rejected(InvalidRequest),
        ),
        row(
            "a NaN tolerance",
            T0,
            lock_witnessed("w0", |l| {
                l.witness_terms.iter_mut().for_each(|t| t.tolerance = f64::NAN)
            }),
            Rejected(InvalidRequest),
        ),
        row(
            "a hold longer than the maximum",
            T0,
            lock_witnessed("w0", |l| l.witness_terms.iter_mut().for_each(|t| t.hold_seconds = 1e9)),
            Rejected(InvalidRequest),
        ),
        // Sampled (a new executor: rate 1), held, witnessed in agreement.
        row("lock w1 with witness terms", T0, lock_witnessed("w1", |_| {}), Applied),
        row(
            "a witness answer before any commit",
            T0,
            answer("Sprout", "w1", witness("Sprout", "w1", 100.0)),
            Rejected(NotAuthorized),
        ),
        row(
            "commit w1: sampled, held",
            T0,
            commit_drawn("w1", claim("w1"), 0.99),
            Applied,
        ),
        row("commit w1 again", T0, commit_drawn("w1", claim("w1"), 0.99), Already),
        row(
            "commit w1 with another proof",
            T0,
            commit_drawn("w1", p.by("Legion", "w1", Completed, 1.0, 3.0, words(100.0)), 0.99),
            Rejected(HeldForWitness),
        ),
        row(
            "the delegator's rollback of a held lock, after the commit window",
            DEADLINE + COMMIT_WINDOW,
            rollback("Thor", "w1", Why::Timeout, None),
            Rejected(HeldForWitness),
        ),
        row(
            "the executor's rollback of a held lock",
            T0,
            rollback("Legion", "w1", Why::Failure, None),
            Rejected(HeldForWitness),
        ),
        row(
            "the sweeper before the hold's expiry",
            T0 + Duration::from_secs(29),
            expire("w1"),
            Rejected(InvalidRequest),
        ),
        row(
            "an answer by a candidate not appointed",
            T0,
            answer("Odin", "w1", witness("Odin", "w1", 100.0)),
            Rejected(NotAuthorized),
        ),
        row(
            "an answer by the executor",
            T0,
            answer("Legion", "w1", claim("w1")),
            Rejected(NotAuthorized),
        ),
        row(
            "the appointed witness sending another's proof",
            T0,
            answer("Sprout", "w1", witness("Odin", "w1", 100.0)),
            Rejected(ProofMismatch),
        ),
        row(
            "the appointed witness's proof of another task",
            T0,
            answer("Sprout", "w1", witness("Sprout", "w9", 100.0)),
            Rejected(ProofMismatch),
        ),
        row(
            "the appointed witness's failed proof",
            T0,
            answer("Sprout", "w1", p.by("Sprout", "w1", Failed, 0.0, 0.0, words(0.0))),
            Rejected(InvalidRequest),
        ),
        row(
            "the witness agrees within the tolerance: 4 to the executor, 1 to the witness, 5 refunded",
            T0 + Duration::from_secs(1),
            answer("Sprout", "w1", witness("Sprout", "w1", 100.5)),
            Applied,
        ),
        row(
            "the answer replayed",
            T0 + Duration::from_secs(2),
            answer("Sprout", "w1", witness("Sprout", "w1", 100.5)),
            Already,
        ),
        row(
            "the sweeper after the answer",
            EXPIRES + Duration::from_secs(1),
            expire("w1"),
            Already,
        ),
        // One agreement: rate 0.71, so a draw of 0.9 is not sampled: paid at once.
        row("lock w2", T0, lock_witnessed("w2", |_| {}), Applied),
        row(
            "commit w2: not sampled, paid",
            T0,
            commit_drawn("w2", claim("w2"), 0.9),
            Applied,
        ),
        // Sampled, and the witness disagrees beyond the tolerance.
        row("lock w3", T0, lock_witnessed("w3", |_| {}), Applied),
        row(
            "commit w3: sampled, held",
            T0,
            commit_drawn("w3", claim("w3"), 0.1),
            Applied,
        ),
        row(
            "the delegator's rollback claiming a disagreement",
            T0,
            rollback("Thor", "w3", Why::WitnessDisagreed, None),
            Rejected(HeldForWitness),
        ),
        row(
            "the witness disagrees: refunded but the witness's 1",
            T0,
            answer("Sprout", "w3", witness("Sprout", "w3", 102.0)),
            Applied,
        ),
        row(
            "a commit after the disagreement",
            T0,
            commit_drawn("w3", claim("w3"), 0.1),
            Rejected(AlreadySettled),
        ),
        // Sampled, and the witness never answers: the executor is paid as claimed.
        row("lock w4", T0, lock_witnessed("w4", |_| {}), Applied),
        row("lock w5", T0, lock_witnessed("w5", |_| {}), Applied),
        row(
            "a delegator's rollback claiming a disagreement of a pending lock",
            T0,
            rollback("Thor", "w5", Why::WitnessDisagreed, None),
            Rejected(InvalidRequest),
        ),
        row(
            "commit w4: sampled, held",
            T0,
            commit_drawn("w4", claim("w4"), 0.5),
            Applied,
        ),
        row(
            "an answer after the hold's expiry",
            T0 + Duration::from_secs(31),
            answer("Sprout", "w4", witness("Sprout", "w4", 100.0)),
            Rejected(LockExpired),
        ),
        row(
            "the sweeper at the hold's expiry: paid",
            T0 + Duration::from_secs(31),
            expire("w4"),
            Applied,
        ),
        row(
            "the sweeper replayed",
            T0 + Duration::from_secs(32),
            expire("w4"),
            Already,
        ),
        row(
            "the witness answers after the sweeper",
            T0 + Duration::from_secs(32),
            answer("Sprout", "w4", witness("Sprout", "w4", 100.0)),
            Rejected(AlreadySettled),
        ),
        // The share's basis: the delegator's refund, never the executor's pay. After w3's
        // disagreement (w4's expiry leaves the record) the rate is 1 again.
        row("lock w6", T0, lock_witnessed("w6", |_| {}), Applied),
        row(
            "commit w6 by a cheap executor (0.5, under the share): sampled, held",
            T0,
            commit_drawn("w6", costing("w6", 0.5), 0.5),
            Applied,
        ),
        row(
            "the witness agrees: 0.5 to the executor, 1 to the witness, 8.5 refunded",
            T0,
            answer("Sprout", "w6", witness("Sprout", "w6", 100.0)),
            Applied,
        ),
        // One agreement in a row: rate 0.71.
        row("lock w7", T0, lock_witnessed("w7", |_| {}), Applied),
        row(
            "commit w7 by an expensive executor (9.5 of 10): sampled, held",
            T0,
            commit_drawn("w7", costing("w7", 9.5), 0.1),
            Applied,
        ),
        row(
            "the witness agrees: 9.5 to the executor, the remaining 0.5 to the witness",
            T0,
            answer("Sprout", "w7", witness("Sprout", "w7", 100.0)),
            Applied,
        ),
        row("lock w8", T0, lock_witnessed("w8", |_| {}), Applied),
        row(
            "commit w8 consuming the whole lock: sampled, held",
            T0,
            commit_drawn("w8", costing("w8", 10.0), 0.1),
            Applied,
        ),
        row(
            "the witness agrees: 10 to the executor, nothing left for the witness",
            T0,
            answer("Sprout", "w8", witness("Sprout", "w8", 100.0)),
            Applied,
        ),
    ]
}

/// Each witnessed lock's (executor's pay, witness's pay, delegator's refund) after
/// [`witness_rows`]: on agreement the executor keeps all it consumed and the share comes out
/// of the refund, as much of it as the refund holds.
fn assert_witness_splits(book: &MemoryBook) {
    let micro = Atp::from_micros;
    let split = |id: &str| {
        let s = book.locks[id].settlement.clone().expect("settled");
        (s.paid_uatp, WitnessSettlement::paid(&s), s.refunded_uatp)
    };
    assert_eq!(split("w1"), (atp(4), atp(1), atp(5)), "agreement");
    assert_eq!(split("w2"), (atp(4), atp(0), atp(6)), "not sampled");
    assert_eq!(split("w3"), (atp(0), atp(1), atp(9)), "disagreement");
    assert_eq!(split("w4"), (atp(4), atp(0), atp(6)), "no answer: the share refunded");
    assert_eq!(
        split("w6"),
        (micro(500_000), atp(1), micro(8_500_000)),
        "a cheap executor"
    );
    assert_eq!(
        split("w7"),
        (micro(9_500_000), micro(500_000), atp(0)),
        "an expensive executor"
    );
    assert_eq!(split("w8"), (atp(10), atp(0), atp(0)), "the whole lock consumed");
}

#[test]
fn every_witness_transition_and_rejection_conserves_atp() {
    let (book, seen) = run(witness_rows(&Proofs::new()));
    for code in [
        "HeldForWitness",
        "NotAuthorized",
        "ProofMismatch",
        "LockExpired",
        "AlreadySettled",
    ] {
        assert!(seen.contains(code), "no witness row is rejected with {code}");
    }
    let account = |p: &str| book.account(&lct(p)).expect(p);
    assert_witness_splits(&book);
    let micro = Atp::from_micros;
    let (thor, legion) = (account("Thor"), account("Legion"));
    // Thor: w1 cost 5 (4 + 1), w2 4, w3 1 (the witness), w4 4, w6 1.5, w7 10, w8 10; w5
    // still locked.
    assert_eq!(
        (thor.balance_uatp, thor.locked_uatp, thor.spent_uatp),
        (micro(54_500_000), atp(10), micro(35_500_000))
    );
    assert_eq!(
        legion.earned_uatp,
        atp(32),
        "4 for w1, w2 and w4, 0.5 for w6, 9.5 for w7, 10 for w8, nothing for w3"
    );
    let sprout = account("Sprout");
    assert_eq!(
        (sprout.balance_uatp, sprout.earned_uatp),
        (micro(3_500_000), micro(3_500_000)),
        "1 for w1, w3 and w6, 0.5 for w7"
    );
    let settled = |id: &str| {
        let lock = &book.locks[id];
        let s = lock.settlement.clone().expect("settled");
        (lock.state, s.reason, s.witness.and_then(|w| w.agreed))
    };
    assert_eq!(settled("w1"), (LockState::Committed, None, Some(true)));
    assert_eq!(settled("w2"), (LockState::Committed, None, None));
    assert_eq!(
        settled("w3"),
        (
            LockState::RolledBack,
            Some(RollbackReason::WitnessDisagreed),
            Some(false)
        )
    );
    assert_eq!(settled("w4"), (LockState::Committed, None, None));
    for id in ["w6", "w7", "w8"] {
        assert_eq!(settled(id), (LockState::Committed, None, Some(true)), "{id}");
    }
    let record = &book.witness_records["witness.Legion.wordcount"];
    assert_eq!(
        (
            record.commits,
            record.sampled,
            record.witnessed,
            record.disagreements,
            record.agreed_streak
        ),
        (7, 6, 5, 1, 3)
    );
}

#[test]
fn a_transition_that_mints_or_loses_atp_is_caught() {
    let mut book = MemoryBook::default();
    book.apply(vec![
        Record::Account(Account {
            balance_uatp: atp(10),
            ..Account::empty(lct("Thor"))
        }),
        Record::Supply(Supply { total_uatp: atp(10) }),
    ]);
    let thor = |balance, locked| {
        Record::Account(Account {
            balance_uatp: atp(balance),
            locked_uatp: atp(locked),
            ..Account::empty(lct("Thor"))
        })
    };
    assert!(conserves(&book, &[thor(6, 4)]), "a lock moves ATP within the account");
    assert!(!conserves(&book, &[thor(6, 5)]), "one ATP minted");
    assert!(!conserves(&book, &[thor(0, 0)]), "ten lost");
    assert!(
        conserves(&book, &[thor(15, 0), Record::Supply(Supply { total_uatp: atp(15) })]),
        "a grant adds to both"
    );
    assert!(
        !conserves(&book, &[Record::Supply(Supply { total_uatp: atp(15) })]),
        "supply alone"
    );
}
