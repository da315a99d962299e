"""Evaluate the exported demo models (`sentiment`, `ner`) on their held-out splits and on public data.

    python scripts/evaluate_demo.py --repo models [--data ../shared/data] [--precision fp32|int8]

It runs the exported ONNX graph the service would run on ONNX Runtime CPU (the model's default
precision unless --precision says otherwise) through onnxruntime and the `tokenizers` library, so
no server and no torch are needed. Reported:

- sentiment: accuracy on the demo's held-out split and, when `<data>/sst2/dev.tsv` exists, on
  SST-2 dev (GLUE validation, 872 lower-cased film-review sentences the model never saw);
- ner: entity-level micro F1 (first sub-token of each word, conlleval spans) on the held-out split
  and, when `<data>/wnut17/emerging.test.annotated` exists, span F1 on WNUT-17 test for `person`
  and `location` mapped to PER and LOC (the demo's ORG and MISC predictions are not scored there:
  WNUT's corporation/product/group/creative-work types do not match them);
- the acceptance sentences with the model's answers, NER spans decoded by the service's own
  `aggregate` (strategy ``simple``).

Public data is only read, never copied; without it those lines are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the checkout-only folders (loadtest/); bertserve itself is installed
    sys.path.append(str(ROOT))

import onnxruntime as ort  # noqa: E402
from tokenizers import Encoding, Tokenizer  # noqa: E402

from bertserve.modelrepo import (  # noqa: E402
    ArtifactFormat,
    ModelConfig,
    Precision,
    load_model_config,
    verify_files,
    version_dir,
)
from bertserve.service.heads.token_classification import aggregate, softmax  # noqa: E402

DEMO_DATA = ROOT / "models" / "demo" / "data"
CLASSIFY_EXAMPLES = (
    "I absolutely loved this movie, the acting was superb.",
    "What a waste of time and money.",
)
NER_EXAMPLE = "Angela Merkel met Emmanuel Macron in Paris to talk about Airbus."
WNUT_TYPES = {"person": "PER", "location": "LOC"}
BATCH = 32

Spans = set[tuple[int, int, str]]


@dataclass(frozen=True)
class OnnxModel:
    """An exported model as the service would run it on ONNX Runtime CPU."""

    config: ModelConfig
    session: ort.InferenceSession
    tokenizer: Tokenizer
    artifact: str

    @classmethod
    def load(cls, repo: Path, name: str, precision: str | None) -> OnnxModel:
        config = load_model_config(repo, name)
        folder = version_dir(repo, name, config.default_version)
        wanted = Precision(precision) if precision else config.version.default_precision
        candidates = (
            [(ArtifactFormat.ONNX, Precision.INT8)]
            if wanted == Precision.INT8
            else [(ArtifactFormat.ONNX_OPTIMIZED, Precision.FP32), (ArtifactFormat.ONNX, Precision.FP32)]
        )
        artifact = next((a for f, p in candidates if (a := config.version.find(f, p)) is not None), None)
        if artifact is None:
            raise SystemExit(f"{name}: no ONNX artifact with precision {wanted.value}")
        verify_files(folder, {**config.version.tokenizer_files, **artifact.files})
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(config.max_length)
        tokenizer.no_padding()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(folder / artifact.main_file), options, providers=["CPUExecutionProvider"]
        )
        return cls(config, session, tokenizer, f"{artifact.main_file} ({artifact.precision.value})")

    def logits(self, encodings: Sequence[Encoding]) -> list[npt.NDArray[np.float32]]:
        """Per-encoding logits, unpadded ([labels] or [tokens, labels])."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.config.pad_token_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
            types[row, : len(enc.ids)] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (out,) = self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.config.inputs})
        if out.ndim == 2:
            return list(out)
        return [out[row, : len(enc.ids)] for row, enc in enumerate(encodings)]


# ----------------------------------------------------------------------------------------- sentiment


def read_labelled_texts(path: Path, labels: Sequence[str]) -> tuple[list[str], list[int]]:
    """`text<TAB>label` with a header; labels by name or by id (SST-2's 0/1)."""
    texts, gold = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        if not line.strip():
            continue
        text, label = line.rsplit("\t", 1)
        label = label.strip()
        texts.append(text.strip())
        gold.append(labels.index(label) if label in labels else int(label))
    return texts, gold


def classify(model: OnnxModel, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    rows: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(texts), BATCH):
        rows.extend(model.logits(model.tokenizer.encode_batch(list(texts[start : start + BATCH]))))
    return softmax(np.stack(rows))


def accuracy(model: OnnxModel, path: Path) -> float:
    texts, gold = read_labelled_texts(path, model.config.labels)
    predicted = classify(model, texts).argmax(-1)
    return float(np.mean(predicted == np.array(gold)))


# ----------------------------------------------------------------------------------------------- NER


