//! sagefed: machines delegate signed tasks to each other over NATS, and an escrow ledger in
//! JetStream KV pays executors for good work and refunds delegators for bad work.
//!
//! # Layout
//!
//! Identities and messages:
//! - [`lct`]: LCT identities `lct:web4:agent:<owner>@<platform>#<task_type>`.
//! - [`atp`]: ATP amounts, integer micro-ATP inside, checked conversions at the edge.
//! - [`keys`]: Ed25519 key files, key ids, and the in-memory registry with validity windows.
//! - [`key_directory`]: the registry shared through the `sage_keys` KV bucket.
//! - [`envelope`]: signing and verifying wire bytes; the only builder of `Verified<T>`.
//! - [`task`] and [`proof`]: the FederationTask and ExecutionProof messages.
//! - [`clock`]: wall-clock time as the wire carries it.
//!
//! NATS:
//! - [`subjects`]: every subject, stream, consumer and bucket name (mirrors `subjects.md`).
//! - [`infra`]: creates the streams and buckets.
//! - [`nats_server`]: finds, installs and runs a real `nats-server`.
//! - [`ledger`]: the ATP ledger service, its client, its audit.
//!
//! Running it:
//! - [`config`]: per-platform configuration (defaults < file < `SAGE_*` environment).
//! - [`limits`]: every bound, named with its unit.
//! - [`up`]: `sagefed up`, the whole federation on one machine.
//! - [`bench`]: `sagefed bench`, figures against a floor measured in the same run.
//! - [`cli`]: argument parsing; `main.rs` only calls [`cli::main`].
//! - [`worker`]: executes tasks: operation handlers in `worker::ops`.

pub mod atp;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delegator;
pub mod demo;
pub mod envelope;
pub mod infra;
pub mod key_directory;
pub mod keys;
pub mod lct;
pub mod ledger;
pub mod limits;
pub mod nats_server;
pub mod proof;
pub mod registry;
pub mod reputation;
pub mod status;
pub mod subjects;
pub mod task;
pub mod task_status;
pub mod up;
pub mod worker;
