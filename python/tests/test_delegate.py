"""Delegating from Python through the gateway: each built-in operation, the external
program, low quality and timeout, each settled as the seed says."""

import base64
import json

import pytest

from conftest import client_lct

from sagefed import ExecutionProof, FederationTask

PLANNING = {"width": 48, "height": 48, "start": [0, 0], "goal": [47, 47], "obstacle_density": 0.2, "seed": 3}


def assert_paid(proof: ExecutionProof, executor: str):
    assert proof.paid, proof
    assert proof.settlement == "committed"
    assert proof.status == "completed"
    assert proof.executor_lct.startswith(f"lct:web4:agent:dp@{executor}#")
    assert 0 < proof.atp_consumed
    assert proof.quality_score >= 0.7
    assert len(proof.signature) == 64, "an Ed25519 signature"
    envelope = json.loads(proof.envelope)
    assert base64.b64decode(envelope["sig"]) == proof.signature
    assert envelope["body"]["task_id"] == proof.task_id


def test_planning_with_the_seeds_task_object(thor):
    task = FederationTask(operation="planning", atp_budget=10, task_type="consciousness.sage", parameters=PLANNING)
    proof = thor.delegate_task(task, "Legion")
    assert proof.task_id == task.task_id
    assert_paid(proof, "Legion")
    assert proof.atp_consumed + proof.atp_refunded == 10
    assert proof.result, proof


def test_perception_placed_by_the_federation(sprout):
    before = sprout.status(client_lct("Sprout"))
    proof = sprout.delegate_task(operation="perception", atp_budget=2, parameters={"length": 1024, "seed": 7})
    assert_paid(proof, proof.executor_lct.split("@")[1].split("#")[0])
    assert not proof.executor_lct.startswith("lct:web4:agent:dp@Sprout")
    after = sprout.status(client_lct("Sprout"))
    assert round(after.atp_consumed - before.atp_consumed, 6) == round(proof.atp_consumed, 6)
    assert round(before.balance - after.balance, 6) == round(proof.atp_consumed, 6)


def test_execution(thor):
    program = {"steps": [{"op": "add", "args": [2, 3]}, {"op": "mul", "args": ["$0", 4], "expect": 20}]}
    proof = thor.delegate_task(operation="execution", atp_budget=5, parameters=program, target_platform="Legion")
    assert_paid(proof, "Legion")
    assert proof.quality_score == 1.0


def test_external_program(thor):
    proof = thor.delegate_task(
        operation="wordcount", atp_budget=5, parameters={"text": "machines delegate tasks"}, target_platform="Legion"
    )
    # The ledger cannot check an external program, and Sprout runs it too: a new executor's
    # commit is always sampled, so Sprout runs the task again and agrees. Legion is paid all
    # its signed proof says it consumed, as if unsampled; Sprout's share (a tenth of the
    # budget) comes out of Thor's refund, which holds it (the program is cheap).
    assert proof.witness is not None, proof
    assert proof.witness["platform"] == "Sprout"
    assert proof.witness["agreed"] is True
    claimed = json.loads(proof.envelope)["body"]["atp_consumed"]
    assert 0 < claimed <= 4.5, proof
    assert proof.atp_consumed == pytest.approx(claimed, abs=1e-6)
    assert proof.witness["atp_paid"] == pytest.approx(0.5, abs=1e-6)
    assert proof.settlement == "committed"
    assert proof.atp_consumed + proof.witness["atp_paid"] + proof.atp_refunded == pytest.approx(5)
    # The result and signature are Legion's, from the proof the ledger paid for.
    assert proof.executor_lct.startswith("lct:web4:agent:dp@Legion#")
    assert len(proof.signature) == 64, "an Ed25519 signature"
    assert proof.result["word_count"] == 3


def test_low_quality_is_refunded(thor):
    before = thor.status(client_lct("Thor"))
    failing = {"steps": [{"op": "add", "args": [1, 1]}, {"op": "div", "args": [1, 0]}, {"op": "sqrt", "args": [-4]}]}
    proof = thor.delegate_task(operation="execution", atp_budget=5, parameters=failing, target_platform="Legion")
    assert not proof.paid
    assert proof.settlement == "rolled_back"
    assert proof.rollback_reason == "low_quality"
    assert proof.quality_score < 0.7
    assert proof.atp_consumed == 0
    assert proof.atp_refunded == 5
    after = thor.status(client_lct("Thor"))
    assert after.balance == before.balance


def test_timeout_is_refunded(thor):
    slow = {"steps": [{"op": "wait", "args": [3000]}]}
    proof = thor.delegate_task(
        operation="execution", atp_budget=5, parameters=slow, target_platform="Legion", timeout_seconds=1
    )
    assert not proof.paid
    assert proof.rollback_reason == "timeout", proof
    assert proof.atp_refunded == 5


def test_every_settlement_keeps_the_ledger_balanced(federation, thor):
    thor.delegate_task(operation="perception", atp_budget=1, parameters={"length": 256, "seed": 1})
    assert "ok: balances + locked = supply" in federation.audit()


def test_a_critical_task_from_a_platform_granted_it(thor):
    proof = thor.delegate_task(
        operation="execution", atp_budget=2, parameters={"steps": [{"op": "add", "args": [1, 2]}]},
        critical=True,
    )
    assert_paid(proof, proof.executor_lct.split("@")[1].split("#")[0])


def test_a_critical_task_from_a_platform_without_the_grant_is_refused(sprout):
    from sagefed import FederationError

    before = sprout.status(client_lct("Sprout"))
    task = FederationTask(operation="perception", atp_budget=2, parameters={"length": 1024, "seed": 7}, critical=True)
    try:
        sprout.delegate_task(task, "Legion")
    except FederationError as e:
        assert e.code == "critical_not_permitted", e
    else:
        raise AssertionError("Sprout may not queue a critical task")
    after = sprout.status(client_lct("Sprout"))
    assert (after.balance, after.locked) == (before.balance, before.locked), "nothing was locked"
