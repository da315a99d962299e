"""`bertserve export --fit-thresholds`: per-label thresholds fitted on the eval file from PyTorch's
probabilities, written to model.yaml and the report, and marked in the served answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertserve.evaluation.thresholds import fit_thresholds
from bertserve.export.errors import ExportError
from bertserve.export.exporter import ExportOptions, run_export
from bertserve.modelrepo import load_model_config
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppStarter

TEXTS = [
    "the team won the championship after a difficult season",
    "the company google opened a new office in berlin",
    "angela merkel met emmanuel macron in brussels on monday",
    "the movie was great and the actors were wonderful",
    "microsoft and apple announced new products at the conference",
    "the weather in seattle is rainy but the city is beautiful",
    "she read the book twice because she enjoyed it so much",
    "barack obama was born in hawaii",
]


def torch_probabilities(checkpoint: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        return np.stack(
            [torch.sigmoid(model(**tokenizer(t, return_tensors="pt")).logits[0]).numpy() for t in texts]
        )


@pytest.fixture(scope="module")
def fitted_export(
    tmp_path_factory: pytest.TempPathFactory, bert_multilabel_checkpoint: Any
) -> tuple[Path, Any, list[set[str]]]:
    """The multi-label checkpoint exported with thresholds fitted on a small eval file (the export
    runs its own event loop, so outside the async tests)."""
    tmp_path = tmp_path_factory.mktemp("thresholds")
    labels = list(bert_multilabel_checkpoint.labels)
    gold = [{labels[i % len(labels)], labels[(i * 3 + 1) % len(labels)]} for i in range(len(TEXTS))]
    eval_file = tmp_path / "eval.tsv"
    eval_file.write_text(
        "".join(f"{t}\t{','.join(sorted(g))}\n" for t, g in zip(TEXTS, gold, strict=True)), "utf-8"
    )
    repo = tmp_path / "repo"
    result = run_export(
        ExportOptions(
            model=str(bert_multilabel_checkpoint.path),
            task="text-classification",
            name="topics",
            repo=repo,
            formats=("onnx",),
            eval_file=eval_file,
            fit_thresholds=True,
            quiet=True,
            measure_speed=False,
        )
    )
    return repo, result, gold


def test_thresholds_are_fitted_on_the_eval_file_from_pytorch_probabilities(
    fitted_export: tuple[Path, Any, list[set[str]]], bert_multilabel_checkpoint: Any
) -> None:
    repo, result, gold = fitted_export
    labels = list(bert_multilabel_checkpoint.labels)
    config = load_model_config(repo, "topics")
    assert config.thresholds is not None and set(config.thresholds) == set(labels)
    want = fit_thresholds(labels, torch_probabilities(bert_multilabel_checkpoint.path, TEXTS), gold)
    for fitted in want:  # the same fit on independently computed PyTorch probabilities
        assert config.thresholds[fitted.label] == pytest.approx(fitted.threshold, abs=1e-4)
    report = result.report.thresholds
    assert report is not None and all(report[f.label]["f1"] >= report[f.label]["f1_at_default"] for f in want)
    assert any("thresholds fitted on eval.tsv" in note for note in result.report.notes)


async def test_served_answers_mark_each_label_against_its_threshold(
    fitted_export: tuple[Path, Any, list[set[str]]], start_app: AppStarter
) -> None:
    repo = fitted_export[0]
    thresholds = load_model_config(repo, "topics").thresholds
    assert thresholds is not None
    client = (await start_app.start(Settings(repo=repo, backend="onnxruntime-cpu"), wait_ready_s=60)).client
    assert (await client.get("/v1/models/topics")).json()["thresholds"] == thresholds
    body = (await client.post("/v1/models/topics/classify", json={"inputs": TEXTS})).json()
    for row in body["results"]:
        for item in row:
            assert item["above_threshold"] == (item["score"] >= thresholds[item["label"]])


def test_fit_thresholds_needs_an_eval_file_and_a_classifier(tmp_path: Path, bert_ner_checkpoint: Any) -> None:
    with pytest.raises(ExportError, match="add --eval-file"):
        run_export(
            ExportOptions(model="x", task="text-classification", name="m", repo=tmp_path, fit_thresholds=True)
        )
    eval_file = tmp_path / "e.conll"
    eval_file.write_text("a\tO\n", "utf-8")
    with pytest.raises(ExportError, match="text-classification"):
        run_export(
            ExportOptions(
                model=str(bert_ner_checkpoint.path),
                task="token-classification",
                name="m",
                repo=tmp_path,
                eval_file=eval_file,
                fit_thresholds=True,
            )
        )
