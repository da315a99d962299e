"""Pure ASGI middleware: the request id and access log around everything (`RequestIdMiddleware`),
and the layers that refuse a request before any route, parser or model sees it.

`ApiKeyMiddleware` runs first (an unauthenticated client costs a header comparison, nothing
more), then `AdmissionMiddleware` (a global cap on requests in flight, and the drain's
`Connection: close`), then `BodyLimitMiddleware` (a body is never read beyond the limit). All
answer in the one error envelope of `bertserve.service.api.errors`.
"""

from __future__ import annotations

import hmac
import random
import re
import time
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertserve.service.api.errors import service_error_response
from bertserve.service.errors import BodyTooLargeError, QueueFullError, UnauthorizedError
from bertserve.service.limits import REQUEST_WORK, WorkBudget
from bertserve.service.logs import REQUEST_ID, log_request
from bertserve.service.registry import DrainState

# Health probes carry no key (kubelets and load balancers cannot send one). The OpenAPI schema and
# its viewers describe the static contract of this version (no model names, no data) and browsers
# cannot send a key to them: public unless `docs_public` is turned off.
HEALTH_PATHS = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PUBLIC_PATHS = HEALTH_PATHS | DOCS_PATHS
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
        await service_error_response(error, scope.get("path", ""))(scope, receive, send)

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
            await service_error_response(BodyTooLargeError(limit), scope.get("path", ""))(
                scope, receive, send
            )
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


class AdmissionMiddleware:
    """At most `max_inflight` requests with a body (POST: inference) in the process at once, all
    models together, counted from before their body is read: beyond it 429 at once, so many
    concurrent clients cannot pin unbounded memory in bodies and parsed inputs.

    While draining (`state.draining`), every response carries `Connection: close` and the arrival
    of every request is noted: no keep-alive connection is left idle for the final close to cut
    under a request already on the wire, and the drain ends only once clients have gone quiet.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_inflight: int,
        state: DrainState,
        on_refused: Callable[[Scope], None] | None = None,
    ) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.inflight = 0
        self.state = state
        self._on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        if state.draining:
            state.last_request = time.monotonic()
            send = _closing(send)
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            if self._on_refused is not None:
                self._on_refused(scope)
            error = QueueFullError(
                f"the server is handling {self.max_inflight} requests already (max_inflight_requests); "
                "retry later",
                retry_after_s=1,
            )
            await service_error_response(error, scope.get("path", ""))(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


def _closing(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return send_closing


REQUEST_ID_HEADER = b"x-request-id"
ACCESS_SCOPE_KEY = "bertserve.access"  # scope key: the fields routes add to the access-log line
# what a client may send as its own request id; anything else is replaced by a generated one
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def _new_request_id() -> str:
    """32 random hex digits. NOTE: a request id is a correlation key, not a secret: the seeded
    Mersenne Twister makes one without the system call and UUID object of `uuid4()`."""
    return f"{_random.getrandbits(128):032x}"


_random = random.Random()


class RequestIdMiddleware:
    """The outermost layer: every request gets an id (the client's `X-Request-Id` when it is a
    plain token of at most 128 characters, else a new one), returned in `X-Request-Id` on every
    answer, 500s included, carried by every log line logged while the request is served
    (`bertserve.service.logs.REQUEST_ID`) and by the error envelope; with `access_log`, one
    access-log line per request (method, path, status, duration, and for inference model,
    endpoint, sequences, tokens)."""

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = Headers(scope=scope).get("x-request-id", "")
        request_id = sent if _CLIENT_ID.match(sent) else _new_request_id()
        # NOTE: not reset afterwards: every request runs in a task (and context) of its own, and
        # the 500 handler, which Starlette runs outside this middleware's call, must still see it.
        REQUEST_ID.set(request_id)
        work: list[WorkBudget] | None = None
        if self.access_log:
            work = []
            REQUEST_WORK.set(work)
            scope[ACCESS_SCOPE_KEY] = {}
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if work is not None:
                method, path = scope.get("method", ""), scope.get("path", "")
                log_request(method, path, status, start, scope.get(ACCESS_SCOPE_KEY, {}), work)
