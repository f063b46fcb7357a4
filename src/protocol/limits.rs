//! Every bound in the system, named with its unit last.
//!
//! A limit lives here when more than one module needs it or when an operator may want to
//! know it exists. Values that a platform may tune live in `config.rs` with these as defaults.

use std::time::Duration;

/// Largest accepted signed envelope (task or proof) on the wire. NATS' own default
/// `max_payload` is 1 MiB; we stay well below so a task always fits with its headers.
pub const ENVELOPE_BYTES_MAX: usize = 256 * 1024;

/// Largest signed ledger request: a commit carries the executor's proof and the delegator's
/// task, each an envelope, with room for the request around them; still well under NATS'
/// 1 MiB `max_payload`.
pub const LEDGER_REQUEST_BYTES_MAX: usize = 2 * ENVELOPE_BYTES_MAX + 16 * 1024;

/// Largest accepted `parameters` object inside a task, serialized.
pub const TASK_PARAMETERS_BYTES_MAX: usize = 128 * 1024;

/// Largest accepted `result` object inside a proof, serialized.
pub const PROOF_RESULT_BYTES_MAX: usize = 128 * 1024;

/// Longest task id. Task ids are NATS subject tokens and KV key tokens.
pub const TASK_ID_CHARS_MAX: usize = 64;

/// Longest platform or owner name inside an LCT.
pub const LCT_NAME_CHARS_MAX: usize = 64;

/// Longest task type inside an LCT (dot-separated tokens).
pub const LCT_TASK_TYPE_CHARS_MAX: usize = 128;

/// Longest operation name.
pub const OPERATION_CHARS_MAX: usize = 64;

/// Longest task timeout a delegator may ask for.
pub const TASK_TIMEOUT_SECONDS_MAX: u64 = 3600;

/// Clock skew tolerated between platforms when checking `created_at` and `expires_at`.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_secs(30);

/// Largest ATP amount in one task or grant: 10^12 ATP, far below the u64 micro-ATP range
/// (1.8 * 10^13 ATP), so sums of many amounts cannot overflow in practice and overflow is
/// still checked everywhere.
pub const ATP_AMOUNT_MAX: f64 = 1.0e12;

/// How long to wait for the local nats-server to accept connections after spawning it.
pub const NATS_SERVER_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Oldest nats-server we accept: atomic batch publish (ADR-50) arrived in 2.12.
pub const NATS_SERVER_VERSION_MIN: (u64, u64, u64) = (2, 12, 0);

/// The nats-server version we install when none is found.
pub const NATS_SERVER_VERSION_PINNED: &str = "2.15.1";
