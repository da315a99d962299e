"""`bertserve export`: checkpoint -> validated artifacts -> a new version in the model repository.

Everything for a version is written into a staging folder beside the final one and renamed into
place only after every artifact has passed validation, so a failed or interrupted export never
leaves a half-written version behind; model.yaml is replaced atomically afterwards.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from bertserve.evaluation.scoring import EvalSet
from bertserve.evaluation.thresholds import FittedThreshold
from bertserve.export.checkpoint import LoadedCheckpoint, load_checkpoint, parse_task
from bertserve.export.errors import ExportError
from bertserve.export.options import KNOWN_FORMATS, ExportOptions
from bertserve.export.report import ArtifactResult, ExportReport, GateResult, StepProgress, render_summary
from bertserve.export.specs import (
    PORTABLE_ONNX,
    ArtifactSpec,
    BuildInputs,
    BuildOutput,
    Calibration,
    Judgement,
    applicable,
)
from bertserve.export.validate import (
    PAIRS,
    SENTENCES,
    FloatArray,
    TorchBackend,
    ValidationBatch,
    backend_kind,
    build_validation_batches,
    compare,
    compare_speed,
    encode,
    load_eval_file,
    runtime_backend,
    speed_batch,
)
from bertserve.modelrepo import (
    MODEL_CONFIG_FILE,
    Artifact,
    ArtifactFormat,
    ArtifactGate,
    BatchingConfig,
    ModelConfig,
    Precision,
    RepositoryError,
    Segmentation,
    Task,
    VersionConfig,
    load_model_config,
    save_model_config,
    sha256_file,
)
from bertserve.runtime.base import Backend
from bertserve.runtime.cpu import CpuFeature, CpuFeatures
from bertserve.service.tokenization import TextInput

if TYPE_CHECKING:
    from bertserve.export.onnx_export import OnnxGraphInfo

__all__ = ["ExportError", "ExportOptions", "ExportResult", "run_export"]


@dataclass(frozen=True)
class ExportResult:
    config: ModelConfig
    version: int
    version_dir: Path
    report: ExportReport


@dataclass
class _Built:
    """Artifacts written to the staging folder so far (mutable while the export runs)."""

    artifacts: list[Artifact] = field(default_factory=list)
    runners: dict[str, Backend] = field(default_factory=dict)
    results: list[ArtifactResult] = field(default_factory=list)


def _check_options(options: ExportOptions) -> tuple[Task, tuple[str, ...]]:
    task = parse_task(options.task)
    formats = tuple(dict.fromkeys(f.lower() for f in options.formats))
    unknown = [f for f in formats if f not in KNOWN_FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {unknown or formats}; choose from: {', '.join(KNOWN_FORMATS)}")
    if options.fp16_ir and "openvino" not in formats:
        raise ExportError("--fp16-ir needs the openvino format")
    if options.fp16 and "onnx" not in formats:
        raise ExportError("--fp16 writes an ONNX graph; it needs the onnx format")
    for path, what in ((options.calibration, "calibration"), (options.eval_file, "eval")):
        if path is not None and not path.is_file():
            raise ExportError(f"{what} file {path} does not exist")
    if options.eval_file is not None and task in (Task.FEATURE_EXTRACTION, Task.RERANK):
        raise ExportError(
            f"--eval-file scores classifiers and taggers; a {task.value} model's low-precision "
            "artifacts are gated by their agreement with PyTorch on the validation batches"
        )
    if options.eval_file is not None and not (options.int8 or options.bf16 or options.fit_thresholds):
        raise ExportError(
            "--eval-file gates int8/bf16 artifacts or fits thresholds; add --int8, --bf16 or --fit-thresholds"
        )
    if options.fit_thresholds and options.eval_file is None:
        raise ExportError("--fit-thresholds fits on labelled examples; add --eval-file")
    if options.fit_thresholds and task != Task.TEXT_CLASSIFICATION:
        raise ExportError("--fit-thresholds applies to text-classification models")
    if options.segmentation is not None:
        if options.segmentation not in {s.value for s in Segmentation}:
            raise ExportError(
                f"unknown segmentation {options.segmentation!r}; choose from: "
                + ", ".join(s.value for s in Segmentation)
            )
        if task != Task.TOKEN_CLASSIFICATION and options.segmentation != Segmentation.NONE:
            raise ExportError("--segmentation applies to token-classification models only")
    if options.version is not None and options.version < 1:
        raise ExportError("--version must be 1 or more")
    # the same rule as ModelConfig.name, checked before the slow work
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", options.name):
        raise ExportError(
            f"invalid model name {options.name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return task, formats


def _existing_config(repo: Path, name: str) -> ModelConfig | None:
    if not (repo / name / MODEL_CONFIG_FILE).is_file():
        return None
    try:
        return load_model_config(repo, name)
    except RepositoryError as exc:
        raise ExportError(f"cannot add a version to {name}: {exc}") from exc


def _choose_version(model_dir: Path, existing: ModelConfig | None, requested: int | None) -> int:
    taken = set(existing.versions) if existing else set()
    if model_dir.is_dir():
        taken |= {int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    if requested is None:
        return max(taken, default=0) + 1
    if requested in taken:
        raise ExportError(f"version {requested} of {model_dir.name} already exists; pick another --version")
    return requested


def _files(folder: Path, rels: Sequence[str]) -> dict[str, str]:
    return {rel: sha256_file(folder / rel) for rel in rels}


def _calibration_texts(path: Path | None) -> tuple[list[str], str]:
    if path is None:
        texts = list(SENTENCES) + [f"{a} {b}" for a, b in PAIRS]
        return texts, f"{len(texts)} built-in sentences (pass --calibration with in-domain text)"
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ExportError(f"calibration file {path} is empty")
    return texts, f"{min(len(texts), 300)} sentences from {path.name}"


LOAD_STEP = "load checkpoint"
PORTABLE_STEP = "export portable ONNX"
SPEED_STEP = "measure speed"
WRITE_STEP = "write repository files"


def _eval_step(path: Path) -> str:
    return f"evaluate on {path.name}"


THRESHOLD_STEP = "fit thresholds"


def planned_steps(options: ExportOptions, specs: Sequence[ArtifactSpec]) -> tuple[str, ...]:
    """Every progress step of an export, in order; the progress bar's length is this list's."""
    return (
        LOAD_STEP,
        PORTABLE_STEP,
        *(spec.step for spec in specs),
        *((THRESHOLD_STEP,) if options.fit_thresholds else ()),
        *(
            (_eval_step(options.eval_file),)
            if options.eval_file is not None and _low_precision(options)
            else ()
        ),
        *((SPEED_STEP,) if options.measure_speed else ()),
        WRITE_STEP,
    )


def run_export(options: ExportOptions) -> ExportResult:
    task, formats = _check_options(options)
    specs = applicable(options, formats)
    console = Console(stderr=True, quiet=options.quiet)
    repo = options.repo
    model_dir = repo / options.name
    existing = _existing_config(repo, options.name)
    version = _choose_version(model_dir, existing, options.version)

    created_model_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="bertserve-export-"))
    # the portable graph is an artifact only with the onnx format; the others derive from it
    portable = (staging if "onnx" in formats else scratch) / PORTABLE_ONNX
    try:
        with StepProgress(console, len(planned_steps(options, specs))) as steps:
            with steps.step(LOAD_STEP):
                ckpt = load_checkpoint(
                    options.model,
                    task,
                    allow_pickle=options.allow_pickle,
                    max_length=options.max_length,
                    pooling=options.pooling,
                )
                eval_set = (
                    load_eval_file(options.eval_file, task, ckpt.labels)
                    if options.eval_file is not None
                    else None
                )
            result = _export_version(
                options, specs, ckpt, eval_set, staging, portable, steps, version, existing
            )
        final = model_dir / str(version)
        staging.rename(final)
        save_model_config(repo, result.config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_model_dir and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    render_summary(result.report, console)
    console.print(f"wrote {final} and {model_dir / MODEL_CONFIG_FILE}")
    return ExportResult(config=result.config, version=version, version_dir=final, report=result.report)


@dataclass(frozen=True)
class _Reference:
    """The portable graph and PyTorch's logits on the validation batches, which every artifact
    is compared with."""

    graph: OnnxGraphInfo
    path: Path
    batches: list[ValidationBatch]
    torch_runner: TorchBackend
    logits: list[FloatArray]

    def text(self) -> tuple[list[FloatArray], list[ValidationBatch]]:
        """The batches of real text (built-in, eval-file or calibration sentences, pairs, the long
        text) without the random token sequences: what low-precision agreement is counted on."""
        kept = [(lg, b) for lg, b in zip(self.logits, self.batches, strict=True) if b.kind != "random"]
        return [lg for lg, _ in kept], [b for _, b in kept]


@dataclass(frozen=True)
class _Written:
    """One spec, built and validated."""

    artifact: Artifact
    result: ArtifactResult
    runner: Backend
    output: BuildOutput


def _export_version(
    options: ExportOptions,
    specs: Sequence[ArtifactSpec],
    ckpt: LoadedCheckpoint,
    eval_set: EvalSet | None,
    staging: Path,
    portable: Path,
    steps: StepProgress,
    version: int,
    existing: ModelConfig | None,
) -> ExportResult:
    with steps.step(PORTABLE_STEP):
        ref = _export_reference(ckpt, portable, existing, _validation_texts(options, eval_set))
    tokenizer_files = _save_tokenizer(ckpt, staging)
    judge = _Judge(options, ckpt, ref, eval_set, staging, tokenizer_files, version, existing)
    written = _build_artifacts(specs, options, ckpt, ref, staging, steps, judge)
    built = _Built(
        artifacts=[w.artifact for w in written],
        runners={w.result.key: w.runner for w in written},
        results=[w.result for w in written],
    )
    notes = [*ckpt.notes, *(note for w in written for note in w.output.notes)]
    if ckpt.is_sentence_transformer and ckpt.embedding is not None:
        notes.append(_sentence_transformers_check(ckpt, ref))
    graph, torch_runner = ref.graph, ref.torch_runner

    thresholds: dict[str, float] | None = existing.thresholds if existing else None
    fitted: list[FittedThreshold] = []
    if options.fit_thresholds and eval_set is not None:
        with steps.step(THRESHOLD_STEP):
            scored = VersionConfig(artifacts=built.artifacts, tokenizer_files=tokenizer_files)
            plain = _config_of(options, ckpt, graph, version, existing, scored, thresholds=None)
            fitted = _fit_thresholds(plain, eval_set, torch_runner, staging)
            thresholds = {f.label: f.threshold for f in fitted}
            fits = (f"{f.label} {f.threshold:.3f} (F1 {f.f1_at_default:.3f} -> {f.f1:.3f})" for f in fitted)
            notes.append(f"thresholds fitted on {eval_set.path.name}: " + ", ".join(fits))
    eval_summary = None
    if eval_set is not None and _low_precision(options):
        with steps.step(_eval_step(eval_set.path)):
            # the model.yaml about to be written, with the artifacts built: what the service
            # would load, for the gate to score
            scored = VersionConfig(artifacts=built.artifacts, tokenizer_files=tokenizer_files)
            served = _config_of(options, ckpt, graph, version, existing, scored, thresholds=thresholds)
            eval_summary = _evaluate_low_precision(built, eval_set, judge.reference_score(), served, staging)

    speed: dict[str, object] = {}
    if options.measure_speed:
        with steps.step(SPEED_STEP):
            speed = _measure_speed(built, ckpt, graph.inputs, torch_runner)

    gate = _int8_gate(built.results, options)
    built.artifacts = _with_gates(built, written, options)
    default_precision = _default_precision(built.results, options)
    if gate is not None and options.force and not gate.passed:
        notes.append(f"{default_precision} is the default precision although it failed the gate (--force)")

    with steps.step(WRITE_STEP):
        created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        version_config = VersionConfig(
            artifacts=built.artifacts,
            default_precision=default_precision,
            tokenizer_files=tokenizer_files,
            created=created,
        )
        config = _config_of(options, ckpt, graph, version, existing, version_config, thresholds=thresholds)
        report = ExportReport(
            model=options.name,
            version=version,
            source=ckpt.source,
            task=ckpt.task.value,
            architecture=ckpt.architecture,
            labels=ckpt.labels,
            max_length=ckpt.max_length,
            inputs=graph.inputs,
            opset=graph.opset,
            default_precision=default_precision,
            validation=_validation_summary(ref.batches, options),
            artifacts=tuple(built.results),
            speed=speed,
            fusions={op: n for w in written for op, n in w.output.fusions.items()},
            variants={w.result.key: list(w.output.variants) for w in written if w.output.variants},
            cpu=_cpu_summary(),
            libraries=_library_versions(),
            steps=tuple(steps.timings),
            created=created,
            int8_gate=gate,
            eval=eval_summary,
            thresholds={f.label: asdict(f) for f in fitted} or None,
            notes=tuple(notes),
        )
        report.write(staging)
    return ExportResult(config=config, version=version, version_dir=staging, report=report)


def _export_reference(
    ckpt: LoadedCheckpoint, portable: Path, existing: ModelConfig | None, texts: Sequence[str]
) -> _Reference:
    from bertserve.export.onnx_export import export_portable_onnx

    pooling = ckpt.embedding.pooling if ckpt.embedding is not None else None
    graph = export_portable_onnx(ckpt.model, ckpt.task, portable, pooling)
    if existing is not None:
        _check_compatible(existing, ckpt, graph.inputs)
    batches = build_validation_batches(
        ckpt.tokenizer, ckpt.task, graph.inputs, ckpt.max_length, extra_texts=texts
    )
    torch_runner = TorchBackend(ckpt.model, graph.inputs, ckpt.embedding)
    logits = [torch_runner.infer(b.feeds) for b in batches]
    return _Reference(graph=graph, path=portable, batches=batches, torch_runner=torch_runner, logits=logits)


def _sentence_transformers_check(ckpt: LoadedCheckpoint, ref: _Reference) -> str:
    """The reference embeddings (encoder + pooling) against sentence-transformers' own encode."""
    from bertserve.export.embedding import check_against_sentence_transformers

    assert ckpt.embedding is not None
    texts = list(SENTENCES)
    feeds = encode(ckpt.tokenizer, texts, ref.graph.inputs, ckpt.max_length)
    return check_against_sentence_transformers(
        ckpt.path, texts, ref.torch_runner.infer(feeds), ckpt.embedding.normalize
    )


