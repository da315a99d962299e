"""Benchmark results: the measured values, the headline ratios, summary.json, report.md and plots.

Pure functions of a `BenchRun`, so the summary's keys and the report are unit-tested on synthetic
data without a server.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.slo import SloSearch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Goals from issues 3, 6 and 16: (key, comparison, threshold). service_vs_raw is against the raw
# backend on length-sorted batches (the ceiling a sorting batcher can reach), since issue 16.
GOALS: tuple[tuple[str, str, float], ...] = (
    ("service_vs_raw", ">=", 0.85),
    ("server_cpu_vs_raw", "<=", 1.15),
    ("service_vs_naive", ">=", 5.0),
    ("latency_overhead_ms", "<=", 1.0),
    ("real_token_ratio", ">=", 0.85),
    ("service_vs_raw_32_inputs", ">=", 0.95),
)
MULTI_INPUTS = (8, 32)  # inputs per request of the bench's batched-client phase


@dataclass(frozen=True, slots=True)
class RawPoint:
    batch_size: int
    sequences_per_s: float
    p50_ms: float  # per batch
    real_token_ratio: float
    sorted_by_length: bool = False  # batches cut from the sentences in length order, else arrival
    cpu_ms_per_sequence: float | None = None  # CPU time of the process (all threads) per sequence


@dataclass(frozen=True, slots=True)
class LoadPoint:
    clients: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_ok: int
    errors: int
    codes: dict[int, int] = field(default_factory=dict)
    real_token_ratio: float | None = None
    inputs_per_request: int = 1
    # CPU time per answered request, from /proc over the counted window: the server process (all
    # its threads) and the load generator (this process); the generator's share of both together
    server_cpu_ms_per_request: float | None = None
    client_cpu_ms_per_request: float | None = None
    # of server_cpu_ms_per_request, what its main thread (the event loop) used
    server_loop_cpu_ms_per_request: float | None = None
    client_cpu_share: float | None = None

    @property
    def sequences_per_s(self) -> float:
        return self.throughput_rps * self.inputs_per_request


@dataclass(frozen=True, slots=True)
class BackendPoint:
    label: str  # e.g. "onnxruntime-cpu fp32 (onnx-optimized)"
    backend: str
    precision: str
    artifact: str
    service: LoadPoint  # through the service at the comparison concurrency
    raw_sequences_per_s: float  # the raw backend at the main sweep's best batch size
    # the export gate's figures of the artifact (model.yaml), None for fp32
    agreement: float | None = None  # decisions agreeing with PyTorch on the validation text
    drop_points: float | None = None  # eval-file score lost against PyTorch, points
    gate_passed: bool | None = None


@dataclass(frozen=True, slots=True)
class InstancesPoint:
    """One served configuration of backend sessions per model x intra-op threads per session."""

    instances: int
    threads: int
    service: list[LoadPoint]  # one per concurrency level, the median round
    # The raw backend laid out alike: `instances` sessions of `threads` threads, each fed its own
    # length-sorted batches at the best batch size, all at once (median round); None: not measured.
    raw_sequences_per_s: float | None = None
    # `instances: adaptive`: one session of `threads` threads for lone requests and `instances`
    # single-thread ones under load, never at once; its ceiling is the best raw layout's
    adaptive: bool = False

    @property
    def label(self) -> str:
        if self.adaptive:
            return f"adaptive (1 x {self.threads} alone, {self.instances} x 1 under load)"
        return f"{self.instances} x {self.threads}"


@dataclass(frozen=True, slots=True)
class BenchRun:
    meta: dict[str, object]
    raw: list[RawPoint]
    service: list[LoadPoint]
    naive: list[LoadPoint] = field(default_factory=list)
    # Paired repeats: each value comes from two measurements taken back to back.
    service_vs_raw_pairs: list[float] = field(default_factory=list)
    latency_overhead_pairs: list[float] = field(default_factory=list)
    service_vs_naive_pairs: list[float] = field(default_factory=list)
    real_token_ratios: list[float] = field(default_factory=list)
    # server CPU per request / raw CPU per sequence, from the same pairs as service_vs_raw
    server_cpu_vs_raw_pairs: list[float] = field(default_factory=list)
    client_cpu_shares: list[float] = field(default_factory=list)
    # Where the gap is, from the same pairs: the raw backend on the service's own batch plans with
    # the comparison concurrency in flight over the ceiling (batching's share), the service over
    # that raw figure (the serving code's share), and the server's event-loop CPU ms per request
    planned_vs_raw_pairs: list[float] = field(default_factory=list)
    service_vs_planned_pairs: list[float] = field(default_factory=list)
    server_loop_cpu_ms: list[float] = field(default_factory=list)
    # the same requests served on the fake backend (no model): the serving code alone (median point)
    no_model: list[LoadPoint] = field(default_factory=list)
    raw_sorted: list[RawPoint] = field(default_factory=list)
    # inputs per request -> service sequences/s over sorted raw, paired; and the service points
    multi_input_pairs: dict[int, list[float]] = field(default_factory=dict)
    multi_input: list[LoadPoint] = field(default_factory=list)
    instances: list[InstancesPoint] = field(default_factory=list)
    backends: list[BackendPoint] = field(default_factory=list)
    slo: SloSearch | None = None
    locust_command: str | None = None


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(statistics.median(finite), 4) if finite else None


def gate_cells(b: BackendPoint) -> str:
    """agreement | eval change | gate, from the export's figures (fp32: the reference)."""
    if b.agreement is None:
        return "reference | | "
    change = "" if b.drop_points is None else f"{-b.drop_points or 0.0:+.2f}"  # no "-0.00"
    return f"{b.agreement:.2%} | {change} | {'passed' if b.gate_passed else 'failed'}"


