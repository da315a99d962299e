"""What building and serialising a response body costs, per response: the typed builders the routes
use against the hand-built dicts they replaced, and, for scale, per-request pydantic validation.

    python -m loadtest.serialization [--responses 10000] [--entities 10] [--labels 2] [--rounds 5]

Each variant turns the same head results (`Entity`, `LabelScore`) into the bytes of a `Response`;
the best of `--rounds` interleaved rounds is reported, so a noisy neighbour inflates no variant.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

from pydantic import TypeAdapter
from starlette.responses import Response

from bertserve.service.api.routes import JsonBody, classify_body, ner_body
from bertserve.service.api.schemas import ClassifyResponse, NerResponse
from bertserve.service.heads.classification import LabelScore
from bertserve.service.heads.token_classification import Entity
from bertserve.service.pipeline import Classification

Variant = Callable[[], Response]


# NOTE: a frozen copy of the routes' body code before the bodies were typed (commit bfb352d): the
# baseline the typed builders must not be slower than.
def _hand_built_response(payload: object) -> Response:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, status_code=200, media_type="application/json")


def _hand_built_entity(e: Entity) -> dict[str, str | float | int]:
    if e.index is not None:
        return {
            "entity": e.label,
            "index": e.index,
            "score": e.score,
            "start": e.start,
            "end": e.end,
            "text": e.text,
        }
    return {"entity_group": e.label, "score": e.score, "start": e.start, "end": e.end, "text": e.text}


def ner_results(entities: int) -> list[list[Entity]]:
    return [[Entity("PER", 0.9 + i / 1000, 10 * i, 10 * i + 8, f"Person {i:2d}") for i in range(entities)]]


def classification(labels: int) -> Classification:
    scores = [LabelScore(f"label_{j}", 1 / (j + 2)) for j in range(labels)]
    return Classification(results=[scores], truncated=[])


def variants(entities: int, labels: int) -> dict[str, Variant]:
    ner, cls = ner_results(entities), classification(labels)
    ner_adapter, cls_adapter = TypeAdapter(NerResponse), TypeAdapter(ClassifyResponse)

    def ner_validated() -> Response:
        return Response(ner_adapter.dump_json(ner_adapter.validate_python(ner_body("ner", ner))))

    def classify_validated() -> Response:
        return Response(cls_adapter.dump_json(cls_adapter.validate_python(classify_body("sst2", cls))))

    return {
        "ner      hand-built dicts (before)": lambda: _hand_built_response(
            {"model": "ner", "results": [[_hand_built_entity(e) for e in row] for row in ner]}
        ),
        "ner      typed builders (now)": lambda: JsonBody(ner_body("ner", ner)),
        "ner      + pydantic validation": ner_validated,
        "classify hand-built dicts (before)": lambda: _hand_built_response(
            {
                "model": "sst2",
                "results": [[{"label": s.label, "score": s.score} for s in row] for row in cls.results],
                "truncated": cls.truncated,
            }
        ),
        "classify typed builders (now)": lambda: JsonBody(classify_body("sst2", cls)),
        "classify + pydantic validation": classify_validated,
    }


def best_seconds(named: dict[str, Variant], responses: int, rounds: int) -> dict[str, float]:
    best = dict.fromkeys(named, float("inf"))
    for _ in range(rounds):
        for name, make in named.items():
            start = time.perf_counter()
            for _ in range(responses):
                make()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--responses", type=int, default=10_000, help="responses per variant and round")
    ap.add_argument("--entities", type=int, default=10, help="entities per NER response")
    ap.add_argument("--labels", type=int, default=2, help="labels per classify response")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best is reported")
    args = ap.parse_args(argv)
    named = variants(args.entities, args.labels)
    bodies = {name: make().body for name, make in named.items()}
    assert len(set(bodies.values())) == 2, "every NER variant (and every classify one) sends the same bytes"
    best = best_seconds(named, args.responses, args.rounds)
    print(f"{args.responses} responses per variant, best of {args.rounds} rounds")
    print(f"{'variant':36} {'total ms':>9} {'us/response':>12} {'bytes':>6}")
    for name, seconds in best.items():
        us = seconds / args.responses * 1e6
        print(f"{name:36} {seconds * 1000:9.1f} {us:12.2f} {len(bodies[name]):6d}")


if __name__ == "__main__":
    main()
