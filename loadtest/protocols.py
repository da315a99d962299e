"""The same model over REST and gRPC, one run: the Open Inference Protocol's two transports beside
the native route, each at N closed-loop clients, one sentence per request, every answer checked.

    python -m loadtest.protocols --repo models --model sentiment --clients 64 --seconds 15

It starts `bertserve serve --grpc-port` on loopback, takes each sentence's label from the native
/classify one at a time (the reference), then drives, in turn, native REST (/classify), v2 REST
(/v2/models/{m}/infer, JSON) and v2 gRPC (ModelInfer, raw tensors). A request counts as correct
only if it answers 200 / OK with one label equal to the reference. Printed per phase: requests/s,
p50 and p99 latency, failures, wrong answers, and the mean batch the server ran (from its
bertserve_batch_size histogram), which shows that calls from different clients share batches.
The load generator runs on the same cores as the server: the gRPC client's own CPU cost is part
of the figure, as a real co-located caller's would be.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from loadtest.bench import free_port, model_and_sentences, served_model_arguments, subprocess_server
from loadtest.httpload import check_loopback, encode_post

_BATCH = re.compile(r'^bertserve_batch_size_(sum|count)\{model="([^"]+)"\}\s+([0-9.e+]+)$', re.M)


@dataclass
class Phase:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    failures: int = 0
    wrong: int = 0
    elapsed_s: float = 0.0
    mean_batch: float = float("nan")

    def row(self) -> str:
        lat = np.asarray(self.latencies_s) * 1000 if self.latencies_s else np.asarray([float("nan")])
        rate = len(self.latencies_s) / self.elapsed_s if self.elapsed_s else 0.0
        return (
            f"{self.name:<22} {rate:>9.1f} {np.percentile(lat, 50):>8.1f} {np.percentile(lat, 99):>8.1f} "
            f"{self.failures:>8} {self.wrong:>6} {self.mean_batch:>10.2f}"
        )


def batch_counters(port: int, model: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {kind: float(v) for kind, m, v in _BATCH.findall(text) if m == model}
    return values.get("sum", 0.0), values.get("count", 0.0)


async def _http_phase(
    name: str,
    port: int,
    requests: Sequence[bytes],
    check: Callable[[int, bytes], bool],
    clients: int,
    seconds: float,
) -> Phase:
    from loadtest.httpload import _Connection  # the lean keep-alive client of the HTTP benches

    phase = Phase(name)
    stop_at = time.perf_counter() + seconds

    async def user(uid: int) -> None:
        conn = _Connection("127.0.0.1", port)
        i = uid
        try:
            while time.perf_counter() < stop_at:
                k = i % len(requests)
                start = time.perf_counter()
                try:
                    code, body = await conn.request(requests[k])
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                    phase.failures += 1
                    conn.close()
                    continue
                if code != 200:
                    phase.failures += 1
                elif not check(k, body):
                    phase.wrong += 1
                else:
                    phase.latencies_s.append(time.perf_counter() - start)
                i += clients
        finally:
            conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(user(u) for u in range(clients)))
    phase.elapsed_s = time.perf_counter() - began
    return phase


async def _grpc_phase(
    port: int, model: str, sentences: Sequence[str], want: Sequence[str], clients: int, seconds: float
) -> Phase:
    import grpc

    from bertserve.service.api.grpc_server import SERVICE, M
    from bertserve.service.api.oip import deserialize_bytes, serialize_bytes

    def message(text: str) -> bytes:
        msg = M["ModelInferRequest"](model_name=model)
        msg.inputs.add(name="text", datatype="BYTES", shape=[1])
        msg.outputs.add(name="label")
        msg.raw_input_contents.append(serialize_bytes([text.encode()]))
        raw: bytes = msg.SerializeToString()
        return raw

    requests = [message(t) for t in sentences]
    phase = Phase("v2 gRPC ModelInfer")
    # a few HTTP/2 connections, many calls on each, as a pooled gRPC client does
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(min(8, clients))]
    calls = [
        ch.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=None, response_deserializer=None)
        for ch in channels
    ]
    stop_at = time.perf_counter() + seconds
    reply_type = M["ModelInferResponse"]

    async def user(uid: int) -> None:
        call = calls[uid % len(calls)]
        i = uid
        while time.perf_counter() < stop_at:
            k = i % len(requests)
            start = time.perf_counter()
            try:
                raw = await call(requests[k], timeout=30)
            except grpc.aio.AioRpcError:
                phase.failures += 1
                continue
            reply = reply_type.FromString(raw)
            labels = deserialize_bytes(reply.raw_output_contents[0], "label", 2)
            if labels != [want[k].encode()]:
                phase.wrong += 1
            else:
                phase.latencies_s.append(time.perf_counter() - start)
            i += clients

    began = time.perf_counter()
    await asyncio.gather(*(user(u) for u in range(clients)))
    phase.elapsed_s = time.perf_counter() - began
    for ch in channels:
        await ch.close()
    return phase


def reference_labels(port: int, model: str, sentences: Sequence[str]) -> list[str]:
    labels = []
    for text in sentences:
        body = json.dumps({"inputs": [text]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/{model}/classify",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            labels.append(json.loads(r.read())["results"][0][0]["label"])
    return labels


async def run(
    port: int, grpc_port: int, model: str, sentences: list[str], clients: int, seconds: float
) -> None:
    check_loopback("127.0.0.1")
    want = reference_labels(port, model, sentences)
    native = [
        encode_post("127.0.0.1", port, f"/v1/models/{model}/classify", {"inputs": [t]}) for t in sentences
    ]
    v2 = [
        encode_post(
            "127.0.0.1",
            port,
            f"/v2/models/{model}/infer",
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}],
                "outputs": [{"name": "label"}],
            },
        )
        for t in sentences
    ]

    def native_ok(k: int, body: bytes) -> bool:
        results = json.loads(body)["results"]
        return len(results) == 1 and results[0][0]["label"] == want[k]

    def v2_ok(k: int, body: bytes) -> bool:
        outputs = json.loads(body)["outputs"]
        return bool(outputs[0]["data"] == [want[k]])

    phases: list[Phase] = []
    runs: list[Callable[[], Awaitable[Phase]]] = [
        lambda: _http_phase("native REST /classify", port, native, native_ok, clients, seconds),
        lambda: _http_phase("v2 REST infer", port, v2, v2_ok, clients, seconds),
        lambda: _grpc_phase(grpc_port, model, sentences, want, clients, seconds),
    ]
    for build in runs:
        s0, c0 = batch_counters(port, model)
        phase = await build()
        s1, c1 = batch_counters(port, model)
        phase.mean_batch = (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")
        phases.append(phase)
    print(f"\n{clients} clients, {seconds:.0f} s per phase, {len(sentences)} sentences, one per request")
    head = ("protocol", "req/s", "p50 ms", "p99 ms", "failures", "wrong", "mean batch")
    print(f"{head[0]:<22} {head[1]:>9} {head[2]:>8} {head[3]:>8} {head[4]:>8} {head[5]:>6} {head[6]:>10}")
    for phase in phases:
        print(phase.row())
    grpc_rate = len(phases[2].latencies_s) / phases[2].elapsed_s
    rest_rate = len(phases[1].latencies_s) / phases[1].elapsed_s
    print(f"gRPC / v2 REST throughput: {grpc_rate / rest_rate:.2f}")
    if any(p.failures or p.wrong for p in phases):
        raise SystemExit("protocols: some requests failed or answered wrong (see the table)")


def main(argv: list[str] | None = None) -> int:
    parser = served_model_arguments(__doc__, seconds=15.0)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args(argv)
    model, sentences = model_and_sentences(args)
    port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "bertserve.cli", "serve", "--repo", str(args.repo), "--model", model,
        "--backend", args.backend, "--port", str(port), "--grpc-port", str(grpc_port),
    ]  # fmt: skip
    with subprocess_server(cmd, port, "service", {"BERTSERVE_LOG_LEVEL": "warning"}):
        asyncio.run(run(port, grpc_port, model, sentences, args.clients, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
