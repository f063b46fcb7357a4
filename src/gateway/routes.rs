//! The gateway's handlers: check the request, then call the library the `sagefed` commands
//! use (`FederationClient`, the status service). Every check that can refuse a request runs
//! before the ledger is asked to lock anything.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::api::{ApiError, DelegateBody, DelegateResponse, TaskSpec, WhoAmI};
use super::auth::Token;
use crate::config::Config;
use crate::delegation::client::{DelegationRequest, FederationClient, Lane};
use crate::delegation::status::{self, CancelReply};
use crate::protocol::atp::Atp;
use crate::protocol::lct::{LCT_PREFIX, Lct};
use crate::protocol::limits::TASK_TIMEOUT_SECONDS_MAX;
use crate::protocol::task::TaskId;
use crate::state::registry::Registry;

/// What every handler shares.
pub struct Shared {
    pub config: Config,
    pub client: async_nats::Client,
    pub federation: FederationClient,
    pub registry: Registry,
    pub token: Token,
    /// Delegations in flight; beyond [`DELEGATIONS_IN_FLIGHT_MAX`] a call is refused (429).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// Delegations one gateway waits on at once; each holds a connection and a proof waiter.
pub const DELEGATIONS_IN_FLIGHT_MAX: usize = 256;

pub type AppState = Arc<Shared>;

/// Refuses any call without the platform's token, before it reaches a handler.
pub async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send `Authorization: Bearer <token>`; the token is in the file next to the platform's config (<config>.gateway-token)",
        )),
        Some(token) if !state.token.matches(token.trim()) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the token does not match this gateway's <config>.gateway-token",
        )),
        Some(_) => Ok(next.run(request).await),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; GET /api/v1/openapi.json lists them",
    )
}

pub async fn whoami(State(state): State<AppState>) -> Json<WhoAmI> {
    let lcts = state
        .config
        .resources
        .keys()
        .filter_map(|t| {
            let lct = state.config.lct(t.as_str()).ok()?;
            Some((t.as_str().to_owned(), serde_json::Value::String(lct.to_string())))
        })
        .collect();
    Json(WhoAmI {
        platform: state.config.platform().to_owned(),
        lcts,
        delegate: state.config.permissions.delegate,
    })
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
}

pub async fn delegate(
    State(state): State<AppState>,
    body: Result<Json<DelegateBody>, JsonRejection>,
) -> Result<Json<DelegateResponse>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(e.status(), "malformed_body", e.body_text()))?;
    let _slot = Arc::clone(&state.in_flight).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_delegations",
            format!("{DELEGATIONS_IN_FLIGHT_MAX} delegations are in flight on this gateway; retry when one ends"),
        )
    })?;
    let (request, lane) = check_delegation(&state, body).await?;
    let outcome = state.federation.delegate_on(request, lane).await?;
    Ok(Json(outcome.into()))
}

/// Turns a request body into a delegation and its lane, or says what is wrong with it.
/// Nothing here touches the ledger.
async fn check_delegation(state: &Shared, body: DelegateBody) -> Result<(DelegationRequest, Lane), ApiError> {
    if body.signature.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "signature_not_accepted",
            "the gateway signs tasks with the platform's key; send no signature",
        ));
    }
    let TaskSpec {
        task_id,
        source_lct,
        target_lct,
        target_platform,
        task_type,
        operation,
        atp_budget,
        timeout_seconds,
        parameters,
        created_at: _,
        critical,
    } = body.task;
    if !state.config.resources.keys().any(|t| t.as_str() == task_type) {
        let known: Vec<&str> = state.config.resources.keys().map(|t| t.as_str()).collect();
        return Err(ApiError::bad_request(
            "unknown_task_type",
            format!(
                "{} has no ATP for task type {task_type:?}; its task types: {}",
                state.config.platform(),
                known.join(", ")
            ),
        ));
    }
    let own = state.config.lct(&task_type).map_err(|e| {
        ApiError::bad_request(
            "unknown_task_type",
            format!(
                "{} has no LCT for task type {task_type:?}: {e}",
                state.config.platform()
            ),
        )
    })?;
    for (field, claimed) in [("task.source_lct", &source_lct), ("lct_identity", &body.lct_identity)] {
        if let Some(claimed) = claimed
            && *claimed != own.to_string()
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_your_lct",
                format!("{field} {claimed:?} is not this gateway's identity {own}"),
            ));
        }
    }
    Atp::positive_from_f64(atp_budget, "task.atp_budget")
        .map_err(|e| ApiError::bad_request("invalid_budget", e.to_string()))?;
    if timeout_seconds == 0 || timeout_seconds > TASK_TIMEOUT_SECONDS_MAX {
        return Err(ApiError::bad_request(
            "invalid_timeout",
            format!("task.timeout_seconds {timeout_seconds} is outside 1..={TASK_TIMEOUT_SECONDS_MAX}"),
        ));
    }
    let task_id = task_id
        .map(|t| t.parse::<TaskId>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_task_id", format!("task.task_id: {e}")))?;
    let to = target(target_lct, target_platform, &task_type)?;
    check_operation(state, &operation, to.as_deref()).await?;
    let request = DelegationRequest {
        to,
        task_type,
        operation,
        budget: atp_budget,
        timeout_seconds,
        parameters,
        task_id,
    };
    Ok((request, Lane::of(critical)))
}

