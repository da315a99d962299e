"""`make gpu-check`: prove or disprove the GPU path in one run of a few minutes.

    python -m loadtest.gpu_check [--work DIR] [--demo-repo DIR] [--seconds 3]
    python -m loadtest.gpu_check --host-ceiling [--repo DIR --model NAME]   # no GPU needed

Nothing is downloaded. Phases, each in its own process with its own timeout (a hung or crashing
TensorRT build costs its phase, not the run; what a phase could not do is printed):

1. detect: the GPU (name, memory) and what onnxruntime offers; without a GPU the script stops
   at once with what is missing (exit code 2).
2. build: random-weight checkpoints of BERT-base size (12 x 768, the packaged MiniLM's
   tokenizer) and the packaged MiniLM-L6 (real encoder, random head), plus the demo models'
   checkpoints when a demo repository is there, exported with `--fp16` at max_length 128.
3. parity: every model's CPU fp32 logits (ORT CPU, the fused graph) against CUDA fp32, CUDA
   fp16 (the fp16 graph) and TensorRT fp16 (the portable graph, trt_fp16), each opened by the
   service's own loader (IOBinding, bucket profiles and their warm-up), on real sentences.
4. raw: `backend.infer` throughput of each GPU configuration at 64 x 128 tokens and on SST-2
   sentences (length-sorted batches of 64, padded as the service pads them).
5. service: `bertserve serve` on loopback, closed loop, 8 texts a request, at 128 tokens and at
   SST-2 lengths, on ONNX Runtime CUDA, on TensorRT and on the fake backend (the host-side
   ceiling of one process: tokenize + batch + respond with an instant model).

The table gives sequences/s, and for BERT-base at 128 tokens the achieved TFLOP/s and its ratio
to the GPU's dense fp16 tensor peak (`PEAK_FP16_TFLOPS`; BERT-base at 128 tokens is
`bert_flops_per_sequence(...)` = 22.4 GFLOP a sequence).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# --- pure parts (unit-tested on CPU) -------------------------------------------------------------

# Dense (no sparsity) fp16/bf16 tensor-core peak, TFLOP/s, by the name nvidia-smi reports.
PEAK_FP16_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "T4": 65.0,
}
BERT_BASE = {"layers": 12, "hidden": 768, "intermediate": 3072}
# (phase, timeout in seconds): together under 8 minutes with the detection
PHASES: tuple[tuple[str, float], ...] = (
    ("build", 120.0),
    ("parity", 100.0),
    ("raw", 80.0),
    ("service", 150.0),
)
CUDA_FP32_ATOL = 5e-3  # ORT CUDA may run fp32 MatMuls as TF32 (10-bit mantissa)
PEAK_NOTE = "peak: dense fp16 tensor-core TFLOP/s"


def bert_flops_per_sequence(layers: int, hidden: int, intermediate: int, tokens: int) -> float:
    """Multiply-adds x 2 of one sequence through the encoder: per layer the Q, K, V and output
    projections (4 h^2 per token), the feed-forward (2 h i per token) and the attention scores and
    weighted sum (2 n^2 h); embeddings, softmax and layer norms are negligible."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * tokens**2 * hidden
    return float(layers * per_layer)


def peak_tflops(gpu_name: str) -> float | None:
    """The table's peak for the longest key contained in the GPU's name; None when unknown."""
    matches = [key for key in PEAK_FP16_TFLOPS if key.lower() in gpu_name.lower()]
    return PEAK_FP16_TFLOPS[max(matches, key=len)] if matches else None


def gpu_problem(cuda_devices: int, providers: frozenset[str]) -> str | None:
    """Why this machine cannot run the check, or None."""
    if cuda_devices == 0:
        return "no NVIDIA GPU is visible (no CUDA driver or no device): run `make gpu-check` on a GPU machine"
    if "CUDAExecutionProvider" not in providers:
        return (
            "onnxruntime has no CUDAExecutionProvider: install onnxruntime-gpu "
            "(`pip uninstall -y onnxruntime && pip install 'bertserve[gpu]'`)"
        )
    return None