def _build_artifacts(
    specs: Sequence[ArtifactSpec],
    options: ExportOptions,
    ckpt: LoadedCheckpoint,
    ref: _Reference,
    staging: Path,
    steps: StepProgress,
    judge: _Judge,
) -> list[_Written]:
    """Build and validate every spec in order, one progress step each."""
    cpu = CpuFeatures.probe()
    inputs = BuildInputs(
        folder=staging,
        portable_onnx=ref.path,
        num_heads=ckpt.num_heads,
        hidden_size=ckpt.hidden_size,
        calibration=partial(_calibration, options.calibration, ckpt, ref.graph.inputs),
        judge=judge,
        cpu_vnni=cpu.has(CpuFeature.VNNI),
        cpu_bf16=cpu.has(CpuFeature.BF16),
    )
    written: list[_Written] = []
    for spec in specs:
        with steps.step(spec.step):
            written.append(_build_artifact(spec, inputs, options, ckpt, ref))
    return written


def _build_artifact(
    spec: ArtifactSpec, inputs: BuildInputs, options: ExportOptions, ckpt: LoadedCheckpoint, ref: _Reference
) -> _Written:
    main = inputs.folder / spec.main_file
    output = spec.build(inputs, main)
    runner = runtime_backend(main, spec.format, spec.precision, ref.graph.outputs[0])
    cmp = compare(ref.logits, runner, ref.batches, ckpt.task, ckpt.problem_type)
    if spec.precision in LOW_PRECISIONS:
        # low precision is held to its agreement on real text, not on random token sequences
        logits, batches = ref.text()
        text = compare(logits, runner, batches, ckpt.task, ckpt.problem_type)
        cmp = replace(cmp, agreement=text.agreement, decisions=text.decisions)
    verdict = spec.check(spec.main_file, cmp, options)
    if spec.precision == Precision.BF16 and not inputs.cpu_bf16:
        verdict = replace(verdict, passed=False)
    artifact = Artifact(
        format=spec.format,
        precision=spec.precision,
        files=_files(inputs.folder, spec.listed_files(inputs.folder)),
        opset=None if spec.format == ArtifactFormat.OPENVINO else ref.graph.opset,
    )
    result = ArtifactResult(
        format=spec.format,
        precision=spec.precision,
        path=spec.main_file,
        check=verdict.check,
        max_abs_diff=cmp.max_abs_diff,
        agreement=cmp.agreement,
        decisions=cmp.decisions,
        passed=verdict.passed,
        tolerance=verdict.tolerance,
        needs=output.needs,
        variant=next((f"{v.name}: {v.recipe}" for v in output.variants if v.chosen), None),
        speedup=next((v.speedup for v in output.variants if v.chosen), None),
        unmeasured=spec.precision == Precision.BF16 and not inputs.cpu_bf16,
    )
    return _Written(artifact=artifact, result=result, runner=runner, output=output)


