"""Side-by-side benchmark, in one run on one machine and one model.

    python -m loadtest.bench [--repo models] [--model sentiment] [--quick] [--profile]

1. Raw backend: the very backend object the service would build (same artifact, same threads),
   fed pre-tokenized sentences, padded to the longest of each batch, at batch sizes 1..64, with
   the process's CPU seconds per sequence. Only `backend.infer` is timed. The ceiling is the best
   batch size on length-sorted batches (the same sentences in length order: what a sorting
   batcher reaches at best); arrival-order batches are the second set of rows.
2. The service (`bertserve serve` on loopback), closed loop at 1, 4, 16, 64 and 128 clients, one
   sentence per request: throughput, p50/p95/p99, and the CPU seconds per request of the server
   process (all its threads, and its event-loop thread alone, from /proc) and of the load
   generator (this process). Then the paired ratios (below), with the raw backend on the batches
   the service's own planner cuts from windows of 64 arrivals (what batching reaches with 64
   requests in flight: where the gap to the ceiling is, batching's share or the serving code's);
   clients that send 8 and 32 inputs per request against the same ceiling; the same requests on
   the fake backend (no model: the serving code alone); then the model served as 1 backend
   session x 2 threads against 2 sessions x 1 thread (`BERTSERVE_INSTANCES`), at 1 and 64 clients.
3. A naive server (loadtest/naive_server.py: FastAPI + the transformers pipeline, one request per
   call) on the same checkpoint, driven by the same client.
4. Every backend/precision the export wrote (ORT fused fp32, portable ONNX fp32, ORT int8,
   OpenVINO fp32/int8/bf16), each through its own service at 64 clients and raw at the best batch,
   in one table with the export gate's agreement and eval change of each (model.yaml).
5. Open loop: the highest constant arrival rate with p95 under `--slo-ms` (loadtest/slo.py).
6. Padding efficiency (real / padded tokens) from the service's own /metrics counters.
7. Embeddings (`--embed-model`, default the demo's `embed`): raw backend vs `/embed`, in this run
   (loadtest/embed_bench.py).

Noise control: the machine is shared, so every ratio is computed from two measurements taken back
to back (sorted raw best batch then service at 64 clients, for throughput and for CPU per
sequence; raw batch 1 then service at 1 client; service then naive at 64 clients), repeated
`--repeats` times; the reported figure is the median, and
every repeat is kept in summary.json. Backend configurations are measured in interleaved rounds
with all their servers up (idle servers cost nothing), so a noisy minute hits them all alike.

Model: `--model` (default the demo `sentiment`); when it is not in the repository the bench falls
back to `minilm-sst2-untrained` (built by
`python -m bertserve.training.minilm_example --repo models`, which it runs if needed). The naive
server needs the PyTorch checkpoint: `--checkpoint PATH`, else
`<repo>/<model>/checkpoint/`, else (for the MiniLM example) the deterministic checkpoint rebuilt
into ~/.cache/bertserve/checkpoints; without one that phase is skipped and said so.
NOTE: the load client runs on the same cores as the server; it is lean (loadtest/httpload.py) but
not free, so the service figures are, if anything, pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
import platform
import random
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

from loadtest.corpus import Corpus, classify_corpus, sentence_file_corpus
from loadtest.httpload import LoadResult, encode_post, run_closed_loop, run_open_loop
from loadtest.report import (
    MULTI_INPUTS,
    BackendPoint,
    BenchRun,
    InstancesPoint,
    LoadPoint,
    RawPoint,
    gate_cells,
    layout_ceiling,
    write_results,
)
from loadtest.slo import RateProbe, find_max_rate

if TYPE_CHECKING:
    from bertserve.modelrepo import ModelConfig
    from bertserve.runtime.base import Backend
    from bertserve.runtime.collation import ModelInput

ROOT = Path(__file__).resolve().parent.parent
FALLBACK_MODEL = "minilm-sst2-untrained"
CHECKPOINT_CACHE = Path.home() / ".cache" / "bertserve" / "checkpoints"
RAW_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
COMPARE_CLIENTS = 64
MULTI_CLIENTS = 8  # clients of the several-inputs-per-request phase


@dataclass(frozen=True, slots=True)
class Budget:
    """Seconds per measurement. The defaults keep a full run near 13 minutes on 2 cores (with model
    loading), inside the 15-minute bound; `--quick` is for development only."""

    raw_s: float = 3.0  # per raw batch size
    level_s: float = 8.0  # per concurrency level
    warmup_s: float = 2.0  # before each closed-loop level (not counted)
    pair_s: float = 4.0  # each side of a paired ratio measurement
    repeats: int = 3  # paired repeats; the median is reported
    backend_s: float = 5.0  # each backend configuration per round
    backend_rounds: int = 2
    probe_s: float = 8.0  # each open-loop rate probe
    max_probes: int = 7
    naive_levels: tuple[int, ...] = (1, 16, 64)

    @classmethod
    def quick(cls) -> Budget:
        return cls(0.5, 2.0, 0.5, 1.5, 1, 1.5, 1, 2.0, 4, (1, 64))


# --- model, sentences, checkpoint ------------------------------------------------------------


def resolve_model(repo: Path, model: str, build_fallback: bool) -> str:
    from bertserve.modelrepo import RepositoryError, load_model_config

    try:
        load_model_config(repo, model)
        return model
    except RepositoryError as exc:
        print(f"bench: model {model!r} is not in {repo} ({exc})")
    try:
        load_model_config(repo, FALLBACK_MODEL)
        print(f"bench: falling back to {FALLBACK_MODEL!r} (the MiniLM-L6 example; its head is untrained)")
        return FALLBACK_MODEL
    except RepositoryError:
        pass
    if not build_fallback:
        raise SystemExit(
            f"bench: neither {model!r} nor {FALLBACK_MODEL!r} is in {repo}; build the demo (`make demo`) "
            f"or run `python -m bertserve.training.minilm_example --repo {repo}`"
        )
    print(
        f"bench: building {FALLBACK_MODEL!r} "
        f"(python -m bertserve.training.minilm_example --repo {repo}); takes minutes"
    )
    subprocess.run(
        [sys.executable, "-m", "bertserve.training.minilm_example", "--repo", str(repo)], check=True
    )
    return FALLBACK_MODEL


def find_checkpoint(repo: Path, model: str, explicit: Path | None) -> Path | None:
    """The PyTorch checkpoint the model was exported from, for the naive server."""
    if explicit is not None:
        if not (explicit / "config.json").is_file():
            raise SystemExit(f"bench: --checkpoint {explicit} has no config.json")
        return explicit
    beside = repo / model / "checkpoint"
    if (beside / "config.json").is_file():
        return beside
    if model == FALLBACK_MODEL:
        cached = CHECKPOINT_CACHE / FALLBACK_MODEL
        if not (cached / "config.json").is_file():
            # The example's checkpoint is deterministic (packaged backbone + seeded head), so
            # rebuilding it gives exactly the weights that were exported.
            from bertserve.training.minilm_example import build_checkpoint

            print(f"bench: rebuilding the {FALLBACK_MODEL} checkpoint into {cached}")
            build_checkpoint(cached)
        return cached
    return None


def served_model_arguments(description: str | None, seconds: float) -> argparse.ArgumentParser:
    """The options of the load scripts that serve one repository model (loadtest.protocols,
    loadtest.reload): repository, model, backend, duration, sentences; `model_and_sentences`
    resolves them."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=Path("models"))
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--sentences", type=int, default=400)
    parser.add_argument(
        "--data", type=Path, default=None, help="One sentence per line (default: built-in corpus)."
    )
    parser.add_argument("--build-fallback", action="store_true", help="Build the MiniLM example when absent.")
    return parser