@dataclass(frozen=True)
class Row:
    model: str
    path: str  # raw / service, and the backend
    shape: str  # "64x128" or "sst2"
    seq_per_s: float
    ms_per_batch: float | None = None
    vs_raw: float | None = None  # service / raw at the same shape and backend
    flops_per_seq: float | None = None  # known for the BERT-base rows at a fixed length


def achieved(row: Row, peak: float | None) -> tuple[str, str]:
    """(TFLOP/s, % of peak) as printed; '-' where not known."""
    if row.flops_per_seq is None:
        return "-", "-"
    tflops = row.seq_per_s * row.flops_per_seq / 1e12
    return f"{tflops:.1f}", (f"{100 * tflops / peak:.1f}%" if peak else "-")


def render_table(rows: Sequence[Row], peak: float | None) -> str:
    head = ("model", "path", "shape", "seq/s", "ms/batch", "TFLOP/s", "of peak", "vs raw")
    body = []
    for r in rows:
        tflops, share = achieved(r, peak)
        body.append(
            (
                r.model,
                r.path,
                r.shape,
                f"{r.seq_per_s:,.0f}",
                "-" if r.ms_per_batch is None else f"{r.ms_per_batch:.2f}",
                tflops,
                share,
                "-" if r.vs_raw is None else f"{r.vs_raw:.2f}",
            )
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def with_service_ratios(rows: Sequence[Row]) -> list[Row]:
    """Each service row with its ratio to the raw row of the same model, backend and shape."""
    raw = {
        (r.model, r.path.removeprefix("raw "), r.shape): r.seq_per_s
        for r in rows
        if r.path.startswith("raw ")
    }
    out = []
    for r in rows:
        base = raw.get((r.model, r.path.removeprefix("service "), r.shape))
        if r.path.startswith("service ") and base:
            r = Row(**{**asdict(r), "vs_raw": r.seq_per_s / base})
        out.append(r)
    return out


# --- phases (run in child processes) -------------------------------------------------------------

MAX_LENGTH = 128
MAX_BATCH = 64
GPU_PATHS = (("onnxruntime-cuda", "fp32"), ("onnxruntime-cuda", None), ("tensorrt", None))
# served at their default precision (fp16 on both): service ÷ raw per GPU path
SERVICE_BACKENDS = ("onnxruntime-cuda", "tensorrt")


def _path_name(backend: str, precision: str | None) -> str:
    if backend == "tensorrt":
        return "tensorrt fp16"
    return f"cuda {precision or 'fp16'}"


def _runtime_env(work: Path) -> dict[str, str]:
    """The settings every phase and server uses: one engine cache, the check's batch limits."""
    return {
        "BERTSERVE_TENSORRT_CACHE_DIR": str(work / "trt-cache"),
        "BERTSERVE_MAX_BATCH_SIZE": str(MAX_BATCH),
        "BERTSERVE_MAX_BATCH_TOKENS": str(MAX_BATCH * MAX_LENGTH),
    }


def _save(work: Path, phase: str, result: dict[str, Any]) -> dict[str, Any]:
    """Write what a phase has so far: a phase killed by its timeout still reports its part."""
    (work / f"{phase}.json").write_text(json.dumps(result, indent=2))
    return result


def phase_detect() -> dict[str, Any]:
    from bertserve.runtime.selection import Environment

    env = Environment.probe()
    info: dict[str, Any] = {
        "providers": sorted(env.ort_providers),
        "cuda_devices": env.cuda_devices,
        "tensorrt": env.tensorrt_version or ("found" if env.tensorrt_library else None),
        "problem": gpu_problem(env.cuda_devices, env.ort_providers),
        "tensorrt_problem": env.tensorrt_problem(),
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
        info["gpu"] = out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = "unknown (nvidia-smi unavailable)"
    return info


def _random_bert_base(path: Path) -> Path:
    """BERT-base dimensions, random weights, the packaged MiniLM's (BERT uncased) tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bertserve.training.minilm_example import backbone_dir

    torch.manual_seed(0)
    labels = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
    config = BertConfig(num_labels=2, **labels)  # type: ignore[no-untyped-call]
    BertForSequenceClassification(config).eval().save_pretrained(path)  # type: ignore[no-untyped-call]
    AutoTokenizer.from_pretrained(backbone_dir()).save_pretrained(path)  # type: ignore[no-untyped-call]
    return path


def phase_build(work: Path, demo_repo: Path | None) -> dict[str, Any]:
    from bertserve.export.exporter import ExportOptions, run_export
    from bertserve.training.minilm_example import build_checkpoint

    checkpoints = work / "checkpoints"
    sources: dict[str, tuple[Path, str]] = {
        "bert-base": (_random_bert_base(checkpoints / "bert-base"), "text-classification"),
        "minilm": (build_checkpoint(checkpoints / "minilm"), "text-classification"),
    }
    for name, task in (("sentiment", "text-classification"), ("ner", "token-classification")):
        ckpt = demo_repo / name / "checkpoint" if demo_repo else None
        if ckpt is not None and (ckpt / "config.json").is_file():
            sources[f"demo-{name}"] = (ckpt, task)
    built: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for name, (ckpt, task) in sources.items():
        options = ExportOptions(
            model=str(ckpt),
            task=task,
            name=name,
            repo=work / "repo",
            formats=("onnx",),
            fp16=True,
            max_length=MAX_LENGTH,
            measure_speed=False,
            quiet=True,
        )
        try:
            result = run_export(options)
        except Exception as exc:  # report and go on: one model's failure must not hide the others
            failed[name] = f"{type(exc).__name__}: {exc}"
            continue
        fp16 = [a for a in result.report.artifacts if a.precision.value == "fp16"]
        built.append({"model": name, "fp16_cpu_max_abs_diff": fp16[0].max_abs_diff if fp16 else None})
        _save(work, "build", {"built": built, "failed": failed})
    return {"built": built, "failed": failed}


def _texts(limit: int = 256) -> tuple[list[str], str]:
    from loadtest.corpus import classify_corpus

    corpus = classify_corpus(limit=limit)
    texts = list(corpus.texts)
    # the project's own corpus (no SST-2 here) is small: repeated, so every batch size can be cut
    return [texts[i % len(texts)] for i in range(max(limit, len(texts)))], corpus.source


def _open(work: Path, model: str, backend: str, precision: str | None) -> Any:
    from loadtest.bench import open_raw

    return open_raw(work / "repo", model, backend, precision, _texts()[0])


def phase_parity(work: Path) -> dict[str, Any]:
    import numpy as np

    from bertserve.export.options import FP16_ATOL
    from bertserve.modelrepo import list_models

    results: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    tolerances = {"cuda fp32": CUDA_FP32_ATOL, "cuda fp16": FP16_ATOL, "tensorrt fp16": FP16_ATOL}
    for model in list_models(work / "repo"):
        reference = _open(work, model, "onnxruntime-cpu", "fp32")
        inputs = reference._inputs[:64]
        batches = [reference._collator.collate(inputs[i : i + 16]) for i in range(0, len(inputs), 16)]
        expected = [reference.backend.infer(feeds) for feeds, _, _ in batches]
        reference.backend.close()
        for backend, precision in GPU_PATHS:
            name = _path_name(backend, precision)
            try:
                bench = _open(work, model, backend, precision)
                got = [bench.backend.infer(feeds) for feeds, _, _ in batches]
                bench.backend.close()
            except Exception as exc:
                failed[f"{model} {name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            diffs, agree, total = [], 0, 0
            for (feeds, _, _), e, g in zip(batches, expected, got, strict=True):
                real = feeds["attention_mask"].astype(bool) if e.ndim == 3 else slice(None)
                diffs.append(float(np.abs(e[real] - g[real]).max()))
                agree += int((e[real].argmax(-1) == g[real].argmax(-1)).sum())
                total += int(e[real].argmax(-1).size)
            worst = max(diffs)
            results.append(
                {
                    "model": model,
                    "path": name,
                    "max_abs_diff": worst,
                    "agreement": agree / total,
                    "tolerance": tolerances[name],
                    "passed": worst <= tolerances[name],
                }
            )
            _save(work, "parity", {"parity": results, "failed": failed})
    return {"parity": results, "failed": failed}


def fixed_length(bench: Any, tokens: int) -> Any:
    """The same raw bench with every sequence resized to exactly `tokens` tokens (its ids
    repeated): the fixed-shape point that FLOP figures are quoted at."""
    import numpy as np

    from bertserve.runtime.collation import ModelInput

    return bench.with_inputs([ModelInput(np.resize(x.ids, tokens)) for x in bench._inputs])


def phase_raw(work: Path, seconds: float) -> dict[str, Any]:
    from bertserve.modelrepo import list_models

    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for model in [m for m in ("bert-base", "minilm") if m in list_models(work / "repo")]:
        for backend, precision in GPU_PATHS:
            name = _path_name(backend, precision)
            try:
                bench = _open(work, model, backend, precision)
                point = fixed_length(bench, MAX_LENGTH).measure(MAX_BATCH, seconds)
                rows.append(asdict(_raw_row(model, name, f"{MAX_BATCH}x{MAX_LENGTH}", point, MAX_LENGTH)))
                point = bench.sorted_by_length().measure(MAX_BATCH, seconds)
                rows.append(asdict(_raw_row(model, name, "sst2", point, None)))
                bench.backend.close()
            except Exception as exc:
                failed[f"{model} {name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            _save(work, "raw", {"rows": rows, "failed": failed})
    return {"rows": rows, "failed": failed}


def _raw_row(model: str, path: str, shape: str, point: Any, tokens: int | None) -> Row:
    flops = bert_flops_per_sequence(tokens=tokens, **BERT_BASE) if model == "bert-base" and tokens else None
    return Row(model, f"raw {path}", shape, point.sequences_per_s, point.p50_ms, None, flops)


def _request_bodies(texts: Sequence[str], per_request: int) -> list[dict[str, object]]:
    return [
        {"inputs": list(texts[i : i + per_request])}
        for i in range(0, len(texts) - per_request + 1, per_request)
    ]


def long_texts(count: int, words: int = 200) -> list[str]:
    """Texts longer than MAX_LENGTH tokens (truncated by the service to exactly MAX_LENGTH)."""
    vocabulary = ("the", "film", "was", "good", "and", "i", "liked", "it", "very", "much")
    return [" ".join(vocabulary[(i + k) % len(vocabulary)] for k in range(words)) for i in range(count)]


def measure_service(
    repo: Path,
    model: str,
    backend: str,
    env: dict[str, str],
    seconds: float,
    clients: int = 64,
    per_request: int = 8,
) -> dict[str, float]:
    """Sequences/s through `bertserve serve` at 128 tokens and at SST-2 lengths."""
    from loadtest import bench
    from loadtest.httpload import encode_post, run_closed_loop

    port = bench.free_port()
    cmd = [sys.executable, "-m", "bertserve.cli", *bench.serve_command(repo, model, backend, None, port)[1:]]
    path = f"/v1/models/{model}/classify"
    out = {}
    with bench.subprocess_server(
        cmd, port, f"service ({backend})", {"BERTSERVE_LOG_LEVEL": "warning", **env}
    ):
        for shape, texts in (("128", long_texts(512)), ("sst2", _texts(1024)[0])):
            raw = [encode_post("127.0.0.1", port, path, body) for body in _request_bodies(texts, per_request)]
            result = asyncio.run(run_closed_loop("127.0.0.1", port, raw, clients, seconds, warmup_s=1.0))
            if result.errors or set(result.codes) - {200}:
                raise RuntimeError(f"service answered {result.codes} ({result.errors} errors)")
            out[shape] = result.throughput() * per_request
    return out


def phase_service(work: Path, seconds: float) -> dict[str, Any]:
    from bertserve.modelrepo import list_models

    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    env = _runtime_env(work)
    served = [m for m in ("bert-base", "minilm") if m in list_models(work / "repo")]
    plan = [(m, b) for m in served for b in SERVICE_BACKENDS]
    for model, backend in [*plan, (served[0] if served else "", "fake")]:
        if not model:
            break
        try:
            figures = measure_service(work / "repo", model, backend, env, seconds)
        except Exception as exc:
            # the end of a server's stderr holds its error; the start only the traceback's frames
            failed[f"{model} service {backend}"] = f"{type(exc).__name__}: {str(exc)[-600:]}"
            continue
        gpu = backend != "fake"
        path = f"service {_path_name(backend, None)}" if gpu else "service fake (host ceiling)"
        name = model if gpu else "any"
        for shape, value in figures.items():
            key = f"{MAX_BATCH}x{MAX_LENGTH}" if shape == "128" else shape
            flops = (
                bert_flops_per_sequence(tokens=MAX_LENGTH, **BERT_BASE)
                if name == "bert-base" and shape == "128"
                else None
            )
            rows.append(asdict(Row(name, path, key, value, None, None, flops)))
        _save(work, "service", {"rows": rows, "failed": failed})
    return {"rows": rows, "failed": failed}


# --- the driver --------------------------------------------------------------------------------


def run_phase(
    name: str, timeout_s: float, work: Path, extra: Sequence[str]
) -> tuple[dict[str, Any] | None, str]:
    """One phase in a child process; (its JSON result or None, what went wrong)."""
    out = work / f"{name}.json"
    cmd = [sys.executable, "-m", "loadtest.gpu_check", "--phase", name, "--work", str(work), *extra]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, **_runtime_env(work)}
        )
    except subprocess.TimeoutExpired:
        partial: dict[str, Any] | None = json.loads(out.read_text()) if out.is_file() else None
        return partial, f"timed out after {timeout_s:.0f} s" + (
            " (its results so far are shown)" if partial else ""
        )
    took = time.monotonic() - start
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return None, f"exit {proc.returncode} after {took:.0f} s: " + " | ".join(tail)
    result: dict[str, Any] = json.loads(out.read_text())
    return result, ""


def child(args: argparse.Namespace) -> int:
    work = Path(args.work)
    phases: dict[str, Callable[[], dict[str, Any]]] = {
        "build": lambda: phase_build(work, Path(args.demo_repo) if args.demo_repo else None),
        "parity": lambda: phase_parity(work),
        "raw": lambda: phase_raw(work, args.seconds),
        "service": lambda: phase_service(work, args.seconds),
    }
    _save(work, args.phase, phase_detect() if args.phase == "detect" else phases[args.phase]())
    return 0


def report(detect: dict[str, Any], results: dict[str, dict[str, Any] | None], problems: list[str]) -> str:
    lines = [f"GPU: {detect.get('gpu')}; TensorRT: {detect.get('tensorrt') or 'none'}"]
    if detect.get("tensorrt_problem"):
        lines.append(f"TensorRT unavailable: {detect['tensorrt_problem']}")
    peak = peak_tflops(str(detect.get("gpu", "")))
    for entry in (results.get("parity") or {}).get("parity", []):
        verdict = "ok" if entry["passed"] else "FAILED"
        lines.append(
            f"parity {entry['model']:<15} {entry['path']:<14} max|diff| {entry['max_abs_diff']:.2e} "
            f"(tolerance {entry['tolerance']:.0e}) argmax agreement {entry['agreement']:.2%}  {verdict}"
        )
    rows = [Row(**r) for phase in ("raw", "service") for r in (results.get(phase) or {}).get("rows", [])]
    if rows:
        lines += ["", render_table(with_service_ratios(rows), peak)]
        flops = bert_flops_per_sequence(tokens=MAX_LENGTH, **BERT_BASE) / 1e9
        lines.append(
            f"BERT-base at {MAX_LENGTH} tokens: {flops:.1f} GFLOP a sequence; "
            + (f"{PEAK_NOTE} {peak:.0f}" if peak else "peak unknown for this GPU (PEAK_FP16_TFLOPS)")
        )
    for phase, result in results.items():
        for what, why in (result or {}).get("failed", {}).items():
            problems.append(f"{phase}: {what}: {why}")
    if problems:
        lines += ["", "Could not do:", *(f"- {p}" for p in problems)]
    return "\n".join(lines)


def host_ceiling(args: argparse.Namespace) -> int:
    """The service with the fake (instant) backend: what one process's tokenizer, batcher and
    HTTP can carry, i.e. the most any accelerator behind it could be fed. Runs on CPU."""
    repo, model = Path(args.repo), args.model
    rows = []
    for clients, per_request in ((64, 1), (64, 8)):
        figures = measure_service(
            repo, model, "fake", {}, args.seconds, clients=clients, per_request=per_request
        )
        for shape, value in figures.items():
            rows.append(Row("any", f"service fake, {per_request} text(s)/request", shape, value))
    print(render_table(rows, None))
    print(f"({os.cpu_count()} CPUs; the load client shares them with the server)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", help="Working folder (default: a new temporary one, removed unless --keep)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the working folder.")
    parser.add_argument(
        "--demo-repo", default=_default_demo_repo(), help="Demo repository for parity on real models."
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds per throughput point.")
    parser.add_argument(
        "--phase", choices=("detect", "build", "parity", "raw", "service"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--host-ceiling", action="store_true", help="Only the fake-backend service ceiling (CPU)."
    )
    parser.add_argument("--repo", default="models", help="--host-ceiling: repository holding --model.")
    parser.add_argument("--model", default="sentiment", help="--host-ceiling: a classification model.")
    args = parser.parse_args(argv)
    if args.phase:
        return child(args)
    if args.host_ceiling:
        return host_ceiling(args)
    detect = phase_detect()
    if detect["problem"]:
        print(f"gpu-check: {detect['problem']}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bertserve-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    extra = ["--seconds", str(args.seconds), *(["--demo-repo", args.demo_repo] if args.demo_repo else [])]
    results: dict[str, dict[str, Any] | None] = {}
    problems: list[str] = []
    started = time.monotonic()
    try:
        for name, timeout_s in PHASES:
            print(f"gpu-check: {name} (at most {timeout_s:.0f} s) ...", flush=True)
            results[name], problem = run_phase(name, timeout_s, work, extra)
            if problem:
                problems.append(f"{name}: {problem}")
            if name == "build" and not (results[name] or {}).get("built"):
                break  # no model was exported: nothing to measure
        print(f"\ngpu-check finished in {time.monotonic() - started:.0f} s\n")
        print(report(detect, results, problems))
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    failed_parity = any(not p["passed"] for p in (results.get("parity") or {}).get("parity", []))
    return 1 if problems or failed_parity else 0


def _default_demo_repo() -> str | None:
    for candidate in (Path("models"), Path(__file__).resolve().parent.parent.parent / "demo-repo"):
        if (candidate / "sentiment" / "checkpoint" / "config.json").is_file():
            return str(candidate)
    return None


if __name__ == "__main__":
    sys.exit(main())