def _calibration(path: Path | None, ckpt: LoadedCheckpoint, inputs: tuple[str, ...]) -> Calibration:
    texts, source = _calibration_texts(path)
    samples = [encode(ckpt.tokenizer, [t], inputs, ckpt.max_length) for t in texts]
    return Calibration(samples=samples, source=source)


def _check_compatible(existing: ModelConfig, ckpt: LoadedCheckpoint, inputs: tuple[str, ...]) -> None:
    """All versions of a model share one model.yaml: task, labels and inputs must not change."""
    diffs = []
    if existing.task != ckpt.task:
        diffs.append(f"task {existing.task.value} -> {ckpt.task.value}")
    if tuple(existing.labels) != ckpt.labels:
        diffs.append(f"labels {existing.labels} -> {list(ckpt.labels)}")
    if tuple(existing.inputs) != inputs:
        diffs.append(f"inputs {existing.inputs} -> {list(inputs)}")
    if existing.embedding != ckpt.embedding:
        diffs.append(f"embedding {existing.embedding} -> {ckpt.embedding}")
    if diffs:
        raise ExportError(
            f"model {existing.name} already exists with a different contract ({'; '.join(diffs)}); "
            "export it under a new --name"
        )


def _save_tokenizer(ckpt: LoadedCheckpoint, folder: Path) -> dict[str, str]:
    written = ckpt.tokenizer.save_pretrained(str(folder), legacy_format=None)
    rels = sorted({Path(p).name for p in written if (folder / Path(p).name).is_file()})
    if "tokenizer.json" not in rels:
        raise ExportError("the tokenizer did not save a tokenizer.json")
    return _files(folder, rels)


