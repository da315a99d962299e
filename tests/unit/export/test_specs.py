"""The artifact spec list: which specs an export writes for given options, that their files are
what model.yaml can list, and what each check lets through."""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from pathlib import Path

import pytest

from bertserve.export.errors import ExportError
from bertserve.export.options import ExportOptions
from bertserve.export.specs import (
    ARTIFACTS,
    ArtifactSpec,
    Verdict,
    applicable,
    fp16_agreement,
    fp16_parity,
    int8_agreement,
    parity,
)
from bertserve.modelrepo import Artifact, ArtifactFormat, Precision
from tests.unit.export.test_specs_external_data import save_graph

BASE = ExportOptions(model="ckpt", task="text-classification", name="m")
SWITCHES = ("int8", "fp16_ir", "fp16")
FORMATS = (("onnx",), ("openvino",), ("onnx", "openvino"))


def _keys(specs: tuple[ArtifactSpec, ...]) -> list[str]:
    return [spec.key for spec in specs]


def _every_combination() -> list[tuple[ExportOptions, tuple[str, ...]]]:
    out = []
    for formats in FORMATS:
        for values in itertools.product((False, True), repeat=len(SWITCHES)):
            switches = dict(zip(SWITCHES, values, strict=True))
            out.append((dataclasses.replace(BASE, formats=formats, **switches), formats))
    return out


@pytest.mark.parametrize(
    ("formats", "switches", "expected"),
    [
        (("onnx", "openvino"), {}, ["onnx/fp32", "onnx-optimized/fp32", "openvino/fp32"]),
        (
            ("onnx", "openvino"),
            {"int8": True},
            ["onnx/fp32", "onnx-optimized/fp32", "onnx/int8", "openvino/fp32", "openvino/int8"],
        ),
        (("onnx",), {"int8": True}, ["onnx/fp32", "onnx-optimized/fp32", "onnx/int8"]),
        (("onnx",), {"fp16": True}, ["onnx/fp32", "onnx-optimized/fp32", "onnx-optimized/fp16"]),
        (
            ("onnx", "openvino"),
            {"fp16": True, "int8": True},
            [
                "onnx/fp32",
                "onnx-optimized/fp32",
                "onnx-optimized/fp16",
                "onnx/int8",
                "openvino/fp32",
                "openvino/int8",
            ],
        ),
        (("openvino",), {"fp16": True}, ["openvino/fp32"]),  # the fp16 graph is ONNX
        (("openvino",), {}, ["openvino/fp32"]),
        (("openvino",), {"fp16_ir": True}, ["openvino/fp16"]),
        (("openvino",), {"fp16_ir": True, "int8": True}, ["openvino/fp16", "openvino/int8"]),
    ],
)
def test_which_specs_apply(formats: tuple[str, ...], switches: dict[str, bool], expected: list[str]) -> None:
    options = dataclasses.replace(BASE, formats=formats, **switches)
    assert _keys(applicable(options, formats)) == expected


def test_specs_name_real_boolean_options() -> None:
    types = typing.get_type_hints(ExportOptions)
    for spec in ARTIFACTS:
        for name in (*spec.requires, *spec.excludes):
            assert types.get(name) is bool, (spec.key, name)
        assert spec.family in ExportOptions.__dataclass_fields__["formats"].default


@pytest.mark.parametrize(("options", "formats"), _every_combination())
def test_no_two_applicable_specs_share_a_key_files_or_step(
    options: ExportOptions, formats: tuple[str, ...]
) -> None:
    specs = applicable(options, formats)
    assert len({s.key for s in specs}) == len(specs)
    assert len({s.step for s in specs}) == len(specs)
    files = [f for s in specs for f in s.files]
    assert len(set(files)) == len(files)
    # every --formats value asked for writes at least one artifact
    assert {s.family for s in specs} == set(formats)