def model_and_sentences(args: argparse.Namespace) -> tuple[str, list[str]]:
    model = resolve_model(args.repo, args.model, args.build_fallback)
    return model, list(load_sentences(args.data, args.sentences, seed=0).texts)


def load_sentences(data: Path | None, limit: int, seed: int) -> Corpus:
    corpus = sentence_file_corpus(data, limit) if data else classify_corpus(limit)
    texts = list(corpus.texts)
    random.Random(seed).shuffle(texts)
    return Corpus(tuple(texts), corpus.source)


# --- raw backend ------------------------------------------------------------------------------


class RawBench:
    """`backend.infer` alone on pre-collated batches of the benchmark's sentences."""

    def __init__(self, backend: Backend, config: ModelConfig, tokenizer_json: Path, sentences: Sequence[str]):
        from bertserve.runtime.collation import Collator
        from bertserve.service.tokenization import TextTokenizer

        self.backend = backend
        tokenizer = TextTokenizer(tokenizer_json, config.max_length)
        with_types = "token_type_ids" in backend.input_names
        self._inputs = [e.model_input(with_types) for e in tokenizer.encode(list(sentences), truncate=True)]
        self._collator = Collator(backend.input_names, config.pad_token_id)
        self._warmed: set[object] = set()  # batch sizes (and plans) whose every shape has run once

        self.sorted = False

    @property
    def sequences(self) -> int:
        return len(self._inputs)

    def sorted_by_length(self) -> RawBench:
        """The same backend and sentences in length order: batches of near-equal lengths, the
        ceiling a length-sorting batcher can reach."""
        twin = self.with_inputs(sorted(self._inputs, key=lambda x: x.length))
        twin.sorted = True
        return twin

    def with_inputs(self, inputs: Sequence[ModelInput]) -> RawBench:
        """The same backend on other sequences (another order, other lengths): its batches have
        other shapes, so none counts as warmed."""
        twin = copy.copy(self)
        twin._inputs = list(inputs)
        twin._warmed = set()
        return twin

    def measure(self, batch_size: int, seconds: float) -> RawPoint:
        """`backend.infer` on the sentences cut into batches of `batch_size`, timed over whole
        passes: at least one, and more while they end within half a pass of `seconds`, so every
        batch counts equally often. NOTE: a window cut mid-pass would overweight the batches at the start of
        the order, which in length order are the shortest: with a pass of ~2.4 s (batch 16,
        872 SST-2 sentences, 2 cores) a 4 s window made the sorted ceiling ~10 % faster than the
        same sentences run evenly. The first measurement of a batch size runs one untimed pass
        first, so that no shape's first run (kernel selection, memory planning) is timed."""
        inputs = self._inputs
        batches = [inputs[i : i + batch_size] for i in range(0, len(inputs) - batch_size + 1, batch_size)]
        return self._measure(batches, batch_size, seconds, label=batch_size)

    def measure_plan(self, window: int, limits: PlanLimits, seconds: float) -> RawPoint:
        """`backend.infer` on the batches the service's own planner cuts when it holds `window`
        requests at a time (`plan_windows`): what batching reaches with that many requests in
        flight if serving them cost nothing. Its `batch_size` is the mean batch, rounded."""
        batches = plan_windows(self._inputs, window, limits)
        mean = round(sum(len(b) for b in batches) / max(len(batches), 1))
        return self._measure(batches, ("plan", window), seconds, label=mean)

    def _measure(self, batches: list[list[ModelInput]], key: object, seconds: float, label: int) -> RawPoint:
        """`measure`'s timing of `batches`, warmed once per `key`; `label` is the point's batch size."""
        feeds = [self._collator.collate(b) for b in batches]
        if key not in self._warmed:
            for f, _, _ in feeds:
                self.backend.infer(f)
            self._warmed.add(key)
        times: list[float] = []
        real = padded = done = 0
        start = time.perf_counter()
        cpu = 0.0
        passes = 0
        sizes = [len(b) for b in batches]
        while True:
            for (f, r, p), n in zip(feeds, sizes, strict=True):
                c0, t0 = time.process_time(), time.perf_counter()
                self.backend.infer(f)
                times.append(time.perf_counter() - t0)
                cpu += time.process_time() - c0  # every thread of this process: the backend's pool
                real, padded, done = real + r, padded + p, done + n
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed + elapsed / passes / 2 > seconds:  # another pass would overrun by half of one
                break
        return RawPoint(
            label,
            done / sum(times),
            statistics.median(times) * 1000.0,
            real / max(padded, 1),
            self.sorted,
            round(1000.0 * cpu / done, 4),
        )


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """What the service's batcher cuts by (`BatchLimits` without the queue's own limits)."""

    max_batch_size: int
    max_batch_tokens: int
    min_padding_efficiency: float

    @classmethod
    def served(cls, config: ModelConfig, backend: str) -> PlanLimits:
        """The limits `bertserve serve` applies to `config` on `backend` with this environment's
        BERTSERVE_* settings (the bench's service inherits the same environment)."""
        from bertserve.service.settings import Settings

        settings = Settings()
        batching = settings.batching_for(config.batching)
        return cls(
            batching.max_batch_size, batching.max_batch_tokens, settings.padding_efficiency_for(backend)
        )


