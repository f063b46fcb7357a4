//! The gateway's HTTP bodies: the seed's request and response fields
//! (`POST /api/v1/consciousness/delegate` takes `{task, signature, lct_identity}` and answers
//! `{proof, signature, atp_consumed}`), plus what our protocol adds (settlement, refund,
//! rollback reason), and the one error shape: `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::delegation::client::{DelegateError, DelegationOutcome};
use crate::ledger::model::{LockState, RollbackReason};
use crate::protocol::clock::Timestamp;
use crate::protocol::proof::{ExecutionProof, ProofStatus};

/// Seconds a task may run when the request does not say.
pub const TIMEOUT_SECONDS_DEFAULT: u64 = 30;
/// Task type of a request that does not name one.
pub const TASK_TYPE_DEFAULT: &str = "consciousness";

/// `POST /api/v1/consciousness/delegate`: the seed's body. The gateway signs, so a
/// `signature` must be absent (or empty); `lct_identity`, when given, must be this platform's
/// LCT of the task type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegateBody {
    pub task: TaskSpec,
    #[serde(default)]
    pub signature: Option<String>,
    #[serde(default)]
    pub lct_identity: Option<String>,
}

/// The seed's FederationTask as a caller fills it in. Only `operation` and `atp_budget` are
/// required; the gateway sets the source LCT, the times and the reply subject.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Chosen by the caller so that it can cancel the task while it runs; random when absent.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Must be this platform's LCT of `task_type` when given.
    #[serde(default)]
    pub source_lct: Option<String>,
    /// The executor; or name it with `target_platform`; neither lets the federation choose.
    #[serde(default)]
    pub target_lct: Option<String>,
    #[serde(default)]
    pub target_platform: Option<String>,
    #[serde(default = "task_type_default")]
    pub task_type: String,
    pub operation: String,
    pub atp_budget: f64,
    #[serde(default = "timeout_default")]
    pub timeout_seconds: u64,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Accepted for the seed's shape; the gateway stamps its own time.
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// A critical task, ahead of the executor's queue: the platform needs
    /// `federation:critical` (else `403 critical_not_permitted`).
    #[serde(default)]
    pub critical: bool,
}

fn task_type_default() -> String {
    TASK_TYPE_DEFAULT.to_owned()
}

fn timeout_default() -> u64 {
    TIMEOUT_SECONDS_DEFAULT
}

/// The seed's ExecutionProof fields (plus delegator, status and reason), with the
/// executor's Ed25519 signature in base64.
#[derive(Debug, Serialize)]
pub struct ProofView {
    #[serde(flatten)]
    pub proof: ExecutionProof,
    pub signature: String,
}

/// The answer to a delegation that ran to a settlement (paid or refunded: both are 200).
#[derive(Debug, Serialize)]
pub struct DelegateResponse {
    /// `None` when no proof arrived before the deadline.
    pub proof: Option<ProofView>,
    /// The executor's signature of the proof (base64), as in the seed.
    pub signature: Option<String>,
    pub atp_consumed: f64,
    pub task_id: String,
    pub from: String,
    pub to: String,
    pub operation: String,
    pub settlement: LockState,
    pub rollback_reason: Option<RollbackReason>,
    pub atp_refunded: f64,
    pub quality: Option<f64>,
    pub proof_status: Option<ProofStatus>,
    pub reason: String,
    pub result: Map<String, Value>,
    pub latency_ms: f64,
    /// The whole signed proof envelope, to keep or verify independently.
    pub proof_envelope: Option<String>,
    /// The witness the ledger appointed when it sampled the task (`None`: not sampled).
    pub witness: Option<WitnessView>,
}

/// Who witnessed a sampled task, what it was paid and whether it agreed (`None`: it did not
/// answer before the hold expired, and the executor was paid as it claimed).
#[derive(Debug, Serialize)]
pub struct WitnessView {
    pub platform: String,
    pub atp_paid: f64,
    pub agreed: Option<bool>,
}

/// The envelope fields the response reads from an already verified proof.
#[derive(Deserialize)]
struct ProofEnvelope {
    sig: String,
    body: ExecutionProof,
}

impl From<DelegationOutcome> for DelegateResponse {
    fn from(o: DelegationOutcome) -> Self {
        let proof = o
            .proof_envelope
            .as_deref()
            .and_then(|wire| serde_json::from_str::<ProofEnvelope>(wire).ok())
            .map(|e| ProofView {
                proof: e.body,
                signature: e.sig,
            });
        Self {
            signature: proof.as_ref().map(|p| p.signature.clone()),
            proof,
            atp_consumed: o.atp_consumed,
            task_id: o.task_id.to_string(),
            from: o.from,
            to: o.to,
            operation: o.operation,
            settlement: o.settlement,
            rollback_reason: o.rollback_reason,
            atp_refunded: o.atp_refunded,
            quality: o.quality,
            proof_status: o.proof_status,
            reason: o.reason,
            result: o.result,
            latency_ms: o.latency_ms,
            proof_envelope: o.proof_envelope,
            witness: o.witness.map(|w| WitnessView {
                platform: w.witness,
                atp_paid: w.paid_uatp.as_f64(),
                agreed: w.agreed,
            }),
        }
    }
}

/// `GET /api/v1/whoami`: which platform this gateway acts for.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    pub platform: String,
    /// Its LCT per task type.
    pub lcts: Map<String, Value>,
    pub delegate: bool,
}

/// What went wrong, as the caller sees it: a status, a stable code to match on, and a
/// message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorFields {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<DelegateError> for ApiError {
    fn from(e: DelegateError) -> Self {
        let (status, code) = match &e {
            DelegateError::NotPermitted(_) => (StatusCode::FORBIDDEN, "not_permitted"),
            DelegateError::CriticalNotPermitted(_) => (StatusCode::FORBIDDEN, "critical_not_permitted"),
            DelegateError::NoPlatform(_) => (StatusCode::CONFLICT, "no_platform"),
            DelegateError::Lock(_) => (StatusCode::PAYMENT_REQUIRED, "lock_refused"),
            DelegateError::Publish(_) => (StatusCode::SERVICE_UNAVAILABLE, "publish_failed"),
            DelegateError::LinkDown(_) => (StatusCode::SERVICE_UNAVAILABLE, "link_down"),
            DelegateError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_task"),
            DelegateError::BadProof(_) => (StatusCode::BAD_GATEWAY, "bad_proof"),
            DelegateError::Registry(_)
            | DelegateError::RegistryStalled
            | DelegateError::Ledger(_)
            | DelegateError::NoLock { .. }
            | DelegateError::WitnessedTask(_) => (StatusCode::BAD_GATEWAY, "federation_error"),
            DelegateError::WitnessUnsettled(_) => (StatusCode::GATEWAY_TIMEOUT, "witness_unsettled"),
        };
        Self::new(status, code, format!("{e:#}"))
    }
}
