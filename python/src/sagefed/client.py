"""``FederationClient``: the seed's client, talking to the local gateway of one platform
(``sagefed up`` runs one per platform; ``sagefed gateway --config F`` runs one alone).

The gateway holds the platform's key and signs; this client holds only the local token,
read from the 0600 file the gateway keeps next to the platform's config.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from .errors import FederationError, Unreachable, error_for
from .models import (
    TASK_TYPE_DEFAULT,
    TIMEOUT_SECONDS_DEFAULT,
    CancelResult,
    ExecutionProof,
    FederationTask,
    LctStatus,
)

#: Seconds to wait for an answer other than a delegation's.
REQUEST_TIMEOUT_SECONDS = 30.0
#: Seconds a delegation may wait on top of its task's timeout: the task may queue up to 30 s
#: before a worker starts it, then settling takes a moment.
DELEGATION_SLACK_SECONDS = 60.0
#: Where the address files are looked for when neither a URL nor a config is given.
CONFIGS_DIR_DEFAULT = "configs"
#: Environment variable naming that directory instead.
CONFIGS_DIR_ENV = "SAGEFED_CONFIGS"

_API = "/api/v1"


def _locate(platform: str, config: Optional[Union[str, Path]], configs_dir: Optional[Union[str, Path]]) -> Tuple[str, str]:
    """The gateway URL and token of ``platform``, from the address file its gateway writes
    next to the config (``thor.toml`` -> ``thor.gateway.json``)."""
    if config is not None:
        address_file = Path(config).with_suffix(".gateway.json")
    else:
        directory = Path(configs_dir or os.environ.get(CONFIGS_DIR_ENV) or CONFIGS_DIR_DEFAULT)
        address_file = directory / f"{platform.lower()}.gateway.json"
    try:
        address = json.loads(address_file.read_text())
    except FileNotFoundError:
        raise Unreachable(
            "no_gateway",
            f"{address_file} does not exist: start `sagefed up` (or `sagefed gateway --config ...`), "
            "or pass url= and token=",
        ) from None
    token_file = Path(address["token_file"])
    if not token_file.is_absolute():
        token_file = address_file.parent / token_file
    return address["url"], token_file.read_text().strip()


class FederationClient:
    """Delegates tasks as ``platform`` through its gateway.

    ``FederationClient("Thor")`` finds Thor's gateway from ``configs/thor.gateway.json``
    (written by ``sagefed up``; ``configs_dir=`` or ``$SAGEFED_CONFIGS`` to look elsewhere,
    ``config=`` for one config file); ``url=`` and ``token=`` skip the lookup.
    """

    def __init__(
        self,
        platform: str,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        config: Optional[Union[str, Path]] = None,
        configs_dir: Optional[Union[str, Path]] = None,
    ):
        self.platform = platform
        if url is None or token is None:
            found_url, found_token = _locate(platform, config, configs_dir)
            url = url or found_url
            token = token or found_token
        self.url = url.rstrip("/")
        self._token = token
        self._checked = False

    def __repr__(self) -> str:
        return f"FederationClient({self.platform!r}, url={self.url!r})"

    # The seed's API.

    def delegate_task(
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
        critical: bool = False,
    ) -> ExecutionProof:
        """Delegates ``task`` (or one built from the keywords) and waits until it is settled.

        ``critical=True`` (or ``FederationTask(critical=True)``) queues it ahead of the
        executor's normal tasks; the platform needs ``federation:critical``, else a
        ``FederationError`` with code ``critical_not_permitted``.

        Returns the executor's proof with the settlement: ``proof.paid`` is true when the
        executor was paid; a low-quality, failed, timed-out or cancelled task comes back
        refunded (``proof.rollback_reason`` says why), not as an exception. Raises a
        ``FederationError`` (with ``.code``) when the task could not be delegated at all.
        """
        if task is None:
            if operation is None or atp_budget is None:
                raise TypeError("delegate_task needs a FederationTask or operation= and atp_budget=")
            task = FederationTask(
                operation=operation,
                atp_budget=atp_budget,
                parameters=parameters or {},
                task_type=task_type,
                timeout_seconds=timeout_seconds,
                critical=critical,
            )
            if task_id is not None:
                task.task_id = task_id
        body = {"task": task.to_json(target_platform)}
        self._check_platform()
        reply = self._call(
            "POST",
            "/consciousness/delegate",
            body,
            timeout=task.timeout_seconds + DELEGATION_SLACK_SECONDS,
        )
        return ExecutionProof.from_response(reply)

    def status(self, lct: str) -> LctStatus:
        """The seed's status of an LCT: active, ATP consumed, tasks running."""
        return LctStatus.from_response(self._call("GET", "/consciousness/status/" + _segment(lct)))

    def task_status(self, task_id: str) -> Dict[str, Any]:
        """A task's status record and ledger lock (``{"task_id", "status", "lock"}``)."""
        return self._call("GET", "/consciousness/status/" + _segment(task_id))

    def cancel(self, task_id: str) -> CancelResult:
        """Cancels a task this platform delegated: a queued one never runs, a running one is
        aborted, and its budget is refunded."""
        return CancelResult.from_response(self._call("POST", "/consciousness/cancel/" + _segment(task_id)))

    # Ours.

    def whoami(self) -> Dict[str, Any]:
        """The gateway's platform and its LCT per task type."""
        return self._call("GET", "/whoami")

    def lct(self, task_type: str = TASK_TYPE_DEFAULT) -> str:
        """This platform's LCT of ``task_type``."""
        lcts = self.whoami()["lcts"]
        if task_type not in lcts:
            raise FederationError("unknown_task_type", f"{self.platform} has no {task_type!r} LCT; it has {sorted(lcts)}")
        return lcts[task_type]

    def openapi(self) -> Dict[str, Any]:
        """The gateway's OpenAPI document."""
        return self._call("GET", "/openapi.json")

    def _check_platform(self) -> None:
        """Refuses to delegate as another platform than the one asked for (a gateway found
        under the wrong name would spend the wrong ATP)."""
        if self._checked:
            return
        served = self.whoami()["platform"]
        if served != self.platform:
            raise FederationError("wrong_platform", f"the gateway at {self.url} serves {served}, not {self.platform}")
        self._checked = True

    def _call(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT_SECONDS) -> Any:
        data = None
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            data = b""
        request = urllib.request.Request(self.url + _API + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise _http_error(e) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise Unreachable(
                "unreachable",
                f"the gateway at {self.url} did not answer ({reason}); is `sagefed up` running?",
            ) from None


def _segment(text: str) -> str:
    """One URL path segment: an LCT's ``#`` would otherwise start a fragment."""
    return urllib.parse.quote(text, safe="")


def _http_error(e: "urllib.error.HTTPError") -> FederationError:
    raw = e.read()
    try:
        error = json.loads(raw)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{e.code}", raw.decode(errors="replace") or str(e.reason)
    return error_for(e.code, code, message)