def plan_windows(inputs: Sequence[ModelInput], window: int, limits: PlanLimits) -> list[list[ModelInput]]:
    """The batches the service's batcher would cut if it held `window` requests of one input at a
    time: `inputs` in arrival order, in windows of `window`; within one, the batcher's own step
    (`plan_batch` around the oldest item left, over the items sorted by length) until the window
    is empty. A closed loop of `window` clients keeps about that many requests in the service, so
    this is the ceiling of its batching there: a sorting batcher cannot sort more than it holds.
    NOTE: a pessimistic edge and an optimistic one: the service's queue refills while a batch
    runs (more to choose from), but never holds all of its clients' requests at once (less)."""
    from bertserve.service.batching import plan_batch

    batches: list[list[ModelInput]] = []
    for start in range(0, len(inputs) - window + 1, window):
        pool = list(inputs[start : start + window])  # oldest first
        while pool:
            order = sorted(range(len(pool)), key=lambda i: pool[i].length)
            lengths = [pool[i].length for i in order]
            lo, hi = plan_batch(
                lengths,
                order.index(0),
                limits.max_batch_size,
                limits.max_batch_tokens,
                limits.min_padding_efficiency,
            )
            chosen = set(order[lo:hi])
            batches.append([pool[i] for i in order[lo:hi]])
            pool = [x for i, x in enumerate(pool) if i not in chosen]
    return batches


def open_raw(
    repo: Path,
    model: str,
    backend: str,
    precision: str | None,
    sentences: Sequence[str],
    threads: int | None = None,
) -> RawBench:
    """`threads`: the session's intra-op threads; default the service's (every CPU for one model)."""
    from bertserve.modelrepo import load_model_config, version_dir
    from bertserve.runtime.selection import BackendLoader
    from bertserve.service.settings import Settings

    settings = Settings.model_validate({"repo": repo, "backend": backend, "precision": precision})
    config = load_model_config(repo, model)
    vdir = version_dir(repo, model, config.default_version)
    opened = BackendLoader(settings.runtime_options(intra_op_threads=threads))(config, vdir)
    return RawBench(opened, config, vdir / "tokenizer.json", sentences)


# --- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], port: int, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{what} exited with {proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def subprocess_server(cmd: list[str], port: int, what: str, env: dict[str, str]) -> Iterator[int]:
    """Start a server, wait for /health/ready, yield its pid, stop it (SIGTERM, then SIGKILL)."""
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(proc, port, what)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_command(repo: Path, model: str, backend: str, precision: str | None, port: int) -> list[str]:
    cmd = [
        "bertserve",
        "serve",
        "--repo",
        str(repo),
        "--model",
        model,
        "--backend",
        backend,
        "--port",
        str(port),
    ]
    return [*cmd, "--precision", precision] if precision else cmd


