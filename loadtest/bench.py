"""Side-by-side benchmark: the raw backend vs the service, measured in one run on one machine.

    python -m loadtest.bench --repo models --model sentiment [--backend onnxruntime-cpu]

1. Raw backend (the ceiling): the very backend object the service would build (same artifact,
   same threads), fed pre-tokenized sentences in arrival order, padded to the longest of each
   batch, at batch sizes 1..64. Only `backend.infer` is timed.
2. The service, started here as `bertserve serve` on loopback, closed loop at 1, 4, 16, 64 and
   128 concurrent clients, one sentence per request: throughput and p50/p95/p99.
3. Padding efficiency (real / padded tokens) from the service's own counters over the 64-client
   run.

Headline figures (goals from the issues): service throughput at 64 clients / raw throughput at its
best batch size (>= 0.9), batch-1 p50 latency of the service minus the raw backend call's p50
(<= 1.5 ms), real / padded tokens (>= 0.85).

Sentences come from `../shared/data/sst2/dev.tsv` when present (real SST-2 lengths), else from a
small built-in corpus. Results land in `results/<timestamp>/summary.json` and `report.md`.
NOTE: the load client runs on the same cores as the server; it is lean (loadtest/httpload.py) but
not free, so the service figures are, if anything, pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loadtest.httpload import encode_post, run_closed_loop

ROOT = Path(__file__).resolve().parent.parent
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"

FALLBACK_SENTENCES = [
    "I absolutely loved this movie, the acting was superb.",
    "What a waste of time and money.",
    "The cast is great but the plot drags on for far too long.",
    "Not bad at all, though the ending felt rushed.",
    "the service was slow and the food arrived cold .",
    "A charming, funny and surprisingly moving little film that stays with you.",
    "I wanted to like it, I really did, but nothing about it works.",
    "Battery life is excellent and the screen is bright even outdoors.",
    "Two hours of my life I will never get back.",
    "solid , if unspectacular , entertainment .",
]


def load_sentences(path: Path | None, limit: int) -> tuple[list[str], str]:
    source = path or SST2_DEV
    if source.is_file():
        rows = source.read_text(encoding="utf-8").splitlines()[1:]
        sentences = [r.split("\t")[0].strip() for r in rows if r.strip()]
        return sentences[:limit], str(source)
    return FALLBACK_SENTENCES * max(1, limit // len(FALLBACK_SENTENCES)), "built-in corpus"


# --- raw backend ------------------------------------------------------------------------------


@dataclass
class RawPoint:
    batch_size: int
    sequences_per_s: float
    p50_ms: float
    real_token_ratio: float


def measure_raw(
    repo: Path, model: str, backend: str, precision: str | None, sentences: list[str], seconds: float
) -> tuple[list[RawPoint], str, str]:
    """Throughput of `backend.infer` alone at each batch size, sentences in arrival order."""
    from bertserve.modelrepo import load_model_config, version_dir
    from service.backends.selection import BackendLoader
    from service.batching import Collator
    from service.settings import Settings
    from service.tokenization import TextTokenizer

    settings = Settings(repo=repo, backend=backend, precision=precision)
    config = load_model_config(repo, model)
    vdir = version_dir(repo, model, config.default_version)
    be = BackendLoader(settings)(config, vdir)
    tokenizer = TextTokenizer(vdir / "tokenizer.json", config.max_length)
    with_types = "token_type_ids" in be.input_names
    inputs = [e.model_input(with_types) for e in tokenizer.encode(sentences, truncate=True)]
    collator = Collator(be.input_names, config.pad_token_id)
    points: list[RawPoint] = []
    for bs in (1, 2, 4, 8, 16, 32, 64):
        batches = [inputs[i : i + bs] for i in range(0, len(inputs) - bs + 1, bs)]
        feeds = [collator.collate(b) for b in batches]
        be.infer(feeds[0][0])  # warm the shapes' kernels
        times: list[float] = []
        real = padded = done = 0
        deadline = time.perf_counter() + seconds
        k = 0
        while time.perf_counter() < deadline or not times:
            f, r, p = feeds[k % len(feeds)]
            t0 = time.perf_counter()
            be.infer(f)
            times.append(time.perf_counter() - t0)
            real, padded, done = real + r, padded + p, done + bs
            k += 1
        points.append(
            RawPoint(bs, done / sum(times), statistics.median(times) * 1000.0, real / max(padded, 1))
        )
        print(
            f"  raw batch {bs:>3}: {points[-1].sequences_per_s:8.1f} seq/s  "
            f"p50 {points[-1].p50_ms:7.2f} ms/batch"
        )
    be.close()
    return points, be.name, str(getattr(be, "precision", "?"))


# --- service ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_service(
    repo: Path, model: str, backend: str, precision: str | None, port: int, extra_env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [
        sys.executable,
        "-m",
        "bertserve.cli",
        "serve",
        "--repo",
        str(repo),
        "--model",
        model,
        "--backend",
        backend,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if precision:
        cmd += ["--precision", precision]
    env = {**os.environ, "BERTSERVE_LOG_LEVEL": "warning", **extra_env}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"service exited with {proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service not ready within 120 s")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


_SAMPLE = re.compile(r"^(bertserve_(?:real|padded)_tokens_total)\{[^}]*\}\s+([0-9.e+]+)$", re.M)


def token_counters(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2)) for m in _SAMPLE.finditer(text)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("models"))
    ap.add_argument("--model", default="sentiment")
    ap.add_argument("--backend", default="onnxruntime-cpu")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--data", type=Path, default=None, help="TSV with the sentence in column 1")
    ap.add_argument("--sentences", type=int, default=872)
    ap.add_argument("--raw-seconds", type=float, default=4.0, help="per batch size")
    ap.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16,64,128")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    sentences, source = load_sentences(args.data, args.sentences)
    random.Random(args.seed).shuffle(sentences)
    print(f"bench: model {args.model} in {args.repo}, backend {args.backend}, {len(sentences)} sentences")
    print(f"       from {source}; {os.cpu_count()} CPUs")

    print("1. raw backend (backend.infer only, arrival-order batches padded to their longest)")
    raw, backend_name, precision = measure_raw(
        args.repo, args.model, args.backend, args.precision, sentences, args.raw_seconds
    )
    best_raw = max(raw, key=lambda p: p.sequences_per_s)
    raw_b1 = next(p for p in raw if p.batch_size == 1)

    print("2. service, closed loop, one sentence per request")
    port = free_port()
    path = f"/v1/models/{args.model}/classify"
    requests = [encode_post("127.0.0.1", port, path, {"inputs": s}) for s in sentences]
    levels = [int(c) for c in args.concurrency.split(",")]
    service_points: dict[int, dict[str, object]] = {}
    real_ratio_64 = float("nan")
    with running_service(args.repo, args.model, args.backend, args.precision, port, {}):
        for c in levels:
            before = token_counters(port)
            res = asyncio.run(
                run_closed_loop("127.0.0.1", port, requests, c, args.seconds, warmup_s=min(2.0, args.seconds))
            )
            after = token_counters(port)
            d_real = after["bertserve_real_tokens_total"] - before["bertserve_real_tokens_total"]
            d_pad = after["bertserve_padded_tokens_total"] - before["bertserve_padded_tokens_total"]
            summary = res.summary()
            summary["real_token_ratio"] = round(d_real / d_pad, 4) if d_pad else None
            service_points[c] = summary
            if c == 64:
                real_ratio_64 = d_real / d_pad if d_pad else float("nan")
            print(
                f"  {c:>3} clients: {summary['throughput_rps']:8.1f} req/s  p50 {summary['p50_ms']:7.2f}  "
                f"p95 {summary['p95_ms']:7.2f}  p99 {summary['p99_ms']:7.2f} ms  "
                f"real/padded {summary['real_token_ratio']}  codes {summary['codes']} "
                f"errors {summary['errors']}"
            )

    thr64 = float(service_points[64]["throughput_rps"]) if 64 in service_points else float("nan")  # type: ignore[arg-type]
    p50_1 = float(service_points[1]["p50_ms"]) if 1 in service_points else float("nan")  # type: ignore[arg-type]
    summary_doc = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": args.model,
        "backend": backend_name,
        "precision": precision,
        "cpus": os.cpu_count(),
        "sentences": {"source": source, "count": len(sentences)},
        "raw": [p.__dict__ for p in raw],
        "service": {str(k): v for k, v in service_points.items()},
        "service_vs_raw": round(thr64 / best_raw.sequences_per_s, 3),
        "raw_best_batch_size": best_raw.batch_size,
        "latency_overhead_ms": round(p50_1 - raw_b1.p50_ms, 3),
        "real_token_ratio": round(real_ratio_64, 4),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / stamp
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary_doc, indent=2))
    lines = [
        f"# bertserve benchmark {summary_doc['timestamp']}",
        "",
        f"model `{args.model}`, backend `{backend_name}` ({precision}), {os.cpu_count()} CPUs, "
        f"{len(sentences)} sentences from {source}",
        "",
        "| raw batch | seq/s | p50 ms/batch |",
        "|---:|---:|---:|",
        *[f"| {p.batch_size} | {p.sequences_per_s:.1f} | {p.p50_ms:.2f} |" for p in raw],
        "",
        "| clients | req/s | p50 ms | p95 ms | p99 ms | real/padded |",
        "|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {c} | {v['throughput_rps']} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | "
            f"{v['real_token_ratio']} |"
            for c, v in service_points.items()
        ],
        "",
        f"- service / raw (64 clients vs raw batch {best_raw.batch_size}): "
        f"**{summary_doc['service_vs_raw']}**",
        f"- batch-1 p50 latency overhead: **{summary_doc['latency_overhead_ms']} ms**",
        f"- real / padded tokens at 64 clients: **{summary_doc['real_token_ratio']}**",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print()
    print(
        f"service_vs_raw = {summary_doc['service_vs_raw']} (64 clients {thr64:.1f} req/s vs raw "
        f"{best_raw.sequences_per_s:.1f} seq/s at batch {best_raw.batch_size}; goal >= 0.9)"
    )
    print(
        f"latency_overhead_ms = {summary_doc['latency_overhead_ms']} (service p50 {p50_1:.2f} ms at 1 client "
        f"vs raw batch-1 p50 {raw_b1.p50_ms:.2f} ms; goal <= 1.5)"
    )
    print(f"real_token_ratio = {summary_doc['real_token_ratio']} (goal >= 0.85)")
    print(f"written to {out}/summary.json and report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
