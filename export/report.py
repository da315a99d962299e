"""The export report (export_report.json) and what the terminal shows while exporting."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bertserve.modelrepo import ArtifactFormat, Precision

REPORT_FILE = "export_report.json"
REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ArtifactResult:
    """How one artifact compared with PyTorch."""

    format: ArtifactFormat
    precision: Precision
    path: str
    check: str  # "parity" (fp32: hard tolerance) or "agreement" (fp16/int8: decision gate)
    max_abs_diff: float
    agreement: float
    decisions: int
    passed: bool
    tolerance: float | None = None
    eval_score: float | None = None
    eval_delta_points: float | None = None  # reference minus artifact, in percentage points
    ms_per_batch: float | None = None
    eval_metric: str | None = None
    speedup: float | None = None  # fp32 ms / ms, same backend (low precision)
    needs: tuple[str, ...] = ()  # CPU features it needs to run as measured
    variant: str | None = None  # the quantization recipe chosen (ONNX int8)
    unmeasured: bool = False  # bf16 on an export CPU without it: written, never gated as passing

    @property
    def key(self) -> str:
        return f"{self.format.value}/{self.precision.value}"


@dataclass(frozen=True)
class GateResult:
    min_agreement: float
    max_drop_points: float
    passed: bool
    forced: bool
    reasons: tuple[str, ...] = ()
    passed_artifacts: tuple[str, ...] = ()  # each low-precision artifact passes or fails on its own


@dataclass(frozen=True)
class StepTiming:
    name: str
    seconds: float


@dataclass(frozen=True)
class ExportReport:
    model: str
    version: int
    source: str
    task: str
    architecture: str
    labels: tuple[str, ...]
    max_length: int
    inputs: tuple[str, ...]
    opset: int
    default_precision: Precision
    validation: dict[str, Any]
    artifacts: tuple[ArtifactResult, ...]
    speed: dict[str, Any]
    fusions: dict[str, int]
    libraries: dict[str, str]
    steps: tuple[StepTiming, ...]
    created: str
    int8_gate: GateResult | None = None
    eval: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None  # --fit-thresholds: per label threshold, F1 before/after
    notes: tuple[str, ...] = field(default_factory=tuple)
    # every quantization recipe tried, per artifact key (agreement, eval drop, speedup, chosen)
    variants: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)  # the export CPU's features (vnni, bf16)
    schema_version: int = REPORT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["artifacts"] = [{**asdict(a), "key": a.key} for a in self.artifacts]
        data["total_seconds"] = round(sum(s.seconds for s in self.steps), 3)
        return data

    def write(self, folder: Path) -> Path:
        path = folder / REPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        return path


def load_report(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
    return data


class StepProgress:
    """One progress line per export step (spinner while running, elapsed time when done)."""

    def __init__(self, console: Console, total: int) -> None:
        self._console = console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._overall = self._progress.add_task("export", total=total)
        self.timings: list[StepTiming] = []

    def __enter__(self) -> StepProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._progress.update(self._overall, description=name)
        start = time.perf_counter()
        yield  # on failure the caller prints the one error line; nothing is added here
        seconds = time.perf_counter() - start
        self.timings.append(StepTiming(name, round(seconds, 3)))
        self._progress.advance(self._overall)
        self._console.print(f"[green]v[/] {name} [dim]({seconds:.1f}s)[/]")


def render_summary(report: ExportReport, console: Console) -> None:
    table = Table(title=f"{report.model} v{report.version} ({report.task}, {report.architecture})")
    table.add_column("artifact")
    table.add_column("check")
    table.add_column("max |diff|", justify="right")
    table.add_column("agreement", justify="right")
    if report.eval is not None:
        table.add_column(str(report.eval["metric"]), justify="right")
    table.add_column("ms/batch", justify="right")
    table.add_column("result")
    for art in report.artifacts:
        row = [
            art.key,
            art.check,
            f"{art.max_abs_diff:.2e}",
            f"{art.agreement:.2%}",
        ]
        if report.eval is not None:
            row.append(
                ""
                if art.eval_score is None
                else f"{art.eval_score:.4f} ({-(art.eval_delta_points or 0):+.2f})"
            )
        row.append("" if art.ms_per_batch is None else f"{art.ms_per_batch:.2f}")
        row.append("[green]ok[/]" if art.passed else "[yellow]gate[/]")
        table.add_row(*row)
    console.print(table)
    speed = report.speed
    if speed.get("ms_per_batch"):
        console.print(
            f"speed (median ms per batch of {speed['batch_size']} x {speed['sequence_length']} tokens): "
            + ", ".join(f"{k} {v:.2f}" for k, v in speed["ms_per_batch"].items())
        )
    gate = report.int8_gate
    if gate is not None and not gate.passed:
        why = "; ".join(gate.reasons)
        passed = f"; passed: {', '.join(gate.passed_artifacts)}" if gate.passed_artifacts else ""
        verdict = " (made default anyway: --force)" if gate.forced else ""
        console.print(f"[yellow]low-precision gate failed[/] ({why}){verdict}{passed}")
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")
    console.print(f"default precision: [bold]{report.default_precision.value}[/]")