LOW_PRECISIONS = (Precision.INT8, Precision.BF16)
# the eval-file or calibration sentences added to the validation text (each artifact runs them all)
MAX_VALIDATION_TEXTS = 1000


def _low_precision(options: ExportOptions) -> bool:
    return options.int8 or options.bf16


def _validation_texts(options: ExportOptions, eval_set: EvalSet | None) -> list[str]:
    """In-domain sentences for the agreement of low-precision artifacts: the eval file's, else the
    calibration file's (none without either: the built-in sentences only)."""
    if not _low_precision(options):
        return []
    if eval_set is not None:
        texts = [e.text for e in eval_set.examples] or [s.text for s in eval_set.sentences]
        return texts[:MAX_VALIDATION_TEXTS]
    if options.calibration is not None:
        return _calibration_texts(options.calibration)[0][:MAX_VALIDATION_TEXTS]
    return []


def _gate_reasons(result: ArtifactResult, options: ExportOptions) -> list[str]:
    """Why a low-precision artifact fails the gate (none: it passes)."""
    reasons: list[str] = []
    if result.unmeasured:
        reasons.append(f"{result.key} not measured: the export CPU lacks {', '.join(result.needs)}")
    if result.agreement < options.min_int8_agreement:
        reasons.append(f"{result.key} agreement {result.agreement:.2%} < {options.min_int8_agreement:.2%}")
    if result.eval_delta_points is not None and result.eval_delta_points > options.max_int8_drop_points:
        reasons.append(
            f"{result.key} loses {result.eval_delta_points:.2f} points > {options.max_int8_drop_points:.2f}"
        )
    return reasons


