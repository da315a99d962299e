"""PyTorch -> portable ONNX (optimum's exporter) and the ONNX Runtime-fused variant."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
from transformers import PreTrainedModel

from bertserve.export.errors import ExportError
from bertserve.modelrepo import Pooling, Task

# Opset 17 brings LayerNormalization as a standard op, which OpenVINO and TensorRT map directly.
MIN_OPSET = 17


@dataclass(frozen=True)
class OnnxGraphInfo:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    opset: int


def read_graph_info(path: Path) -> OnnxGraphInfo:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    opset = max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=0)
    return OnnxGraphInfo(
        inputs=tuple(i.name for i in model.graph.input if i.name not in initializers),
        outputs=tuple(o.name for o in model.graph.output),
        opset=int(opset),
    )


def export_portable_onnx(
    model: PreTrainedModel, task: Task, output: Path, pooling: Pooling | None = None
) -> OnnxGraphInfo:
    """Standard ops only, dynamic batch and sequence axes, validated later against PyTorch.
    A feature-extraction graph gets `pooling` appended (`bertserve.export.embedding`)."""
    from optimum.exporters.onnx import export as onnx_export
    from optimum.exporters.tasks import TasksManager

    from bertserve.export.checkpoint import OPTIMUM_TASK

    constructor = TasksManager.get_exporter_config_constructor(
        "onnx", model=model, task=OPTIMUM_TASK[task], library_name="transformers"
    )
    onnx_config = constructor(model.config)
    opset = max(MIN_OPSET, int(onnx_config.DEFAULT_ONNX_OPSET))
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent branches in HF code
            onnx_export(model, onnx_config, output, opset=opset, device="cpu")
    except Exception as exc:  # the exporter raises many unrelated types; all mean "could not export"
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    if task == Task.FEATURE_EXTRACTION:
        from bertserve.export.embedding import append_pooling

        if pooling is None:
            raise ExportError("a feature-extraction export needs a pooling")
        append_pooling(output, pooling)
    info = read_graph_info(output)
    _check_dynamic_axes(output, info)
    return info


def _check_dynamic_axes(path: Path, info: OnnxGraphInfo) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for graph_input in model.graph.input:
        if graph_input.name not in info.inputs:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) < 2 or any(d.HasField("dim_value") for d in dims[:2]):
            raise ExportError(f"exported graph input {graph_input.name} lacks dynamic batch/sequence axes")


# Ops the fp16 graph keeps in fp32 besides ORT's own list (ops without fp16 kernels): the
# normalizations and softmax that were not fused. ORT's fused SkipLayerNormalization, Attention and
# EmbedLayerNormalization already accumulate their mean, variance and softmax in fp32 inside the
# kernel; an unfused LayerNormalization or Softmax (a graph the fusions did not match) or a pooling
# reduction (an embedding graph's mean over up to 512 tokens) would do it in fp16, where sums of
# hundreds of terms lose the low digits that decide a close call.
FP16_EXTRA_BLOCKED_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "Softmax",
    "ReduceSum",
    "ReduceMean",
)


def fp16_op_block_list() -> list[str]:
    """ORT's default fp32-only ops plus `FP16_EXTRA_BLOCKED_OPS`."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return [*DEFAULT_OP_BLOCK_LIST, *(op for op in FP16_EXTRA_BLOCKED_OPS if op not in DEFAULT_OP_BLOCK_LIST)]


def optimize_for_onnxruntime(
    source: Path, output: Path, *, num_heads: int, hidden_size: int, fp16: bool = False
) -> dict[str, int]:
    """Apply onnxruntime.transformers fusions (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm).

    `opt_level=0` runs the Python fusions only: ORT's own graph optimizations are left to the
    session that loads the file, because a graph saved after ORT's level-2+ passes contains
    CPU-layout-specific nodes that the CUDA provider cannot run. The fused ops chosen by the default
    BERT FusionOptions (Attention with a 2-D mask, no GELU approximation) exist on both the CPU
    and CUDA execution providers and keep fp32 results within our 1e-4 tolerance.

    `fp16`: fuse for the GPU, then convert to float16 with onnxruntime.transformers' converter:
    inputs and outputs keep their types (int64 ids in, fp32 logits out, so the service feeds and
    reads it like the fp32 graph), `fp16_op_block_list()` stays fp32.
    Returns the fused-operator counts for the report.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_gelu_approximation = False  # FastGelu changes results by ~1e-3
    options.use_multi_head_attention = False  # Attention (not MultiHeadAttention) runs on CPU and CUDA
    # The optimizer logs every fusion at INFO through the root logger; keep the export output readable.
    fusion_logger = logging.getLogger("onnxruntime.transformers")
    previous = fusion_logger.level
    fusion_logger.setLevel(logging.WARNING)
    try:
        optimized = optimize_model(
            str(source),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
            use_gpu=fp16,
        )
        if fp16:
            optimized.convert_float_to_float16(keep_io_types=True, op_block_list=fp16_op_block_list())
    except Exception as exc:  # fusion code raises arbitrary errors on graphs it does not understand
        what = "fp16 conversion" if fp16 else "optimization"
        raise ExportError(f"onnxruntime.transformers {what} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        fusion_logger.setLevel(previous)
    optimized.save_model_to_file(str(output), use_external_data_format=False)
    stats = optimized.get_fused_operator_statistics()
    return {str(op): int(count) for op, count in stats.items() if count}
