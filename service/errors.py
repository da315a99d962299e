"""One exception hierarchy for every error the service answers: pure types, no HTTP.

Each `ServiceError` subclass has a stable `error_type`; its HTTP status, the JSON envelope and
the handlers live in `bertserve.service.api.errors`, so the serving path (batching, pipelines,
registry, tokenization) raises these without importing the web stack. The runtime's own errors
(`bertserve.runtime.errors`) are turned into these where the service meets the runtime.
Messages never carry input text, tracebacks or paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class ServiceError(Exception):
    """Base of every error the HTTP layer answers. `error_type` is the stable, documented key."""

    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> Mapping[str, str]:
        return {}


class InvalidInputError(ServiceError):
    error_type = "invalid_input"


class PayloadTooLargeError(ServiceError):
    """Too many inputs, too many characters, or too many tokens with truncation off."""

    error_type = "payload_too_large"


class BodyTooLargeError(PayloadTooLargeError):
    """The request body is over the limit; raised by the body-limit middleware, from `receive`
    while a (chunked) body streams in."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")

    def headers(self) -> Mapping[str, str]:
        # The rest of the body is never read: the connection cannot carry another request.
        return {"Connection": "close"}


class UnauthorizedError(ServiceError):
    """No or a wrong API key."""

    error_type = "unauthorized"

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="bertserve"'}


class ForbiddenError(ServiceError):
    """An operation this deployment does not allow (e.g. repository control without an API key)."""

    error_type = "forbidden"


class ModelNotFoundError(ServiceError):
    error_type = "model_not_found"


class UnsupportedTaskError(ServiceError):
    """The model exists but serves another task (e.g. /classify on an NER model)."""

    error_type = "unsupported_task"


class QueueFullError(ServiceError):
    error_type = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class NotReadyError(ServiceError):
    error_type = "not_ready"

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": "1"}


class UnhealthyError(ServiceError):
    """Liveness failed: the process cannot recover by itself (a dead batch worker, a warm-up
    given up) and should be restarted."""

    error_type = "unhealthy"


class DeadlineExceededError(ServiceError):
    """The request waited longer than its deadline; it was never (or not completely) run."""

    error_type = "deadline_exceeded"


class InferenceError(ServiceError):
    """The backend failed on the batch this request was part of."""

    error_type = "inference_error"


class ClientClosedError(ServiceError):
    """The client closed the connection before its answer; its queued sequences were dropped.
    Nobody reads the response: the status exists for the request counter and the logs."""

    error_type = "client_closed"


class StartupError(Exception):
    """Configuration, repository or backend problem that must stop the process before it listens."""