def test_every_spec_has_its_own_step_name() -> None:
    assert len({s.step for s in ARTIFACTS}) == len(ARTIFACTS)


@pytest.mark.parametrize("spec", ARTIFACTS, ids=lambda s: s.key)
def test_every_spec_lists_its_files_in_model_yaml(spec: ArtifactSpec, tmp_path: Path) -> None:
    """What the loop records for a built spec is a valid model.yaml artifact naming its files."""
    pytest.importorskip("onnx")
    for rel in spec.files:
        path = tmp_path / rel
        if rel.endswith(".onnx"):
            save_graph(path, external=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"ir")
    listed = spec.listed_files(tmp_path)
    assert listed == list(spec.files)
    artifact = Artifact(
        format=spec.format,
        precision=spec.precision,
        files=dict.fromkeys(listed, "0" * 64),
        opset=None if spec.format == ArtifactFormat.OPENVINO else 17,
    )
    assert artifact.main_file == spec.main_file
    if spec.format == ArtifactFormat.OPENVINO:
        assert artifact.ir_weights in spec.files


def test_an_onnx_spec_lists_external_data_too(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    (spec,) = [s for s in ARTIFACTS if s.key == "onnx-optimized/fp32"]
    save_graph(tmp_path / spec.main_file, external="weights.bin")
    assert spec.listed_files(tmp_path) == [spec.main_file, "weights.bin"]


@dataclasses.dataclass(frozen=True)
class _Cmp:
    max_abs_diff: float
    agreement: float


def test_parity_is_a_hard_tolerance() -> None:
    options = dataclasses.replace(BASE, fp32_atol=1e-4)
    assert parity("model.onnx", _Cmp(1e-4, 1.0), options) == Verdict("parity", True, 1e-4)
    for diff in (2e-4, math.nan):
        with pytest.raises(ExportError, match=r"model.onnx does not match PyTorch"):
            parity("model.onnx", _Cmp(diff, 1.0), options)


def test_fp16_weights_must_agree_and_int8_is_left_to_the_gate() -> None:
    options = dataclasses.replace(BASE, min_int8_agreement=0.99)
    assert fp16_agreement("x.xml", _Cmp(0.1, 0.995), options) == Verdict("agreement", True)
    with pytest.raises(ExportError, match="fp16 weights"):
        fp16_agreement("x.xml", _Cmp(0.1, 0.9), options)
    assert int8_agreement("x.onnx", _Cmp(0.1, 0.9), options) == Verdict("agreement", False)
    assert int8_agreement("x.onnx", _Cmp(0.1, 0.99), options) == Verdict("agreement", True)


def test_the_fp16_graph_must_stay_within_its_tolerance_and_agree() -> None:
    options = dataclasses.replace(BASE, fp16_atol=5e-2, min_int8_agreement=0.99)
    assert fp16_parity("model.fp16.onnx", _Cmp(4e-2, 1.0), options) == Verdict("parity", True, 5e-2)
    for diff in (6e-2, math.nan):
        with pytest.raises(ExportError, match=r"model.fp16.onnx \(fp16 graph\) does not match PyTorch"):
            fp16_parity("model.fp16.onnx", _Cmp(diff, 1.0), options)
    with pytest.raises(ExportError, match=r"agrees with PyTorch on only 98.00%"):
        fp16_parity("model.fp16.onnx", _Cmp(1e-3, 0.98), options)


def test_checks_follow_precision() -> None:
    for spec in ARTIFACTS:
        # fp16 weights in an IR are judged by decisions; the fp16 ONNX graph by a tolerance too
        fp16 = fp16_parity if spec.format == ArtifactFormat.ONNX_OPTIMIZED else fp16_agreement
        expected = {
            Precision.FP32: parity,
            Precision.FP16: fp16,
            Precision.INT8: int8_agreement,
            Precision.BF16: int8_agreement,  # the same gate: written always, the default only if it passes
        }
        assert spec.check is expected[spec.precision], spec.key
