"""A Python-written operation for the tests: reverses a text. Quality is 1.0 for a
non-empty text and 0.0 for an empty one (so the federation refunds it)."""

from sagefed import OperationError, operation, run_operations


@operation("reverse")
def reverse(parameters, request):
    text = parameters.get("text")
    if not isinstance(text, str):
        raise OperationError('parameter "text" must be a string')
    return {"reversed": text[::-1], "budget_seen": request["budget"]}, (1.0 if text else 0.0)


if __name__ == "__main__":
    run_operations()
