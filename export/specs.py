"""The artifacts an export writes, as data.

Each `ArtifactSpec` says which `--formats` value writes it (`family`) and which boolean options it
needs on or off, its files in the version folder (main file first), the function that writes them
and the check its outputs must pass against PyTorch. `run_export` builds, validates, times and
reports every applicable spec of `ARTIFACTS` in that order, one progress step each, in one loop.

Every artifact derives from the portable ONNX graph, which the export writes before any of them
(the validation batches need its input names); so the `onnx/fp32` spec has nothing left to build.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from bertserve.export.errors import ExportError
from bertserve.export.options import ExportOptions
from bertserve.modelrepo import ArtifactFormat, Precision

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Feeds = Mapping[str, npt.NDArray[np.int64]]
else:
    Feeds = Mapping[str, Any]

PORTABLE_ONNX = "model.onnx"
FP16_ONNX = "model.fp16.onnx"


@dataclass(frozen=True)
class Calibration:
    samples: Sequence[Feeds]  # one tokenized sentence each (batch 1, natural length)
    source: str  # where the sentences came from, for the report's notes


@dataclass(frozen=True)
class Judgement:
    """How a low-precision candidate file kept PyTorch's answers, and its speed (exporter._judge)."""

    agreement: float  # decisions agreeing with PyTorch on the validation text
    drop_points: float | None  # eval score lost against PyTorch (None without --eval-file)
    speedup: float | None  # fp32 time / its time, same backend, same batch
    passed: bool
    reasons: tuple[str, ...] = ()


# (candidate main file, its format, its precision) -> judgement
Judge = Callable[[Path, ArtifactFormat, Precision], Judgement]


@dataclass(frozen=True)
class Variant:
    """One quantization recipe the export tried, for the report."""

    name: str
    recipe: str
    agreement: float
    drop_points: float | None
    speedup: float | None
    passed: bool
    chosen: bool = False
    build_seconds: float | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildInputs:
    """What every builder may read."""

    folder: Path  # the version's staging folder: each spec's files go here
    portable_onnx: Path  # the portable graph (inside `folder` only when the onnx format is kept)
    num_heads: int
    hidden_size: int
    calibration: Callable[[], Calibration]  # called by the builders that need it, not before
    judge: Judge
    cpu_vnni: bool  # the export CPU multiplies int8 natively: 8-bit recipes are worth trying
    cpu_bf16: bool  # the export CPU has AVX-512-BF16/AMX: bf16 can be measured


@dataclass(frozen=True)
class BuildOutput:
    """What a builder learned that belongs in the report."""

    fusions: Mapping[str, int] = field(default_factory=dict)  # fused-operator counts
    notes: tuple[str, ...] = ()
    variants: tuple[Variant, ...] = ()  # the recipes tried, the chosen one marked
    needs: tuple[str, ...] = ()  # CPU features the artifact needs to run as measured (vnni, bf16)


# (inputs, path of the spec's main file) -> report facts; writes every file of the spec
Builder = Callable[[BuildInputs, Path], BuildOutput]


class Comparison(Protocol):
    """How an artifact's outputs compared with PyTorch's on the validation batches."""

    @property
    def max_abs_diff(self) -> float: ...

    @property
    def agreement(self) -> float: ...


@dataclass(frozen=True)
class Verdict:
    check: str  # "parity" (a hard tolerance) or "agreement" (share of decisions that agree)
    passed: bool
    tolerance: float | None = None


# (main file, comparison, options) -> verdict; raises ExportError when the export must stop
Checker = Callable[[str, Comparison, ExportOptions], Verdict]


def parity(main: str, cmp: Comparison, options: ExportOptions) -> Verdict:
    """fp32: every logit within `fp32_atol` of PyTorch's, or the export fails."""
    if not cmp.max_abs_diff <= options.fp32_atol:  # written so that NaN fails
        raise ExportError(
            f"{main} does not match PyTorch: max |diff| {cmp.max_abs_diff:.2e} > {options.fp32_atol:.0e}"
        )
    return Verdict("parity", passed=True, tolerance=options.fp32_atol)


def fp16_agreement(main: str, cmp: Comparison, options: ExportOptions) -> Verdict:
    """fp16 weights are asked for explicitly, so falling short of the agreement fails the export."""
    if not cmp.agreement >= options.min_int8_agreement:
        raise ExportError(
            f"{main} (fp16 weights) agrees with PyTorch on only {cmp.agreement:.2%} of decisions"
        )
    return Verdict("agreement", passed=True)


