"""Two models under load at once: what the process-wide compute budget buys.

`python -m loadtest.mixed` starts `bertserve serve` with a classification and an NER model of the
repository, once per budget configuration, and drives both endpoints at the same time (closed
loop, `--users` keep-alive clients per model). It prints throughput and p50/p95 latency per model
and configuration:

- `shared`: every model's backend sized to every CPU, batches of both models at once (the
  behaviour before the budget: `intra_op_threads` = the CPU count);
- `split`: the default, the CPUs divided among the models (`cpu_budget`), batches at once;
- `turns`: every backend sized to every CPU, one batch at a time across models
  (`max_concurrent_batches=1`).

Each configuration takes its startup (a few seconds) plus `--warmup` and `--duration` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bertserve.modelrepo import Task, list_models, load_model_config
from bertserve.service.settings import available_cpus
from loadtest.bench import free_port, subprocess_server
from loadtest.corpus import classify_corpus, ner_corpus
from loadtest.httpload import LoadResult, encode_post, run_closed_loop

HOST = "127.0.0.1"
ENDPOINT = {Task.TEXT_CLASSIFICATION: "classify", Task.TOKEN_CLASSIFICATION: "ner"}


@dataclass(frozen=True, slots=True)
class Config:
    name: str
    env: dict[str, str]


def configs(cpus: int) -> dict[str, Config]:
    every = str(cpus)
    return {
        "shared": Config("shared", {"BERTSERVE_INTRA_OP_THREADS": every}),
        "split": Config("split", {"BERTSERVE_CPU_BUDGET": every}),
        "turns": Config(
            "turns", {"BERTSERVE_INTRA_OP_THREADS": every, "BERTSERVE_MAX_CONCURRENT_BATCHES": "1"}
        ),
    }


@dataclass(frozen=True, slots=True)
class Row:
    config: str
    model: str
    threads: int | None
    result: LoadResult


def pick_models(repo: Path, names: Sequence[str] | None) -> dict[str, str]:
    """model name -> endpoint: the named models, else the first classification and NER model."""
    out: dict[str, str] = {}
    for name in names or list_models(repo):
        task = load_model_config(repo, name).task
        endpoint = ENDPOINT.get(task)
        if endpoint is None or (names is None and endpoint in out.values()):
            continue
        out[name] = endpoint
    if len(out) < 2:
        raise SystemExit(f"need two servable models in {repo}, found {sorted(out)}")
    return out


def requests_for(endpoint: str, model: str, port: int, limit: int, per_request: int) -> list[bytes]:
    texts = list((classify_corpus if endpoint == "classify" else ner_corpus)(limit).texts)
    bodies = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    path = f"/v1/models/{model}/{endpoint}"
    return [encode_post(HOST, port, path, {"inputs": inputs}) for inputs in bodies if inputs]


_THREADS = re.compile(r'^bertserve_backend_threads\{model="([^"]+)"\}\s+([0-9.e+]+)$', re.M)


def backend_threads(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): int(float(m.group(2))) for m in _THREADS.finditer(text)}


async def drive(
    requests: dict[str, list[bytes]], port: int, args: argparse.Namespace
) -> dict[str, LoadResult]:
    """Every model's closed loop at the same time."""
    loads = [
        run_closed_loop(HOST, port, r, args.users, args.duration, args.warmup) for r in requests.values()
    ]
    return dict(zip(requests, await asyncio.gather(*loads), strict=True))


def run_config(config: Config, models: dict[str, str], args: argparse.Namespace) -> list[Row]:
    port = free_port()
    cmd = [sys.executable, "-m", "bertserve.cli", "serve", "--repo", str(args.repo), "--port", str(port)]
    cmd += [part for model in models for part in ("--model", model)]
    cmd += ["--backend", args.backend]
    env = {"BERTSERVE_LOG_LEVEL": "warning", **config.env}
    with subprocess_server(cmd, port, f"service ({config.name})", env):
        threads = backend_threads(port)
        requests = {m: requests_for(e, m, port, args.texts, args.inputs) for m, e in models.items()}
        results = asyncio.run(drive(requests, port, args))
    return [Row(config.name, model, threads.get(model), result) for model, result in results.items()]


def table(rows: Sequence[Row]) -> str:
    lines = [
        f"{'config':<8} {'model':<12} {'threads':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'non-200':>8}",
    ]
    for row in rows:
        r = row.result
        bad = sum(n for code, n in r.codes.items() if code != 200) + r.errors
        lines.append(
            f"{row.config:<8} {row.model:<12} {row.threads or '-':>7} {r.throughput():>8.1f} "
            f"{r.percentile_ms(50):>8.1f} {r.percentile_ms(95):>8.1f} {bad:>8}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=Path("models"))
    parser.add_argument(
        "--models", default=None, help="comma-separated; default: one classify and one NER model"
    )
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--configs", default="shared,split,turns", help="of: shared, split, turns")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs to budget; default: those available")
    parser.add_argument("--users", type=int, default=8, help="concurrent clients per model")
    parser.add_argument("--inputs", type=int, default=4, help="texts per request")
    parser.add_argument("--texts", type=int, default=None, help="corpus texts used per model; default: all")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    cpus = args.cpus or available_cpus()
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    models = pick_models(args.repo, names)
    known = configs(cpus)
    chosen = [known[name.strip()] for name in args.configs.split(",") if name.strip()]
    print(
        f"models {models}, {cpus} CPUs, {args.users} users per model, {args.inputs} texts per request, "
        f"{args.duration:.0f} s per configuration",
        flush=True,
    )
    rows: list[Row] = []
    for config in chosen:
        rows += run_config(config, models, args)
        print(table([r for r in rows if r.config == config.name]).split("\n", 1)[1], flush=True)
    print()
    print(table(rows))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                [
                    {"config": r.config, "model": r.model, "threads": r.threads, **r.result.summary()}
                    for r in rows
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