def running_service(
    repo: Path,
    model: str,
    backend: str,
    precision: str | None,
    port: int,
    env: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[int]:
    """`env`: more BERTSERVE_* settings (e.g. instances and threads)."""
    cmd = [sys.executable, "-m", "bertserve.cli", *serve_command(repo, model, backend, precision, port)[1:]]
    what = f"service ({backend} {precision or 'default precision'})"
    return subprocess_server(cmd, port, what, {"BERTSERVE_LOG_LEVEL": "warning", **(env or {})})


_SAMPLE = re.compile(r"^(bertserve_(?:real|padded)_tokens_total)\{[^}]*\}\s+([0-9.e+]+)$", re.M)


def token_counters(port: int) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {m.group(1): float(m.group(2)) for m in _SAMPLE.finditer(text)}
    return values.get("bertserve_real_tokens_total", 0.0), values.get("bertserve_padded_tokens_total", 0.0)


# --- load -------------------------------------------------------------------------------------


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int, thread: int | None = None) -> float:
    """CPU seconds (user + system) the process has used so far, from /proc: every thread, or only
    `thread` (a thread id; the process id names its main thread)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path, encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime (fields 14 and 15)


def cpu_sample(server_pid: int | None) -> tuple[float, float, float]:
    """(server process CPU s, this process's CPU s, the server's main thread's CPU s): read at both
    ends of a counted window. The main thread of `bertserve serve` runs the event loop: HTTP,
    validation, tokenizing short inputs, heads, responses; the batch workers and the backend's
    threads are the rest of the process."""
    if not server_pid:
        return (0.0, time.process_time(), 0.0)
    return (process_cpu_s(server_pid), time.process_time(), process_cpu_s(server_pid, server_pid))


@dataclass
class Target:
    """A server and the pre-encoded requests it is driven with. `pid`: the server process, whose
    CPU time per request is then measured; `inputs`: sentences per request."""

    port: int
    requests: list[bytes]
    counts_tokens: bool = True
    pid: int | None = None
    inputs: int = 1

    @classmethod
    def classify(
        cls,
        port: int,
        model: str,
        sentences: Sequence[str],
        counts_tokens: bool = True,
        pid: int | None = None,
        inputs: int = 1,
    ) -> Target:
        path = f"/v1/models/{model}/classify"
        if inputs == 1:
            bodies: list[dict[str, object]] = [{"inputs": s} for s in sentences]
        else:
            bodies = [
                {"inputs": list(sentences[i : i + inputs])}
                for i in range(0, len(sentences) - inputs + 1, inputs)
            ]
        return cls(
            port, [encode_post("127.0.0.1", port, path, b) for b in bodies], counts_tokens, pid, inputs
        )

    def closed(self, clients: int, seconds: float, warmup_s: float) -> LoadPoint:
        before = token_counters(self.port) if self.counts_tokens else None
        res = asyncio.run(
            run_closed_loop(
                "127.0.0.1",
                self.port,
                self.requests,
                clients,
                seconds,
                warmup_s,
                probe=lambda: cpu_sample(self.pid),
            )
        )
        ratio = None
        if before is not None:
            after = token_counters(self.port)
            padded = after[1] - before[1]
            ratio = round((after[0] - before[0]) / padded, 4) if padded else None
        return load_point(clients, res, ratio, self.inputs, measured_server=self.pid is not None)

    def open(self, rate: float, seconds: float) -> RateProbe:
        res = asyncio.run(run_open_loop("127.0.0.1", self.port, self.requests, rate, seconds))
        failures = res.errors + sum(n for code, n in res.codes.items() if code != 200)
        return RateProbe(rate, res.percentile_ms(95), res.ok / max(res.elapsed_s, 1e-9), failures)


def load_point(
    clients: int,
    res: LoadResult,
    real_token_ratio: float | None,
    inputs: int = 1,
    *,
    measured_server: bool = False,
) -> LoadPoint:
    server_ms = client_ms = share = loop_ms = None
    if res.probed is not None and res.ok:
        Sample = tuple[float, float, float]
        (s0, c0, m0), (s1, c1, m1) = cast(tuple[Sample, Sample], res.probed)
        client_ms = round(1000.0 * (c1 - c0) / res.ok, 4)
        if measured_server:
            server_ms = round(1000.0 * (s1 - s0) / res.ok, 4)
            loop_ms = round(1000.0 * (m1 - m0) / res.ok, 4)
            total = (s1 - s0) + (c1 - c0)
            share = round((c1 - c0) / total, 4) if total > 0 else None
    return LoadPoint(
        clients=clients,
        throughput_rps=round(res.throughput(), 2),
        p50_ms=round(res.percentile_ms(50), 3),
        p95_ms=round(res.percentile_ms(95), 3),
        p99_ms=round(res.percentile_ms(99), 3),
        requests_ok=res.ok,
        errors=res.errors,
        codes=dict(res.codes),
        real_token_ratio=real_token_ratio,
        inputs_per_request=inputs,
        server_cpu_ms_per_request=server_ms,
        server_loop_cpu_ms_per_request=loop_ms,
        client_cpu_ms_per_request=client_ms,
        client_cpu_share=share,
    )


def show(name: str, p: LoadPoint) -> None:
    bad = p.errors + sum(n for c, n in p.codes.items() if c != 200)
    cpu = ""
    if p.server_cpu_ms_per_request is not None:
        cpu = f"  server CPU {p.server_cpu_ms_per_request:.3f} ms/req, client share {p.client_cpu_share}"
    per = f" x{p.inputs_per_request}" if p.inputs_per_request != 1 else ""
    print(
        f"  {name} {p.clients:>3} clients{per}: {p.throughput_rps:8.1f} req/s  p50 {p.p50_ms:7.2f}  "
        f"p95 {p.p95_ms:7.2f}  p99 {p.p99_ms:7.2f} ms  real/padded {p.real_token_ratio}  failed {bad}{cpu}"
    )


# --- backends and precisions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configuration:
    backend: str
    precision: str
    artifact: str  # format of the artifact the backend opens
    portable_only: bool = False  # hide the fused graph so ORT opens the portable one

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} ({self.artifact})"


def configurations(config: ModelConfig) -> list[Configuration]:
    """What the export wrote that a CPU backend can run, in the service's own preference order."""
    have = {(a.format.value, a.precision.value) for a in config.version.artifacts}
    found: list[Configuration] = []
    if ("onnx-optimized", "fp32") in have:
        found.append(Configuration("onnxruntime-cpu", "fp32", "onnx-optimized"))
    if ("onnx", "fp32") in have:
        found.append(
            Configuration("onnxruntime-cpu", "fp32", "onnx", portable_only=("onnx-optimized", "fp32") in have)
        )
    if ("onnx", "int8") in have or ("onnx-optimized", "int8") in have:
        found.append(Configuration("onnxruntime-cpu", "int8", "onnx"))
    if ("openvino", "fp32") in have:
        found.append(Configuration("openvino-cpu", "fp32", "openvino"))
    if ("openvino", "int8") in have:
        found.append(Configuration("openvino-cpu", "int8", "openvino"))
    if ("openvino", "bf16") in have:
        found.append(Configuration("openvino-cpu", "bf16", "openvino"))
    return found


def portable_view(repo: Path, model: str, into: Path) -> Path:
    """A repository holding `model` without its ORT-fused graph, so ORT CPU opens the portable one.

    Files are hard-linked (copied across file systems): the service refuses symlinks that leave
    the repository, and its sha256 check still runs on the real bytes.
    """
    from bertserve.modelrepo import load_model_config, save_model_config, version_dir

    config = load_model_config(repo, model)
    version = config.version
    kept = [a for a in version.artifacts if a.format.value != "onnx-optimized"]
    src, dst = (
        version_dir(repo, model, config.default_version),
        version_dir(into, model, config.default_version),
    )
    dst.mkdir(parents=True, exist_ok=True)
    for rel in [*version.tokenizer_files, *(f for a in kept for f in a.files)]:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        for extra in [src / rel] + ([(src / rel).with_suffix(".bin")] if rel.endswith(".xml") else []):
            link = target.parent / extra.name
            if not link.exists():
                try:
                    os.link(extra, link)
                except OSError:
                    shutil.copy2(extra, link)
    trimmed = version.model_copy(update={"artifacts": kept})
    save_model_config(into, config.model_copy(update={"versions": {config.default_version: trimmed}}))
    return into


# --- the run ----------------------------------------------------------------------------------


def locust_command(
    model: str, rate: float, clients: int, repo: Path, backend: str, precision: str | None
) -> str:
    serve = shlex.join(serve_command(repo, model, backend, precision, 8000))
    make = shlex.join(
        [
            "make",
            "loadtest",
            "HOST=http://127.0.0.1:8000",
            f"CLASSIFY_MODEL={model}",
            "TASK_MIX=classify=1",
            "INPUTS=1",
            f"USERS={clients}",
            f"SPAWN_RATE={clients}",
            f"RATE={rate:.0f}",
            "DURATION=60s",
        ]
    )
    return f"{serve} &  # wait for /health/ready, then:\n{make}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("models"))
    ap.add_argument("--model", default="sentiment")
    ap.add_argument("--backend", default="onnxruntime-cpu", help="backend of phases 1, 2, 3 and 5")
    ap.add_argument("--precision", default=None, help="auto | fp32 | int8 | bf16 (default: auto)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="PyTorch checkpoint for the naive server")
    ap.add_argument(
        "--data", type=Path, default=None, help="sentences: TSV with a `sentence` column, or one a line"
    )
    ap.add_argument("--sentences", type=int, default=872)
    ap.add_argument("--concurrency", default="1,4,16,64,128")
    ap.add_argument("--slo-ms", type=float, default=100.0, help="p95 target of the open-loop rate search")
    ap.add_argument(
        "--skip",
        default="",
        help="phases to leave out, comma-separated: no-model,instances,naive,backends,slo,embed",
    )
    ap.add_argument("--embed-model", default="embed", help="the feature-extraction model of phase 7")
    ap.add_argument("--quick", action="store_true", help="short phases for development (figures are rough)")
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the service under 64 clients (needs py-spy)"
    )
    ap.add_argument("--no-build", action="store_true", help="never build the fallback model")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget.quick() if args.quick else Budget()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.perf_counter()
    out = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    from bertserve.modelrepo import load_model_config

    model = resolve_model(args.repo, args.model, build_fallback=not args.no_build)
    config = load_model_config(args.repo, model)
    corpus = load_sentences(args.data, args.sentences, args.seed)
    sentences = list(corpus.texts)
    print(f"bench: model {model} in {args.repo}, backend {args.backend}, {len(sentences)} sentences")
    print(f"       from {corpus.source}; {os.cpu_count()} CPUs; budget {'quick' if args.quick else 'full'}")

    raw_bench = open_raw(args.repo, model, args.backend, args.precision, sentences)
    sorted_bench = raw_bench.sorted_by_length()
    raw, raw_sorted = measure_raw(raw_bench, sorted_bench, budget)
    best_bs = max(raw_sorted, key=lambda p: p.sequences_per_s).batch_size
    run = BenchRun(
        meta=run_meta(args, budget, model, corpus, raw_bench, best_bs),
        raw=raw,
        service=[],
        raw_sorted=raw_sorted,
    )

    port = free_port()
    with running_service(args.repo, model, args.backend, args.precision, port) as service_pid:
        target = Target.classify(port, model, sentences, pid=service_pid)
        measure_service(run, target, [int(x) for x in args.concurrency.split(",")], budget)
        limits = PlanLimits.served(config, raw_bench.backend.name)
        measure_pairs(run, sorted_bench, raw_bench, target, best_bs, budget, limits)
        measure_multi_input(run, sorted_bench, port, service_pid, model, sentences, best_bs, budget)
        if "no-model" not in skip:
            measure_no_model(run, args, model, sentences, budget)
        if "instances" not in skip:
            measure_instances(run, args, model, sentences, best_bs, budget)
        if args.profile:
            profile_service(service_pid, target, budget, out)
        if "naive" not in skip:
            measure_naive(run, args, model, sentences, target, budget)
        if "backends" not in skip:
            measure_backends(run, args.repo, model, config, sentences, best_bs, budget, out)
        if "slo" not in skip:
            run = search_slo(run, target, args, model, budget)
    raw_bench.backend.close()
    if "embed" not in skip:
        run.meta["embeddings"] = measure_embed_model(args, sentences, budget)

    run.meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    print_summary(write_results(out, run), run, budget, args.slo_ms, out)
    return 0


def measure_embed_model(args: argparse.Namespace, sentences: list[str], budget: Budget) -> object:
    """Phase 7 (loadtest/embed_bench.py) on `--embed-model` when the repository has it."""
    from bertserve.modelrepo import RepositoryError, Task, load_model_config
    from loadtest.embed_bench import measure_embeddings

    try:
        config = load_model_config(args.repo, args.embed_model)
    except RepositoryError:
        print(
            f"7. embeddings: SKIPPED, no model {args.embed_model!r} in {args.repo} "
            "(make demo-build makes one)"
        )
        return None
    if config.task != Task.FEATURE_EXTRACTION:
        print(f"7. embeddings: SKIPPED, {args.embed_model!r} is not a feature-extraction model")
        return None
    return measure_embeddings(args.repo, args.embed_model, args.backend, sentences, budget).summary()


def run_meta(
    args: argparse.Namespace, budget: Budget, model: str, corpus: Corpus, raw_bench: RawBench, best_bs: int
) -> dict[str, object]:
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "repo": str(args.repo),
        "backend": raw_bench.backend.name,
        "precision": str(raw_bench.backend.precision),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sentences": {"source": corpus.source, "count": len(corpus.texts)},
        "raw_best_batch_size": best_bs,  # of the length-sorted batches: the ceiling
        "compare_clients": COMPARE_CLIENTS,
        "budget": {"quick": args.quick, **{k: getattr(budget, k) for k in budget.__dataclass_fields__}},
    }


