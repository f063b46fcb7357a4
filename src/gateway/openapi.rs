//! The gateway's OpenAPI 3.1 document, served at `GET /api/v1/openapi.json`. Written by
//! hand next to the routes it describes; `tests/gateway.rs` checks every path it lists
//! answers.

use serde_json::{Value, json};

/// Every path the gateway serves, as the document lists them.
pub const PATHS: [&str; 5] = [
    "/api/v1/consciousness/delegate",
    "/api/v1/consciousness/status/{lct_id}",
    "/api/v1/consciousness/cancel/{task_id}",
    "/api/v1/whoami",
    "/api/v1/openapi.json",
];

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sagefed gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The seed's consciousness federation API on loopback, for the one platform whose config the gateway holds. The gateway signs with the platform's key; callers present the token from <config>.gateway-token."
        },
        "security": [{"token": []}],
        "paths": paths(),
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "the contents of <config>.gateway-token (0600)"}},
            "schemas": schemas()
        }
    })
}

/// Each path with its operation and responses.
fn paths() -> Value {
    let errors = json!({
        "400": error_response("bad input (code: malformed_body, invalid_budget, invalid_timeout, unknown_operation, unknown_task_type, invalid_lct, invalid_task_id, invalid_task, signature_not_accepted); nothing was locked"),
        "401": error_response("no token (missing_token) or a wrong one (bad_token)"),
        "402": error_response("the ledger refused to lock the budget (lock_refused)"),
        "403": error_response("not permitted (not_permitted, not_your_lct)"),
        "409": error_response("no platform can take the task (no_platform), or a cancel was refused (cancel_refused)"),
        "429": error_response("too many delegations in flight on this gateway (too_many_delegations)"),
        "502": error_response("the federation failed (federation_error, bad_proof)"),
        "503": error_response("the task could not be published (publish_failed); if the server stored it anyway it settles as usual, otherwise its budget is refunded after the task's deadline (GET the task's status to tell)"),
    });
    json!({
        PATHS[0]: {"post": {
            "summary": "Delegate a task and wait for its settled outcome (paid or refunded: both 200)",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DelegateRequest"}}}},
            "responses": merge(json!({"200": {"description": "settled", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DelegateResponse"}}}}}), &errors)
        }},
        PATHS[1]: {"get": {
            "summary": "Status of an LCT (active, ATP consumed, tasks running), or of a task id (status and lock)",
            "parameters": [{"name": "lct_id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": merge(json!({"200": {"description": "LctStatus for an LCT, TaskReport for a task id", "content": {"application/json": {"schema": {"oneOf": [{"$ref": "#/components/schemas/LctStatus"}, {"$ref": "#/components/schemas/TaskReport"}]}}}}}), &errors)
        }},
        PATHS[2]: {"post": {
            "summary": "Cancel a task this platform delegated: a queued one never runs, a running one is aborted, its ATP refunded",
            "parameters": [{"name": "task_id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": merge(json!({"200": {"description": "the cancel's outcome", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CancelReply"}}}}}), &errors)
        }},
        PATHS[3]: {"get": {
            "summary": "The platform this gateway acts for and its LCTs",
            "responses": merge(json!({"200": {"description": "identity", "content": {"application/json": {"schema": {"type": "object", "properties": {"platform": {"type": "string"}, "lcts": {"type": "object"}, "delegate": {"type": "boolean"}}}}}}}), &errors)
        }},
        PATHS[4]: {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1"}}
        }}
    })
}

/// The request and response bodies the paths name.
fn schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "DelegateRequest": {"type": "object", "required": ["task"], "additionalProperties": false, "properties": {
            "task": {"$ref": "#/components/schemas/FederationTask"},
            "signature": {"type": ["string", "null"], "description": "must be absent or empty: the gateway signs"},
            "lct_identity": {"type": ["string", "null"], "description": "when given, must be this platform's LCT of the task type"}
        }},
        "FederationTask": {"type": "object", "required": ["operation", "atp_budget"], "additionalProperties": false, "properties": {
            "task_id": {"type": "string", "description": "[A-Za-z0-9_-]{1,64}; random when absent"},
            "source_lct": {"type": "string"},
            "target_lct": {"type": "string"},
            "target_platform": {"type": "string"},
            "task_type": {"type": "string", "default": "consciousness"},
            "operation": {"type": "string"},
            "atp_budget": {"type": "number", "exclusiveMinimum": 0},
            "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 30},
            "parameters": {"type": "object"},
            "created_at": {"type": "number", "description": "ignored: the gateway stamps the time"},
            "critical": {"type": "boolean", "default": false, "description": "ahead of the executor's queue; needs federation:critical"}
        }},
        "ExecutionProof": {"type": "object", "properties": {
            "task_id": {"type": "string"}, "executor_lct": {"type": "string"}, "delegator_lct": {"type": "string"},
            "status": {"type": "string", "enum": ["completed", "rejected", "failed", "timed_out", "cancelled"]},
            "reason": {"type": "string"}, "atp_consumed": {"type": "number"}, "execution_time": {"type": "number"},
            "quality_score": {"type": "number"}, "result": {"type": "object"}, "created_at": {"type": "number"},
            "signature": {"type": "string", "description": "Ed25519, base64"}
        }},
        "DelegateResponse": {"type": "object", "properties": {
            "proof": {"oneOf": [{"$ref": "#/components/schemas/ExecutionProof"}, {"type": "null"}]},
            "signature": {"type": ["string", "null"]},
            "atp_consumed": {"type": "number"},
            "task_id": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"}, "operation": {"type": "string"},
            "settlement": {"type": "string", "enum": ["pending", "committed", "rolled_back", "expired"]},
            "rollback_reason": {"type": ["string", "null"]},
            "atp_refunded": {"type": "number"}, "quality": {"type": ["number", "null"]},
            "proof_status": {"type": ["string", "null"]}, "reason": {"type": "string"},
            "result": {"type": "object"}, "latency_ms": {"type": "number"},
            "proof_envelope": {"type": ["string", "null"], "description": "the executor's signed envelope, verbatim"},
            "witness": {"oneOf": [{"type": "null"}, {"type": "object", "description": "the witness the ledger appointed for a sampled task", "properties": {
                "platform": {"type": "string"}, "atp_paid": {"type": "number"},
                "agreed": {"type": ["boolean", "null"], "description": "null: no answer before the hold expired; the executor was paid"}
            }}]}
        }},
        "LctStatus": {"type": "object", "properties": {
            "lct": {"type": "string"}, "active": {"type": "boolean"}, "atp_consumed": {"type": "number"},
            "atp_earned": {"type": "number"}, "balance": {"type": "number"}, "locked": {"type": "number"},
            "tasks_running": {"type": "integer"},
            "reputation": {"type": "array", "items": {"type": "object", "properties": {
                "operation": {"type": "string"}, "settled": {"type": "integer"}, "score": {"type": "number"},
                "refuted": {"type": "integer"}, "on_probation": {"type": "boolean"}
            }}}
        }},
        "TaskReport": {"type": "object", "properties": {"task_id": {"type": "string"}, "status": {"type": ["object", "null"]}, "lock": {"type": ["object", "null"]}}},
        "CancelReply": {"type": "object", "properties": {"cancelled": {"type": "boolean"}, "atp_refunded": {"type": "number"}, "message": {"type": "string"}}}
    })
}

fn merge(mut a: Value, b: &Value) -> Value {
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}
