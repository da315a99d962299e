"""A lean HTTP/1.1 load generator for loopback benchmarks.

Why not httpx/aiohttp: the benchmark runs the client on the same two cores as the server, so every
microsecond the client spends is taken from the server being measured. This client keeps one
keep-alive connection per virtual user, sends pre-encoded requests and parses only the status line
and Content-Length, which costs a few microseconds per request.

Closed loop (`run_closed_loop`): N users, each sends its next request as soon as the previous one
is answered. Open loop (`run_open_loop`): requests are started on a fixed arrival schedule whatever
the server does, which is what exposes queueing (coordinated omission is avoided because latency
is measured from the scheduled start time).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP (127.0.0.0/8, ::1); names other than localhost are not resolved,
    because a name that resolves to loopback today may not tomorrow."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_loopback(host: str) -> None:
    """Load tests saturate their target: refuse anything but this machine, so that a typo or a
    copied command never load-tests someone else's server."""
    if not is_loopback(host):
        raise ValueError(
            f"load tests only target loopback addresses (127.0.0.1, ::1, localhost), not {host!r}"
        )


def check_loopback_url(url: str) -> str:
    """Validate an `http://host:port` base URL; returns it without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a base URL like http://127.0.0.1:8000, not {url!r}")
    check_loopback(parts.hostname)
    return url.rstrip("/")


def encode_post(host: str, port: int, path: str, body: dict[str, object]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + payload


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    elapsed_s: float = 0.0
    # what `probe` returned at the start and at the end of the counted window (closed loop)
    probed: tuple[object, object] | None = None

    @property
    def ok(self) -> int:
        return self.codes.get(200, 0)

    def throughput(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)

    def summary(self) -> dict[str, float | int | dict[int, int]]:
        return {
            "requests_ok": self.ok,
            "errors": self.errors,
            "codes": dict(self.codes),
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_rps": round(self.throughput(), 2),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p95_ms": round(self.percentile_ms(95), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
        }


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        code = int(status_line.split(b" ", 2)[1])
        length = 0
        close = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value.strip())
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return code, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(conn: _Connection, raw: bytes, result: LoadResult, started: float) -> None:
    try:
        code, _ = await conn.request(raw)
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
        result.errors += 1
        conn.close()
        return
    result.latencies_s.append(time.perf_counter() - started)
    result.codes[code] = result.codes.get(code, 0) + 1


async def run_closed_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    probe: Callable[[], object] | None = None,
) -> LoadResult:
    """`concurrency` users, each sending requests back to back for `duration_s` (after a warm-up
    whose requests are not counted). Requests are taken round-robin from `requests`. `probe` is
    called when the counted window opens and when it closes (e.g. to read CPU times); its two
    values land in `LoadResult.probed`."""
    check_loopback(host)
    result = LoadResult()
    counted_from = time.perf_counter() + warmup_s
    stop_at = counted_from + duration_s

    async def sample(probe: Callable[[], object]) -> None:
        await asyncio.sleep(max(0.0, counted_from - time.perf_counter()))
        first = probe()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        result.probed = (first, probe())

    async def user(uid: int) -> None:
        conn = _Connection(host, port)
        i = uid
        scratch = LoadResult()
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    break
                target = result if now >= counted_from else scratch
                await _one(conn, requests[i % len(requests)], target, now)
                i += concurrency
        finally:
            conn.close()

    samplers = [sample(probe)] if probe is not None else []
    await asyncio.gather(*(user(u) for u in range(concurrency)), *samplers)
    result.elapsed_s = duration_s
    return result


async def run_open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    rate_per_s: float,
    duration_s: float,
    max_connections: int = 256,
) -> LoadResult:
    """Start requests at a constant rate; latency counts from each request's scheduled time, so a
    server that falls behind is charged for the queueing it causes."""
    check_loopback(host)
    result = LoadResult()
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(max_connections):
        pool.put_nowait(_Connection(host, port))
    interval = 1.0 / rate_per_s
    total = int(rate_per_s * duration_s)
    start = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []

    async def fire(k: int, scheduled: float) -> None:
        conn = await pool.get()
        try:
            await _one(conn, requests[k % len(requests)], result, scheduled)
        finally:
            pool.put_nowait(conn)

    for k in range(total):
        scheduled = start + k * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(k, scheduled)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return result