/// The executor platform the caller asked for, if any.
fn target(
    target_lct: Option<String>,
    target_platform: Option<String>,
    task_type: &str,
) -> Result<Option<String>, ApiError> {
    let from_lct = target_lct
        .map(|text| {
            let lct: Lct = text
                .parse()
                .map_err(|e| ApiError::bad_request("invalid_lct", format!("task.target_lct: {e}")))?;
            if lct.task_type() != task_type {
                return Err(ApiError::bad_request(
                    "invalid_lct",
                    format!("task.target_lct {lct} is not of task type {task_type:?}"),
                ));
            }
            Ok(lct.platform().to_owned())
        })
        .transpose()?;
    match (from_lct, target_platform) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(
            "invalid_lct",
            format!("task.target_lct names {a} but task.target_platform names {b}"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// An operation no registered platform offers is a caller's mistake (a typo), not a task to
/// lock ATP for and dead-letter.
async fn check_operation(state: &Shared, operation: &str, to: Option<&str>) -> Result<(), ApiError> {
    let records = state
        .registry
        .all()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "federation_error", e.to_string()))?;
    let offered = |r: &&crate::state::registry::PlatformRecord| r.operations.iter().any(|o| o == operation);
    let known = match to {
        Some(to) => {
            let Some(record) = records.iter().find(|r| r.platform == to) else {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "no_platform",
                    format!("{to} is not registered (no worker has run for it)"),
                ));
            };
            std::iter::once(record).find(offered).is_some()
        }
        None => records.iter().find(offered).is_some(),
    };
    if known {
        return Ok(());
    }
    let mut all: Vec<&str> = records
        .iter()
        .filter(|r| to.is_none_or(|to| r.platform == to))
        .flat_map(|r| r.operations.iter().map(String::as_str))
        .collect();
    all.sort_unstable();
    all.dedup();
    Err(ApiError::bad_request(
        "unknown_operation",
        format!(
            "no platform{} offers operation {operation:?}; known: {}",
            to.map(|t| format!(" named {t}")).unwrap_or_default(),
            all.join(", ")
        ),
    ))
}

/// The seed's `GET /status/{lct_id}`; a task id (`t-...`) answers with that task's status and
/// lock instead.
pub async fn status(
    State(state): State<AppState>,
    Path(target): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let unavailable =
        |e: status::StatusQueryError| ApiError::new(StatusCode::BAD_GATEWAY, "federation_error", e.to_string());
    let value = if target.starts_with(LCT_PREFIX) {
        let lct: Lct = target
            .parse()
            .map_err(|e| ApiError::bad_request("invalid_lct", format!("{e}")))?;
        serde_json::to_value(status::lct(&state.client, &lct).await.map_err(unavailable)?)
    } else {
        let task_id: TaskId = target.parse().map_err(|e: String| {
            ApiError::bad_request(
                "invalid_target",
                format!("{e} (expected an LCT {LCT_PREFIX}... or a task id)"),
            )
        })?;
        serde_json::to_value(status::task(&state.client, &task_id).await.map_err(unavailable)?)
    };
    value
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// The seed's `POST /cancel/{task_id}`: signed by the gateway as the delegator.
pub async fn cancel(State(state): State<AppState>, Path(task_id): Path<String>) -> Result<Json<CancelReply>, ApiError> {
    let task_id: TaskId = task_id
        .parse()
        .map_err(|e: String| ApiError::bad_request("invalid_task_id", e))?;
    status::cancel_task(&state.client, state.federation.signer(), &task_id)
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cancel_refused", e.to_string()))
}
