"""`InferenceRoute`: FastAPI's route, with a short path for the requests that need nothing else.

Every inference request runs FastAPI's generic request handler: content-type parsing through
`email.message`, dependency solving over every parameter kind, per-request introspection of each
parameter's annotation. On two shared cores that is a good part of the CPU a request costs beside
the model, and it is the same for every request of a route. This route computes once, when it is
built, which parameters its endpoint takes (path, header, one JSON body, the `Request`) and, per
request, validates exactly those through the same FastAPI fields (so with the same pydantic
validators, defaults and values) and calls the endpoint.

NOTE: the short path only ever *succeeds* or steps aside. Whenever a request is anything but the
plain case (another content type, an empty or undecodable body, any validation error, a failed
body read), FastAPI's own handler takes the request from where it stands, so every error, its
status and its envelope are FastAPI's as before. OpenAPI is built from the route's declaration,
which this does not change.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Coroutine
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, cast

import fastapi
import fastapi.routing
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
JSON_CONTENT_TYPE = "application/json"

log = logging.getLogger(__name__)


class InferenceRoute(APIRoute):
    """An `APIRoute` whose handler validates the plain case without FastAPI's generic machinery
    (see the module docstring) and hands everything else to FastAPI's handler."""

    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        plan = _Plan.of(self)
        if plan is None:
            return full

        async def handler(request: Request) -> Response:
            arguments = await plan.arguments(request)
            if arguments is None:
                return await full(request)
            response = await plan.call(**arguments)
            if not isinstance(response, Response):  # every inference endpoint returns one
                raise TypeError(f"{plan.call.__name__} returned {type(response).__name__}, not a Response")
            return response

        return handler


@dataclass(frozen=True, slots=True)
class _Plan:
    """What an endpoint takes, read once from its FastAPI dependant."""

    call: Callable[..., Coroutine[Any, Any, object]]
    request_name: str | None
    path: tuple[Any, ...]  # FastAPI ModelFields
    headers: tuple[Any, ...]
    body: Any | None

    @classmethod
    def of(cls, route: APIRoute) -> _Plan | None:
        """None when the endpoint takes anything this does not handle exactly as FastAPI does
        (dependencies, security, query or cookie parameters, form or embedded bodies, ...), or
        when this FastAPI's internals are not the ones the short path was written against (it
        reads the route's dependant and validates through FastAPI's fields): the route then
        runs FastAPI's own handler, as any APIRoute does, instead of failing its requests."""
        try:
            return cls._read(route)
        except (AttributeError, TypeError) as exc:
            log.warning(
                "route %s: FastAPI %s internals differ from what the short request path expects "
                "(%s); serving it with FastAPI's own handler",
                route.path,
                getattr(fastapi, "__version__", "?"),
                exc,
            )
            return None

    @classmethod
    def _read(cls, route: APIRoute) -> _Plan | None:
        effective: Any = route
        context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
        context = context_var.get() if context_var is not None else None
        if context is not None and getattr(context, "original_route", None) is route:
            effective = context  # the route as included (a prefix, the router's dependencies)
        d = effective.dependant
        if (
            d.call is None
            or not inspect.iscoroutinefunction(d.call)
            or d.dependencies
            or d.query_params
            or d.cookie_params
            or getattr(d, "security_requirements", None)
            or d.websocket_param_name
            or d.http_connection_param_name
            or d.response_param_name
            or d.background_tasks_param_name
            or d.security_scopes_param_name
            or len(d.body_params) > 1
            or getattr(effective, "_embed_body_fields", True)
        ):
            return None
        body = d.body_params[0] if d.body_params else None
        if body is not None and not (
            isinstance(body.field_info.annotation, type) and issubclass(body.field_info.annotation, BaseModel)
        ):
            return None
        for header in d.header_params:
            # Only explicitly named single-value headers (no underscore conversion, no lists).
            if header.field_info.alias is None or not _is_scalar(header.field_info.annotation):
                return None
        for field in (*d.path_params, *d.header_params, *([body] if body is not None else [])):
            if not callable(field.validate) or not field.name or not field.alias:
                raise AttributeError(f"field {field!r} cannot be validated as FastAPI 0.115-0.165 does")
        return cls(d.call, d.request_param_name, tuple(d.path_params), tuple(d.header_params), body)

    async def arguments(self, request: Request) -> dict[str, Any] | None:
        """The endpoint's keyword arguments, or None: FastAPI's handler decides."""
        values: dict[str, Any] = {}
        for field in self.path:
            value, errors = field.validate(
                request.path_params.get(field.alias), values, loc=("path", field.alias)
            )
            if errors:
                return None
            values[field.name] = value
        headers = request.headers
        for field in self.headers:
            raw = headers.get(field.alias)
            if raw is None:
                if field.field_info.is_required():
                    return None
                values[field.name] = deepcopy(field.default)
                continue
            value, errors = field.validate(raw, values, loc=("header", field.alias))
            if errors:
                return None
            values[field.name] = value
        if self.body is not None:
            if headers.get("content-type") != JSON_CONTENT_TYPE:
                return None
            try:
                body = await request.body()
            except Exception as exc:
                _replay_body_error(request, exc)
                return None
            if not body:
                return None
            try:
                data = json.loads(body)
                value, errors = self.body.validate(data, values, loc=("body",))
            except (ValueError, RecursionError):
                # JSONDecodeError, bytes that are not UTF-8/16/32, or nesting deeper than the
                # interpreter's stack: FastAPI's handler answers these as it always has.
                return None
            if errors:
                return None
            values[self.body.name] = value
        if self.request_name is not None:
            values[self.request_name] = request
        return values


def _is_scalar(annotation: Any) -> bool:
    """A str/int/float/bool header, optional or not."""
    args = getattr(annotation, "__args__", None)
    if args is not None and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return len(rest) == 1 and _is_scalar(rest[0])
    return annotation in (str, int, float, bool)


def _replay_body_error(request: Request, error: Exception) -> None:
    """Make FastAPI's handler meet the failure this read met (its stream is consumed now), so
    that it answers exactly as it would have on its own read."""

    async def body() -> bytes:
        raise error

    request.body = cast(Any, body)  # type: ignore[method-assign]
