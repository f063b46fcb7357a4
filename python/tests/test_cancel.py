"""Cancelling from Python: a running task is aborted and its whole budget refunded; the
delegation that waited for it returns refunded, reason `cancelled`."""

import threading
import time

from conftest import client_lct

from sagefed import Conflict, new_task_id

#: Seconds to wait for the long task to start running.
START_TIMEOUT_SECONDS = 20


def test_cancel_a_running_task(thor):
    before = thor.status(client_lct("Thor"))
    task_id = new_task_id()
    long = {"steps": [{"op": "wait", "args": [10000]}]}
    outcome = {}

    def delegate():
        outcome["proof"] = thor.delegate_task(
            operation="execution", atp_budget=5, parameters=long, target_platform="Legion",
            timeout_seconds=20, task_id=task_id,
        )

    delegation = threading.Thread(target=delegate)
    delegation.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        report = thor.task_status(task_id)
        if report["status"] and report["status"]["state"] == "running":
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.05)
    reply = thor.cancel(task_id)
    assert reply.cancelled, reply
    assert reply.atp_refunded == 5
    delegation.join(30)
    assert not delegation.is_alive()
    proof = outcome["proof"]
    assert not proof.paid
    assert proof.rollback_reason == "cancelled", proof
    assert thor.status(client_lct("Thor")).balance == before.balance

    # Cancelling again: the task already ended.
    again = thor.cancel(task_id)
    assert not again.cancelled
    assert again.atp_refunded == 0


def test_only_the_delegator_may_cancel(thor, sprout):
    task_id = new_task_id()
    slow = {"steps": [{"op": "wait", "args": [1500]}]}
    outcome = {}
    delegation = threading.Thread(
        target=lambda: outcome.setdefault(
            "proof",
            thor.delegate_task(
                operation="execution", atp_budget=3, parameters=slow, target_platform="Legion", task_id=task_id
            ),
        )
    )
    delegation.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not thor.task_status(task_id)["status"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        sprout.cancel(task_id)
        raise AssertionError("Sprout cancelled Thor's task")
    except Conflict as e:
        assert e.code == "cancel_refused"
        assert "only the delegator" in e.message
    delegation.join(30)
    assert outcome["proof"].paid, "the task ran to the end, untouched"


def test_cancel_an_unknown_task(thor):
    try:
        thor.cancel(new_task_id())
        raise AssertionError("cancelled a task nobody delegated")
    except Conflict as e:
        assert e.code == "cancel_refused"
