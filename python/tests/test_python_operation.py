"""An operation written in Python (tests/ops/reverse.py, with `@operation`), served by
Legion's worker and delegated from Python."""

import io
import json

import pytest

from sagefed import OperationError, OperationResult, operation, run_operations


def test_delegate_the_python_operation(thor):
    proof = thor.delegate_task(
        operation="reverse", atp_budget=3, parameters={"text": "sage federation"}, target_platform="Legion"
    )
    assert proof.paid, proof
    assert proof.result["reversed"] == "noitaredef egas"
    assert proof.result["budget_seen"] == 3
    assert proof.quality_score == 1.0
    assert proof.executor_lct == "lct:web4:agent:dp@Legion#consciousness"


def test_the_python_operations_quality_decides_the_payment(thor):
    proof = thor.delegate_task(operation="reverse", atp_budget=3, parameters={"text": ""}, target_platform="Legion")
    assert not proof.paid
    assert proof.rollback_reason == "low_quality"


def test_a_failing_python_operation_is_refunded_with_its_message(thor):
    proof = thor.delegate_task(operation="reverse", atp_budget=3, parameters={"text": 42}, target_platform="Legion")
    assert not proof.paid
    assert proof.status == "failed", proof
    assert 'parameter "text" must be a string' in proof.reason


def run(request) -> tuple:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = run_operations(io.StringIO(json.dumps(request)), stdout, stderr)
    return status, stdout.getvalue(), stderr.getvalue()


@operation("test-double")
def double(parameters, request):
    if parameters.get("boom"):
        raise RuntimeError("a bug")
    return OperationResult({"twice": parameters["n"] * 2}, 0.5, atp_consumed=0.25)


def test_the_helper_speaks_the_external_program_protocol():
    status, out, err = run({"operation": "test-double", "parameters": {"n": 4}, "budget": 1.0, "timeout_seconds": 5})
    assert status == 0, err
    assert json.loads(out) == {"result": {"twice": 8}, "quality": 0.5, "atp_consumed": 0.25}


def test_the_helper_reports_failures_on_stderr_with_a_nonzero_status():
    status, out, err = run({"operation": "test-double", "parameters": {"boom": True}})
    assert (status, out) == (1, "")
    assert "a bug" in err
    status, out, err = run({"operation": "nope", "parameters": {}})
    assert (status, out) == (2, "")
    assert "test-double" in err
    stdout, stderr = io.StringIO(), io.StringIO()
    assert run_operations(io.StringIO("{not json"), stdout, stderr) == 1
    assert "not JSON" in stderr.getvalue()


def test_the_helper_refuses_a_quality_outside_0_to_1():
    @operation("test-bad-quality")
    def bad(parameters, request):
        return {}, 1.5

    status, out, err = run({"operation": "test-bad-quality", "parameters": {}})
    assert (status, out) == (1, "")
    assert "quality" in err


def test_an_operation_name_is_registered_once():
    with pytest.raises(ValueError):
        operation("test-double")(lambda p, r: ({}, 1.0))


def test_operation_error_is_a_clean_message():
    @operation("test-refuse")
    def refuse(parameters, request):
        raise OperationError("no such frame")

    status, out, err = run({"operation": "test-refuse", "parameters": {}})
    assert (status, err.strip()) == (1, "no such frame")