def _int8_gate(results: Sequence[ArtifactResult], options: ExportOptions) -> GateResult | None:
    """The gate over every low-precision artifact (int8, bf16); each passes or fails on its own."""
    low = [r for r in results if r.precision in LOW_PRECISIONS]
    if not low:
        return None
    reasons = [reason for r in low for reason in _gate_reasons(r, options)]
    return GateResult(
        min_agreement=options.min_int8_agreement,
        max_drop_points=options.max_int8_drop_points,
        passed=not reasons,
        forced=options.force and bool(reasons),
        reasons=tuple(reasons),
        passed_artifacts=tuple(r.key for r in low if not _gate_reasons(r, options)),
    )


def _speedups(results: Sequence[ArtifactResult]) -> dict[str, float]:
    """fp32 ms / ms per low-precision artifact, against the fp32 artifact the same backend serves."""
    fp32 = {
        ArtifactFormat.ONNX: next(
            (r.ms_per_batch for r in results if r.key == "onnx-optimized/fp32" and r.ms_per_batch),
            next((r.ms_per_batch for r in results if r.key == "onnx/fp32" and r.ms_per_batch), None),
        ),
        ArtifactFormat.OPENVINO: next(
            (r.ms_per_batch for r in results if r.key == "openvino/fp32" and r.ms_per_batch), None
        ),
    }
    out = {}
    for r in results:
        base = fp32.get(r.format)
        if r.precision in LOW_PRECISIONS and base and r.ms_per_batch:
            out[r.key] = round(base / r.ms_per_batch, 3)
    return out