def _best_rate(points: list[RawPoint]) -> float | None:
    return max((p.sequences_per_s for p in points), default=None)


def best_backend(backends: list[BackendPoint]) -> str | None:
    """The configuration with the highest service throughput (ties: the first measured)."""
    if not backends:
        return None
    return max(backends, key=lambda b: b.service.throughput_rps).label


def goal_verdicts(summary: dict[str, object]) -> dict[str, dict[str, object]]:
    verdicts: dict[str, dict[str, object]] = {}
    for key, op, threshold in GOALS:
        value = summary.get(key)
        met = None
        if isinstance(value, int | float):
            met = value >= threshold if op == ">=" else value <= threshold
        verdicts[key] = {"value": value, "goal": f"{op} {threshold:g}", "met": met}
    return verdicts


def layout_ceiling(points: list[InstancesPoint]) -> dict[str, object]:
    """The instances phase's raw ceiling: the fastest raw layout (sessions x threads, all sessions
    at once), and the best served layout at the comparison concurrency over it."""
    measured = [p for p in points if p.raw_sequences_per_s and p.service]
    if not measured:
        return {"raw_best_layout": None, "best_layout_service_vs_raw": None}
    raw = max(measured, key=lambda p: p.raw_sequences_per_s or 0.0)
    served = max((p for p in points if p.service), key=lambda p: p.service[-1].throughput_rps)
    ceiling = raw.raw_sequences_per_s or 1.0
    return {
        "raw_best_layout": {"instances": raw.instances, "threads": raw.threads, "sequences_per_s": ceiling},
        "best_layout_service_vs_raw": round(served.service[-1].throughput_rps / ceiling, 4),
    }


def build_summary(run: BenchRun) -> dict[str, object]:
    """summary.json: the headline figures at the top level, every measurement below them."""
    slo = run.slo
    summary: dict[str, object] = {
        **run.meta,
        "service_vs_raw": _median(run.service_vs_raw_pairs),
        "service_vs_naive": _median(run.service_vs_naive_pairs),
        "latency_overhead_ms": _median(run.latency_overhead_pairs),
        "real_token_ratio": _median(run.real_token_ratios),
        "server_cpu_vs_raw": _median(run.server_cpu_vs_raw_pairs),
        "client_cpu_share": _median(run.client_cpu_shares),
        "planned_raw_vs_raw": _median(run.planned_vs_raw_pairs),
        "service_vs_planned_raw": _median(run.service_vs_planned_pairs),
        "server_loop_cpu_ms_per_request": _median(run.server_loop_cpu_ms),
        "no_model_server_cpu_ms_per_request": (
            run.no_model[0].server_cpu_ms_per_request if run.no_model else None
        ),
        **{f"service_vs_raw_{k}_inputs": _median(run.multi_input_pairs.get(k, [])) for k in MULTI_INPUTS},
        "raw_ceiling_sequences_per_s": _best_rate(run.raw_sorted),
        "raw_arrival_order_best_sequences_per_s": _best_rate(run.raw),
        **layout_ceiling(run.instances),
        "best_backend": best_backend(run.backends),
        "max_rate_at_slo": round(slo.max_rate, 1) if slo and slo.max_rate is not None else None,
        "slo_p95_ms": slo.slo_p95_ms if slo else None,
        "locust_command": run.locust_command,
        "pairs": {
            "service_vs_raw": run.service_vs_raw_pairs,
            "latency_overhead_ms": run.latency_overhead_pairs,
            "service_vs_naive": run.service_vs_naive_pairs,
            "real_token_ratio": run.real_token_ratios,
            "server_cpu_vs_raw": run.server_cpu_vs_raw_pairs,
            "client_cpu_share": run.client_cpu_shares,
            "planned_raw_vs_raw": run.planned_vs_raw_pairs,
            "service_vs_planned_raw": run.service_vs_planned_pairs,
            "server_loop_cpu_ms_per_request": run.server_loop_cpu_ms,
            **{f"service_vs_raw_{k}_inputs": v for k, v in run.multi_input_pairs.items()},
        },
        "raw": [asdict(p) for p in run.raw],
        "raw_sorted": [asdict(p) for p in run.raw_sorted],
        "multi_input": [asdict(p) for p in run.multi_input],
        "instances": [asdict(p) for p in run.instances],
        "service": [asdict(p) for p in run.service],
        "no_model": [asdict(p) for p in run.no_model],
        "naive": [asdict(p) for p in run.naive],
        "backends": [asdict(b) for b in run.backends],
        "slo_search": (
            [{**asdict(p), "passed": ok} for p, ok in zip(slo.probes, slo.passed, strict=True)]
            if slo
            else None
        ),
    }
    summary["goals"] = goal_verdicts(summary)
    return summary


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _failed(p: LoadPoint) -> int:
    return p.errors + sum(n for code, n in p.codes.items() if code != 200)