def measure_raw(
    raw_bench: RawBench, sorted_bench: RawBench, budget: Budget
) -> tuple[list[RawPoint], list[RawPoint]]:
    """(arrival order, length-sorted) rows, each batch size measured both ways back to back."""
    print("1. raw backend (backend.infer only; batches padded to their longest; sorted = length order)")
    raw: list[RawPoint] = []
    ordered: list[RawPoint] = []
    for bs in RAW_BATCH_SIZES:
        if bs > raw_bench.sequences:
            print(f"  raw batch {bs:>3}: SKIPPED, only {raw_bench.sequences} sentences")
            continue
        for bench, rows in ((sorted_bench, ordered), (raw_bench, raw)):
            p = bench.measure(bs, budget.raw_s)
            rows.append(p)
            print(
                f"  raw batch {bs:>3} {'sorted ' if p.sorted_by_length else 'arrival'}: "
                f"{p.sequences_per_s:8.1f} seq/s  p50 {p.p50_ms:7.2f} ms/batch  "
                f"real/padded {p.real_token_ratio:.3f}  CPU {p.cpu_ms_per_sequence:.3f} ms/seq"
            )
    return raw, ordered


def measure_service(run: BenchRun, target: Target, levels: Sequence[int], budget: Budget) -> None:
    print("2. service, closed loop, one sentence per request")
    for c in levels:
        run.service.append(target.closed(c, budget.level_s, budget.warmup_s))
        show("service", run.service[-1])