def fp16_parity(main: str, cmp: Comparison, options: ExportOptions) -> Verdict:
    """The fp16 graph is asked for explicitly (`--fp16`): its logits must stay within `fp16_atol`
    of PyTorch's and its decisions agree, or the export fails.

    NOTE: measured with ONNX Runtime's CPU fp16 kernels; CUDA's accumulate differently, so the
    same tolerance is checked again on a GPU (`make gpu-check`, CUDA fp16 against CPU fp32)."""
    if not cmp.max_abs_diff <= options.fp16_atol:  # written so that NaN fails
        raise ExportError(
            f"{main} (fp16 graph) does not match PyTorch: max |diff| {cmp.max_abs_diff:.2e} > "
            f"{options.fp16_atol:.0e}"
        )
    if not cmp.agreement >= options.min_int8_agreement:
        raise ExportError(f"{main} (fp16 graph) agrees with PyTorch on only {cmp.agreement:.2%} of decisions")
    return Verdict("parity", passed=True, tolerance=options.fp16_atol)


def int8_agreement(main: str, cmp: Comparison, options: ExportOptions) -> Verdict:
    """int8 is written whatever its agreement; the int8 gate decides whether it becomes the default."""
    return Verdict("agreement", passed=cmp.agreement >= options.min_int8_agreement)


@dataclass(frozen=True)
class ArtifactSpec:
    format: ArtifactFormat
    precision: Precision
    family: str  # the --formats value that writes it
    files: tuple[str, ...]  # relative to the version folder, the file a runtime opens first
    step: str  # its progress line and its entry in the report's steps
    build: Builder
    check: Checker
    requires: tuple[str, ...] = ()  # boolean ExportOptions that must be on
    excludes: tuple[str, ...] = ()  # boolean ExportOptions that must be off

    @property
    def key(self) -> str:
        return f"{self.format.value}/{self.precision.value}"

    @property
    def main_file(self) -> str:
        return self.files[0]

    def applies(self, options: ExportOptions, formats: Sequence[str]) -> bool:
        return (
            self.family in formats
            and all(getattr(options, name) for name in self.requires)
            and not any(getattr(options, name) for name in self.excludes)
        )

    def listed_files(self, folder: Path) -> list[str]:
        """What model.yaml lists for the built artifact: its files, and for an ONNX graph every
        external-data file it reads."""
        if self.format == ArtifactFormat.OPENVINO:
            return list(self.files)
        return onnx_artifact_files(folder, self.main_file)


def onnx_artifact_files(folder: Path, main: str) -> list[str]:
    """`main` and every external-data file its graph reads (graphs over 2 GB keep their weights
    beside them), relative to `folder`: all of them go into model.yaml with a sha256, because the
    service refuses to open a graph that reads an unlisted file. The walk is the service's own
    (bertserve.runtime.onnx_files), so what the export lists is exactly what the service checks."""
    from bertserve.runtime.onnx_files import external_data_locations

    base = PurePosixPath(main).parent
    extra = [str(base / location) for location in external_data_locations(folder / main)]
    return [main, *sorted(set(extra) - {main})]


def _portable(inputs: BuildInputs, main: Path) -> BuildOutput:
    # NOTE: already written (see the module docstring); `main` is `inputs.portable_onnx` here.
    return BuildOutput()


def _ort_fusions(inputs: BuildInputs, main: Path) -> BuildOutput:
    from bertserve.export.onnx_export import optimize_for_onnxruntime

    fusions = optimize_for_onnxruntime(
        inputs.portable_onnx, main, num_heads=inputs.num_heads, hidden_size=inputs.hidden_size
    )
    return BuildOutput(fusions=fusions)


def _ort_fusions_fp16(inputs: BuildInputs, main: Path) -> BuildOutput:
    from bertserve.export.onnx_export import optimize_for_onnxruntime

    fusions = optimize_for_onnxruntime(
        inputs.portable_onnx, main, num_heads=inputs.num_heads, hidden_size=inputs.hidden_size, fp16=True
    )
    return BuildOutput(
        fusions={f"fp16:{op}": n for op, n in fusions.items()},
        notes=(
            f"{FP16_ONNX} validated on ONNX Runtime's CPU fp16 kernels; the CUDA provider's differ, "
            "`make gpu-check` checks the same tolerance on a GPU",
        ),
    )


