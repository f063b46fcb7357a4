"""``AsyncFederationClient``: the same calls for asyncio programs. Each call runs the
blocking client's method in a worker thread (``asyncio.to_thread``), so a delegation that
waits for its proof does not block the event loop, and several run concurrently."""

import asyncio
import functools
from typing import Any, Callable, Coroutine

from .client import FederationClient


def _threaded(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    """The async form of ``FederationClient.<name>``, same arguments and documentation."""
    method = getattr(FederationClient, name)

    @functools.wraps(method)
    async def call(self: "AsyncFederationClient", *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.sync, name), *args, **kwargs)

    return call


class AsyncFederationClient:
    """``await client.delegate_task(...)``, ``await client.status(lct)``,
    ``await client.cancel(task_id)``; constructed with the arguments of
    ``FederationClient``, which it wraps as ``.sync``."""

    @functools.wraps(FederationClient.__init__)
    def __init__(self, *args: Any, **kwargs: Any):
        self.sync = FederationClient(*args, **kwargs)
        self.platform = self.sync.platform

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    delegate_task = _threaded("delegate_task")
    status = _threaded("status")
    task_status = _threaded("task_status")
    cancel = _threaded("cancel")
    whoami = _threaded("whoami")
    lct = _threaded("lct")
