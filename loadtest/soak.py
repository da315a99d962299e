"""Soak test: a long, steady load at ~70 % of capacity, watching for slow leaks and creeping latency.

    python -m loadtest.soak --minutes 30 [--repo models] [--fraction 0.7] [--interval-s 30]
    make soak SOAK_MINUTES=5

Starts its own `bertserve serve` on loopback (never a shared instance): the MiniLM demo model when
the repository has a classification model (`python -m bertserve.training.minilm_example --repo models` writes
one), else the fake backend on whatever classification model.yaml + tokenizer it finds. It measures
capacity with a closed loop, then holds an open-loop rate of `fraction` x capacity and, every
interval, samples the server process from /proc (RSS, of which anonymous memory, threads, open file
descriptors) and the interval's p99 from /metrics. At the end it prints the trend and a verdict:
PASS needs every check to hold — RSS growth after warm-up under 10 % of the RSS at its end, an RSS
slope over the second half under 20 MB/h, steady fds and threads, no p99 drift, and not one
transport error or 5xx answer (calibration included). The exit code is 0 for PASS, 1 otherwise.

Bounded by design: `--minutes` is the whole load phase, and the service is stopped with SIGTERM
(and its exit code reported) however the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bertserve.modelrepo import Task, list_models, load_model_config
from loadtest.corpus import classify_corpus
from loadtest.httpload import LoadResult, encode_post, run_closed_loop, run_open_loop

HOST = "127.0.0.1"
DURATION_METRIC = "bertserve_request_duration_seconds"
# Verdict thresholds: generous enough for allocator noise on a shared box, tight enough for a leak
# that would matter over days (20 MB/h is ~0.5 GB a day).
MAX_RSS_SLOPE_MB_PER_H = 20.0
# Growth of RSS from the end of warm-up to its highest point afterwards, relative to the former.
MAX_RSS_GROWTH = 0.10
# Warm-up: the first sixth of the run, at most 5 minutes; every batch shape the load produces has
# usually been seen by then.
WARMUP_FRACTION = 1 / 6
MAX_WARMUP_S = 300.0
MAX_FD_GROWTH = 8
MAX_THREAD_GROWTH = 4
MAX_P99_RATIO = 1.5
WIDTHS = (7, 8, 8, 4, 4, 10, 10, 6, 8)


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    rss_mb: float
    threads: int
    fds: int
    server_p99_ms: float
    anon_mb: float = float("nan")  # RssAnon: heap and arenas, without mapped model files


@dataclass(frozen=True, slots=True)
class ProcSample:
    rss_mb: float
    anon_mb: float
    threads: int
    fds: int


def proc_sample(pid: int) -> ProcSample:
    """RSS and its anonymous part in MB, threads and open file descriptors of `pid`, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return ProcSample(
        rss_mb=int(fields["VmRSS"][0]) / 1024,  # kB
        anon_mb=int(fields.get("RssAnon", ["0"])[0]) / 1024,
        threads=int(fields["Threads"][0]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )


def warmup_s(minutes: float) -> float:
    return min(MAX_WARMUP_S, WARMUP_FRACTION * minutes * 60)


def count_failures(result: LoadResult) -> int:
    """Transport errors and 5xx answers: what a soak may never see (429s are load shedding)."""
    return result.errors + sum(n for code, n in result.codes.items() if code >= 500)


def duration_buckets(base: str, model: str) -> dict[float, float]:
    """Cumulative bucket counts of the classify request-duration histogram: upper bound -> count."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != DURATION_METRIC:
            continue
        for s in family.samples:
            if s.name.endswith("_bucket") and s.labels.get("model") == model:
                buckets[float(s.labels["le"])] = s.value
    return buckets


def interval_p99_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """p99 of the requests answered between two scrapes (bucket resolution, upper bound)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return float("nan")
    for bound, count in zip(bounds, counts, strict=True):
        if count >= 0.99 * total:
            return bound * 1000
    return float("inf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pick_model(repo: Path) -> tuple[str, bool]:
    """(classification model name, whether its runnable artifacts are there)."""
    for name in list_models(repo):
        config = load_model_config(repo, name)
        if config.task == Task.TEXT_CLASSIFICATION:
            vdir = repo / name / str(config.default_version)
            runnable = all((vdir / a.main_file).is_file() for a in config.version.artifacts)
            return name, runnable
    raise SystemExit(
        f"no classification model in {repo}; build one with "
        f"`python -m bertserve.training.minilm_example --repo {repo}`"
    )


def start_service(repo: Path, model: str, backend: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTSERVE_")}
    command = [sys.executable, "-m", "bertserve.cli", "serve", "--repo", str(repo), "--model", model]
    command += ["--backend", backend, "--host", HOST, "--port", str(port)]
    return subprocess.Popen(command, env={**env, "BERTSERVE_LOG_LEVEL": "warning"})


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the service did not become ready")


def slope_per_hour(samples: list[Sample], attr: str) -> float:
    if len(samples) < 2:
        return 0.0
    t = np.array([s.t_s for s in samples]) / 3600
    y = np.array([getattr(s, attr) for s in samples], dtype=np.float64)
    return float(np.polyfit(t, y, 1)[0])


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    value: str
    limit: str
    ok: bool

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.value} (limit {self.limit})"


def rss_growth(samples: list[Sample], warmup: float) -> tuple[float, float, float]:
    """(RSS at the end of warm-up, highest RSS after it, growth as a fraction of the former)."""
    before = [s for s in samples if s.t_s <= warmup] or samples[:1]
    baseline = before[-1].rss_mb
    after = [s.rss_mb for s in samples if s.t_s > warmup] or [baseline]
    peak = max(after)
    return baseline, peak, (peak - baseline) / baseline


def verdict(samples: list[Sample], failures: int, warmup: float) -> tuple[bool, list[Check]]:
    """Every check must hold for PASS. NOTE: `failures` counts the whole run, calibration included."""
    if not samples:
        return False, [Check("samples", "0", ">= 1", False)]
    checks = []
    baseline, peak, growth = rss_growth(samples, warmup)
    checks.append(
        Check(
            f"RSS growth after warm-up ({warmup:.0f} s)",
            f"{baseline:.1f} -> max {peak:.1f} MB, {growth:+.1%}",
            f"{MAX_RSS_GROWTH:.0%}",
            growth < MAX_RSS_GROWTH,
        )
    )
    steady = samples[len(samples) // 2 :]  # the slope's window: allocator arenas and caches settled
    rss_slope = slope_per_hour(steady, "rss_mb")
    checks.append(
        Check(
            "RSS slope (second half)",
            f"{rss_slope:+.1f} MB/h",
            f"{MAX_RSS_SLOPE_MB_PER_H:.0f} MB/h",
            rss_slope <= MAX_RSS_SLOPE_MB_PER_H,
        )
    )
    fd_growth = max(s.fds for s in steady) - min(s.fds for s in steady)
    thread_growth = max(s.threads for s in steady) - min(s.threads for s in steady)
    checks.append(
        Check("fd range (second half)", str(fd_growth), str(MAX_FD_GROWTH), fd_growth <= MAX_FD_GROWTH)
    )
    checks.append(
        Check(
            "thread range (second half)",
            str(thread_growth),
            str(MAX_THREAD_GROWTH),
            thread_growth <= MAX_THREAD_GROWTH,
        )
    )
    quarter = max(1, len(samples) // 4)
    early = float(np.nanmedian([s.server_p99_ms for s in samples[:quarter]]))
    late = float(np.nanmedian([s.server_p99_ms for s in samples[-quarter:]]))
    checks.append(
        Check(
            "server p99, last quarter vs first",
            f"{early:.1f} -> {late:.1f} ms",
            f"x{MAX_P99_RATIO}",
            not (late > MAX_P99_RATIO * early),
        )
    )
    checks.append(Check("transport errors and 5xx", str(failures), "0", failures == 0))
    return all(c.ok for c in checks), checks


def served_as(base: str, model: str) -> str:
    """What `auto` resolved to, from the model's metadata: e.g. `openvino-cpu fp32`."""
    with urllib.request.urlopen(f"{base}/v1/models/{model}", timeout=10) as response:
        info = json.loads(response.read())
    return f"{info.get('backend', '?')} {info.get('precision', '?')}"


def print_row(values: tuple[object, ...]) -> None:
    print(" ".join(f"{v:>{w}}" for v, w in zip(values, WIDTHS, strict=True)), flush=True)


def print_summary(samples: list[Sample], ok: bool, checks: list[Check]) -> None:
    series = [s.rss_mb for s in samples]
    if series:
        print(f"RSS: start {series[0]:.1f} MB, min {min(series):.1f}, max {max(series):.1f}", end="")
        print(f", end {series[-1]:.1f} MB")
    for check in checks:
        print(f"  {check.line()}")
    print(f"verdict: {'PASS' if ok else 'SUSPECT (leak, drift or failed requests): inspect the table above'}")


async def hold_load(
    args: argparse.Namespace, proc: subprocess.Popen[bytes], base: str, model: str, requests: list[bytes]
) -> tuple[list[Sample], int]:
    """Calibrate, then hold `fraction` x capacity for `minutes`: (samples, transport errors + 5xx)."""
    calibration = await run_closed_loop(HOST, args.port, requests, args.concurrency, args.calibrate_s)
    failures = count_failures(calibration)
    rate = args.rate or args.fraction * calibration.throughput()
    held = "fixed by --rate" if args.rate else f"{args.fraction:.0%}"
    print(f"capacity {calibration.throughput():.1f} req/s -> holding {rate:.1f} req/s ({held})")
    print(
        f"calibration: {calibration.ok} ok, {failures} transport errors or 5xx; warm-up {args.warmup_s:.0f} s"
    )
    print_row(("t (s)", "RSS MB", "anon MB", "thr", "fds", "p99 srv ms", "p99 cli ms", "ok", "non-200"))
    samples: list[Sample] = []
    start = time.monotonic()
    end = start + args.minutes * 60
    previous = duration_buckets(base, model)
    while time.monotonic() < end:
        span = min(args.interval_s, end - time.monotonic())
        result: LoadResult = await run_open_loop(HOST, args.port, requests, rate, span)
        failures += count_failures(result)
        if proc.poll() is not None:
            print(f"the service exited with {proc.returncode} during the soak")
            return samples, failures + 1
        current = duration_buckets(base, model)
        p = proc_sample(proc.pid)
        sample = Sample(
            time.monotonic() - start,
            p.rss_mb,
            p.threads,
            p.fds,
            interval_p99_ms(previous, current),
            p.anon_mb,
        )
        previous = current
        samples.append(sample)
        not_ok = sum(result.codes.values()) - result.ok + result.errors
        print_row(
            (
                f"{sample.t_s:.0f}", f"{p.rss_mb:.1f}", f"{p.anon_mb:.1f}", p.threads, p.fds,
                f"{sample.server_p99_ms:.1f}", f"{result.percentile_ms(99):.1f}", result.ok, not_ok,
            )
        )  # fmt: skip
    return samples, failures


async def soak(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    model, runnable = pick_model(repo)
    backend = args.backend or ("auto" if runnable else "fake")
    args.port = free_port()
    base = f"http://{HOST}:{args.port}"
    corpus = classify_corpus()
    path = f"/v1/models/{model}/classify"
    requests = [encode_post(HOST, args.port, path, {"inputs": t}) for t in corpus.texts]
    print(f"soak: model {model} ({backend}), {len(requests)} texts from {corpus.source}, {args.minutes} min")
    proc = start_service(repo, model, backend, args.port)
    try:
        wait_ready(base, proc)
        print(f"served as: {served_as(base, model)}")
        samples, failures = await hold_load(args, proc, base, model, requests)
        ok, checks = verdict(samples, failures, args.warmup_s)
        print_summary(samples, ok, checks)
        return 0 if ok else 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            print(f"service exit code after SIGTERM: {proc.wait(timeout=60)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    parser.add_argument("--repo", default="models", help="Model repository (default: models).")
    parser.add_argument(
        "--backend", default=None, help="Default: auto when the model files exist, else fake."
    )
    parser.add_argument("--fraction", type=float, default=0.7, help="Share of the measured capacity to hold.")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="Hold this many requests/s instead of a fraction of the measured capacity: the same "
        "load for runs compared with each other on a shared machine, whose capacity varies.",
    )
    parser.add_argument("--interval-s", type=float, default=30.0, help="Seconds between samples.")
    parser.add_argument("--concurrency", type=int, default=32, help="Clients while measuring capacity.")
    parser.add_argument("--calibrate-s", type=float, default=15.0, help="Seconds of capacity measurement.")
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="Seconds after which RSS must stop growing (default: a sixth of the run, at most 300).",
    )
    args = parser.parse_args()
    if args.minutes <= 0 or not 0 < args.fraction <= 1:
        parser.error("--minutes must be > 0 and --fraction in (0, 1]")
    if args.warmup_s is None:
        args.warmup_s = warmup_s(args.minutes)
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