def _with_gates(built: _Built, written: Sequence[_Written], options: ExportOptions) -> list[Artifact]:
    """model.yaml's artifacts with each low-precision one's gate (what `auto` chooses by)."""
    speedups = _speedups(built.results)
    by_key = {r.key: r for r in built.results}
    out = []
    for artifact, w in zip(built.artifacts, written, strict=True):
        r = by_key[w.result.key]
        if r.precision not in LOW_PRECISIONS:
            out.append(artifact)
            continue
        reasons = _gate_reasons(r, options)
        speedup = speedups.get(r.key, r.speedup)  # the export's timing, else the recipe search's
        built.results[built.results.index(r)] = r = _replace(r, passed=not reasons, speedup=speedup)
        gate = ArtifactGate(
            passed=not reasons,
            agreement=round(r.agreement, 5),
            min_agreement=options.min_int8_agreement,
            metric=None if r.eval_score is None else _metric_name(r),
            drop_points=r.eval_delta_points,
            max_drop_points=options.max_int8_drop_points if r.eval_score is not None else None,
            speedup=speedup,
            needs=list(r.needs),
            variant=r.variant,
            reasons=reasons,
        )
        out.append(artifact.model_copy(update={"gate": gate}))
    return out


def _metric_name(result: ArtifactResult) -> str:
    return result.eval_metric or "eval"


def _default_precision(results: Sequence[ArtifactResult], options: ExportOptions) -> Precision:
    """What a server without `--precision auto` (or a GPU backend) takes: int8 when an int8 artifact
    passed, else bf16 when it did, else fp32 (int8 anyway with --force)."""
    passed = {r.precision for r in results if r.precision in LOW_PRECISIONS and r.passed}
    for precision in LOW_PRECISIONS:
        if precision in passed:
            return precision
    if options.force and any(r.precision == Precision.INT8 for r in results):
        return Precision.INT8
    return Precision.FP32


def _cpu_summary() -> dict[str, object]:
    cpu = CpuFeatures.probe()
    return {
        "features": sorted(f.value for f in cpu.features),
        "flags": sorted(cpu.flags),
        "known": cpu.known,
    }


