"""OpenVINO CPU backend for IR written by the export stage (fp32, fp16-compressed or NNCF int8)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints

from bertserve.modelrepo import Precision
from bertserve.runtime.base import BackendKind, Feeds, GraphBackend, Logits

_HINTS = {
    "LATENCY": hints.PerformanceMode.LATENCY,
    "THROUGHPUT": hints.PerformanceMode.THROUGHPUT,
    "CUMULATIVE_THROUGHPUT": hints.PerformanceMode.CUMULATIVE_THROUGHPUT,
}


# NOTE: with dynamic shapes the CPU plugin keeps the executors it built for every input shape it
# has seen (CPU_RUNTIME_CACHE_CAPACITY entries, 5000 by default) and oneDNN keeps the JIT-compiled
# primitives behind them (ONEDNN_PRIMITIVE_CACHE_CAPACITY, 1024 by default). The batcher cuts
# batches of every (size, length) pair, hundreds of them, so with the defaults RSS grew with every
# new shape long after warm-up. Measured on MiniLM-L6 over 1,000 batches of 556 distinct shapes:
# defaults +73 MB and still rising ~10 MB per 166 batches; bounded as below +27 MB, levelling off.
# A 64- or 128-primitive cache levels off as well but rebuilds kernels more often when shapes keep
# changing. malloc_trim, MALLOC_ARENA_MAX=1, a fixed mmap threshold and upper-bounded input shapes
# at best halved the growth without stopping it: the memory is held by the caches. (The other
# source of RSS steps, the largest batch's buffers, is reserved at load: selection.py.)
RUNTIME_CACHE_CAPACITY = 200
PRIMITIVE_CACHE_CAPACITY = 256
_PRIMITIVE_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"

# An IR's own request to run the layers it leaves unquantized in bf16 (an NNCF int8 IR that keeps
# its feed-forward outputs out of int8: export/quantize.py), stored in the IR's rt_info so that
# every caller that opens the file (the service, the export's gate and speed check, the
# evaluation) compiles it the same way. The sha256 of the .xml in model.yaml covers it.
IR_INFERENCE_PRECISION = ("bertserve", "inference_precision")


def mark_bf16_inference(model: ov.Model) -> None:
    """Ask the runtime to compile `model` with bf16 inference precision where the CPU has it."""
    model.set_rt_info("bf16", list(IR_INFERENCE_PRECISION))


def asks_bf16_inference(model: ov.Model) -> bool:
    path = list(IR_INFERENCE_PRECISION)
    return bool(model.has_rt_info(path)) and model.get_rt_info(path).astype(str) == "bf16"


def cpu_runs_bf16(core: ov.Core) -> bool:
    """The CPU plugin has bf16 kernels here (AVX-512-BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", props.device.capabilities)


def compile_config(hint: str, threads: int, streams: int | None, *, bf16: bool = False) -> dict[str, Any]:
    """`bf16`: run the (fp32) IR in bf16 where the CPU has AVX-512-BF16 or AMX, the `bf16`
    artifact; otherwise every layer that is not quantized runs in fp32, unless the IR itself asks
    for bf16 (`IR_INFERENCE_PRECISION`, applied by `OpenVinoBackend`)."""
    config: dict[str, Any] = {
        hints.performance_mode: _HINTS[hint],
        props.inference_num_threads: threads,
        # NOTE: on CPUs with AMX/AVX512-BF16 OpenVINO would otherwise run fp32 graphs in bf16,
        # which moves scores by ~1e-2; quantized layers of int8 IR still run in int8.
        hints.inference_precision: ov.Type.bf16 if bf16 else ov.Type.f32,
        "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_CAPACITY,
    }
    if streams is not None:
        config[props.num_streams] = streams
    return config


class OpenVinoBackend(GraphBackend):
    def __init__(
        self, xml: Path, weights: Path, precision: Precision, config: dict[str, Any], output_name: str
    ) -> None:
        # oneDNN reads its cache capacity from the environment once, when the first primitive is
        # built; an operator's own setting wins.
        os.environ.setdefault(_PRIMITIVE_CACHE_ENV, str(PRIMITIVE_CACHE_CAPACITY))
        core = ov.Core()
        model = core.read_model(str(xml), str(weights))
        # Without bf16 kernels the hint would be ignored; the gate (needs: bf16) keeps `auto` from
        # choosing such an IR on that CPU, a forced one runs those layers in fp32.
        if asks_bf16_inference(model) and cpu_runs_bf16(core):
            config = {**config, hints.inference_precision: ov.Type.bf16}
        self._compiled = core.compile_model(model, "CPU", config)
        super().__init__(
            BackendKind.OPENVINO_CPU, precision, tuple(port.get_any_name() for port in self._compiled.inputs)
        )
        outputs = list(self._compiled.outputs)
        self._output = next((o for o in outputs if output_name in o.get_names()), outputs[0])
        # One request suffices: the batcher's single worker thread runs batches one at a time.
        self._request = self._compiled.create_infer_request()

    def infer(self, feeds: Feeds) -> Logits:
        inputs = {name: feeds[name] for name in self._inputs}
        # share_inputs avoids copying the batch; the output is copied because the request's
        # buffer is overwritten by the next batch while waiters may still read their rows.
        results = self._request.infer(inputs, share_inputs=True)
        return np.array(results[self._output], dtype=np.float32, copy=True)

    def close(self) -> None:
        del self._request
        del self._compiled