def measure_pairs(
    run: BenchRun,
    sorted_bench: RawBench,
    raw_bench: RawBench,
    target: Target,
    best_bs: int,
    budget: Budget,
    limits: PlanLimits,
) -> None:
    """Service against raw, back to back, so that both sides of each ratio see the same machine:
    throughput and CPU per sequence against the sorted ceiling, batch-1 latency against batch 1.
    Where the gap to the ceiling is: the raw backend on the service's own batch plans with
    `COMPARE_CLIENTS` requests in flight (`RawBench.measure_plan`: batching's share) against the
    ceiling, and the service against that (the share of the Python around the model and its
    threads), with the server's event-loop thread's CPU per request."""
    print(
        f"   {budget.repeats} paired repeats: sorted raw batch {best_bs} then service at {COMPARE_CLIENTS} "
        f"clients then raw on the service's batch plans for {COMPARE_CLIENTS} in flight; raw batch 1 "
        "then service at 1 client"
    )
    for _ in range(budget.repeats):
        raw = sorted_bench.measure(best_bs, budget.pair_s)
        s = target.closed(COMPARE_CLIENTS, budget.pair_s, 0.5)
        plan = raw_bench.measure_plan(COMPARE_CLIENTS, limits, budget.pair_s)
        r = raw.sequences_per_s
        run.service_vs_raw_pairs.append(round(s.throughput_rps / r, 4))
        run.planned_vs_raw_pairs.append(round(plan.sequences_per_s / r, 4))
        run.service_vs_planned_pairs.append(round(s.throughput_rps / plan.sequences_per_s, 4))
        if s.server_loop_cpu_ms_per_request is not None:
            run.server_loop_cpu_ms.append(s.server_loop_cpu_ms_per_request)
        if s.real_token_ratio is not None:
            run.real_token_ratios.append(s.real_token_ratio)
        cpu = ""
        if s.server_cpu_ms_per_request is not None and raw.cpu_ms_per_sequence:
            ratio = s.server_cpu_ms_per_request / raw.cpu_ms_per_sequence
            run.server_cpu_vs_raw_pairs.append(round(ratio, 4))
            cpu = (
                f"; server CPU/req over raw CPU/seq {run.server_cpu_vs_raw_pairs[-1]:.3f} "
                f"({s.server_cpu_ms_per_request:.3f} vs {raw.cpu_ms_per_sequence:.3f} ms)"
            )
        if s.client_cpu_share is not None:
            run.client_cpu_shares.append(s.client_cpu_share)
            cpu += f"; load generator {100 * s.client_cpu_share:.1f} % of the CPU"
        r1 = raw_bench.measure(1, budget.pair_s / 2).p50_ms
        s1 = target.closed(1, budget.pair_s / 2, 0.3).p50_ms
        run.latency_overhead_pairs.append(round(s1 - r1, 3))
        print(
            f"   service/raw {run.service_vs_raw_pairs[-1]:.3f} ({s.throughput_rps:.1f} vs {r:.1f}); "
            f"overhead {run.latency_overhead_pairs[-1]:.2f} ms ({s1:.2f} vs {r1:.2f}); "
            f"real/padded {s.real_token_ratio}{cpu}"
        )
        loop = s.server_loop_cpu_ms_per_request
        print(
            f"   gap: raw on the service's plans {plan.sequences_per_s:.1f} seq/s (mean batch "
            f"{plan.batch_size}, real/padded {plan.real_token_ratio:.3f}, "
            f"CPU {plan.cpu_ms_per_sequence} ms/seq) "
            f"= {run.planned_vs_raw_pairs[-1]:.3f} of the ceiling; service/plans "
            f"{run.service_vs_planned_pairs[-1]:.3f}; event loop {loop} of {s.server_cpu_ms_per_request} "
            "ms CPU/req"
        )