def _verdict(met: object) -> str:
    return "n/a" if met is None else "yes" if met else "no"


def render_markdown(run: BenchRun, summary: dict[str, object]) -> str:
    goals = goal_verdicts(summary)
    meta = run.meta
    lines = [
        f"# bertserve benchmark {meta.get('timestamp', '')}",
        "",
        f"model `{meta.get('model')}`, backend `{meta.get('backend')}` ({meta.get('precision')}), "
        f"{meta.get('cpus')} CPUs, sentences: {meta.get('sentences')}",
        "",
        "## Headline",
        "",
        "| figure | value | goal | met |",
        "|---|---:|---|---|",
        *[f"| {k} | {_fmt(v['value'])} | {v['goal']} | {_verdict(v['met'])} |" for k, v in goals.items()],
        f"| best_backend | {summary.get('best_backend')} | | |",
        f"| max_rate_at_slo (req/s, p95 <= {_fmt(summary.get('slo_p95_ms'))} ms) | "
        f"{_fmt(summary.get('max_rate_at_slo'))} | | |",
        "",
        "Ratios are medians of paired repeats, both sides measured back to back (`pairs` in summary.json).",
        "",
        *_gap_lines(summary, meta.get("compare_clients")),
        "## Raw backend (backend.infer only)",
        "",
        "The ceiling is the best length-sorted row: the same sentences cut into batches in length "
        "order, as a sorting batcher could at best; arrival-order rows pad each batch to its longest.",
        "",
        "| order | batch | seq/s | p50 ms/batch | real/padded | CPU ms/seq |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {'sorted' if p.sorted_by_length else 'arrival'} | {p.batch_size} | {p.sequences_per_s:.1f} "
            f"| {p.p50_ms:.2f} | {p.real_token_ratio:.3f} | {_fmt(p.cpu_ms_per_sequence)} |"
            for p in [*run.raw_sorted, *run.raw]
        ],
    ]
    for title, points in (
        ("Service, closed loop", run.service),
        ("Service, several inputs per request", run.multi_input),
        ("Naive server (transformers)", run.naive),
    ):
        if not points:
            continue
        lines += ["", f"## {title}", "", *_load_table(points)]
    for inst in run.instances:
        layout = inst.label if inst.adaptive else f"{inst.instances} instance(s) x {inst.threads} thread(s)"
        lines += [
            "",
            f"## {layout} per model",
            "",
            *(
                [
                    "Raw backend in this layout (sorted batches, all sessions at once): "
                    f"{inst.raw_sequences_per_s} seq/s",
                    "",
                ]
                if inst.raw_sequences_per_s is not None
                else []
            ),
            *_load_table(inst.service),
        ]
    if run.backends:
        lines += [
            "",
            "## Backends and precisions (service at the comparison concurrency; raw at the best batch)",
            "",
            "| configuration | service req/s | p50 ms | p95 ms | raw seq/s | service / raw | agreement "
            "| eval change (pt) | gate |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for b in run.backends:
            ratio = (
                b.service.throughput_rps / b.raw_sequences_per_s if b.raw_sequences_per_s else float("nan")
            )
            lines.append(
                f"| {b.label} | {b.service.throughput_rps:.1f} | {b.service.p50_ms:.2f} | "
                f"{b.service.p95_ms:.2f} | {b.raw_sequences_per_s:.1f} | {ratio:.3f} | {gate_cells(b)} |"
            )
    if run.slo is not None:
        lines += [
            "",
            f"## Open loop: highest rate with p95 <= {run.slo.slo_p95_ms:g} ms",
            "",
            "| rate req/s | p95 ms | achieved req/s | failed | passed |",
            "|---:|---:|---:|---:|---|",
            *[
                f"| {p.rate:.1f} | {p.p95_ms:.2f} | {p.achieved_rps:.1f} | {p.failures} | {_verdict(ok)} |"
                for p, ok in zip(run.slo.probes, run.slo.passed, strict=True)
            ],
        ]
    if run.locust_command:
        lines += ["", "## Locust at the sustainable rate", "", "```bash", run.locust_command, "```"]
    return "\n".join(lines) + "\n"


def _gap_lines(summary: dict[str, object], clients: object) -> list[str]:
    """The gap to the ceiling in two factors (service_vs_raw = planned_raw_vs_raw x
    service_vs_planned_raw, up to the noise between their measurements)."""
    planned, served = summary.get("planned_raw_vs_raw"), summary.get("service_vs_planned_raw")
    if planned is None or served is None:
        return []
    loop, total = summary.get("server_loop_cpu_ms_per_request"), summary.get("server_cpu_vs_raw")
    alone = summary.get("no_model_server_cpu_ms_per_request")
    return [
        "## Where the gap to the ceiling is",
        "",
        f"- batching: the raw backend on the batches the service's own planner cuts with {clients} "
        f"requests in flight reaches {_fmt(planned)} of the sorted ceiling (a batcher sorts only "
        "what it holds);",
        f"- serving: the service reaches {_fmt(served)} of that raw figure; its event-loop thread "
        f"used {_fmt(loop)} ms CPU per request (server CPU per request over raw: {_fmt(total)});",
        f"- the same requests on the fake backend (no model, the cores to the serving code alone): "
        f"{_fmt(alone)} ms server CPU per request.",
        "",
    ]


def _load_table(points: list[LoadPoint]) -> list[str]:
    return [
        "| clients | inputs/req | req/s | seq/s | p50 ms | p95 ms | p99 ms | failed | real/padded "
        "| server CPU ms/req | client CPU share |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {p.clients} | {p.inputs_per_request} | {p.throughput_rps:.1f} | {p.sequences_per_s:.1f} "
            f"| {p.p50_ms:.2f} | {p.p95_ms:.2f} | {p.p99_ms:.2f} | {_failed(p)} | {_fmt(p.real_token_ratio)} "
            f"| {_fmt(p.server_cpu_ms_per_request)} | {_fmt(p.client_cpu_share)} |"
            for p in points
        ],
    ]


