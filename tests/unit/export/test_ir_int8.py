"""The NNCF recipe search of the int8 IR (specs._ir_int8), with NNCF and the gate replaced: which
recipes it tries on which CPU, what it keeps, and what the kept IR asks of the runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from bertserve.export import quantize
from bertserve.export.specs import BuildInputs, BuildOutput, Calibration, Judgement, _ir_int8
from bertserve.modelrepo import ArtifactFormat, Precision
from bertserve.runtime.openvino import asks_bf16_inference


def tiny_model() -> ov.Model:
    ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
    logits = ops.matmul(
        ops.convert(ids, ov.Type.f32), ops.constant(np.ones((1, 2), np.float32)), False, False
    )
    return ov.Model([logits], [ids], "tiny")


class FakeNncf:
    """Records the ignored patterns of every quantization; returns a fresh tiny model."""

    def __init__(self) -> None:
        self.ignored: list[tuple[str, ...]] = []

    def __call__(self, model: ov.Model, calibration: object, ignored: tuple[str, ...] = ()) -> ov.Model:
        self.ignored.append(tuple(ignored))
        return tiny_model()


def run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, bf16_cpu: bool, passing: set[int]
) -> tuple[BuildOutput, list[tuple[str, ...]], list[bool], bool]:
    nncf = FakeNncf()
    monkeypatch.setattr(quantize, "quantize_openvino_int8", nncf)
    monkeypatch.setattr("bertserve.export.openvino_export.convert_to_openvino", lambda path: tiny_model())
    main = tmp_path / "openvino-int8" / "model.xml"
    calls: list[bool] = []

    def judge(path: Path, fmt: ArtifactFormat, precision: Precision) -> Judgement:
        assert (path, fmt, precision) == (main, ArtifactFormat.OPENVINO, Precision.INT8)
        calls.append(asks_bf16_inference(ov.Core().read_model(str(path))))
        ok = len(calls) - 1 in passing
        return Judgement(agreement=0.995 if ok else 0.98, drop_points=0.1, speedup=2.4, passed=ok)

    inputs = BuildInputs(
        folder=tmp_path,
        portable_onnx=tmp_path / "model.onnx",
        num_heads=1,
        hidden_size=2,
        calibration=lambda: Calibration(samples=[{"input_ids": np.ones((1, 3), np.int64)}], source="test"),
        judge=judge,
        cpu_vnni=True,
        cpu_bf16=bf16_cpu,
    )
    output = _ir_int8(inputs, main)
    return output, nncf.ignored, calls, asks_bf16_inference(ov.Core().read_model(str(main)))


def test_with_bf16_the_ffn_out_bf16_recipe_is_tried_first_and_marks_the_ir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, ignored, judged_bf16, kept_bf16 = run(tmp_path, monkeypatch, bf16_cpu=True, passing={0})
    assert [v.name for v in output.variants] == ["nncf-transformer-ffn-out-bf16"]
    assert output.variants[0].chosen and ignored == [(f".*{quantize.FFN_OUTPUT}.*",)]
    assert judged_bf16 == [True] and kept_bf16
    assert output.needs == ("vnni", "bf16")


def test_without_bf16_the_bf16_recipe_is_not_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output, ignored, judged_bf16, kept_bf16 = run(tmp_path, monkeypatch, bf16_cpu=False, passing={0})
    assert [v.name for v in output.variants] == ["nncf-transformer"]
    assert ignored == [()] and judged_bf16 == [False] and not kept_bf16
    assert output.needs == ("vnni",)


def test_when_nothing_passes_the_preset_is_kept_unmarked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output, ignored, judged_bf16, kept_bf16 = run(tmp_path, monkeypatch, bf16_cpu=True, passing=set())
    assert [v.name for v in output.variants] == [r.name for r in quantize.NNCF_RECIPES]
    assert [v.chosen for v in output.variants] == [False, True, False]
    assert judged_bf16 == [True, False, False]
    assert ignored[-1] == () and not kept_bf16  # the preset written again, without the bf16 request
    assert output.needs == ("vnni",)
