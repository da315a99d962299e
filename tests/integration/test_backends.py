"""The real backends (ONNX Runtime CPU, OpenVINO CPU; fp32 and int8) on models written by
`bertserve export` (the `exported_repo` session fixture), checked against PyTorch."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bertserve.modelrepo import load_model_config
from bertserve.service.errors import StartupError
from bertserve.service.metrics import Metrics
from bertserve.service.registry import ModelRegistry
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppStarter

SENTENCES = [
    "the movie was great and the actors were wonderful",
    "worst service ever",
    "i did not like this film at all , it was boring and far too long " * 3,
    "paris",
]
PAIRS = [("the movie was great", "the actors were wonderful"), ("is this the right way ?", "no")]
CHECKPOINT_OF = {
    "bert-cls": "bert_cls_checkpoint",
    "distilbert-cls": "distilbert_cls_checkpoint",
    "bert-multilabel": "bert_multilabel_checkpoint",
    "bert-scorer": "bert_scorer_checkpoint",
}
BACKENDS = ["onnxruntime-cpu", "openvino-cpu"]


def torch_scores(checkpoint: Path, inputs: list[Any], max_length: int) -> list[dict[str, float]]:
    """Label -> probability from the PyTorch checkpoint, one unpadded input at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    # the transformers pipeline's rule: sigmoid for multi-label models and for a single logit
    multi = model.config.problem_type == "multi_label_classification" or model.config.num_labels == 1
    out = []
    with torch.no_grad():
        for item in inputs:
            args = (item,) if isinstance(item, str) else tuple(item)
            enc = tokenizer(*args, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**enc).logits[0]
            probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)
            out.append({model.config.id2label[i]: float(p) for i, p in enumerate(probs)})
    return out


