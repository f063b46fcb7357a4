"""Operations written in Python, run by a platform's worker as an external program
(``src/worker/ops/external.rs``): the worker writes the task as JSON on stdin and reads
``{"result", "quality"}`` (optionally ``"atp_consumed"``) from stdout.

    # ops/reverse.py
    from sagefed import operation, run_operations

    @operation("reverse")
    def reverse(parameters, request):
        text = parameters["text"]
        return {"reversed": text[::-1]}, 1.0      # (result, quality)

    if __name__ == "__main__":
        run_operations()

and in the platform's config (paths relative to the config's directory; the program gets
only PATH and HOME, so name a python that has this package installed):

    [operations.reverse]
    command = ["/path/to/venv/bin/python", "../ops/reverse.py"]
    atp_per_second = 1.0
"""

import json
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, TextIO, Tuple, Union

#: Exit status of a program whose request or handler was wrong (the worker reports stderr).
EXIT_FAILED = 1
#: Exit status when the request names no operation registered here.
EXIT_UNKNOWN_OPERATION = 2


@dataclass
class OperationResult:
    """A handler's full answer. ``atp_consumed`` can lower the worker's CPU-metered charge,
    never raise it."""

    result: Dict[str, Any]
    quality: float
    atp_consumed: Optional[float] = None


class OperationError(Exception):
    """Raise from a handler to fail the task with this message (no traceback)."""


Handler = Callable[[Dict[str, Any], Dict[str, Any]], Union[OperationResult, Tuple[Dict[str, Any], float]]]

_registry: Dict[str, Handler] = {}


def operation(name: str) -> Callable[[Handler], Handler]:
    """Registers ``handler(parameters, request)`` as the operation ``name``. The handler
    returns ``(result, quality)`` or an ``OperationResult``; ``request`` holds the whole task
    (``operation``, ``parameters``, ``budget``, ``timeout_seconds``)."""

    def register(handler: Handler) -> Handler:
        if name in _registry and _registry[name] is not handler:
            raise ValueError(f"operation {name!r} is registered twice")
        _registry[name] = handler
        return handler

    return register


def _answer(outcome: Union[OperationResult, Tuple[Dict[str, Any], float]]) -> Dict[str, Any]:
    if isinstance(outcome, tuple):
        outcome = OperationResult(*outcome)
    if not isinstance(outcome, OperationResult):
        raise OperationError(f"a handler returns (result, quality) or an OperationResult, not {type(outcome).__name__}")
    if not isinstance(outcome.result, dict):
        raise OperationError(f"the result must be a dict, not {type(outcome.result).__name__}")
    quality = float(outcome.quality)
    if not 0.0 <= quality <= 1.0:
        raise OperationError(f"quality must be within 0..1, not {quality}")
    answer: Dict[str, Any] = {"result": outcome.result, "quality": quality}
    if outcome.atp_consumed is not None:
        answer["atp_consumed"] = float(outcome.atp_consumed)
    return answer


def run_operations(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """Reads one task from ``stdin``, runs the registered handler of its operation, writes
    the answer to ``stdout``. Returns the exit status; as a script's last line it exits
    with it (``SystemExit``) so the worker sees success or failure."""
    status = _run(stdin, stdout, stderr)
    if stdin is sys.stdin:
        raise SystemExit(status)
    return status


def _run(stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    try:
        request = json.load(stdin)
    except ValueError as e:
        print(f"the task on stdin is not JSON: {e}", file=stderr)
        return EXIT_FAILED
    name = request.get("operation") if isinstance(request, dict) else None
    handler = _registry.get(name) if isinstance(name, str) else None
    if handler is None:
        print(f"operation {name!r} is not one of {sorted(_registry)}", file=stderr)
        return EXIT_UNKNOWN_OPERATION
    parameters = request.get("parameters") or {}
    try:
        answer = _answer(handler(parameters, request))
    except OperationError as e:
        print(str(e), file=stderr)
        return EXIT_FAILED
    except Exception as e:  # a handler's bug: the worker reports the tail of stderr
        traceback.print_exc(file=stderr)
        print(f"operation {name!r} failed: {e!r}", file=stderr)
        return EXIT_FAILED
    json.dump(answer, stdout)
    stdout.flush()
    return 0
