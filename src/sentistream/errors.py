"""One error hierarchy for the whole product.

Every error carries an HTTP status and a gRPC status-code name; transports map them once
(``http_status`` / ``grpc_code``) and callers always get a clear message, never a traceback.
"""

from __future__ import annotations

__all__ = [
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OverloadedError",
    "SentistreamError",
    "UnavailableError",
    "UnreachableError",
]


class SentistreamError(Exception):
    """Root of all sentistream errors."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    exit_code: int = 1  # of the CLI command that fails with it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message}


class InvalidInputError(SentistreamError, ValueError):
    """The caller sent something we refuse: empty, oversized, malformed or not text."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFoundError(SentistreamError, LookupError):
    """No such model or version in the repository."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelLoadError(SentistreamError):
    """A model folder exists but is broken (bad manifest, missing, corrupted or unsafe files):
    the request conflicts with what is in the repository (409), not a server fault."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class OverloadedError(SentistreamError):
    """A bounded queue is full: retry later."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class UnavailableError(SentistreamError):
    """A dependency (model, Redis, remote server) is not available right now."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class UnreachableError(UnavailableError):
    """A service a command cannot work without (Redis) is unreachable or refuses our login.

    The CLI exits 2 with one line naming the address (never the credentials)."""

    exit_code = 2
