"""Pure ASGI middleware that refuses a request before any route, parser or model sees it.

`ApiKeyMiddleware` runs first (an unauthenticated client costs a header comparison, nothing
more), then `BodyLimitMiddleware` (a body is never read beyond the limit). Both answer in the one
error envelope of `service.errors`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTooLargeError, UnauthorizedError, service_error_response

# Health probes carry no key (kubelets and load balancers cannot send one); the OpenAPI schema and
# its viewers describe the public contract and hold no data.
PUBLIC_PATHS = frozenset(
    {"/health/live", "/health/ready", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
METRICS_PATH = "/metrics"


class ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on every path but `public_paths`; 401 otherwise."""

    def __init__(self, app: ASGIApp, api_key: str, public_paths: Iterable[str] = PUBLIC_PATHS) -> None:
        if not api_key:
            raise ValueError("an empty API key would let everyone in")
        self.app = app
        self._key = api_key.encode()
        self._public = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._public or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        error = UnauthorizedError("missing or invalid API key; send `Authorization: Bearer <key>`")
        await service_error_response(error)(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, token = header.partition(" ")
        # NOTE: compare_digest takes the same time wherever the first differing byte is, so the
        # key cannot be guessed byte by byte from response times.
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key)


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: from Content-Length before a byte is read, and for chunked
    (or lying) bodies as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await service_error_response(BodyTooLargeError(limit))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError(limit)
            return message

        await self.app(scope, limited_receive, send)