def _onnx_int8(inputs: BuildInputs, main: Path) -> BuildOutput:
    """Try the recipes of `quantize.ONNX_INT8_RECIPES` stage by stage (the plain ones, then those
    keeping sensitive nodes in fp32, then 7-bit weights) and keep the fastest that passes the gate
    of the first stage where one does; none passing, the closest to PyTorch (the gate then keeps
    fp32 the default). Every candidate is judged as served: agreement, eval score, speed."""
    import time

    from bertserve.export.quantize import NO_VNNI_RECIPES, ONNX_INT8_RECIPES, quantize_onnx_int8

    recipes = ONNX_INT8_RECIPES if inputs.cpu_vnni else NO_VNNI_RECIPES
    calibration = inputs.calibration() if any(r.static for r in recipes) else None
    tried: list[tuple[Variant, Path]] = []
    for stage in sorted({r.stage for r in recipes}):
        for recipe in (r for r in recipes if r.stage == stage):
            candidate = main.with_name(f"{main.stem}.{recipe.name}.onnx")
            start = time.perf_counter()
            quantize_onnx_int8(
                recipe, inputs.portable_onnx, candidate, calibration.samples if calibration else ()
            )
            seconds = round(time.perf_counter() - start, 1)
            j = inputs.judge(candidate, ArtifactFormat.ONNX, Precision.INT8)
            variant = Variant(
                recipe.name,
                recipe.describe(),
                j.agreement,
                j.drop_points,
                j.speedup,
                j.passed,
                False,
                seconds,
                j.reasons,
            )
            tried.append((variant, candidate))
        if any(v.passed for v, _ in tried):
            break
    passing = [(v, p) for v, p in tried if v.passed]
    if passing:
        best, path = max(passing, key=lambda vp: vp[0].speedup or 0.0)
    else:
        best, path = max(tried, key=lambda vp: (vp[0].agreement, -(vp[0].drop_points or 0.0)))
    for _, candidate in tried:
        if candidate != path:
            candidate.unlink()
    path.replace(main)
    recipe = next(r for r in recipes if r.name == best.name)
    variants = tuple(replace(v, chosen=v is best) for v, _ in tried)
    notes: tuple[str, ...] = (f"ONNX int8: {best.name} ({best.recipe}) of {len(tried)} recipe(s) tried",)
    if calibration is not None:
        notes += (f"ONNX static int8 calibrated on {calibration.source}",)
    return BuildOutput(notes=notes, variants=variants, needs=("vnni",) if recipe.needs_vnni else ())


def _bf16(inputs: BuildInputs, main: Path) -> BuildOutput:
    """Nothing to write: the bf16 artifact is the fp32 IR compiled with bf16 inference precision;
    its own entry in model.yaml carries its gate (agreement and eval score in bf16)."""
    if not main.is_file():
        raise ExportError("bf16 needs the fp32 OpenVINO IR, which was not written")
    if not inputs.cpu_bf16:
        return BuildOutput(
            notes=("bf16: this CPU has no AVX-512-BF16/AMX, so bf16 could not be measured; it is not gated",),
            needs=("bf16",),
        )
    return BuildOutput(needs=("bf16",))


def _ir(inputs: BuildInputs, main: Path, *, compress_to_fp16: bool) -> BuildOutput:
    from bertserve.export.openvino_export import convert_to_openvino, save_ir

    save_ir(convert_to_openvino(inputs.portable_onnx), main, compress_to_fp16=compress_to_fp16)
    return BuildOutput()


