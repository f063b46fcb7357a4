"""Bad input gets an exception carrying the gateway's code, and leaves the ledger exactly as
it was."""

import json
import math
import urllib.request

import pytest
from conftest import client_lct

from sagefed import (
    Conflict,
    FederationClient,
    FederationError,
    FederationTask,
    InvalidRequest,
    NotPermitted,
    Unauthorized,
    Unreachable,
)


def ledger(client):
    """Thor's accounts as the status endpoint reports them."""
    return [client.status(client_lct("Thor", t)) for t in ("consciousness", "consciousness.sage")]


@pytest.mark.parametrize(
    "kwargs, code",
    [
        (dict(operation="planing", atp_budget=1), "unknown_operation"),
        (dict(operation="perception", atp_budget=-1), "invalid_budget"),
        (dict(operation="perception", atp_budget=0), "invalid_budget"),
        (dict(operation="perception", atp_budget=1e300), "invalid_budget"),
        (dict(operation="perception", atp_budget=1, timeout_seconds=0), "invalid_timeout"),
        (dict(operation="perception", atp_budget=1, timeout_seconds=999999), "invalid_timeout"),
        (dict(operation="perception", atp_budget=1, task_type="dreaming"), "unknown_task_type"),
        (dict(operation="perception", atp_budget=1, task_id="not/a task"), "invalid_task_id"),
    ],
)
def test_refused_by_the_gateway(thor, kwargs, code):
    before = ledger(thor)
    with pytest.raises(InvalidRequest) as refused:
        thor.delegate_task(**kwargs)
    assert refused.value.code == code, refused.value
    assert refused.value.status == 400
    assert refused.value.message
    assert ledger(thor) == before


@pytest.mark.parametrize("budget", [math.nan, math.inf, "NaN", True])
def test_a_budget_that_is_not_a_finite_number_is_refused_before_sending(thor, budget):
    with pytest.raises(InvalidRequest) as refused:
        thor.delegate_task(operation="perception", atp_budget=budget)
    assert refused.value.code == "invalid_budget"


def raw(client, body: bytes, token=None):
    request = urllib.request.Request(
        client.url + "/api/v1/consciousness/delegate",
        data=body,
        headers={"Authorization": f"Bearer {token or client._token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_gateway_itself_refuses_nan_and_malformed_bodies(thor):
    # What json.dumps writes for a NaN when a caller bypasses the client's check.
    before = ledger(thor)
    nan = json.dumps({"task": {"operation": "perception", "atp_budget": math.nan}}).encode()
    for body in (nan, b"{", b"[]", b'{"task": {"operation": "perception", "atp_budget": "NaN"}}',
                 b'{"task": {"operation": "perception", "atp_budget": 1, "budget": 1}}'):
        status, reply = raw(thor, body)
        assert 400 <= status < 500, (body, reply)
        assert reply["error"]["code"] == "malformed_body", reply
    assert ledger(thor) == before


def test_wrong_token_is_refused_and_locks_nothing(federation, thor):
    before = ledger(thor)
    intruder = FederationClient("Thor", url=thor.url, token="0" * 64)
    with pytest.raises(Unauthorized) as refused:
        intruder.delegate_task(operation="perception", atp_budget=1)
    assert refused.value.code == "bad_token"
    status, reply = raw(thor, json.dumps({"task": {"operation": "perception", "atp_budget": 1}}).encode(), "x")
    assert (status, reply["error"]["code"]) == (401, "bad_token")
    assert ledger(thor) == before


def test_someone_elses_identity_is_refused(thor):
    task = FederationTask(operation="perception", atp_budget=1, source_lct=client_lct("Legion"))
    with pytest.raises(NotPermitted) as refused:
        thor.delegate_task(task)
    assert refused.value.code == "not_your_lct"


def test_an_unregistered_target_is_a_conflict(thor):
    with pytest.raises(Conflict) as refused:
        thor.delegate_task(operation="perception", atp_budget=1, target_platform="Nowhere")
    assert refused.value.code == "no_platform"


def test_a_client_for_the_wrong_platform_refuses_to_delegate(federation, thor):
    legion_token = (federation.configs / "legion.gateway-token").read_text().strip()
    legion_url = json.loads((federation.configs / "legion.gateway.json").read_text())["url"]
    mislabelled = FederationClient("Thor", url=legion_url, token=legion_token)
    with pytest.raises(FederationError) as refused:
        mislabelled.delegate_task(operation="perception", atp_budget=1)
    assert refused.value.code == "wrong_platform"


def test_no_gateway(tmp_path):
    with pytest.raises(Unreachable) as missing:
        FederationClient("Thor", configs_dir=tmp_path)
    assert missing.value.code == "no_gateway"
    closed = FederationClient("Thor", url="http://127.0.0.1:9", token="t")
    with pytest.raises(Unreachable):
        closed.status(client_lct("Thor"))


def test_the_openapi_document_lists_the_seeds_endpoints(thor):
    paths = thor.openapi()["paths"]
    for path in ("/api/v1/consciousness/delegate", "/api/v1/consciousness/status/{lct_id}",
                 "/api/v1/consciousness/cancel/{task_id}"):
        assert path in paths