def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    """Sentences of (tokens, tags); a break is any line that is blank after stripping."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        cols = line.strip().split("\t") if line.strip() else []
        if len(cols) < 2:
            if tokens:
                sentences.append((tokens, tags))
                tokens, tags = [], []
            continue
        tokens.append(cols[0])
        tags.append(cols[-1])
    return sentences


def spans(tags: Sequence[str], keep: dict[str, str] | None = None) -> Spans:
    """IOB2 spans (start, end, type), lenient like conlleval; `keep` maps and filters types."""
    found: Spans = set()
    start: int | None = None
    kind = ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, raw = tag.partition("-")
        label = (keep.get(raw) if keep is not None else raw) if tag != "O" else None
        continues = label is not None and prefix == "I" and start is not None and label == kind
        if start is not None and not continues:
            found.add((start, i, kind))
            start = None
        if label is not None and not continues:
            start, kind = i, label
    return found


def tag_words(model: OnnxModel, sentences: Sequence[Sequence[str]]) -> list[list[str]]:
    """The label of each word's first sub-token (words past max_length get O)."""
    labels = model.config.labels
    predicted: list[list[str]] = []
    for start in range(0, len(sentences), BATCH):
        chunk = [list(s) for s in sentences[start : start + BATCH]]
        encodings = model.tokenizer.encode_batch(chunk, is_pretokenized=True)
        for words, enc, logits in zip(chunk, encodings, model.logits(encodings), strict=True):
            tags = ["O"] * len(words)
            seen: set[int] = set()
            for pos, word in enumerate(enc.word_ids):
                if word is not None and word not in seen:
                    seen.add(word)
                    tags[word] = labels[int(logits[pos].argmax())]
            predicted.append(tags)
    return predicted


@dataclass(frozen=True)
class SpanScores:
    precision: float
    recall: float
    f1: float
    gold: int


def span_scores(gold: Sequence[Spans], pred: Sequence[Spans], kind: str | None = None) -> SpanScores:
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        if kind is not None:
            g, p = {s for s in g if s[2] == kind}, {s for s in p if s[2] == kind}
        tp += len(g & p)
        n_gold += len(g)
        n_pred += len(p)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return SpanScores(round(precision, 4), round(recall, 4), round(f1, 4), n_gold)


def ner_entities(model: OnnxModel, text: str) -> list[dict[str, Any]]:
    enc = model.tokenizer.encode(text)
    scores = softmax(model.logits([enc])[0])
    assert model.config.tag_scheme is not None
    entities = aggregate(
        text,
        enc.offsets,
        enc.word_ids,
        enc.special_tokens_mask,
        scores,
        model.config.labels,
        model.config.tag_scheme,
    )
    return [{**e.as_dict(), "score": round(e.score, 3)} for e in entities]


# ---------------------------------------------------------------------------------------------- main


def evaluate(repo: Path, data: Path, precision: str | None, models: Sequence[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "sentiment" in models:
        results["sentiment"] = evaluate_sentiment(OnnxModel.load(repo, "sentiment", precision), data)
    if "ner" in models:
        results["ner"] = evaluate_ner(OnnxModel.load(repo, "ner", precision), data)
    return results


def evaluate_sentiment(sentiment: OnnxModel, data: Path) -> dict[str, Any]:
    section: dict[str, Any] = {"artifact": sentiment.artifact}
    section["heldout_accuracy"] = round(accuracy(sentiment, DEMO_DATA / "sentiment" / "heldout.tsv"), 4)
    sst2 = data / "sst2" / "dev.tsv"
    if sst2.is_file():
        section["sst2_dev_accuracy"] = round(accuracy(sentiment, sst2), 4)
    probabilities = classify(sentiment, CLASSIFY_EXAMPLES)
    section["examples"] = [
        {
            "text": text,
            "label": sentiment.config.labels[int(row.argmax())],
            "score": round(float(row.max()), 4),
        }
        for text, row in zip(CLASSIFY_EXAMPLES, probabilities, strict=True)
    ]
    return section


def evaluate_ner(ner: OnnxModel, data: Path) -> dict[str, Any]:
    section: dict[str, Any] = {"artifact": ner.artifact}
    heldout = read_conll(DEMO_DATA / "ner" / "heldout.conll")
    predicted = tag_words(ner, [tokens for tokens, _ in heldout])
    gold_spans = [spans(tags) for _, tags in heldout]
    pred_spans = [spans(tags) for tags in predicted]
    section["heldout_f1"] = span_scores(gold_spans, pred_spans).__dict__
    section["heldout_f1_per_type"] = {
        kind: span_scores(gold_spans, pred_spans, kind).f1 for kind in ("PER", "ORG", "LOC", "MISC")
    }
    wnut = data / "wnut17" / "emerging.test.annotated"
    if wnut.is_file():
        sentences = read_conll(wnut)
        predicted = tag_words(ner, [tokens for tokens, _ in sentences])
        gold_spans = [spans(tags, WNUT_TYPES) for _, tags in sentences]
        pred_spans = [spans(tags, {"PER": "PER", "LOC": "LOC"}) for tags in predicted]
        section["wnut17_test"] = {
            "PER": span_scores(gold_spans, pred_spans, "PER").__dict__,
            "LOC": span_scores(gold_spans, pred_spans, "LOC").__dict__,
            "PER+LOC": span_scores(gold_spans, pred_spans).__dict__,
        }
    section["example"] = {"text": NER_EXAMPLE, "entities": ner_entities(ner, NER_EXAMPLE)}
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate the exported demo models.")
    parser.add_argument("--repo", type=Path, default=ROOT / "models", help="model repository folder")
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="public data folder"
    )
    parser.add_argument(
        "--precision", choices=["fp32", "int8"], help="default: each model's default precision"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--model", action="append", choices=["sentiment", "ner"], help="evaluate only this model (repeatable)"
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"note: {args.data} not found; only the held-out figures are reported", file=sys.stderr)
    results = evaluate(args.repo, args.data, args.precision, args.model or ["sentiment", "ner"])
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
