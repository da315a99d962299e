"""HTTP for the service's errors: the one status table, the one JSON envelope, the one handler.

Routes raise `bertserve.service.errors.ServiceError` subclasses and never catch broadly;
`install_error_handlers` turns those, FastAPI's own 404/405/422 and anything unexpected into
`{"error": {"type": ..., "message": ...}}`. Messages never carry input text, tracebacks or paths.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from bertserve.service.api.schemas import ErrorEnvelope, error_envelope
from bertserve.service.errors import (
    ClientClosedError,
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    ServiceError,
    UnauthorizedError,
    UnhealthyError,
    UnsupportedTaskError,
)

log = logging.getLogger(__name__)


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
    body = json.dumps(error_envelope(error_type, message)).encode()
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
