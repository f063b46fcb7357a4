"""Errors: every failure the gateway reports becomes an exception carrying its code.

The gateway answers errors as ``{"error": {"code": ..., "message": ...}}`` with an HTTP
status; the class says the family (bad input, auth, ...), ``code`` the exact reason to match
on (``invalid_budget``, ``unknown_operation``, ``bad_token``, ...). See the gateway's
OpenAPI document (``GET /api/v1/openapi.json``) for the list.
"""

from typing import Optional


class FederationError(Exception):
    """A call the gateway refused or could not complete."""

    def __init__(self, code: str, message: str, status: Optional[int] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class InvalidRequest(FederationError):
    """Bad input (400, 413, 422): nothing was locked. Fix the request."""


class Unauthorized(FederationError):
    """No token or a wrong one (401): read it from ``<config>.gateway-token``."""


class LockRefused(FederationError):
    """The ledger refused to lock the budget (402), usually not enough ATP."""


class NotPermitted(FederationError):
    """The platform may not do this (403)."""


class Conflict(FederationError):
    """No platform can take the task, or a cancel was refused (404, 409)."""


class Busy(FederationError):
    """Too many delegations in flight on the gateway (429): retry when one ends."""


class GatewayFailure(FederationError):
    """The gateway or the federation behind it failed (5xx)."""


class Unreachable(FederationError):
    """No gateway answers at the URL: is ``sagefed up`` (or ``sagefed gateway``) running?"""


def error_for(status: int, code: str, message: str) -> FederationError:
    """The exception class of an HTTP status."""
    if status == 401:
        cls = Unauthorized
    elif status == 402:
        cls = LockRefused
    elif status == 403:
        cls = NotPermitted
    elif status in (404, 409):
        cls = Conflict
    elif status == 429:
        cls = Busy
    elif 400 <= status < 500:
        cls = InvalidRequest
    else:
        cls = GatewayFailure
    return cls(code, message, status)
