"""Sentence embeddings at export: the checkpoint's pooling, appended to the ONNX graph, and the
sentence-transformers reference it is validated against.

A sentence-transformers folder says how it pools in `modules.json` (a `Pooling` module whose
`config.json` names the mode, and optionally a `Normalize` module) and how long a text it reads in
`sentence_bert_config.json`; a plain Hugging Face encoder pools as the export is told (mean by
default). The pooling becomes part of the portable graph (output `sentence_embedding`,
`[batch, dimensions]`), so every artifact derived from it (ORT fusions, int8, OpenVINO IR) pools
the same way, and the service's batcher moves one vector per sequence instead of every token's.
Normalization and Matryoshka truncation stay in the service's head, per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper, numpy_helper

from bertserve.export.errors import ExportError
from bertserve.modelrepo import Pooling

EMBEDDING_OUTPUT = "sentence_embedding"
# sentence-transformers' pooling flags in 1_Pooling/config.json, by our pooling name
_ST_MODES = {
    "pooling_mode_mean_tokens": Pooling.MEAN,
    "pooling_mode_cls_token": Pooling.CLS,
    "pooling_mode_lasttoken": Pooling.LAST_TOKEN,
    "pooling_mode_max_tokens": Pooling.MAX,
}
_UNSUPPORTED_ST_MODES = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")
# sentence-transformers' name for each pooling (its `Pooling(pooling_mode=...)`)
ST_POOLING_MODE = {
    Pooling.MEAN: "mean",
    Pooling.CLS: "cls",
    Pooling.LAST_TOKEN: "lasttoken",
    Pooling.MAX: "max",
}


@dataclass(frozen=True)
class SentenceTransformerInfo:
    """What a checkpoint folder says about its embeddings (all None for a plain HF encoder)."""

    pooling: Pooling | None
    normalize: bool
    max_seq_length: int | None
    is_sentence_transformer: bool


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable ({exc})") from None


def read_sentence_transformer(path: Path) -> SentenceTransformerInfo:
    """Pooling, normalization and max length of a sentence-transformers folder (modules.json)."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return SentenceTransformerInfo(None, False, None, False)
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise ExportError(f"{modules_file}: expected a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unsupported:
        raise ExportError(
            f"{modules_file}: modules {unsupported} are not exported (only Transformer, Pooling, "
            "Normalize); the served embeddings would differ from sentence-transformers'"
        )
    pooling: Pooling | None = None
    for module in modules:
        if str(module.get("type", "")).endswith(".Pooling"):
            config = _read_json(path / str(module.get("path", "")) / "config.json")
            used = [name for name in (*_ST_MODES, *_UNSUPPORTED_ST_MODES) if config.get(name)]
            if len(used) != 1 or used[0] in _UNSUPPORTED_ST_MODES:
                raise ExportError(
                    f"{path}: pooling {used or 'none'} is not supported; one of mean, cls, lasttoken, max is"
                )
            pooling = _ST_MODES[used[0]]
            if config.get("include_prompt") is False:
                raise ExportError(f"{path}: pooling with include_prompt=false is not supported")
    bert_config = path / "sentence_bert_config.json"
    max_seq = _read_json(bert_config).get("max_seq_length") if bert_config.is_file() else None
    return SentenceTransformerInfo(
        pooling=pooling,
        normalize="Normalize" in kinds,
        max_seq_length=int(max_seq) if max_seq else None,
        is_sentence_transformer=True,
    )


def append_pooling(path: Path, pooling: Pooling, hidden_output: str = "last_hidden_state") -> int:
    """Rewrite the encoder graph at `path` so that its one output is the pooled
    `sentence_embedding` `[batch, hidden]` (sentence-transformers' formulas, padding masked out).
    Returns the embedding width."""
    model = onnx.load(str(path))
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if hidden_output not in outputs:
        raise ExportError(f"the encoder graph has no {hidden_output} output (it has {sorted(outputs)})")
    dims = outputs[hidden_output].type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[2].HasField("dim_value"):
        raise ExportError(f"{hidden_output} is not [batch, sequence, hidden] with a fixed hidden size")
    width = int(dims[2].dim_value)
    if "attention_mask" not in {i.name for i in graph.input}:
        raise ExportError("pooling needs the graph's attention_mask input")

    opset = max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=0)
    h, mask = hidden_output, "attention_mask"
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: Any, dtype: Any) -> str:
        import numpy as np

        full = f"pool/{name}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), full))
        return full

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = f"pool/{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    axis1 = const("axis1", [1], "int64")
    last_axis = const("axis_last", [-1], "int64")
    mask_f = node("Cast", [mask], "mask_f", to=TensorProto.FLOAT)
    mask_3 = node("Unsqueeze", [mask_f, last_axis], "mask_3")  # [b, s, 1]
    if pooling == Pooling.MEAN:
        summed = node("ReduceSum", [node("Mul", [h, mask_3], "masked"), axis1], "sum", keepdims=0)
        count = node("ReduceSum", [mask_3, axis1], "count", keepdims=0)
        count = node("Max", [count, const("eps", 1e-9, "float32")], "count_clamped")
        result = node("Div", [summed, count], "mean")
    elif pooling == Pooling.CLS:
        result = node("Gather", [h, const("first", 0, "int64")], "cls", axis=1)
    elif pooling == Pooling.LAST_TOKEN:
        # the last real token (right padding): where the running count of real tokens reaches
        # the row's count, at a real position
        running = node("CumSum", [mask, const("axis1_scalar", 1, "int64")], "running")
        total = node("ReduceSum", [mask, axis1], "total", keepdims=1)
        is_last = node(
            "Cast", [node("Equal", [running, total], "reached")], "reached_f", to=TensorProto.FLOAT
        )
        one_hot = node("Unsqueeze", [node("Mul", [is_last, mask_f], "last_f"), last_axis], "last_3")
        result = node("ReduceSum", [node("Mul", [h, one_hot], "picked"), axis1], "last", keepdims=0)
    elif pooling == Pooling.MAX:
        real = node("Cast", [mask_3], "real", to=TensorProto.BOOL)
        filled = node("Where", [real, h, const("floor", -1e9, "float32")], "filled")
        if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
            result = node("ReduceMax", [filled, axis1], "max", keepdims=0)
        else:
            result = node("ReduceMax", [filled], "max", axes=[1], keepdims=0)
    else:  # pragma: no cover - the enum is exhaustive
        raise ExportError(f"unknown pooling {pooling}")
    nodes.append(helper.make_node("Identity", [result], [EMBEDDING_OUTPUT], name="pool/output"))

    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    batch = dims[0]
    out = helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, [None, width])
    out.type.tensor_type.shape.dim[0].CopyFrom(batch)
    del graph.output[:]
    graph.output.append(out)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return width


