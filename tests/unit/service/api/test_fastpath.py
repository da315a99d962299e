"""`InferenceRoute` answers exactly as FastAPI's own route does: the plain request without
FastAPI's generic handler, every other request through it."""

from __future__ import annotations

from typing import Annotated, Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi import Path as FastApiPath
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from bertserve.service.api.fastpath import InferenceRoute


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: str | list[str] = Field(min_length=1)
    top_k: int | None = Field(None, ge=1)


Timeout = Annotated[float | None, Header(alias="X-Request-Timeout-Ms", gt=0)]


def make_app(route_class: type[APIRoute]) -> FastAPI:
    router = APIRouter(route_class=route_class)

    @router.post("/v1/models/{model}/versions/{version}/classify")
    async def classify(
        model: str,
        version: Annotated[int, FastApiPath(ge=1)],
        body: Body,
        request: Request,
        timeout_ms: Timeout = None,
    ) -> Response:
        return JSONResponse(
            {
                "model": model,
                "version": version,
                "body": body.model_dump(),
                "timeout_ms": timeout_ms,
                "path": request.url.path,
            }
        )

    @router.get("/v1/models/{model}")
    async def info(model: str, request: Request) -> Response:
        return JSONResponse({"model": model})

    app = FastAPI()
    app.include_router(router)
    return app


CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/models/m/versions/2/classify", {"json": {"inputs": "hello", "top_k": 1}}),
    ("POST", "/v1/models/m/versions/2/classify", {"json": {"inputs": ["a", "b"]}}),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"json": {"inputs": "x"}, "headers": {"X-Request-Timeout-Ms": "250"}},
    ),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"json": {"inputs": "x"}, "headers": {"X-Request-Timeout-Ms": "-1"}},
    ),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"json": {"inputs": "x"}, "headers": {"X-Request-Timeout-Ms": "soon"}},
    ),
    ("POST", "/v1/models/m/versions/0/classify", {"json": {"inputs": "x"}}),
    ("POST", "/v1/models/m/versions/two/classify", {"json": {"inputs": "x"}}),
    ("POST", "/v1/models/m/versions/2/classify", {"json": {"inputs": ""}}),
    ("POST", "/v1/models/m/versions/2/classify", {"json": {"inputs": "x", "top_k": 0}}),
    ("POST", "/v1/models/m/versions/2/classify", {"json": {"inputs": "x", "unknown": 1}}),
    ("POST", "/v1/models/m/versions/2/classify", {"json": ["not", "an", "object"]}),
    ("POST", "/v1/models/m/versions/2/classify", {"json": {}}),
    # a count is an integer, never a boolean or a numeric string (StrictInt)
    ("POST", "/v1/models/m/versions/2/classify", {"json": {"inputs": "x", "top_k": True}}),
    ("POST", "/v1/models/m/versions/2/classify", {"json": {"inputs": "x", "top_k": "2"}}),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        # nested past the interpreter's recursion limit: the short path steps aside, not a 500
        {"content": b"[" * 100_000 + b"]" * 100_000, "headers": {"content-type": "application/json"}},
    ),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"content": b'{"inputs": "x"', "headers": {"content-type": "application/json"}},
    ),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"content": b"\xff\xfe\x00", "headers": {"content-type": "application/json"}},
    ),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"content": b"", "headers": {"content-type": "application/json"}},
    ),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"content": b'{"inputs": "x"}', "headers": {"content-type": "text/plain"}},
    ),
    ("POST", "/v1/models/m/versions/2/classify", {"content": b'{"inputs": "x"}'}),
    (
        "POST",
        "/v1/models/m/versions/2/classify",
        {"content": b'{"inputs": "x"}', "headers": {"content-type": "application/json; charset=utf-8"}},
    ),
    ("GET", "/v1/models/m", {}),
]


async def answer(app: FastAPI, method: str, path: str, kwargs: dict[str, Any]) -> tuple[int, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.request(method, path, **kwargs)
    return r.status_code, r.json()


@pytest.mark.parametrize(("method", "path", "kwargs"), CASES)
async def test_every_answer_is_the_one_fastapi_gives(method: str, path: str, kwargs: dict[str, Any]) -> None:
    assert await answer(make_app(InferenceRoute), method, path, kwargs) == await answer(
        make_app(APIRoute), method, path, kwargs
    )


async def test_the_plain_request_skips_fastapis_dependency_solving(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    original = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("request"))
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    app = make_app(InferenceRoute)
    status, body = await answer(
        app,
        "POST",
        "/v1/models/m/versions/3/classify",
        {"json": {"inputs": ["a"]}, "headers": {"X-Request-Timeout-Ms": "10"}},
    )
    assert status == 200 and calls == []
    assert body == {
        "model": "m",
        "version": 3,
        "body": {"inputs": ["a"], "top_k": None},
        "timeout_ms": 10.0,
        "path": "/v1/models/m/versions/3/classify",
    }
    status, _ = await answer(app, "POST", "/v1/models/m/versions/3/classify", {"json": {"inputs": ""}})
    assert status == 422 and len(calls) == 1  # the invalid one went through FastAPI's handler


def seven() -> int:
    return 7


async def test_an_endpoint_with_a_dependency_keeps_fastapis_handler() -> None:
    router = APIRouter(route_class=InferenceRoute)

    @router.get("/with/{x}")
    async def with_dependency(x: str, y: Annotated[int, Depends(seven)]) -> Response:
        return JSONResponse({"x": x, "y": y})

    app = FastAPI()
    app.include_router(router)
    assert await answer(app, "GET", "/with/a", {}) == (200, {"x": "a", "y": 7})
    assert (
        router.routes[0].get_route_handler().__qualname__
        != "InferenceRoute.get_route_handler.<locals>.handler"
    )


def test_a_fastapi_whose_internals_differ_gets_no_short_path(caplog: pytest.LogCaptureFixture) -> None:
    """A FastAPI release whose route internals are not the ones the short path reads (here: a
    dependant without the fields it checks, and a field without `validate`) gets no plan, so the
    route keeps FastAPI's own handler (as the dependency test shows), with a warning, instead of
    failing its requests."""
    from types import SimpleNamespace

    from bertserve.service.api.fastpath import _Plan

    async def endpoint() -> Response:
        return JSONResponse({})

    bare = SimpleNamespace(path="/x", dependant=SimpleNamespace(call=endpoint))
    odd_field = SimpleNamespace(name="model", alias="model", field_info=None)  # no validate
    odd = SimpleNamespace(
        path="/y/{model}",
        dependant=SimpleNamespace(
            call=endpoint,
            dependencies=[],
            query_params=[],
            cookie_params=[],
            header_params=[],
            path_params=[odd_field],
            body_params=[],
            websocket_param_name=None,
            http_connection_param_name=None,
            response_param_name=None,
            background_tasks_param_name=None,
            security_scopes_param_name=None,
            request_param_name=None,
        ),
        _embed_body_fields=False,
    )
    with caplog.at_level("WARNING", logger="bertserve.service.api.fastpath"):
        assert _Plan.of(bare) is None  # type: ignore[arg-type]
        assert _Plan.of(odd) is None  # type: ignore[arg-type]
    assert caplog.text.count("FastAPI's own handler") == 2
    # the real route of this FastAPI still gets its plan
    router = APIRouter(route_class=InferenceRoute)
    router.add_api_route("/z/{model}", plain_endpoint, methods=["GET"])
    assert _Plan.of(router.routes[0]) is not None  # type: ignore[arg-type]


async def plain_endpoint(model: str) -> Response:
    return JSONResponse({"model": model})