class _Judge:
    """Scores a low-precision candidate file as it would be served: agreement with PyTorch on the
    validation text, the eval-file score through the served pipeline, speed against the fp32
    artifact of the same backend (the int8 recipe search calls it once per recipe)."""

    def __init__(
        self,
        options: ExportOptions,
        ckpt: LoadedCheckpoint,
        ref: _Reference,
        eval_set: EvalSet | None,
        staging: Path,
        tokenizer_files: dict[str, str],
        version: int,
        existing: ModelConfig | None,
    ) -> None:
        self._options, self._ckpt, self._ref, self._eval_set = options, ckpt, ref, eval_set
        self._staging, self._tokenizer_files = staging, tokenizer_files
        self._version, self._existing = version, existing
        self._reference: float | None = None

    def _config(self, artifacts: list[Artifact]) -> ModelConfig:
        scored = VersionConfig(artifacts=artifacts, tokenizer_files=self._tokenizer_files)
        return _config_of(
            self._options, self._ckpt, self._ref.graph, self._version, self._existing, scored, thresholds=None
        )

    def reference_score(self) -> float:
        """PyTorch's eval score through the served pipeline (computed once)."""
        from bertserve.evaluation.scoring import ServedModel, score

        assert self._eval_set is not None
        if self._reference is None:
            # NOTE: PyTorch answers through `factory`; the artifact is a placeholder nobody opens.
            fp32 = Artifact(
                format=ArtifactFormat.ONNX, precision=Precision.FP32, files={PORTABLE_ONNX: "0" * 64}
            )
            config = self._config([fp32])
            with ServedModel(config, self._staging, factory=self._ref.torch_runner.factory) as served:
                self._reference = score(served, self._eval_set).value
        return self._reference

    def _fp32_file(self, fmt: ArtifactFormat) -> tuple[Path, ArtifactFormat]:
        if fmt == ArtifactFormat.OPENVINO:
            return self._staging / "openvino" / "model.xml", ArtifactFormat.OPENVINO
        fused = self._staging / "model.ort.onnx"
        return (
            (fused, ArtifactFormat.ONNX_OPTIMIZED)
            if fused.is_file()
            else (self._ref.path, ArtifactFormat.ONNX)
        )

    def __call__(self, path: Path, fmt: ArtifactFormat, precision: Precision) -> Judgement:
        from bertserve.evaluation.scoring import ServedModel, score

        output = self._ref.graph.outputs[0]
        runner = runtime_backend(path, fmt, precision, output)
        try:
            logits, batches = self._ref.text()
            cmp = compare(logits, runner, batches, self._ckpt.task, self._ckpt.problem_type)
            drop = None
            if self._eval_set is not None:
                rel = path.relative_to(self._staging).as_posix()
                # an IR is opened only with its weights listed (and verified) beside it
                rels = [rel, str(Path(rel).with_suffix(".bin"))] if fmt == ArtifactFormat.OPENVINO else [rel]
                artifact = Artifact(format=fmt, precision=precision, files=_files(self._staging, rels))
                with ServedModel(
                    self._config([artifact]), self._staging, backend=backend_kind(fmt), precision=precision
                ) as served:
                    value = score(served, self._eval_set).value
                drop = round((self.reference_score() - value) * 100.0, 4)
            fp32_path, fp32_fmt = self._fp32_file(fmt)
            speedup = None
            if fp32_path.is_file():
                fp32 = runtime_backend(fp32_path, fp32_fmt, Precision.FP32, output)
                try:
                    feeds = speed_batch(self._ckpt.tokenizer, self._ref.graph.inputs, self._ckpt.max_length)
                    t = compare_speed({"fp32": fp32, "candidate": runner}, feeds)
                    speedup = round(t["fp32"].min_ms / t["candidate"].min_ms, 3)
                finally:
                    fp32.close()
        finally:
            runner.close()
        reasons = []
        if cmp.agreement < self._options.min_int8_agreement:
            reasons.append(f"agreement {cmp.agreement:.2%} < {self._options.min_int8_agreement:.2%}")
        if drop is not None and drop > self._options.max_int8_drop_points:
            reasons.append(f"loses {drop:.2f} points > {self._options.max_int8_drop_points:.2f}")
        return Judgement(cmp.agreement, drop, speedup, not reasons, tuple(reasons))


def _config_of(
    options: ExportOptions,
    ckpt: LoadedCheckpoint,
    graph: OnnxGraphInfo,
    version: int,
    existing: ModelConfig | None,
    version_config: VersionConfig,
    *,
    thresholds: dict[str, float] | None,
) -> ModelConfig:
    """The model.yaml of this export with `version_config` as its new default version."""
    versions = dict(existing.versions) if existing else {}
    versions[version] = version_config
    segmentation = Segmentation(options.segmentation) if options.segmentation else None
    return ModelConfig(
        name=options.name,
        task=ckpt.task,
        architecture=ckpt.architecture,
        problem_type=ckpt.problem_type,
        labels=list(ckpt.labels),
        tag_scheme=ckpt.tag_scheme,
        embedding=ckpt.embedding,
        thresholds=thresholds,
        segmentation=segmentation or (existing.segmentation if existing else Segmentation.NONE),
        language=existing.language if existing else "en",
        max_length=ckpt.max_length,
        inputs=list(graph.inputs),
        outputs=list(graph.outputs),
        pad_token_id=int(ckpt.tokenizer.pad_token_id or 0),
        # keep batching a user tuned in an earlier version's model.yaml
        batching=existing.batching if existing else BatchingConfig.model_validate({}),
        version_policy=existing.version_policy if existing else None,
        default_version=version,
        versions=dict(sorted(versions.items())),
    )


