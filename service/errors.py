"""One exception hierarchy, one status table, one JSON envelope for every non-2xx response.

Routes raise `ServiceError` subclasses and never catch broadly; `install_error_handlers` turns
those, FastAPI's own 404/405/422 and anything unexpected into
`{"error": {"type": ..., "message": ...}}`. Messages never carry input text, tracebacks or paths.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, ClassVar, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from bertserve.service.api.schemas import ErrorEnvelope

log = logging.getLogger(__name__)


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


class BackendUnavailableError(StartupError):
    """A backend was asked for explicitly but this machine cannot run it."""


# NOTE: the one status table. Lookup walks the MRO, so a subclass inherits its parent's status.
STATUS_TABLE: Final[Mapping[type[ServiceError], int]] = {
    ServiceError: 500,
    UnauthorizedError: 401,
    InvalidInputError: 422,
    PayloadTooLargeError: 413,
    ModelNotFoundError: 404,
    UnsupportedTaskError: 400,
    QueueFullError: 429,
    NotReadyError: 503,
    UnhealthyError: 503,
    DeadlineExceededError: 504,
    InferenceError: 500,
    ClientClosedError: 499,  # nginx's convention for "client went away before the answer"
}

# FastAPI/Starlette raise plain HTTP exceptions for routing problems; they get these types.
_HTTP_TYPES: Final[Mapping[int, str]] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def status_for(exc: BaseException) -> int:
    if isinstance(exc, ServiceError):
        for cls in type(exc).__mro__:
            if cls in STATUS_TABLE:
                return STATUS_TABLE[cls]
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    return 500


def error_response(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps({"error": {"type": error_type, "message": message}}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=dict(headers or {}))


def _validation_message(exc: RequestValidationError) -> str:
    # NOTE: pydantic's error dicts carry the offending input; only location and reason are kept.
    # A union field reports one error per branch with the branch's type in the location; the
    # first error per plain location (field names and indices) is the one a client can act on.
    first: dict[str, str] = {}
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if isinstance(p, int) or str(p).isidentifier())
        first.setdefault(loc, str(err.get("msg", "invalid")))
    return "; ".join(f"{loc}: {msg}" for loc, msg in list(first.items())[:5]) or "invalid request"


def service_error_response(exc: ServiceError) -> Response:
    return error_response(status_for(exc), exc.error_type, exc.message, exc.headers())


async def handle_error(request: Request, exc: Exception) -> Response:
    """The single handler behind every non-2xx answer."""
    if isinstance(exc, ServiceError):
        return service_error_response(exc)
    if isinstance(exc, RequestValidationError):
        return error_response(422, "invalid_input", _validation_message(exc))
    if isinstance(exc, StarletteHTTPException) and isinstance(exc.__cause__, ServiceError):
        # FastAPI wraps whatever is raised while it reads the body into a 400, including the
        # body-limit middleware's error.
        return service_error_response(exc.__cause__)
    if (
        isinstance(exc, StarletteHTTPException)
        and exc.status_code == 400
        and isinstance(exc.__cause__, ValueError | RecursionError)
    ):
        # FastAPI answers 400 when the body cannot even be decoded (invalid UTF-8 in a JSON body,
        # or JSON nested deeper than the parser's recursion limit): to the client that is one more
        # invalid input, like malformed JSON (422).
        return error_response(
            422, "invalid_input", "request body is not valid UTF-8 JSON (or nested too deep)"
        )
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
        headers: dict[str, Any] = dict(exc.headers or {})
        return error_response(status, _HTTP_TYPES.get(status, "http_error"), phrase, headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, ServiceError.error_type, "internal server error")


ErrorObserver = Callable[[Request, int], None]


def install_error_handlers(app: FastAPI, observe: ErrorObserver | None = None) -> None:
    """`observe(request, status)` sees every error answered here, e.g. to count the 422s that
    FastAPI raises before a route runs."""

    async def handler(request: Request, exc: Exception) -> Response:
        response = await handle_error(request, exc)
        if observe is not None:
            observe(request, response.status_code)
        return response

    for exc_type in (ServiceError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handler)


def openapi_error_responses(*errors: type[ServiceError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for a route, documenting the envelope under each status it may return."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        status = STATUS_TABLE[err]
        out.setdefault(status, {"model": ErrorEnvelope, "description": ""})
        desc = out[status]["description"]
        out[status]["description"] = f"{desc}, {err.error_type}" if desc else err.error_type
    return out
