"""OpenTelemetry traces on the fake backend, with an in-memory exporter: each request's server span
has its tokenize, queue and postprocess spans under it; each batch is an inference span linked to
every request it ran; probes are not traced; with tracing off nothing is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bertserve.runtime.fake import FaultHooks
from bertserve.service import tracing
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppStarter
from tests.helpers.fake_repo import FakeBackends, write_fake_repo


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use(provider)
    yield memory
    tracing.use(None)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_request_and_batch_spans(
    exporter: InMemorySpanExporter, tmp_path: Path, start_app: AppStarter
) -> None:
    repo = write_fake_repo(tmp_path / "repo")
    settings = Settings(repo=repo, backend="fake", models=["cls"], max_queue_delay_ms=50)  # type: ignore[arg-type]
    svc = await start_app.start(settings, FakeBackends(FaultHooks(delay_s=0.02)))
    exporter.clear()  # the warm-up's spans
    replies = await asyncio.gather(
        *(svc.client.post("/v1/models/cls/classify", json={"inputs": f"text {i}"}) for i in range(4))
    )
    assert all(r.status_code == 200 for r in replies)
    assert (await svc.client.get("/health/ready")).status_code == 200
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.name.startswith("POST /v1/models/{model}/classify") and s.parent is None]
    assert len(servers) == 4
    assert not [s for s in spans if "/health" in s.name]  # probes are not traced
    for server in servers:
        trace_id = server.context.trace_id
        children = {
            s.name for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id
        }
        assert {"tokenize", "queue", "postprocess"} <= children, children
        assert all(
            s.context.trace_id == trace_id
            for s in spans
            if s.parent and s.parent.span_id == server.context.span_id
        )
    batches = by_name(spans, "inference")
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == {s.context.span_id for s in servers}  # every request leads to its batch
    assert max(len(b.links) for b in batches) > 1  # and one batch served several requests
    assert all(b.parent is None and b.attributes["model"] == "cls" for b in batches)
    assert sum(b.attributes["batch_size"] for b in batches) == 4


async def test_off_by_default(tmp_path: Path, start_app: AppStarter) -> None:
    assert not tracing.enabled() and tracing.current() is None
    repo = write_fake_repo(tmp_path / "repo")
    svc = await start_app.start(Settings(repo=repo, backend="fake", models=["cls"]), FakeBackends())  # type: ignore[arg-type]
    assert (await svc.client.post("/v1/models/cls/classify", json={"inputs": "x"})).status_code == 200


async def test_grpc_calls_continue_the_callers_trace(
    exporter: InMemorySpanExporter, tmp_path: Path, start_app: AppStarter
) -> None:
    import grpc

    from bertserve.service.api import oip
    from bertserve.service.api.grpc_server import SERVICE, M
    from tests.helpers.service_process import free_port

    repo = write_fake_repo(tmp_path / "repo")
    port = free_port()
    await start_app.start(
        Settings(repo=repo, backend="fake", models=["cls"], grpc_port=port),  # type: ignore[arg-type]
        FakeBackends(),
    )
    exporter.clear()
    message = M["ModelInferRequest"](model_name="cls")
    message.inputs.add(name="text", datatype="BYTES", shape=[1])
    message.raw_input_contents.append(oip.serialize_bytes([b"traced"]))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=M["ModelInferRequest"].SerializeToString,
            response_deserializer=M["ModelInferResponse"].FromString,
        )
        await call(message, metadata=(("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),))
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.name == f"/{SERVICE}/ModelInfer"]
    assert format(server.context.trace_id, "032x") == trace_id  # the caller's trace goes on
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id}
    assert {"tokenize", "queue", "postprocess"} <= children
