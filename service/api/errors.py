"""HTTP for the service's errors: the one status table, the one JSON envelope, the one handler.

Routes raise `bertserve.service.errors.ServiceError` subclasses and never catch broadly;
`install_error_handlers` turns those, FastAPI's own 404/405/422 and anything unexpected into
`{"error": {"type": ..., "message": ...}}`. Messages never carry input text, tracebacks or paths.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from bertserve.service.api.schemas import ErrorEnvelope, OpenAiError, TeiError, V2Error, error_envelope
from bertserve.service.errors import (
    ClientClosedError,
    DeadlineExceededError,
    ForbiddenError,
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
    ForbiddenError: 403,
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


class ErrorStyle(StrEnum):
    """Whose error body a route answers with: ours, TEI's or OpenAI's, so that those servers'
    clients read our errors as they read theirs. Chosen by path (`style_of_path`), so that the
    middleware's refusals (401, 413) and FastAPI's own 422s take the route's style too."""

    NATIVE = "native"
    TEI = "tei"
    OPENAI = "openai"
    V2 = "v2"  # the Open Inference Protocol's REST routes


OPENAI_PATHS: Final = frozenset({"/v1/embeddings"})
TEI_PATHS: Final = frozenset({"/embed", "/predict", "/rerank", "/tokenize", "/info"})
HF_INFERENCE_PREFIX: Final = "/models/"  # the Hugging Face Inference API's shape: TEI-style errors
V2_PREFIX: Final = "/v2"


def style_of_path(path: str) -> ErrorStyle:
    if path == V2_PREFIX or path.startswith(V2_PREFIX + "/"):
        return ErrorStyle.V2
    if path in OPENAI_PATHS:
        return ErrorStyle.OPENAI
    if path in TEI_PATHS or path.startswith(HF_INFERENCE_PREFIX):
        return ErrorStyle.TEI
    return ErrorStyle.NATIVE


