"""The asyncio client: several delegations in flight at once, status and cancel awaited."""

import asyncio

from conftest import client_lct

from sagefed import AsyncFederationClient, new_task_id


def test_concurrent_delegations(federation):
    async def main():
        thor = AsyncFederationClient("Thor", configs_dir=federation.configs)
        proofs = await asyncio.gather(
            *(thor.delegate_task(operation="perception", atp_budget=2, parameters={"length": 512, "seed": s})
              for s in range(5))
        )
        assert all(p.paid for p in proofs), proofs
        assert len({p.task_id for p in proofs}) == 5
        status = await thor.status(client_lct("Thor"))
        assert status.active
        assert status.tasks_running == 0
        reply = await thor.cancel(proofs[0].task_id)
        assert not reply.cancelled, "a settled task cannot be cancelled"
        report = await thor.task_status(new_task_id())
        assert report["status"] is None

    asyncio.run(main())
