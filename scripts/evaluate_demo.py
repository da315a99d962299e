"""Evaluate the exported demo models (`sentiment`, `ner`) on their held-out splits and on public data.

    python scripts/evaluate_demo.py --repo models [--data ../shared/data] [--precision auto|fp32|int8|bf16]
        [--backend onnxruntime-cpu|openvino-cpu]

Each model is scored through the served pipeline (`bertserve.evaluation.scoring`): the artifact
`bertserve serve --backend ... --precision ...` would open (the model's default precision unless
--precision says otherwise), the service's tokenizer, batcher and heads, texts sent as a client
sends them, answers read as the API returns them. No server, no HTTP, no torch. The held-out
figures are computed by the same code as the export's int8 gate, so for an int8 artifact they
equal the `eval.scores` of the model's export_report.json. Reported:

- sentiment: accuracy on the demo's held-out split and, when `<data>/sst2/dev.tsv` exists, on
  SST-2 dev (GLUE validation, 872 lower-cased film-review sentences the model never saw);
- ner: entity-level micro F1 (and per type) of the entities the API returns (aggregation
  ``simple``, the model's segmentation) for each held-out sentence, its words joined by spaces,
  against the gold spans at the same character offsets; when
  `<data>/wnut17/emerging.test.annotated` exists, span F1 on WNUT-17 test for `person` and
  `location` mapped to PER and LOC (the demo's ORG and MISC predictions are not scored there:
  WNUT's corporation/product/group/creative-work types do not match them);
- the acceptance sentences with the model's answers.

Public data is only read, never copied; without it those lines are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bertserve.evaluation.datasets import read_conll
from bertserve.evaluation.metrics import Span, entity_scores
from bertserve.evaluation.scoring import (
    ServedModel,
    load_eval_set,
    predicted_labels,
    score,
    tagger_spans,
)
from bertserve.modelrepo import Precision, load_model_config, version_dir
from bertserve.runtime.base import BackendKind
from bertserve.service.heads.token_classification import AggregationStrategy

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "models" / "demo" / "data"
CLASSIFY_EXAMPLES = (
    "I absolutely loved this movie, the acting was superb.",
    "What a waste of time and money.",
)
NER_EXAMPLE = "Angela Merkel met Emmanuel Macron in Paris to talk about Airbus."
WNUT_TYPES = {"person": "PER", "location": "LOC"}


def open_model(
    repo: Path,
    name: str,
    backend: BackendKind,
    precision: str | None,
    aggregation: AggregationStrategy = AggregationStrategy.SIMPLE,
) -> ServedModel:
    config = load_model_config(repo, name)
    folder = version_dir(repo, name, config.default_version)
    chosen = Precision(precision) if precision and precision != "auto" else None
    return ServedModel(config, folder, backend=backend, precision=chosen, aggregation=aggregation)


def _reason(model: ServedModel) -> str | None:
    """Why the loader chose this precision (`--precision auto`'s verdict for this CPU)."""
    served = getattr(model.pipeline.backend, "served", None)
    return None if served is None else str(served.reason)


def _scores(value: Any) -> dict[str, Any]:
    return dataclasses.asdict(value)


# ----------------------------------------------------------------------------------------- sentiment


def evaluate_sentiment(model: ServedModel, data: Path) -> dict[str, Any]:
    labels = model.config.labels
    section: dict[str, Any] = {"artifact": model.artifact, "precision_reason": _reason(model)}
    heldout = load_eval_set(DEMO_DATA / "sentiment" / "heldout.tsv", model.config.task, labels)
    section["heldout_accuracy"] = score(model, heldout).value
    sst2 = data / "sst2" / "dev.tsv"
    if sst2.is_file():
        section["sst2_dev_accuracy"] = score(model, load_eval_set(sst2, model.config.task, labels)).value
    answers = model.classify(CLASSIFY_EXAMPLES)
    section["examples"] = [
        {
            "text": text,
            "label": next(iter(predicted_labels(row, model.config.problem_type))),
            "score": round(row[0].score, 4),
        }
        for text, row in zip(CLASSIFY_EXAMPLES, answers, strict=True)
    ]
    return section


# ----------------------------------------------------------------------------------------------- NER


def _keep(spans: Sequence[set[Span]], types: dict[str, str]) -> list[set[Span]]:
    """Spans whose type is in `types`, renamed to its value."""
    return [{(types[k], s, e) for k, s, e in row if k in types} for row in spans]


def evaluate_ner(model: ServedModel, data: Path) -> dict[str, Any]:
    section: dict[str, Any] = {"artifact": model.artifact, "precision_reason": _reason(model)}
    heldout = load_eval_set(DEMO_DATA / "ner" / "heldout.conll", model.config.task, model.config.labels)
    result = score(model, heldout)
    assert result.entities is not None
    section["heldout_f1"] = _scores(result.entities)
    section["heldout_f1_per_type"] = {kind: s.f1 for kind, s in result.by_type.items()}
    wnut = data / "wnut17" / "emerging.test.annotated"
    if wnut.is_file():
        gold, predicted = tagger_spans(model, read_conll(wnut))
        gold = _keep(gold, WNUT_TYPES)
        predicted = _keep(predicted, {"PER": "PER", "LOC": "LOC"})
        section["wnut17_test"] = {
            "PER": _scores(entity_scores(gold, predicted, "PER")),
            "LOC": _scores(entity_scores(gold, predicted, "LOC")),
            "PER+LOC": _scores(entity_scores(gold, predicted)),
        }
    (entities,) = model.recognize([NER_EXAMPLE])
    section["example"] = {
        "text": NER_EXAMPLE,
        "entities": [{**e.as_dict(), "score": round(e.score, 3)} for e in entities],
    }
    return section


# ---------------------------------------------------------------------------------------------- main


def evaluate(
    repo: Path,
    data: Path,
    precision: str | None,
    models: Sequence[str],
    backend: BackendKind,
    aggregation: AggregationStrategy = AggregationStrategy.SIMPLE,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, run in (("sentiment", evaluate_sentiment), ("ner", evaluate_ner)):
        if name in models:
            with open_model(repo, name, backend, precision, aggregation) as model:
                results[name] = run(model, data)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate the exported demo models.")
    parser.add_argument("--repo", type=Path, default=ROOT / "models", help="model repository folder")
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="public data folder"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8", "bf16"],
        default="auto",
        help="default auto: what `bertserve serve` picks on this CPU for each model",
    )
    parser.add_argument(
        "--backend",
        choices=[BackendKind.ORT_CPU.value, BackendKind.OPENVINO_CPU.value],
        default=BackendKind.ORT_CPU.value,
        help="the CPU backend to score (the export gates both)",
    )
    parser.add_argument(
        "--aggregation",
        choices=[s.value for s in AggregationStrategy if s != AggregationStrategy.NONE],
        default=AggregationStrategy.SIMPLE.value,
        help="the /ner aggregation to score (default simple, the API's default and the export gate's)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--model", action="append", choices=["sentiment", "ner"], help="evaluate only this model (repeatable)"
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"note: {args.data} not found; only the held-out figures are reported", file=sys.stderr)
    results = evaluate(
        args.repo,
        args.data,
        args.precision,
        args.model or ["sentiment", "ner"],
        BackendKind(args.backend),
        AggregationStrategy(args.aggregation),
    )
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
