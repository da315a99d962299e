"""`bertserve finetune` end to end on tiny random checkpoints: a few steps, then the output must
load, carry its labels, reproduce itself under the same seed, and pass `bertserve export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bertserve.cli import app
from bertserve.export.errors import ExportError
from bertserve.export.exporter import ExportOptions, run_export
from bertserve.modelrepo import Task, load_model_config
from bertserve.training.finetune import REPORT_FILE, FinetuneOptions, finetune
from tests.helpers.checkpoints import build_bert_classifier, build_bert_token_classifier

SENTENCES = (
    ("the movie was great and the actors were wonderful", "POSITIVE"),
    ("i did not like this film at all , it was boring and far too long", "NEGATIVE"),
    ("an absolutely brilliant performance by the whole cast", "POSITIVE"),
    ("what a waste of time", "NEGATIVE"),
)
TAGGED = (
    (("angela", "merkel", "met", "macron", "in", "paris"), ("B-PER", "I-PER", "O", "B-PER", "O", "B-LOC")),
    (("the", "company", "google", "opened", "an", "office"), ("O", "O", "B-ORG", "O", "O", "O")),
)


@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {
        "cls": build_bert_classifier(root / "cls").path,
        "ner": build_bert_token_classifier(root / "ner").path,
    }


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    tsv = root / "train.tsv"
    tsv.write_text("text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in SENTENCES * 4), "utf-8")
    conll = root / "train.conll"
    conll.write_text(
        "\n".join(
            "".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True)) for words, tags in TAGGED * 4
        ),
        "utf-8",
    )
    return {"tsv": tsv, "conll": conll}


def _options(base: Path, train: Path, output: Path, task: Task, **extra: object) -> FinetuneOptions:
    return FinetuneOptions(
        task=task.value,
        train=train,
        output=output,
        base=base,
        eval_file=train,
        epochs=2,
        batch_size=4,
        max_length=32,
        max_steps=3,
        seed=7,
        quiet=True,
        **extra,  # type: ignore[arg-type]
    )


def test_text_classification_checkpoint_loads_and_exports(
    tiny_bases: dict[str, Path], data_files: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    output = tmp_path / "ckpt"
    result = finetune(_options(tiny_bases["cls"], data_files["tsv"], output, Task.TEXT_CLASSIFICATION))
    assert result.steps == 3
    assert result.labels == ("NEGATIVE", "POSITIVE")
    assert result.eval_metric == "accuracy" and result.eval_score is not None
    assert (output / "model.safetensors").is_file() and (output / "tokenizer.json").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert model.config.problem_type == "single_label_classification"
    report = json.loads((output / REPORT_FILE).read_text("utf-8"))
    assert report["steps"] == 3 and len(report["history"]) == 1

    exported = run_export(
        ExportOptions(
            model=str(output),
            task=Task.TEXT_CLASSIFICATION.value,
            name="tuned-cls",
            repo=tmp_path / "repo",
            formats=("onnx",),
            quiet=True,
            measure_speed=False,
        )
    )
    assert load_model_config(tmp_path / "repo", "tuned-cls").labels == ["NEGATIVE", "POSITIVE"]
    assert exported.report.artifacts and all(a.passed for a in exported.report.artifacts)


def test_token_classification_labels_first_subtokens_and_exports(
    tiny_bases: dict[str, Path], data_files: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "ckpt"
    labels = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
    result = finetune(
        _options(tiny_bases["ner"], data_files["conll"], output, Task.TOKEN_CLASSIFICATION, labels=labels)
    )
    assert result.labels == labels
    assert result.eval_metric == "entity_f1"
    run_export(
        ExportOptions(
            model=str(output),
            task=Task.TOKEN_CLASSIFICATION.value,
            name="tuned-ner",
            repo=tmp_path / "repo",
            formats=("onnx",),
            quiet=True,
            measure_speed=False,
        )
    )
    config = load_model_config(tmp_path / "repo", "tuned-ner")
    assert config.labels == list(labels) and config.tag_scheme == "IOB2"


def test_first_subtoken_targets(tiny_bases: dict[str, Path]) -> None:
    from bertserve.evaluation.datasets import TaggedSentence as Tagged
    from bertserve.training.finetune import _encode_tagged, _load_tokenizer

    tokenizer = _load_tokenizer(tiny_bases["ner"])
    labels = ("O", "B-PER", "I-PER")
    word = "merkelization"  # not in the tiny vocabulary: several word pieces
    (encoded,) = _encode_tagged(tokenizer, [Tagged(("angela", word), ("B-PER", "I-PER"))], labels, 32)
    pieces = tokenizer(["angela", word], is_split_into_words=True).word_ids()
    assert pieces.count(1) > 1
    expected = []
    previous = None
    for w in pieces:
        expected.append(-100 if w is None or w == previous else (1 if w == 0 else 2))
        previous = w
    assert encoded.target == tuple(expected)


def test_label_subwords_trains_every_piece_as_inside(tiny_bases: dict[str, Path]) -> None:
    from bertserve.evaluation.datasets import TaggedSentence as Tagged
    from bertserve.training.finetune import _encode_tagged, _load_tokenizer

    tokenizer = _load_tokenizer(tiny_bases["ner"])
    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    words = ("merkelization", "in", "zxqvbergh", "today")  # two many-piece names around O words
    tags = ("B-PER", "O", "B-LOC", "O")
    (encoded,) = _encode_tagged(tokenizer, [Tagged(words, tags)], labels, 32, label_subwords=True)
    pieces = tokenizer(list(words), is_split_into_words=True).word_ids()
    assert pieces.count(0) > 1 and pieces.count(2) > 1
    first = {0: 1, 1: 0, 2: 3, 3: 0}  # B- on a word's first piece
    rest = {0: 2, 1: 0, 2: 4, 3: 0}  # I- of the same type on its other pieces
    expected = []
    previous = None
    for w in pieces:
        expected.append(-100 if w is None else first[w] if w != previous else rest[w])
        previous = w
    assert encoded.target == tuple(expected)


def test_same_seed_same_weights(
    tiny_bases: dict[str, Path], data_files: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    for run in ("a", "b"):
        finetune(_options(tiny_bases["cls"], data_files["tsv"], tmp_path / run, Task.TEXT_CLASSIFICATION))
    first, second = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert first.keys() == second.keys()
    assert all(first[k].equal(second[k]) for k in first)


def test_non_empty_output_is_refused(
    tiny_bases: dict[str, Path], data_files: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine", "utf-8")
    with pytest.raises(ExportError, match="not empty"):
        finetune(_options(tiny_bases["cls"], data_files["tsv"], tmp_path / "out", Task.TEXT_CLASSIFICATION))


def test_cli_finetune(tiny_bases: dict[str, Path], data_files: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "cli"
    args = [
        "finetune",
        "--task",
        "text-classification",
        "--train",
        str(data_files["tsv"]),
        "--output",
        str(output),
        "--base",
        str(tiny_bases["cls"]),
        "--labels",
        "NEGATIVE,POSITIVE",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--freeze-embeddings",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "saved" in result.output and (output / "model.safetensors").is_file()


def test_cli_reports_data_errors_as_one_line(tiny_bases: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.conll"
    bad.write_text("Paris\tI-LOC\n", "utf-8")
    args = [
        "finetune",
        "--task",
        "token-classification",
        "--train",
        str(bad),
        "--output",
        str(tmp_path / "o"),
    ]
    result = CliRunner().invoke(app, [*args, "--base", str(tiny_bases["ner"])])
    assert result.exit_code == 2
    assert "IOB2 needs B-LOC first" in result.output
