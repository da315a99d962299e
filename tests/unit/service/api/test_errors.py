"""The HTTP mapping of the service's pure exceptions: one status table, one envelope."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from bertserve.service import errors
from bertserve.service.api.errors import (
    STATUS_TABLE,
    openapi_error_responses,
    service_error_response,
    status_for,
)
from bertserve.service.errors import (
    BodyTooLargeError,
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


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ServiceError("x"), 500),
        (UnauthorizedError("x"), 401),
        (InvalidInputError("x"), 422),
        (PayloadTooLargeError("x"), 413),
        (BodyTooLargeError(10), 413),  # inherits its parent's status through the MRO
        (ModelNotFoundError("x"), 404),
        (UnsupportedTaskError("x"), 400),
        (QueueFullError("x"), 429),
        (NotReadyError("x"), 503),
        (UnhealthyError("x"), 503),
        (DeadlineExceededError("x"), 504),
        (InferenceError("x"), 500),
        (ClientClosedError("x"), 499),
        (HTTPException(405), 405),
        (RequestValidationError([]), 422),
        (RuntimeError("x"), 500),
    ],
)
def test_status_table(exc: BaseException, status: int) -> None:
    assert status_for(exc) == status


def test_every_service_error_has_a_status_of_its_own_or_its_parents() -> None:
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, ServiceError) and cls.__module__ == errors.__name__
    ]
    assert len(classes) >= 12
    for cls in classes:
        assert any(base in STATUS_TABLE for base in cls.__mro__), cls


def test_the_envelope_and_headers() -> None:
    response = service_error_response(QueueFullError("queue full", retry_after_s=3))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"error": {"type": "queue_full", "message": "queue full"}}
    unauthorized = service_error_response(UnauthorizedError("no key"))
    assert unauthorized.headers["WWW-Authenticate"] == 'Bearer realm="bertserve"'
    assert service_error_response(BodyTooLargeError(5)).headers["Connection"] == "close"


def test_openapi_responses_group_types_under_their_status() -> None:
    out = openapi_error_responses(NotReadyError, UnhealthyError, QueueFullError)
    assert set(out) == {503, 429}
    assert out[503]["description"] == "not_ready, unhealthy"


def test_the_exceptions_import_without_the_web_stack() -> None:
    code = (
        "import sys, bertserve.service.errors, bertserve.service.batching, bertserve.service.pipeline; "
        "bad = sorted(m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