@pytest.fixture
def serve(exported_repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def start(model: str, backend: str, precision: str | None = None, **kw: Any) -> httpx.AsyncClient:
        settings = Settings(
            repo=exported_repo, models=[model], backend=backend, precision=precision, intra_op_threads=1, **kw
        )  # type: ignore[arg-type]
        return (await start_app.start(settings, wait_ready_s=60)).client

    return start


async def classify(client: httpx.AsyncClient, model: str, inputs: Any) -> list[dict[str, float]]:
    r = await client.post(f"/v1/models/{model}/classify", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    return [{x["label"]: x["score"] for x in row} for row in r.json()["results"]]


def assert_close(got: list[dict[str, float]], want: list[dict[str, float]], atol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for label in w:
            assert abs(g[label] - w[label]) <= atol, (label, g, w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", list(CHECKPOINT_OF))
async def test_fp32_matches_pytorch_single_batched_and_pairs(
    serve: Callable[..., Any],
    exported_repo: Path,
    request: pytest.FixtureRequest,
    model: str,
    backend: str,
) -> None:
    checkpoint = request.getfixturevalue(CHECKPOINT_OF[model]).path
    max_length = load_model_config(exported_repo, model).max_length
    client = await serve(model, backend, "fp32")  # the gate may pass on a tiny random model
    info = (await client.get(f"/v1/models/{model}")).json()
    assert (info["backend"], info["precision"]) == (backend, "fp32")
    assert_close(
        await classify(client, model, SENTENCES[0]), torch_scores(checkpoint, SENTENCES[:1], max_length), 1e-3
    )
    assert_close(
        await classify(client, model, SENTENCES), torch_scores(checkpoint, SENTENCES, max_length), 1e-3
    )
    pairs = [list(p) for p in PAIRS]
    assert_close(await classify(client, model, pairs), torch_scores(checkpoint, pairs, max_length), 1e-3)


def direct_int8_scores(repo: Path, backend: str, text: str) -> np.ndarray:
    """The int8 artifact run without the service: the reference for the service's plumbing."""
    from tokenizers import Tokenizer

    vdir = repo / "bert-cls" / "1"
    enc = Tokenizer.from_file(str(vdir / "tokenizer.json")).encode(text)
    feeds = {
        "input_ids": np.array([enc.ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(enc.ids)), dtype=np.int64),
        "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
    }
    if backend == "onnxruntime-cpu":
        import onnxruntime as ort

        session = ort.InferenceSession(str(vdir / "model.int8.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        logits = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
    else:
        import openvino as ov

        from bertserve.runtime.openvino import asks_bf16_inference, cpu_runs_bf16

        # f32 for the layers left unquantized, as the service asks: on a CPU with AVX512-BF16 or
        # AMX, OpenVINO's default would run them in bf16 (~2e-3 off), which the service does not,
        # unless the IR itself asks for bf16 (the FFN-output recipe of export/quantize.py).
        core = ov.Core()
        ir = core.read_model(str(vdir / "openvino-int8" / "model.xml"))
        hint = "bf16" if asks_bf16_inference(ir) and cpu_runs_bf16(core) else "f32"
        compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        logits = compiled(feeds)[compiled.output(0)]
    exp = np.exp(logits[0] - logits[0].max())
    return np.asarray(exp / exp.sum())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_one_logit_scorer_matches_the_transformers_pipelines_sigmoid(
    serve: Callable[..., Any], exported_repo: Path, bert_scorer_checkpoint: Any, backend: str
) -> None:
    """A cross-encoder-shaped model (one logit) on query/document pairs and on single texts:
    the score is transformers' sigmoid within 1e-4, never the constant 1.0 of a softmax."""
    from transformers import pipeline

    scorer = pipeline("text-classification", model=str(bert_scorer_checkpoint.path), device="cpu")
    cut = {"truncation": True, "max_length": load_model_config(exported_repo, "bert-scorer").max_length}
    client = await serve("bert-scorer", backend, "fp32")
    pairs = [list(p) for p in PAIRS]
    got = [row["relevance"] for row in await classify(client, "bert-scorer", pairs)]
    want = [scorer({"text": a, "text_pair": b}, **cut)["score"] for a, b in PAIRS]
    got += [row["relevance"] for row in await classify(client, "bert-scorer", SENTENCES)]
    want += [scorer(text, **cut)[0]["score"] for text in SENTENCES]
    assert np.abs(np.array(got) - np.array(want)).max() <= 1e-4, (got, want)
    assert len({round(x, 6) for x in got}) > 1 and all(0.0 < x < 1.0 for x in got)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_int8_runs_the_quantized_artifact(
    serve: Callable[..., Any], exported_repo: Path, backend: str
) -> None:
    client = await serve("bert-cls", backend, precision="int8")
    info = (await client.get("/v1/models/bert-cls")).json()
    assert (info["backend"], info["precision"]) == (backend, "int8")
    (got,) = await classify(client, "bert-cls", SENTENCES[0])
    want = direct_int8_scores(exported_repo, backend, SENTENCES[0])
    labels = load_model_config(exported_repo, "bert-cls").labels
    assert [got[label] for label in labels] == pytest.approx(want.tolist(), abs=1e-4)
    batched = await classify(client, "bert-cls", SENTENCES)
    assert all(abs(sum(row.values()) - 1) < 1e-5 for row in batched)


async def test_auto_picks_openvino_on_a_cpu_machine_with_ir(serve: Callable[..., Any]) -> None:
    from bertserve.runtime.selection import count_cuda_devices

    if count_cuda_devices() > 0:
        pytest.skip("a GPU is present: auto prefers it")
    client = await serve("bert-cls", "auto")
    assert (await client.get("/v1/models/bert-cls")).json()["backend"] == "openvino-cpu"


async def test_64_concurrent_clients_get_batched_and_their_own_answers(
    serve: Callable[..., Any], exported_repo: Path, bert_cls_checkpoint: Any
) -> None:
    # fp32: compared with PyTorch at fp32's tolerance (auto may serve int8 when its gate passes)
    client = await serve("bert-cls", "onnxruntime-cpu", "fp32", max_queue_delay_ms=5)
    words = (
        "the",
        "movie",
        "was",
        "great",
        "and",
        "actors",
        "were",
        "wonderful",
        "boring",
        "film",
        "city",
        "rainy",
    )
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 20)))) for _ in range(64)]
    results = await asyncio.gather(*(classify(client, "bert-cls", t) for t in texts))
    want = torch_scores(
        bert_cls_checkpoint.path, texts, load_model_config(exported_repo, "bert-cls").max_length
    )
    assert_close([r[0] for r in results], want, 1e-3)
    metrics = (await client.get("/metrics")).text
    count = _sample(metrics, 'bertserve_batch_size_count{model="bert-cls"}')
    total = _sample(metrics, 'bertserve_batch_size_sum{model="bert-cls"}')
    assert total == 64 + 1  # + the warm-up
    assert total / count > 1, "executed batches should hold more than one sequence"


def _sample(metrics: str, series: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith(series))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("victim", ["model.ort.onnx", "tokenizer.json"])
def test_tampered_artifact_stops_loading(exported_repo: Path, tmp_path: Path, victim: str) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(exported_repo / "bert-cls", repo / "bert-cls")
    with (repo / "bert-cls" / "1" / victim).open("ab") as fh:
        fh.write(b"\0")
    # fp32: the artifact that loads is model.ort.onnx (auto may take int8 when its gate passes)
    settings = Settings(repo=repo, backend="onnxruntime-cpu", precision="fp32")  # type: ignore[arg-type]
    registry = ModelRegistry(settings, Metrics(process=False))
    with pytest.raises(StartupError, match=f"{victim}.*sha256"):
        registry.load()