def measure_multi_input(
    run: BenchRun,
    sorted_bench: RawBench,
    port: int,
    pid: int,
    model: str,
    sentences: Sequence[str],
    best_bs: int,
    budget: Budget,
) -> None:
    """Clients that batch on their side: 8 and 32 sentences per request from `MULTI_CLIENTS`
    clients (64 and 256 sentences in flight), paired with the sorted raw ceiling."""
    print(
        f"   {MULTI_CLIENTS} clients sending {MULTI_INPUTS} inputs per request, "
        f"paired with sorted raw batch {best_bs}"
    )
    for k in MULTI_INPUTS:
        target = Target.classify(port, model, sentences, pid=pid, inputs=k)
        clients = MULTI_CLIENTS
        pairs = run.multi_input_pairs.setdefault(k, [])
        points = []
        for _ in range(budget.repeats):
            r = sorted_bench.measure(best_bs, budget.pair_s).sequences_per_s
            p = target.closed(clients, budget.pair_s, 0.5)
            points.append(p)
            pairs.append(round(p.sequences_per_s / r, 4))
            show("service", p)
            print(f"   service/raw {pairs[-1]:.3f} ({p.sequences_per_s:.1f} vs {r:.1f} seq/s)")
        run.multi_input.append(sorted(points, key=lambda p: p.throughput_rps)[len(points) // 2])


def measure_no_model(
    run: BenchRun, args: argparse.Namespace, model: str, sentences: Sequence[str], budget: Budget
) -> None:
    """The same requests served on the fake backend (no model file, logits computed for free):
    the serving code's own CPU per request at `COMPARE_CLIENTS` clients, with the cores to itself.
    Beside the event-loop CPU measured with the model it shows how much more the same code costs
    when it shares the cores with the backend (caches, preemption) than when it runs alone."""
    port = free_port()
    with running_service(args.repo, model, "fake", None, port) as pid:
        target = Target.classify(port, model, sentences, pid=pid)
        points = []
        for _ in range(budget.repeats):
            points.append(target.closed(COMPARE_CLIENTS, budget.pair_s, 0.5))
            p = points[-1]
            print(
                f"   no model (fake backend), {COMPARE_CLIENTS} clients: {p.throughput_rps:.1f} req/s, "
                f"server CPU {p.server_cpu_ms_per_request} ms/req (event loop "
                f"{p.server_loop_cpu_ms_per_request})"
            )
    run.no_model.append(sorted(points, key=lambda p: p.server_cpu_ms_per_request or 0.0)[len(points) // 2])


INSTANCE_LAYOUTS = ((1, 2), (2, 1))  # (backend sessions per model, intra-op threads per session)


def raw_layout(benches: Sequence[RawBench], batch_size: int, seconds: float) -> float:
    """Sequences/s of `benches` (one backend session each) run at once, each on its own thread
    over length-sorted batches: the raw ceiling of a layout of several sessions."""
    import threading

    results: list[RawPoint | None] = [None] * len(benches)

    def run_one(i: int) -> None:
        results[i] = benches[i].measure(batch_size, seconds)

    threads = [threading.Thread(target=run_one, args=(i,)) for i in range(len(benches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for r in results if r is not None]
    if len(done) != len(benches):  # a session's thread died: its error went to stderr
        raise RuntimeError(f"{len(benches) - len(done)} of {len(benches)} raw sessions failed")
    return sum(r.sequences_per_s for r in done)


def measure_instances(
    run: BenchRun,
    args: argparse.Namespace,
    model: str,
    sentences: Sequence[str],
    best_bs: int,
    budget: Budget,
) -> None:
    """The model as 1 session x 2 threads, as 2 sessions x 1 thread (`BERTSERVE_INSTANCES`) and
    in the adaptive layout (`BERTSERVE_INSTANCES=adaptive`: the first alone, the second under
    load), at 1 and 64 clients, in interleaved rounds with all servers up; in each round also the
    raw backend in each fixed layout (2 sessions: both run sorted batches at once), so that each
    layout's service is compared with its own ceiling and the best layout's ceiling bounds them
    all (the adaptive one's included)."""
    print(
        "   instances x threads per model: "
        + ", ".join(f"{i} x {t}" for i, t in INSTANCE_LAYOUTS)
        + ", adaptive"
    )
    levels = (1, COMPARE_CLIENTS)
    raws = {
        (i, t): [
            open_raw(args.repo, model, args.backend, args.precision, sentences, threads=t).sorted_by_length()
            for _ in range(i)
        ]
        for i, t in INSTANCE_LAYOUTS
    }
    raw_rounds: dict[tuple[int, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        targets: list[tuple[int, int, Target]] = []
        for instances, threads in INSTANCE_LAYOUTS:
            port = free_port()
            env = {"BERTSERVE_INSTANCES": str(instances), "BERTSERVE_INTRA_OP_THREADS": str(threads)}
            pid = stack.enter_context(
                running_service(args.repo, model, args.backend, args.precision, port, env)
            )
            targets.append((instances, threads, Target.classify(port, model, sentences, pid=pid)))
        port = free_port()
        pid = stack.enter_context(
            running_service(
                args.repo, model, args.backend, args.precision, port, {"BERTSERVE_INSTANCES": "adaptive"}
            )
        )
        adaptive = Target.classify(port, model, sentences, pid=pid)
        rounds: dict[tuple[int, int, int], list[LoadPoint]] = {}
        for _ in range(budget.backend_rounds):
            for instances, threads, target in [*targets, (0, 0, adaptive)]:
                if instances:
                    raw_rounds.setdefault((instances, threads), []).append(
                        raw_layout(raws[(instances, threads)], best_bs, budget.pair_s)
                    )
                for c in levels:
                    point = target.closed(c, budget.backend_s, 0.5)
                    rounds.setdefault((instances, threads, c), []).append(point)
        for benches in raws.values():
            for b in benches:
                b.backend.close()
        for instances, threads, _ in targets:
            kept = []
            for c in levels:
                points = sorted(rounds[(instances, threads, c)], key=lambda p: p.throughput_rps)
                kept.append(points[len(points) // 2])
                show(f"{instances} x {threads} ", kept[-1])
            raw = statistics.median(raw_rounds[(instances, threads)])
            print(
                f"   {instances} x {threads} raw, sorted batches of {best_bs}, sessions at once: "
                f"{raw:.1f} seq/s; "
                f"service at {COMPARE_CLIENTS} clients / this raw {kept[-1].throughput_rps / raw:.3f}"
            )
            run.instances.append(InstancesPoint(instances, threads, kept, round(raw, 2)))
        kept = [
            sorted(rounds[(0, 0, c)], key=lambda p: p.throughput_rps)[budget.backend_rounds // 2]
            for c in levels
        ]
        threads = max(t for _, t in INSTANCE_LAYOUTS)
        for k in kept:
            show("adaptive ", k)
        run.instances.append(InstancesPoint(threads, threads, kept, None, adaptive=True))
        ceiling = layout_ceiling(run.instances)
        print(
            f"   best served layout / best raw layout {ceiling['raw_best_layout']}: "
            f"{ceiling['best_layout_service_vs_raw']} (the honest ceiling of this machine)"
        )


def search_slo(
    run: BenchRun, target: Target, args: argparse.Namespace, model: str, budget: Budget
) -> BenchRun:
    print(f"5. open loop: highest rate with p95 <= {args.slo_ms:g} ms")
    start = 0.7 * max(p.throughput_rps for p in run.service)
    search = find_max_rate(
        lambda rate: _show_probe(target.open(rate, budget.probe_s)),
        slo_p95_ms=args.slo_ms,
        start_rate=max(start, 1.0),
        max_probes=budget.max_probes,
    )
    run = replace(run, slo=search)
    if search.max_rate is None:
        return run
    command = locust_command(
        model, int(search.max_rate), COMPARE_CLIENTS, args.repo, args.backend, args.precision
    )
    return replace(run, locust_command=command)


def print_summary(
    summary: dict[str, object], run: BenchRun, budget: Budget, slo_ms: float, out: Path
) -> None:
    print()
    print(
        f"service_vs_raw = {summary['service_vs_raw']} (at {COMPARE_CLIENTS} clients over the sorted raw "
        f"ceiling of {summary['raw_ceiling_sequences_per_s']} seq/s; median of {budget.repeats} pairs; "
        "goal >= 0.85)"
    )
    print(
        f"server_cpu_vs_raw = {summary['server_cpu_vs_raw']} (server CPU per request over raw CPU per "
        f"sequence; goal <= 1.15); load generator's CPU share {summary['client_cpu_share']}"
    )
    print(
        f"  the gap: planned_raw_vs_raw = {summary['planned_raw_vs_raw']} (raw on the service's own batch "
        f"plans with {COMPARE_CLIENTS} in flight, over the ceiling: batching's share), "
        f"service_vs_planned_raw = {summary['service_vs_planned_raw']} (the serving code's share); "
        f"event loop {summary['server_loop_cpu_ms_per_request']} ms CPU per request; without a model "
        f"(fake backend) {summary['no_model_server_cpu_ms_per_request']} ms"
    )
    for k in MULTI_INPUTS:
        key = f"service_vs_raw_{k}_inputs"
        print(f"{key} = {summary[key]}" + (" (goal >= 0.95)" if k == 32 else ""))
    if summary.get("raw_best_layout"):
        print(
            f"best_layout_service_vs_raw = {summary['best_layout_service_vs_raw']} (best served layout "
            f"over the best raw layout, {summary['raw_best_layout']}: the ceiling of this machine, not "
            "only of one session)"
        )
    print(f"service_vs_naive = {summary['service_vs_naive']} (goal >= 5)")
    print(f"latency_overhead_ms = {summary['latency_overhead_ms']} (batch-1 p50, service - raw; goal <= 1.0)")
    print(f"real_token_ratio = {summary['real_token_ratio']} (at {COMPARE_CLIENTS} clients; goal >= 0.85)")
    print(f"best_backend = {summary['best_backend']}")
    print(f"max_rate_at_slo = {summary['max_rate_at_slo']} req/s (p95 <= {slo_ms:g} ms)")
    if run.locust_command:
        print(f"\n60-second Locust check at that rate:\n{run.locust_command}")
    print(f"\nwritten to {out}/ (summary.json, report.md, *.png) in {run.meta['elapsed_s']} s")


def _show_probe(p: RateProbe) -> RateProbe:
    print(
        f"  rate {p.rate:7.1f} req/s: p95 {p.p95_ms:8.2f} ms, "
        f"achieved {p.achieved_rps:7.1f} req/s, failed {p.failures}"
    )
    return p


def measure_naive(
    run: BenchRun, args: argparse.Namespace, model: str, sentences: list[str], target: Target, budget: Budget
) -> None:
    checkpoint = find_checkpoint(args.repo, model, args.checkpoint)
    if checkpoint is None:
        print(
            f"3. naive server: SKIPPED, no PyTorch checkpoint for {model!r} (pass --checkpoint PATH, or keep "
            f"the fine-tuned checkpoint in {args.repo / model / 'checkpoint'})"
        )
        return
    print(f"3. naive server (FastAPI + transformers pipeline, no batching) on {checkpoint}")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "loadtest.naive_server",
        "--checkpoint",
        str(checkpoint),
        "--model",
        model,
        "--port",
        str(port),
    ]
    with subprocess_server(cmd, port, "naive server", {"PYTHONPATH": str(ROOT)}):
        naive = Target.classify(port, model, sentences, counts_tokens=False)
        for c in budget.naive_levels:
            run.naive.append(naive.closed(c, budget.level_s, budget.warmup_s))
            show("naive  ", run.naive[-1])
        for _ in range(budget.repeats):  # back to back, so both sides see the same machine
            s = target.closed(COMPARE_CLIENTS, budget.pair_s, 0.5).throughput_rps
            n = naive.closed(COMPARE_CLIENTS, budget.pair_s, 0.5).throughput_rps
            run.service_vs_naive_pairs.append(round(s / n, 3) if n else float("nan"))
            print(f"   service/naive {run.service_vs_naive_pairs[-1]} ({s:.1f} vs {n:.1f} req/s)")


def measure_backends(
    run: BenchRun,
    repo: Path,
    model: str,
    config: ModelConfig,
    sentences: list[str],
    best_bs: int,
    budget: Budget,
    out: Path,
) -> None:
    configs = configurations(config)
    print(
        f"4. backends and precisions at {COMPARE_CLIENTS} clients, {budget.backend_rounds} interleaved "
        f"rounds: {', '.join(c.label for c in configs)}"
    )
    view: Path | None = None
    with contextlib.ExitStack() as stack:
        targets: list[tuple[Configuration, Target, RawBench]] = []
        for cfg in configs:
            where = repo
            if cfg.portable_only:
                view = view or portable_view(repo, model, out / "portable-repo")
                where = view
            port = free_port()
            stack.enter_context(running_service(where, model, cfg.backend, cfg.precision, port))
            raw = open_raw(where, model, cfg.backend, cfg.precision, sentences)
            stack.callback(raw.backend.close)
            # the sorted ceiling of each configuration, at the main sweep's best (sorted) batch size
            targets.append((cfg, Target.classify(port, model, sentences), raw.sorted_by_length()))
        service: dict[str, list[LoadPoint]] = {c.label: [] for c in configs}
        raw_rates: dict[str, list[float]] = {c.label: [] for c in configs}
        for _ in range(budget.backend_rounds):
            for cfg, target, raw in targets:
                service[cfg.label].append(target.closed(COMPARE_CLIENTS, budget.backend_s, 0.5))
                raw_rates[cfg.label].append(raw.measure(best_bs, budget.backend_s / 2).sequences_per_s)
        print(
            f"  {'configuration':<42} {'service req/s':>13} {'p95 ms':>7} {'raw seq/s':>10} "
            f"{'agreement':>9} {'eval pt':>8} gate"
        )
        for cfg, _, _ in targets:
            points = sorted(service[cfg.label], key=lambda p: p.throughput_rps)
            middle = points[len(points) // 2]  # the median round, kept whole
            gate = next(
                (
                    a.gate
                    for a in config.version.artifacts
                    if a.gate is not None
                    and a.precision == cfg.precision
                    and (a.format.value == "openvino") == (cfg.backend == "openvino-cpu")
                ),
                None,
            )
            point = BackendPoint(
                cfg.label,
                cfg.backend,
                cfg.precision,
                cfg.artifact,
                middle,
                round(statistics.median(raw_rates[cfg.label]), 2),
                agreement=gate.agreement if gate is not None else None,
                drop_points=gate.drop_points if gate is not None else None,
                gate_passed=gate.passed if gate is not None else None,
            )
            run.backends.append(point)
            print(
                f"  {cfg.label:<42} {middle.throughput_rps:13.1f} {middle.p95_ms:7.1f} "
                f"{point.raw_sequences_per_s:10.1f} {gate_cells(point).replace(' | ', '  ')}"
            )
    if view is not None:
        shutil.rmtree(view, ignore_errors=True)


def profile_service(pid: int, target: Target, budget: Budget, out: Path) -> None:
    """py-spy the service while 64 clients load it; the collapsed stacks are kept and summarised by stage."""
    # `make bench` runs the venv's python without the venv on PATH: its own py-spy comes first.
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.is_file() else shutil.which("py-spy")
    if spy is None:
        print("   profile: SKIPPED, py-spy is not installed (pip install py-spy)")
        return
    out.mkdir(parents=True, exist_ok=True)
    seconds = max(int(budget.level_s), 2)
    print(f"   profile: py-spy record of the service at {COMPARE_CLIENTS} clients for {seconds} s")
    stacks = out / "profile-service-64.txt"
    # --nonblocking: sample without pausing the server, so the profile does not slow what it measures.
    cmd = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(stacks),
        "--threads",
        "--nonblocking",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    target.closed(COMPARE_CLIENTS, seconds + 1, 0.0)
    proc.wait(timeout=60)
    from loadtest.profiling import summarize_collapsed

    if stacks.is_file():
        print(summarize_collapsed(stacks.read_text(encoding="utf-8")).render())


if __name__ == "__main__":
    sys.exit(main())
