//! sagefed: machines delegate signed tasks to each other over NATS, and an escrow ledger in
//! JetStream KV pays executors for good work and refunds delegators for bad work.
//!
//! # Layout
//!
//! Each folder is one area; its `mod.rs` says what it holds.
//! - [`protocol`]: the wire and its values, pure (no `async_nats`, no `tokio`): LCT identities
//!   ([`protocol::lct`]), ATP amounts ([`protocol::atp`]), time ([`protocol::clock`]: a
//!   `Timestamp` for every instant, `Duration` for every span), bounds
//!   (`protocol::limits`), the FederationTask and ExecutionProof ([`protocol::task`],
//!   [`protocol::proof`]), signing and verifying wire bytes ([`protocol::envelope`], the
//!   only builder of [`Verified`]), and a check's verdict on a result ([`protocol::verdict`]).
//! - [`identity`]: Ed25519 key files and the key registry ([`identity::keys`]), shared through
//!   the `sage_keys` bucket ([`identity::directory`]).
//! - [`nats`]: every subject, stream, consumer and bucket name ([`nats::subjects`], mirrors
//!   `subjects.md`), their creation ([`nats::infra`]), a real `nats-server` ([`nats::server`]),
//!   the one compare-and-swap update of a KV record ([`nats::cas`]).
//! - [`ledger`]: the ATP ledger: pure rules, the service that applies them, its client, its
//!   audit.
//! - [`delegation`]: the delegator's [`FederationClient`], where a task goes
//!   (`delegation::placement`, pure), the seed's scenarios ([`delegation::scenarios`]) and the
//!   status and cancel service.
//! - [`gateway`]: the seed's HTTP API on loopback for one platform, behind a local token
//!   (what the Python client in `python/` talks to).
//! - [`worker`]: executes tasks: checks, admission, the operation handlers in `worker::ops`.
//! - [`state`]: the platform registry, reputation and task board buckets.
//! - [`observe`]: Prometheus metrics, the dashboard's live feed and its HTTP server.
//! - [`config`]: per-platform configuration (defaults < file < `SAGE_*` environment).
//! - [`fault`]: faults the tests inject into real processes (off unless `SAGEFED_FAULT` asks).
//!
//! The binary (`src/bin/sagefed/`) holds the command line, `sagefed up`, the seed's scenarios
//! and `sagefed bench`.

pub mod config;
pub mod delegation;
pub mod fault;
pub mod gateway;
pub mod identity;
pub mod ledger;
pub mod nats;
pub mod observe;
pub mod protocol;
pub mod state;
pub mod worker;

pub use config::Config;
pub use delegation::client::FederationClient;
pub use ledger::client::{LedgerClient, LedgerReader};
pub use protocol::atp::Atp;
pub use protocol::envelope::{Signer, Verified};
pub use protocol::lct::Lct;
pub use protocol::proof::ExecutionProof;
pub use protocol::task::{FederationTask, TaskId};
