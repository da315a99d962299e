"""A load test across reloads: no request may fail while a model is replaced under traffic.

    python -m loadtest.reload --repo models --model sentiment --seconds 24

The model is copied into a scratch repository and served from there (your repository is not
touched), with an API key, on loopback. The service's capacity is measured first (closed loop,
32 clients, one sentence per request); then requests arrive at half that rate (open loop) for
`--seconds`, while, a quarter of the way in, a new version is written (the served artifacts with
every label renamed `<label>-v2`, as a retrained export would change its answers) and
`POST /v1/repository/reload` switches to it; halfway, a broken version (its tokenizer altered
after its sha256 was recorded) is written and reloaded, which must fail and leave version 2
serving. Printed: requests, failures, answers by the wrong version (answered before the reload
began yet not v1, or sent after the switch yet not v2; a request in flight across the switch
finishes on the version it started on), latency before/during/after, and the reload times.
Exit code 1 if any request failed or answered from the wrong version.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.bench import free_port, model_and_sentences, served_model_arguments, subprocess_server
from loadtest.httpload import check_loopback, encode_post, run_closed_loop

KEY = "reload-load-test-key-0123456789"


@dataclass
class Answer:
    at: float
    latency_s: float
    code: int
    label: str | None


@dataclass
class Timeline:
    answers: list[Answer] = field(default_factory=list)
    events: list[tuple[float, str, float, str]] = field(default_factory=list)  # (at, what, seconds, result)


def post_reload(port: int) -> tuple[float, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/repository/reload",
        method="POST",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as r:
        body = json.loads(r.read())
    results = ", ".join(f"{m['name']}: {m['result']} (v{m['version']})" for m in body["models"])
    return time.perf_counter() - start, results


def write_version(repo: Path, model: str, *, broken: bool) -> int:
    """The next version of `model`: the default version's files, labels renamed `<label>-v2`
    (`broken`: its tokenizer altered after its sha256 was recorded), made the default."""
    from bertserve.modelrepo import load_model_config, save_model_config

    config = load_model_config(repo, model)
    version = max(config.versions) + 1
    shutil.copytree(repo / model / str(config.default_version), repo / model / str(version))
    labels = config.labels if broken else [f"{label}-v2" for label in config.labels]
    if broken:
        (repo / model / str(version) / "tokenizer.json").write_text("{}", encoding="utf-8")
    versions = {**config.versions, version: config.versions[config.default_version]}
    save_model_config(
        repo, config.model_copy(update={"labels": labels, "versions": versions, "default_version": version})
    )
    return version


async def open_loop(
    port: int, requests: Sequence[bytes], rate: float, seconds: float, timeline: Timeline
) -> None:
    from loadtest.httpload import _Connection  # the lean keep-alive client of the HTTP benches

    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(128):
        pool.put_nowait(_Connection("127.0.0.1", port))
    start = time.perf_counter()
    tasks = []

    async def fire(k: int, scheduled: float) -> None:
        conn = await pool.get()
        try:
            code, body = await conn.request(requests[k % len(requests)])
            label = json.loads(body)["results"][0][0]["label"] if code == 200 else None
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            code, label = 0, None
        finally:
            pool.put_nowait(conn)
        now = time.perf_counter()
        timeline.answers.append(Answer(now, now - scheduled, code, label))

    for k in range(int(rate * seconds)):
        scheduled = start + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(k, scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()


async def reloads(port: int, repo: Path, model: str, seconds: float, timeline: Timeline, t0: float) -> None:
    for when, broken in ((seconds / 4, False), (seconds / 2, True)):
        await asyncio.sleep(max(0.0, t0 + when - time.perf_counter()))
        version = await asyncio.to_thread(write_version, repo, model, broken=broken)
        began = time.perf_counter()
        took, result = await asyncio.to_thread(post_reload, port)
        timeline.events.append((began, f"reload to v{version}{' (broken)' if broken else ''}", took, result))


def report(timeline: Timeline, v1: set[str]) -> int:
    answers = timeline.answers
    failures = [a for a in answers if a.code != 200]
    (switch_at, _, switch_s, _), (broken_at, _, broken_s, _) = timeline.events
    switched = switch_at + switch_s  # the reload answered: the switch is done by then
    # A request answered before the reload began must come from v1, one sent after the switch from
    # v2; one in flight across the switch finishes on the version it started on: either is right.
    wrong = []
    for a in answers:
        if a.label is None:
            continue
        sent = a.at - a.latency_s
        if (a.at < switch_at and a.label not in v1) or (sent > switched and not a.label.endswith("-v2")):
            wrong.append(a)

    def window(lo: float, hi: float) -> str:
        lat = np.asarray([a.latency_s for a in answers if lo <= a.at < hi]) * 1000
        return (
            f"{len(lat)} answers, p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms"
            if len(lat)
            else "none"
        )

    t0 = min(a.at - a.latency_s for a in answers)
    print(f"\n{len(answers)} requests, {len(failures)} failed, {len(wrong)} answered by the wrong version")
    for at, what, took, result in timeline.events:
        print(f"  t={at - t0:5.1f} s  {what}: {took:.2f} s -> {result}")
    print(f"  before the first reload : {window(t0, switch_at)}")
    print(f"  while it loaded+warmed  : {window(switch_at, switched)}")
    print(f"  after the switch        : {window(switched, broken_at)}")
    print(f"  across the broken reload: {window(broken_at, broken_at + broken_s + 1)}")
    v2 = sum(1 for a in answers if a.label and a.label.endswith("-v2"))
    print(f"  answers by version: v1 {len(answers) - v2 - len(failures)}, v2 {v2}")
    return 1 if failures or wrong else 0


async def run(port: int, repo: Path, model: str, sentences: list[str], seconds: float) -> int:
    check_loopback("127.0.0.1")
    requests = [
        encode_post("127.0.0.1", port, f"/v1/models/{model}/classify", {"inputs": [t], "top_k": 1})
        for t in sentences
    ]
    auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
    requests = [r.replace(b"\r\n\r\n", b"\r\n" + auth + b"\r\n", 1) for r in requests]
    capacity = await run_closed_loop("127.0.0.1", port, requests, concurrency=32, duration_s=5.0)
    rate = capacity.throughput() / 2
    full = capacity.throughput()
    print(f"capacity {full:.1f} req/s (32 clients); load at half: {rate:.1f} req/s for {seconds:.0f} s")
    from bertserve.modelrepo import load_model_config

    v1 = set(load_model_config(repo, model).labels)
    timeline = Timeline()
    t0 = time.perf_counter()
    await asyncio.gather(
        open_loop(port, requests, rate, seconds, timeline), reloads(port, repo, model, seconds, timeline, t0)
    )
    return report(timeline, v1)


def main(argv: list[str] | None = None) -> int:
    parser = served_model_arguments(__doc__, seconds=24.0)
    args = parser.parse_args(argv)
    model, sentences = model_and_sentences(args)
    with tempfile.TemporaryDirectory(prefix="bertserve-reload-") as scratch:
        repo = Path(scratch)
        shutil.copytree(args.repo / model, repo / model)
        port = free_port()
        cmd = [
            sys.executable, "-m", "bertserve.cli", "serve", "--repo", str(repo), "--model", model,
            "--backend", args.backend, "--port", str(port),
        ]  # fmt: skip
        env = {"BERTSERVE_LOG_LEVEL": "warning", "BERTSERVE_API_KEY": KEY}
        with subprocess_server(cmd, port, "service", env):
            return asyncio.run(run(port, repo, model, sentences, args.seconds))


if __name__ == "__main__":
    sys.exit(main())