def _fit_thresholds(
    config: ModelConfig, eval_set: EvalSet, torch_backend: TorchBackend, staging: Path
) -> list[FittedThreshold]:
    """Thresholds maximising each label's F1 on the eval file, from PyTorch's probabilities
    through the served pipeline: every label of a multi-label or one-logit model, the second
    label of a two-label softmax model (its probability decides between the two)."""
    from bertserve.evaluation.scoring import ServedModel
    from bertserve.evaluation.thresholds import fit_thresholds
    from bertserve.service.heads.classification import uses_sigmoid

    labels = list(config.labels)
    independent = uses_sigmoid(len(labels), config.problem_type)
    if not independent and len(labels) != 2:
        raise ExportError(
            f"--fit-thresholds fits multi-label, one-logit or two-label models; this one has {len(labels)} "
            "labels under a softmax, whose argmax has no threshold"
        )
    inputs: list[TextInput] = [e.text if e.pair is None else (e.text, e.pair) for e in eval_set.examples]
    with ServedModel(config, staging, factory=torch_backend.factory) as served:
        answers = served.classify(inputs)
    scores = [{s.label: s.score for s in row} for row in answers]
    probabilities = np.array([[row[label] for label in labels] for row in scores])
    return fit_thresholds(labels, probabilities, list(eval_set.gold), None if independent else labels[1:])


def _evaluate_low_precision(
    built: _Built, eval_set: EvalSet, reference: float, config: ModelConfig, staging: Path
) -> dict[str, object]:
    """Score every int8 and bf16 artifact on the eval file through the served pipeline
    (`bertserve.evaluation.scoring`) against PyTorch's `reference` score: the figures
    `make demo-eval` measures on the written model."""
    from bertserve.evaluation.scoring import ServedModel, score

    scores: dict[str, float] = {"pytorch/fp32": reference}
    for i, result in enumerate(built.results):
        if result.precision not in LOW_PRECISIONS:
            continue
        with ServedModel(
            config, staging, backend=backend_kind(result.format), precision=result.precision
        ) as served:
            value = score(served, eval_set).value
        scores[result.key] = value
        built.results[i] = _replace(
            result,
            eval_score=value,
            eval_delta_points=round((reference - value) * 100.0, 4),
            eval_metric=eval_set.metric,
        )
    return {
        "file": str(eval_set.path),
        "metric": eval_set.metric,
        "examples": len(eval_set),
        "scores": scores,
    }


def _measure_speed(
    built: _Built, ckpt: LoadedCheckpoint, inputs: tuple[str, ...], torch_runner: TorchBackend
) -> dict[str, object]:
    batch_size, sequence_length = 8, min(128, ckpt.max_length)
    feeds = speed_batch(ckpt.tokenizer, inputs, ckpt.max_length, batch_size, sequence_length)
    runners: dict[str, Backend] = {"pytorch/fp32": torch_runner, **built.runners}
    timings = compare_speed(runners, feeds)
    for i, result in enumerate(built.results):
        built.results[i] = _replace(result, ms_per_batch=timings[result.key].median_ms)
    return {
        "batch_size": batch_size,
        "sequence_length": sequence_length,
        "device": "cpu",
        "ms_per_batch": {key: t.median_ms for key, t in timings.items()},
        "min_ms_per_batch": {key: t.min_ms for key, t in timings.items()},
        "note": "rounds interleaved across artifacts so that load from other processes affects all "
        "alike; min is the better figure on a busy host",
    }


def _replace(result: ArtifactResult, **changes: object) -> ArtifactResult:
    return replace(result, **changes)  # type: ignore[arg-type]


def _validation_summary(batches: Sequence[ValidationBatch], options: ExportOptions) -> dict[str, object]:
    return {
        "fp32_atol": options.fp32_atol,
        "batches": len(batches),
        "sequences": sum(b.shape[0] for b in batches),
        "kinds": sorted({b.kind for b in batches}),
        "shapes": [list(b.shape) for b in batches],
        "compared_on": "real (non-padding) positions; every row for sequence classification",
    }


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {}
    for dist in (
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "openvino",
        "nncf",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out
