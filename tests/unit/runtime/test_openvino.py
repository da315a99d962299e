"""The OpenVINO backend compiles an IR as the IR asks: an int8 IR whose unquantized layers were
gated in bf16 runs them in bf16 wherever it is opened (service, export gate, evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import openvino.properties.hint as hints
import pytest

from bertserve.modelrepo import Precision
from bertserve.runtime.openvino import (
    OpenVinoBackend,
    asks_bf16_inference,
    compile_config,
    cpu_runs_bf16,
    mark_bf16_inference,
)


def tiny_ir(path: Path, *, bf16: bool) -> Path:
    ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
    tokens = ops.constant(np.array([1], np.int64))
    mean = ops.reduce_mean(ops.convert(ids, ov.Type.f32), tokens, keep_dims=True)
    logits = ops.matmul(mean, ops.constant(np.array([[0.5, -0.25]], np.float32)), False, False)
    logits.output(0).get_tensor().set_names({"logits"})
    model = ov.Model([logits], [ids], "tiny")
    if bf16:
        mark_bf16_inference(model)
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def compiled_precision(xml: Path) -> ov.Type:
    backend = OpenVinoBackend(
        xml, xml.with_suffix(".bin"), Precision.INT8, compile_config("LATENCY", 1, None), "logits"
    )
    try:
        return backend._compiled.get_property(hints.inference_precision)
    finally:
        backend.close()


def test_the_bf16_request_survives_saving_and_only_marked_ir_carry_it(tmp_path: Path) -> None:
    core = ov.Core()
    assert asks_bf16_inference(core.read_model(str(tiny_ir(tmp_path / "bf16.xml", bf16=True))))
    assert not asks_bf16_inference(core.read_model(str(tiny_ir(tmp_path / "plain.xml", bf16=False))))


def test_an_ir_that_asks_for_bf16_compiles_in_bf16_where_the_cpu_has_it(tmp_path: Path) -> None:
    assert compiled_precision(tiny_ir(tmp_path / "plain.xml", bf16=False)) == ov.Type.f32
    marked = compiled_precision(tiny_ir(tmp_path / "bf16.xml", bf16=True))
    if not cpu_runs_bf16(ov.Core()):
        assert marked == ov.Type.f32  # the request is dropped, not an error
        pytest.skip("this CPU has no bf16 kernels: only the fallback could be checked")
    assert marked == ov.Type.bf16