class PooledEncoder:
    """The PyTorch reference for an embedding model: the encoder's token states pooled by
    sentence-transformers' own `Pooling` module (its formulas, not ours), unnormalized."""

    def __init__(self, model: Any, pooling: Pooling, width: int) -> None:
        from sentence_transformers.models import Pooling as StPooling

        self.model = model
        self.pool = StPooling(width, pooling_mode=ST_POOLING_MODE[pooling])

    def __call__(self, **tensors: Any) -> Any:
        out = self.model(**tensors)
        features = {"token_embeddings": out.last_hidden_state, "attention_mask": tensors["attention_mask"]}
        return self.pool(features)["sentence_embedding"]


# the export's reference (the encoder + sentence-transformers' Pooling) must equal
# sentence-transformers' own `encode` at least this closely (cosine per sentence)
ST_MIN_COSINE = 0.9999


def check_against_sentence_transformers(path: Path, texts: list[str], reference: Any, normalize: bool) -> str:
    """Encode `texts` with sentence-transformers itself (the folder's own modules: tokenizer, max
    length, pooling, normalization) and compare with `reference` (the export's `[n, d]` PyTorch
    vectors for the same texts, unnormalized). Returns a note for the report; raises when a
    sentence's cosine similarity is below ST_MIN_COSINE."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from bertserve.evaluation.metrics import cosine_similarity

    st = SentenceTransformer(str(path), device="cpu", trust_remote_code=False, local_files_only=True)
    expected = np.asarray(st.encode(texts, batch_size=8, convert_to_numpy=True), dtype=np.float32)
    ours = np.asarray(reference, dtype=np.float32)
    if normalize:
        ours = ours / np.maximum(np.linalg.norm(ours, axis=1, keepdims=True), 1e-12)
    cos = cosine_similarity(expected, ours)
    worst = float(cos.min())
    if not worst >= ST_MIN_COSINE:
        raise ExportError(
            f"the exported embeddings differ from sentence-transformers': cosine {worst:.6f} < "
            f"{ST_MIN_COSINE} for one of {len(texts)} sentences"
        )
    diff = float(np.abs(expected - ours).max())
    return (
        f"embeddings match sentence-transformers' encode on {len(texts)} sentences: min cosine "
        f"{worst:.7f}, max |diff| {diff:.2e}"
    )