def plot(run: BenchRun, out: Path) -> list[Path]:
    """throughput.png, latency.png and backends.png (each when it has data)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if run.service:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, points in (("bertserve", run.service), ("naive transformers server", run.naive)):
            if points:
                ax.plot([p.clients for p in points], [p.throughput_rps for p in points], "o-", label=name)
        if run.raw_sorted:
            best = max(p.sequences_per_s for p in run.raw_sorted)
            ax.axhline(best, linestyle="--", color="black", label="raw backend, sorted, best batch")
        if run.raw:
            best = max(p.sequences_per_s for p in run.raw)
            ax.axhline(best, linestyle=":", color="grey", label="raw backend, arrival order, best batch")
        ax.set(xscale="log", xlabel="concurrent clients", ylabel="requests / s")
        ax.set_title("Throughput vs concurrency")
        ax.legend()
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "throughput.png"))

        fig, ax = plt.subplots(figsize=(7, 4.5))
        clients = [p.clients for p in run.service]
        ax.plot(clients, [p.p50_ms for p in run.service], "o-", label="bertserve p50")
        ax.plot(clients, [p.p95_ms for p in run.service], "s-", label="bertserve p95")
        ax.plot(clients, [p.p99_ms for p in run.service], "^-", label="bertserve p99")
        if run.naive:
            ax.plot([p.clients for p in run.naive], [p.p95_ms for p in run.naive], "x--", label="naive p95")
        ax.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency (ms)")
        ax.set_title("Latency percentiles, closed loop")
        ax.legend()
        ax.grid(alpha=0.3, which="both")
        written.append(_save(fig, out / "latency.png"))

    if run.backends:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        xs = list(range(len(run.backends)))
        ax.bar([x - 0.2 for x in xs], [b.service.throughput_rps for b in run.backends], 0.4, label="service")
        ax.bar([x + 0.2 for x in xs], [b.raw_sequences_per_s for b in run.backends], 0.4, label="raw backend")
        ax.set_xticks(xs, [b.label for b in run.backends], rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="sequences / s")
        ax.set_title("Backends and precisions")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
        written.append(_save(fig, out / "backends.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(out: Path, run: BenchRun, *, plots: bool = True) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    summary = build_summary(run)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(run, summary), encoding="utf-8")
    if plots:
        plot(run, out)
    return summary
