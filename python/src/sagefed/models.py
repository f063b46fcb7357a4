"""The seed's data classes: ``FederationTask`` (what to delegate), ``ExecutionProof`` (what
the executor signed about it, with how the ledger settled it), and the status and cancel
answers."""

import base64
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .errors import InvalidRequest

#: Seconds a task may run when not told otherwise (the gateway's default too).
TIMEOUT_SECONDS_DEFAULT = 30
#: Task type when not told otherwise.
TASK_TYPE_DEFAULT = "consciousness"


def new_task_id() -> str:
    """A fresh task id, ``t-`` and 32 hex digits, like the federation draws."""
    return "t-" + uuid.uuid4().hex


@dataclass
class FederationTask:
    """A task to delegate (the seed's FederationTask).

    ``operation`` and ``atp_budget`` are required. ``source_lct`` is filled in by the
    gateway (its platform's LCT of ``task_type``); ``target_lct`` may name the executor, or
    pass ``target_platform`` to ``delegate_task``, or neither to let the federation choose.
    ``task_id`` is chosen here so that the task can be cancelled while it runs.
    """

    operation: str
    atp_budget: float
    parameters: Dict[str, Any] = field(default_factory=dict)
    task_type: str = TASK_TYPE_DEFAULT
    timeout_seconds: int = TIMEOUT_SECONDS_DEFAULT
    task_id: str = field(default_factory=new_task_id)
    source_lct: Optional[str] = None
    target_lct: Optional[str] = None
    created_at: float = field(default_factory=time.time)
    #: Ahead of the executor's queue; the platform needs ``federation:critical``.
    critical: bool = False

    def to_json(self, target_platform: Optional[str] = None) -> Dict[str, Any]:
        """The gateway's ``task`` object."""
        if isinstance(self.atp_budget, bool) or not isinstance(self.atp_budget, (int, float)):
            raise InvalidRequest("invalid_budget", f"atp_budget must be a number, not {self.atp_budget!r}")
        # JSON has no NaN or infinity; the gateway judges the range (positive, not huge).
        if not math.isfinite(self.atp_budget):
            raise InvalidRequest("invalid_budget", f"atp_budget must be a finite number, not {self.atp_budget!r}")
        task: Dict[str, Any] = {
            "task_id": self.task_id,
            "task_type": self.task_type,
            "operation": self.operation,
            "atp_budget": float(self.atp_budget),
            "timeout_seconds": self.timeout_seconds,
            "parameters": self.parameters,
            "created_at": self.created_at,
        }
        for key, value in (
            ("source_lct", self.source_lct),
            ("target_lct", self.target_lct),
            ("target_platform", target_platform),
        ):
            if value is not None:
                task[key] = value
        if self.critical:
            task["critical"] = True
        return task


@dataclass
class ExecutionProof:
    """What the executor signed about a task (the seed's ExecutionProof), and how the ledger
    settled it.

    ``settlement`` is ``committed`` (the executor was paid ``atp_consumed``) or
    ``rolled_back`` / ``expired`` (the delegator got its budget back; ``rollback_reason``
    says why: ``low_quality``, ``timeout``, ``cancelled``, ...). ``signature`` is the
    executor's Ed25519 signature (empty when no proof arrived before the deadline);
    ``envelope`` the whole signed proof, verbatim. ``witness`` (``None`` unless the ledger
    sampled the task for a witness): ``{"platform", "atp_paid", "agreed"}``, ``agreed``
    ``None`` when the witness did not answer before the hold expired.
    """

    task_id: str
    executor_lct: str
    atp_consumed: float
    execution_time: float
    quality_score: float
    result: Dict[str, Any]
    created_at: float
    signature: bytes
    delegator_lct: str = ""
    status: Optional[str] = None
    reason: str = ""
    settlement: str = ""
    rollback_reason: Optional[str] = None
    atp_refunded: float = 0.0
    latency_ms: float = 0.0
    envelope: Optional[str] = None
    witness: Optional[Dict[str, Any]] = None

    @property
    def paid(self) -> bool:
        """The executor was paid: the task completed at or above the quality threshold."""
        return self.settlement == "committed"

    @classmethod
    def from_response(cls, body: Dict[str, Any]) -> "ExecutionProof":
        proof = body.get("proof") or {}
        signature = body.get("signature") or ""
        return cls(
            task_id=body["task_id"],
            executor_lct=proof.get("executor_lct", ""),
            atp_consumed=float(body.get("atp_consumed", 0.0)),
            execution_time=float(proof.get("execution_time", 0.0)),
            quality_score=float(proof.get("quality_score", body.get("quality") or 0.0)),
            result=body.get("result") or {},
            created_at=float(proof.get("created_at", 0.0)),
            signature=base64.b64decode(signature) if signature else b"",
            delegator_lct=proof.get("delegator_lct", ""),
            status=body.get("proof_status"),
            reason=body.get("reason", ""),
            settlement=body.get("settlement", ""),
            rollback_reason=body.get("rollback_reason"),
            atp_refunded=float(body.get("atp_refunded", 0.0)),
            latency_ms=float(body.get("latency_ms", 0.0)),
            envelope=body.get("proof_envelope"),
            witness=body.get("witness"),
        )


@dataclass
class LctStatus:
    """The seed's status of an LCT: ``active`` (its platform has a live worker),
    ``atp_consumed`` (paid to executors), ``tasks_running``; plus its ledger account."""

    lct: str
    active: bool
    atp_consumed: float
    tasks_running: int
    atp_earned: float = 0.0
    balance: float = 0.0
    locked: float = 0.0

    @classmethod
    def from_response(cls, body: Dict[str, Any]) -> "LctStatus":
        return cls(
            lct=body["lct"],
            active=bool(body["active"]),
            atp_consumed=float(body["atp_consumed"]),
            tasks_running=int(body["tasks_running"]),
            atp_earned=float(body.get("atp_earned", 0.0)),
            balance=float(body.get("balance", 0.0)),
            locked=float(body.get("locked", 0.0)),
        )


@dataclass
class CancelResult:
    """The seed's cancel answer."""

    cancelled: bool
    atp_refunded: float
    message: str = ""

    @classmethod
    def from_response(cls, body: Dict[str, Any]) -> "CancelResult":
        return cls(
            cancelled=bool(body["cancelled"]),
            atp_refunded=float(body["atp_refunded"]),
            message=body.get("message", ""),
        )
