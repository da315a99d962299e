"""OpenTelemetry traces, optional: off unless `BERTSERVE_OTEL_ENDPOINT` names an OTLP/HTTP collector
(the `otel` extra installs the SDK, the exporter and the FastAPI instrumentation).

A request's trace: the HTTP server span (opentelemetry-instrumentation-fastapi), and under it
`tokenize`, `queue` (from the moment its sequences were queued to the cut of the batch that took
them) and `postprocess`. Every executed batch is one `inference` span of its own with a link to
each request whose sequences it ran, so a request's trace leads to its batches and a batch's to its
requests, however they were combined. With tracing off every call here is a no-op and nothing of
OpenTelemetry is imported.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext, Tracer

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


class TracingUnavailableError(RuntimeError):
    """Tracing was asked for but the OpenTelemetry packages are not installed."""


def configure(endpoint: str, service_name: str) -> TracerProvider:
    """Export spans to the OTLP/HTTP collector at `endpoint` (e.g. http://collector:4318)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailableError(
            "BERTSERVE_OTEL_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'bertserve[otel]', or unset it"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces"))
    )
    use(provider)
    return provider


def use(provider: TracerProvider | None) -> None:
    """Trace with `provider` (tests pass one with an in-memory exporter); None turns tracing off."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("bertserve") if provider is not None else None


def provider() -> TracerProvider | None:
    return _provider


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child of the current span for the duration of the block."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


@contextlib.contextmanager
def server_span(name: str, headers: Mapping[str, str], **attributes: Any) -> Iterator[None]:
    """A server span for a call that no HTTP instrumentation sees (gRPC), continuing the caller's
    trace from its `traceparent` header (metadata)."""
    if _tracer is None:
        yield
        return
    from opentelemetry import trace
    from opentelemetry.propagate import extract

    parent = extract(dict(headers))
    with _tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    ):
        yield


def current() -> SpanContext | None:
    """The current span's context, to link or parent work done elsewhere (the batch worker)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def rename_current(name: str) -> None:
    """Rename the current span (the HTTP server span, once the route is known)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().update_name(name)


def now_ns() -> int:
    return time.time_ns()


def record_queue_wait(parent: SpanContext, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """The `queue` span of one request: from its sequences' enqueueing to their batch's cut."""
    if _tracer is None:
        return
    from opentelemetry import trace

    context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    span_ = _tracer.start_span("queue", context=context, start_time=start_ns, attributes=attributes)
    span_.end(end_time=end_ns)


@contextlib.contextmanager
def batch_span(requests: Sequence[SpanContext], **attributes: Any) -> Iterator[None]:
    """The `inference` span of one batch, linked to every request it ran sequences of."""
    if _tracer is None:
        yield
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    links = [trace.Link(c) for c in requests]
    # a root of its own: the batch belongs to several requests' traces, none of them its parent
    with _tracer.start_as_current_span(
        "inference", context=otel_context.Context(), links=links, attributes=attributes
    ):
        yield