# TEI's `error_type` values (its ErrorType enum) and the statuses its routes answer with: a
# failed inference is 424 there, input over the limits 413, invalid input 422.
_TEI_TYPES: Final[Mapping[str, str]] = {
    "invalid_input": "Validation",
    "payload_too_large": "Validation",
    "unsupported_task": "Validation",
    "model_not_found": "Validation",
    "queue_full": "Overloaded",
    "not_ready": "Unhealthy",
    "unhealthy": "Unhealthy",
    "inference_error": "Backend",
    "deadline_exceeded": "Backend",
}
_TEI_STATUS: Final[Mapping[int, int]] = {500: 424}
# OpenAI's error `type` by status; its invalid requests are 400, not 422
_OPENAI_TYPES: Final[Mapping[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_OPENAI_STATUS: Final[Mapping[int, int]] = {422: 400}
# the Open Inference Protocol: `{"error": message}`; an invalid request is 400, as Triton answers
_V2_STATUS: Final[Mapping[int, int]] = {422: 400}


def answered_status(style: ErrorStyle, status: int) -> int:
    """The status an error of the native `status` is answered with in `style`."""
    remap = {ErrorStyle.TEI: _TEI_STATUS, ErrorStyle.OPENAI: _OPENAI_STATUS, ErrorStyle.V2: _V2_STATUS}
    return remap.get(style, {}).get(status, status)


def error_body(style: ErrorStyle, status: int, error_type: str, message: str) -> tuple[int, bytes]:
    """(status, body) of an error in `style`."""
    status = answered_status(style, status)
    body: object
    if style == ErrorStyle.TEI:
        body = {"error": message, "error_type": _TEI_TYPES.get(error_type, error_type)}
    elif style == ErrorStyle.V2:
        body = {"error": message}
    elif style == ErrorStyle.OPENAI:
        kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": error_type}}
    else:
        body = error_envelope(error_type, message)
    return status, json.dumps(body).encode()


def error_response(
    status: int,
    error_type: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    style: ErrorStyle = ErrorStyle.NATIVE,
) -> Response:
    status, body = error_body(style, status, error_type, message)
    return Response(body, status_code=status, media_type="application/json", headers=dict(headers or {}))


def validation_message(exc: RequestValidationError | PydanticValidationError) -> str:
    """A validation failure (FastAPI's for a body it parsed, pydantic's for one a route parsed
    itself, as the v2 routes do) as one line a client can act on."""
    # NOTE: pydantic's error dicts carry the offending input; only location and reason are kept.
    # A union field reports one error per branch with the branch's type in the location; the
    # first error per plain location (field names and indices) is the one a client can act on.
    first: dict[str, str] = {}
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if isinstance(p, int) or str(p).isidentifier())
        first.setdefault(loc, str(err.get("msg", "invalid")))
    return "; ".join(f"{loc}: {msg}" for loc, msg in list(first.items())[:5]) or "invalid request"


def service_error_response(exc: ServiceError, path: str = "") -> Response:
    """`exc` answered in the style of the route at `path`."""
    return error_response(status_for(exc), exc.error_type, exc.message, exc.headers(), style_of_path(path))


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    error_type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


async def handle_error(request: Request, exc: Exception) -> Response:
    """The single handler behind every non-2xx answer, in the style its route marked."""
    answer = error_answer(request, exc)
    style = style_of_path(request.url.path)
    return error_response(answer.status, answer.error_type, answer.message, answer.headers, style)


def _of_service_error(exc: ServiceError) -> ErrorAnswer:
    return ErrorAnswer(status_for(exc), exc.error_type, exc.message, exc.headers())


def error_answer(request: Request, exc: Exception) -> ErrorAnswer:
    """Status, stable type, message and headers for any exception a request raised."""
    if isinstance(exc, ServiceError):
        return _of_service_error(exc)
    if isinstance(exc, RequestValidationError):
        return ErrorAnswer(422, "invalid_input", validation_message(exc))
    if isinstance(exc, StarletteHTTPException) and isinstance(exc.__cause__, ServiceError):
        # FastAPI wraps whatever is raised while it reads the body into a 400, including the
        # body-limit middleware's error.
        return _of_service_error(exc.__cause__)
    if (
        isinstance(exc, StarletteHTTPException)
        and exc.status_code == 400
        and isinstance(exc.__cause__, ValueError | RecursionError)
    ):
        # FastAPI answers 400 when the body cannot even be decoded (invalid UTF-8 in a JSON body,
        # or JSON nested deeper than the parser's recursion limit): to the client that is one more
        # invalid input, like malformed JSON (422).
        return ErrorAnswer(422, "invalid_input", "request body is not valid UTF-8 JSON (or nested too deep)")
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
        headers: dict[str, Any] = dict(exc.headers or {})
        return ErrorAnswer(status, _HTTP_TYPES.get(status, "http_error"), phrase, headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return ErrorAnswer(500, ServiceError.error_type, "internal server error")


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


def openapi_error_responses(
    *errors: type[ServiceError], style: ErrorStyle = ErrorStyle.NATIVE
) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for a route, documenting its style's error body under each status it
    may return (in that style's statuses: TEI's 424, OpenAI's 400)."""
    model: Any = {
        ErrorStyle.NATIVE: ErrorEnvelope,
        ErrorStyle.TEI: TeiError,
        ErrorStyle.OPENAI: OpenAiError,
        ErrorStyle.V2: V2Error,
    }[style]
    remap = {
        ErrorStyle.NATIVE: {},
        ErrorStyle.TEI: _TEI_STATUS,
        ErrorStyle.OPENAI: _OPENAI_STATUS,
        ErrorStyle.V2: _V2_STATUS,
    }[style]
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        status = remap.get(STATUS_TABLE[err], STATUS_TABLE[err])
        out.setdefault(status, {"model": model, "description": ""})
        desc = out[status]["description"]
        out[status]["description"] = f"{desc}, {err.error_type}" if desc else err.error_type
    return out
