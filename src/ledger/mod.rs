//! The ATP ledger: an authority service with atomic two-phase transfers on JetStream KV.
//!
//! Lock -> commit / rollback / expire, after TigerBeetle's pending -> post / void / expire.
//! Every transition writes all the records it touches (accounts, the lock, a journal entry)
//! as one atomic batch in which each message expects the revision it read, so it commits
//! whole or not at all, and a replay fails cleanly on the journal entry it would recreate.
//!
//! - [`model`]: the records and their keys.
//! - [`protocol`]: signed requests and replies on `sage.ledger.<operation>`.
//! - `rules`: the transition rules, pure functions.
//! - [`witness`]: sampling a commit for a witness, its hold and its settlement (pure).
//! - [`batch`]: the atomic batch publisher (ADR-50).
//! - `store`: reads with a revision cache; writes as one atomic batch.
//! - `sequencer`: group commit, per service instance.
//! - [`service`]: `sagefed ledger serve`.
//! - `sweeper`: expires locks past their expiry.
//! - `reputation_writer`: counts the settlements applied into executors' reputation.
//! - [`client`]: `LedgerClient`, what platforms use.
//! - [`snapshot`]: a consistent read of the whole bucket.
//! - [`audit`]: conservation and the other invariants, checked on a snapshot.

pub mod audit;
pub mod batch;
pub mod client;
pub mod model;
pub mod protocol;
mod reputation_writer;
mod rules;
pub use rules::COMMIT_WINDOW;
#[cfg(test)]
mod rules_table;
mod sequencer;
pub mod service;
pub mod snapshot;
mod store;
mod sweeper;
pub mod witness;