def _ir_int8(inputs: BuildInputs, main: Path) -> BuildOutput:
    """Try `quantize.NNCF_RECIPES` in order (those that run parts in bf16 only where this CPU can
    measure them) and keep the first that passes the gate, else the preset."""
    import time

    from bertserve.export.openvino_export import convert_to_openvino, save_ir
    from bertserve.export.quantize import NNCF_RECIPES, NncfRecipe, quantize_openvino_int8
    from bertserve.runtime.openvino import mark_bf16_inference

    def write(recipe: NncfRecipe) -> None:
        # NNCF works on a fresh fp32 graph: the saved IR may have been compressed to fp16.
        quantized = quantize_openvino_int8(
            convert_to_openvino(inputs.portable_onnx), calibration.samples, recipe.ignored
        )
        if recipe.bf16:
            mark_bf16_inference(quantized)
        save_ir(quantized, main, compress_to_fp16=False)

    calibration = inputs.calibration()
    recipes = [r for r in NNCF_RECIPES if inputs.cpu_bf16 or not r.bf16]
    tried: list[Variant] = []
    for recipe in recipes:
        start = time.perf_counter()
        write(recipe)
        seconds = round(time.perf_counter() - start, 1)
        j = inputs.judge(main, ArtifactFormat.OPENVINO, Precision.INT8)
        tried.append(
            Variant(
                recipe.name,
                recipe.what,
                j.agreement,
                j.drop_points,
                j.speedup,
                j.passed,
                build_seconds=seconds,
                reasons=j.reasons,
            )
        )
        if j.passed:
            break
    chosen = len(tried) - 1
    if not tried[-1].passed:  # none passed: keep the preset (the gate keeps fp32 the default)
        chosen = next(i for i, r in enumerate(recipes) if r.name == "nncf-transformer")
        write(recipes[chosen])
    tried[chosen] = replace(tried[chosen], chosen=True)
    notes = (f"OpenVINO int8 calibrated on {calibration.source}",)
    return BuildOutput(notes=notes, variants=tuple(tried), needs=recipes[chosen].needs)


ARTIFACTS: tuple[ArtifactSpec, ...] = (
    ArtifactSpec(
        format=ArtifactFormat.ONNX,
        precision=Precision.FP32,
        family="onnx",
        files=(PORTABLE_ONNX,),
        step="validate portable ONNX",
        build=_portable,
        check=parity,
    ),
    ArtifactSpec(
        format=ArtifactFormat.ONNX_OPTIMIZED,
        precision=Precision.FP32,
        family="onnx",
        files=("model.ort.onnx",),
        step="ORT transformer fusions",
        build=_ort_fusions,
        check=parity,
    ),
    ArtifactSpec(
        format=ArtifactFormat.ONNX_OPTIMIZED,
        precision=Precision.FP16,
        family="onnx",
        files=(FP16_ONNX,),
        step="fp16 ONNX for GPUs (ORT fusions + float16)",
        build=_ort_fusions_fp16,
        check=fp16_parity,
        requires=("fp16",),
    ),
    ArtifactSpec(
        format=ArtifactFormat.ONNX,
        precision=Precision.INT8,
        family="onnx",
        files=("model.int8.onnx",),
        step="int8 ONNX (dynamic quantization)",
        build=_onnx_int8,
        check=int8_agreement,
        requires=("int8",),
    ),
    ArtifactSpec(
        format=ArtifactFormat.OPENVINO,
        precision=Precision.FP32,
        family="openvino",
        files=("openvino/model.xml", "openvino/model.bin"),
        step="OpenVINO IR (fp32)",
        build=partial(_ir, compress_to_fp16=False),
        check=parity,
        excludes=("fp16_ir",),
    ),
    ArtifactSpec(
        format=ArtifactFormat.OPENVINO,
        precision=Precision.FP16,
        family="openvino",
        files=("openvino/model.xml", "openvino/model.bin"),
        step="OpenVINO IR (fp16)",
        build=partial(_ir, compress_to_fp16=True),
        check=fp16_agreement,
        requires=("fp16_ir",),
    ),
    ArtifactSpec(
        format=ArtifactFormat.OPENVINO,
        precision=Precision.BF16,
        family="openvino",
        files=("openvino/model.xml", "openvino/model.bin"),
        step="OpenVINO bf16 (fp32 IR, bf16 inference)",
        build=_bf16,
        check=int8_agreement,
        requires=("bf16",),
        excludes=("fp16_ir",),
    ),
    ArtifactSpec(
        format=ArtifactFormat.OPENVINO,
        precision=Precision.INT8,
        family="openvino",
        files=("openvino-int8/model.xml", "openvino-int8/model.bin"),
        step="int8 OpenVINO IR (NNCF)",
        build=_ir_int8,
        check=int8_agreement,
        requires=("int8",),
    ),
)


def applicable(options: ExportOptions, formats: Sequence[str]) -> tuple[ArtifactSpec, ...]:
    """The specs an export with these options writes, in build order."""
    return tuple(spec for spec in ARTIFACTS if spec.applies(options, formats))
