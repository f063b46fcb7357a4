"""``AsyncFederationClient``: the same calls for asyncio programs. Each call runs the
blocking client in a worker thread (``asyncio.to_thread``), so a delegation that waits for
its proof does not block the event loop, and several run concurrently."""

import asyncio
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .client import FederationClient
from .models import TASK_TYPE_DEFAULT, TIMEOUT_SECONDS_DEFAULT, CancelResult, ExecutionProof, FederationTask, LctStatus


class AsyncFederationClient:
    """``await client.delegate_task(...)``, ``await client.status(lct)``,
    ``await client.cancel(task_id)``; arguments as for ``FederationClient``."""

    def __init__(
        self,
        platform: str,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        config: Optional[Union[str, Path]] = None,
        configs_dir: Optional[Union[str, Path]] = None,
    ):
        self.sync = FederationClient(platform, url, token, config=config, configs_dir=configs_dir)
        self.platform = platform

    async def delegate_task(
        self,
        task: Optional[FederationTask] = None,
        target_platform: Optional[str] = None,
        *,
        operation: Optional[str] = None,
        atp_budget: Optional[float] = None,
        parameters: Optional[Dict[str, Any]] = None,
        task_type: str = TASK_TYPE_DEFAULT,
        timeout_seconds: int = TIMEOUT_SECONDS_DEFAULT,
        task_id: Optional[str] = None,
    ) -> ExecutionProof:
        return await asyncio.to_thread(
            self.sync.delegate_task,
            task,
            target_platform,
            operation=operation,
            atp_budget=atp_budget,
            parameters=parameters,
            task_type=task_type,
            timeout_seconds=timeout_seconds,
            task_id=task_id,
        )

    async def status(self, lct: str) -> LctStatus:
        return await asyncio.to_thread(self.sync.status, lct)

    async def task_status(self, task_id: str) -> Dict[str, Any]:
        return await asyncio.to_thread(self.sync.task_status, task_id)

    async def cancel(self, task_id: str) -> CancelResult:
        return await asyncio.to_thread(self.sync.cancel, task_id)

    async def whoami(self) -> Dict[str, Any]:
        return await asyncio.to_thread(self.sync.whoami)

    async def lct(self, task_type: str = TASK_TYPE_DEFAULT) -> str:
        return await asyncio.to_thread(self.sync.lct, task_type)
