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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rich.console import Console

from bertserve.export.checkpoint import LoadedCheckpoint, load_checkpoint, parse_task
from bertserve.export.errors import ExportError
from bertserve.export.options import KNOWN_FORMATS, ExportOptions
from bertserve.export.report import ArtifactResult, ExportReport, GateResult, StepProgress, render_summary
from bertserve.export.validate import (
    PAIRS,
    SENTENCES,
    EvalSet,
    LogitsRunner,
    OnnxRuntimeRunner,
    OpenVinoRunner,
    TorchRunner,
    ValidationBatch,
    build_validation_batches,
    compare,
    compare_speed,
    encode,
    evaluate,
    load_eval_file,
    speed_batch,
)
from bertserve.modelrepo import (
    MODEL_CONFIG_FILE,
    Artifact,
    ArtifactFormat,
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

__all__ = ["ExportError", "ExportOptions", "ExportResult", "run_export"]

ONNX_FILE = "model.onnx"
ORT_FILE = "model.ort.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
IR_DIR = "openvino"
INT8_IR_DIR = "openvino-int8"


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
    runners: dict[str, LogitsRunner] = field(default_factory=dict)
    results: list[ArtifactResult] = field(default_factory=list)


def _check_options(options: ExportOptions) -> tuple[Task, tuple[str, ...]]:
    task = parse_task(options.task)
    formats = tuple(dict.fromkeys(f.lower() for f in options.formats))
    unknown = [f for f in formats if f not in KNOWN_FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {unknown or formats}; choose from: {', '.join(KNOWN_FORMATS)}")
    if options.fp16_ir and "openvino" not in formats:
        raise ExportError("--fp16-ir needs the openvino format")
    for path, what in ((options.calibration, "calibration"), (options.eval_file, "eval")):
        if path is not None and not path.is_file():
            raise ExportError(f"{what} file {path} does not exist")
    if options.eval_file is not None and not options.int8:
        raise ExportError("--eval-file gates int8 artifacts; add --int8")
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


def onnx_artifact_files(folder: Path, main: str) -> list[str]:
    """`main` and every external-data file its graph reads (graphs over 2 GB keep their weights
    beside them), relative to `folder`: all of them go into model.yaml with a sha256, because the
    service refuses to open a graph that reads an unlisted file. The walk is the service's own
    (bertserve.runtime.onnx_files), so what the export lists is exactly what the service checks."""
    from bertserve.runtime.onnx_files import external_data_locations

    base = PurePosixPath(main).parent
    extra = [str(base / location) for location in external_data_locations(folder / main)]
    return [main, *sorted(set(extra) - {main})]


def _calibration_texts(path: Path | None) -> tuple[list[str], str]:
    if path is None:
        texts = list(SENTENCES) + [f"{a} {b}" for a, b in PAIRS]
        return texts, f"{len(texts)} built-in sentences (pass --calibration with in-domain text)"
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ExportError(f"calibration file {path} is empty")
    return texts, f"{min(len(texts), 300)} sentences from {path.name}"


def run_export(options: ExportOptions) -> ExportResult:
    task, formats = _check_options(options)
    console = Console(stderr=True, quiet=options.quiet)
    repo = options.repo
    model_dir = repo / options.name
    existing = _existing_config(repo, options.name)
    version = _choose_version(model_dir, existing, options.version)
    eval_set: EvalSet | None = None

    n_steps = 4 + (2 if "onnx" in formats else 0) + (1 if "openvino" in formats else 0)
    n_steps += (("onnx" in formats) + ("openvino" in formats)) if options.int8 else 0
    n_steps += (1 if options.eval_file else 0) + (1 if options.measure_speed else 0)

    created_model_dir = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    scratch = Path(tempfile.mkdtemp(prefix="bertserve-export-"))
    try:
        with StepProgress(console, n_steps) as steps:
            with steps.step("load checkpoint"):
                ckpt = load_checkpoint(
                    options.model, task, allow_pickle=options.allow_pickle, max_length=options.max_length
                )
                if options.eval_file is not None:
                    eval_set = load_eval_file(options.eval_file, task, ckpt.labels)
            result = _export_version(
                options, formats, ckpt, eval_set, staging, scratch, steps, version, existing
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


def _export_version(
    options: ExportOptions,
    formats: tuple[str, ...],
    ckpt: LoadedCheckpoint,
    eval_set: EvalSet | None,
    staging: Path,
    scratch: Path,
    steps: StepProgress,
    version: int,
    existing: ModelConfig | None,
) -> ExportResult:
    from bertserve.export.onnx_export import export_portable_onnx, optimize_for_onnxruntime

    task = ckpt.task
    built = _Built()
    notes = list(ckpt.notes)
    keep_onnx = "onnx" in formats
    onnx_dir = staging if keep_onnx else scratch

    with steps.step("export portable ONNX"):
        onnx_path = onnx_dir / ONNX_FILE
        graph = export_portable_onnx(ckpt.model, task, onnx_path)
        if existing is not None:
            _check_compatible(existing, ckpt, graph.inputs)
        batches = build_validation_batches(ckpt.tokenizer, task, graph.inputs, ckpt.max_length)
        torch_runner = TorchRunner(ckpt.model)
        reference = [torch_runner.run(b.feeds) for b in batches]

    def validate(fmt: ArtifactFormat, precision: Precision, files: list[str], runner: LogitsRunner) -> None:
        cmp = compare(reference, runner, batches, task, ckpt.problem_type)
        rel = files[0]
        if fmt != ArtifactFormat.OPENVINO:
            files = onnx_artifact_files(staging, rel)
        if precision == Precision.FP32:
            passed = cmp.max_abs_diff <= options.fp32_atol
            if not passed:
                raise ExportError(
                    f"{rel} does not match PyTorch: max |diff| {cmp.max_abs_diff:.2e} "
                    f"> {options.fp32_atol:.0e}"
                )
            check, tolerance = "parity", options.fp32_atol
        else:
            passed = cmp.agreement >= options.min_int8_agreement
            check, tolerance = "agreement", None
            if precision == Precision.FP16 and not passed:
                raise ExportError(
                    f"{rel} (fp16 weights) agrees with PyTorch on only {cmp.agreement:.2%} of decisions"
                )
        built.artifacts.append(
            Artifact(
                format=fmt,
                precision=precision,
                files=_files(staging, files),
                opset=graph.opset if fmt != ArtifactFormat.OPENVINO else None,
            )
        )
        built.runners[f"{fmt.value}/{precision.value}"] = runner
        built.results.append(
            ArtifactResult(
                format=fmt,
                precision=precision,
                path=rel,
                check=check,
                max_abs_diff=cmp.max_abs_diff,
                agreement=cmp.agreement,
                decisions=cmp.decisions,
                passed=passed,
                tolerance=tolerance,
            )
        )

    fusions: dict[str, int] = {}
    if keep_onnx:
        with steps.step("validate portable ONNX"):
            validate(ArtifactFormat.ONNX, Precision.FP32, [ONNX_FILE], OnnxRuntimeRunner(onnx_path))
        with steps.step("ORT transformer fusions"):
            fusions = optimize_for_onnxruntime(
                onnx_path, staging / ORT_FILE, num_heads=ckpt.num_heads, hidden_size=ckpt.hidden_size
            )
            validate(
                ArtifactFormat.ONNX_OPTIMIZED,
                Precision.FP32,
                [ORT_FILE],
                OnnxRuntimeRunner(staging / ORT_FILE),
            )
        if options.int8:
            from bertserve.export.quantize import quantize_onnx_dynamic

            with steps.step("int8 ONNX (dynamic quantization)"):
                quantize_onnx_dynamic(onnx_path, staging / INT8_ONNX_FILE)
                validate(
                    ArtifactFormat.ONNX,
                    Precision.INT8,
                    [INT8_ONNX_FILE],
                    OnnxRuntimeRunner(staging / INT8_ONNX_FILE),
                )

    if "openvino" in formats:
        from bertserve.export.openvino_export import IR_BIN, IR_XML, convert_to_openvino, save_ir

        ir_precision = Precision.FP16 if options.fp16_ir else Precision.FP32
        with steps.step(f"OpenVINO IR ({ir_precision.value})"):
            ov_model = convert_to_openvino(onnx_path)
            xml, _ = save_ir(ov_model, staging / IR_DIR, compress_to_fp16=options.fp16_ir)
            validate(
                ArtifactFormat.OPENVINO,
                ir_precision,
                [f"{IR_DIR}/{IR_XML}", f"{IR_DIR}/{IR_BIN}"],
                OpenVinoRunner(xml),
            )
        if options.int8:
            from bertserve.export.quantize import quantize_openvino_int8

            texts, source = _calibration_texts(options.calibration)
            notes.append(f"OpenVINO int8 calibrated on {source}")
            with steps.step("int8 OpenVINO IR (NNCF)"):
                samples = [encode(ckpt.tokenizer, [t], graph.inputs, ckpt.max_length) for t in texts]
                # NNCF works on a fresh fp32 graph: the saved one may have been compressed to fp16.
                int8_model = quantize_openvino_int8(convert_to_openvino(onnx_path), samples)
                xml8, _ = save_ir(int8_model, staging / INT8_IR_DIR, compress_to_fp16=False)
                validate(
                    ArtifactFormat.OPENVINO,
                    Precision.INT8,
                    [f"{INT8_IR_DIR}/{IR_XML}", f"{INT8_IR_DIR}/{IR_BIN}"],
                    OpenVinoRunner(xml8),
                )

    eval_summary = None
    if eval_set is not None:
        with steps.step(f"evaluate on {eval_set.path.name}"):
            eval_summary = _evaluate_int8(built, eval_set, ckpt, graph.inputs, torch_runner)

    gate = _int8_gate(built.results, options)
    default_precision = (
        Precision.INT8 if gate is not None and (gate.passed or options.force) else Precision.FP32
    )
    if gate is not None and options.force and not gate.passed:
        notes.append("int8 is the default precision although it failed the gate (--force)")

    speed: dict[str, object] = {}
    if options.measure_speed:
        with steps.step("measure speed"):
            speed = _measure_speed(built, ckpt, graph.inputs, torch_runner)

    with steps.step("write repository files"):
        tokenizer_files = _save_tokenizer(ckpt, staging)
        created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        version_config = VersionConfig(
            artifacts=built.artifacts,
            default_precision=default_precision,
            tokenizer_files=tokenizer_files,
            created=created,
        )
        config = _model_config(
            options.name,
            ckpt,
            graph.inputs,
            graph.outputs,
            version,
            version_config,
            existing,
            Segmentation(options.segmentation) if options.segmentation else None,
        )
        report = ExportReport(
            model=options.name,
            version=version,
            source=ckpt.source,
            task=task.value,
            architecture=ckpt.architecture,
            labels=ckpt.labels,
            max_length=ckpt.max_length,
            inputs=graph.inputs,
            opset=graph.opset,
            default_precision=default_precision,
            validation=_validation_summary(batches, options),
            artifacts=tuple(built.results),
            speed=speed,
            fusions=fusions,
            libraries=_library_versions(),
            steps=tuple(steps.timings),
            created=created,
            int8_gate=gate,
            eval=eval_summary,
            notes=tuple(notes),
        )
        report.write(staging)
    return ExportResult(config=config, version=version, version_dir=staging, report=report)


def _check_compatible(existing: ModelConfig, ckpt: LoadedCheckpoint, inputs: tuple[str, ...]) -> None:
    """All versions of a model share one model.yaml: task, labels and inputs must not change."""
    diffs = []
    if existing.task != ckpt.task:
        diffs.append(f"task {existing.task.value} -> {ckpt.task.value}")
    if tuple(existing.labels) != ckpt.labels:
        diffs.append(f"labels {existing.labels} -> {list(ckpt.labels)}")
    if tuple(existing.inputs) != inputs:
        diffs.append(f"inputs {existing.inputs} -> {list(inputs)}")
    if diffs:
        raise ExportError(
            f"model {existing.name} already exists with a different contract ({'; '.join(diffs)}); "
            "export it under a new --name"
        )


def _model_config(
    name: str,
    ckpt: LoadedCheckpoint,
    inputs: tuple[str, ...],
    outputs: tuple[str, ...],
    version: int,
    version_config: VersionConfig,
    existing: ModelConfig | None,
    segmentation: Segmentation | None = None,
) -> ModelConfig:
    versions = dict(existing.versions) if existing else {}
    versions[version] = version_config
    return ModelConfig(
        name=name,
        task=ckpt.task,
        architecture=ckpt.architecture,
        problem_type=ckpt.problem_type,
        labels=list(ckpt.labels),
        tag_scheme=ckpt.tag_scheme,
        segmentation=segmentation or (existing.segmentation if existing else Segmentation.NONE),
        language=existing.language if existing else "en",
        max_length=ckpt.max_length,
        inputs=list(inputs),
        outputs=list(outputs),
        pad_token_id=int(ckpt.tokenizer.pad_token_id or 0),
        # keep batching a user tuned in an earlier version's model.yaml
        batching=existing.batching if existing else BatchingConfig.model_validate({}),
        default_version=version,
        versions=dict(sorted(versions.items())),
    )


def _save_tokenizer(ckpt: LoadedCheckpoint, folder: Path) -> dict[str, str]:
    written = ckpt.tokenizer.save_pretrained(str(folder), legacy_format=None)
    rels = sorted({Path(p).name for p in written if (folder / Path(p).name).is_file()})
    if "tokenizer.json" not in rels:
        raise ExportError("the tokenizer did not save a tokenizer.json")
    return _files(folder, rels)


def _int8_gate(results: Sequence[ArtifactResult], options: ExportOptions) -> GateResult | None:
    int8 = [r for r in results if r.precision == Precision.INT8]
    if not int8:
        return None
    reasons: list[str] = []
    for r in int8:
        if r.agreement < options.min_int8_agreement:
            reasons.append(f"{r.key} agreement {r.agreement:.2%} < {options.min_int8_agreement:.2%}")
        if r.eval_delta_points is not None and r.eval_delta_points > options.max_int8_drop_points:
            reasons.append(
                f"{r.key} loses {r.eval_delta_points:.2f} points > {options.max_int8_drop_points:.2f}"
            )
    return GateResult(
        min_agreement=options.min_int8_agreement,
        max_drop_points=options.max_int8_drop_points,
        passed=not reasons,
        forced=options.force and bool(reasons),
        reasons=tuple(reasons),
    )


def _evaluate_int8(
    built: _Built,
    eval_set: EvalSet,
    ckpt: LoadedCheckpoint,
    inputs: tuple[str, ...],
    torch_runner: TorchRunner,
) -> dict[str, object]:
    def score(runner: LogitsRunner) -> float:
        return evaluate(
            runner,
            eval_set,
            ckpt.tokenizer,
            inputs,
            ckpt.max_length,
            ckpt.task,
            ckpt.problem_type,
            ckpt.labels,
        )

    reference = score(torch_runner)
    scores: dict[str, float] = {"pytorch/fp32": reference}
    for i, result in enumerate(built.results):
        if result.precision != Precision.INT8:
            continue
        value = score(built.runners[result.key])
        scores[result.key] = value
        built.results[i] = _replace(
            result, eval_score=value, eval_delta_points=round((reference - value) * 100.0, 4)
        )
    return {
        "file": str(eval_set.path),
        "metric": eval_set.metric,
        "examples": len(eval_set),
        "scores": scores,
    }


def _measure_speed(
    built: _Built, ckpt: LoadedCheckpoint, inputs: tuple[str, ...], torch_runner: TorchRunner
) -> dict[str, object]:
    batch_size, sequence_length = 8, min(128, ckpt.max_length)
    feeds = speed_batch(ckpt.tokenizer, inputs, ckpt.max_length, batch_size, sequence_length)
    runners: dict[str, LogitsRunner] = {"pytorch/fp32": torch_runner, **built.runners}
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
    from dataclasses import replace

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
