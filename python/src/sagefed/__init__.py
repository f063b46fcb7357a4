"""sagefed for Python: delegate SAGE tasks through a platform's local gateway, and write
operations that a platform's worker runs.

    from sagefed import FederationClient
    thor = FederationClient("Thor")          # finds configs/thor.gateway.json
    proof = thor.delegate_task(operation="perception", atp_budget=2,
                               parameters={"length": 1024, "seed": 7})
    print(proof.paid, proof.quality_score, proof.result)
"""

from .aio import AsyncFederationClient
from .client import FederationClient
from .errors import (
    Busy,
    Conflict,
    FederationError,
    GatewayFailure,
    InvalidRequest,
    LockRefused,
    NotPermitted,
    Unauthorized,
    Unreachable,
)
from .models import CancelResult, ExecutionProof, FederationTask, LctStatus, new_task_id
from .operation import OperationError, OperationResult, operation, run_operations

__all__ = [
    "AsyncFederationClient",
    "Busy",
    "CancelResult",
    "Conflict",
    "ExecutionProof",
    "FederationClient",
    "FederationError",
    "FederationTask",
    "GatewayFailure",
    "InvalidRequest",
    "LctStatus",
    "LockRefused",
    "NotPermitted",
    "OperationError",
    "OperationResult",
    "Unauthorized",
    "Unreachable",
    "new_task_id",
    "operation",
    "run_operations",
]
