"""Traces leave a running `bertserve serve` over OTLP/HTTP: a collector in this process (an HTTP
server decoding OpenTelemetry's protobuf export requests) receives, for concurrent requests,
each request's server span with its tokenize, queue and postprocess spans, and the inference
spans of the batches, linked to the requests they served."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.fake_repo import write_fake_repo
from tests.helpers.service_process import start_service


class Collector:
    """OTLP/HTTP trace receiver on loopback: every span of every export request, decoded."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[Any] = []
        self.lock = threading.Lock()
        spans, lock = self.spans, self.lock

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans.extend(scope.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def test_spans_reach_an_otlp_collector(collector: Collector, tmp_path: Path) -> None:
    repo = write_fake_repo(tmp_path / "repo")
    env = {
        "BERTSERVE_MODELS": "cls",
        "BERTSERVE_OTEL_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "BERTSERVE_MAX_QUEUE_DELAY_MS": "50",
    }
    with start_service(repo, fake_delay_ms=20, env=env) as svc:
        svc.wait_ready()

        def classify(i: int) -> int:
            r = httpx.post(f"{svc.base}/v1/models/cls/classify", json={"inputs": f"review {i}"}, timeout=30)
            return r.status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(classify, range(4))) == [200] * 4
        assert svc.stop() == 0  # the exit flushes the spans still buffered
    spans = collector.spans
    servers = [s for s in spans if s.name == "POST /v1/models/{model}/classify"]
    assert len(servers) == 4, sorted({s.name for s in spans})
    for server in servers:
        children = {
            s.name for s in spans if s.parent_span_id == server.span_id and s.trace_id == server.trace_id
        }
        assert {"tokenize", "queue", "postprocess"} <= children, children
    batches = [s for s in spans if s.name == "inference"]
    linked = {link.span_id for b in batches for link in b.links}
    assert {s.span_id for s in servers} <= linked  # each request's batch names it
