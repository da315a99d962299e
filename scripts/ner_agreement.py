"""Issue 4's acceptance measurement: the /ner endpoint against the transformers pipeline.

    python scripts/ner_agreement.py --repo models --model ner --checkpoint PATH [--backend onnxruntime-cpu]

1. Over N real sentences (WNUT-17 test, `../shared/data/wnut17/emerging.test.annotated`), for each
   of simple/first/average/max: the share of sentences whose entity list `(label, start, end)` from
   the service equals the transformers pipeline's on the PyTorch checkpoint the model was exported
   from. Differences are printed so they can be explained.
2. A document made of 300 of those sentences (joined by newlines), sent as ONE input: every span
   must be exact (`doc[start:end] == text`), and its entities are compared with the
   sentence-by-sentence results shifted to document offsets, in both directions. Twice: read whole
   in overlapping windows (`segmentation: none`) and one sentence at a time (`sentences`); the
   sentences sent alone are read the same way as the document each time.

The service runs in-process (the real app, real backend, real batcher) behind an ASGI transport.
torch is imported here only for the reference pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bertserve.evaluation.datasets import read_conll_texts

ROOT = Path(__file__).resolve().parent.parent

WNUT_TEST = ROOT.parent / "shared" / "data" / "wnut17" / "emerging.test.annotated"
STRATEGIES = ("simple", "first", "average", "max")
SEGMENTATIONS = ("none", "sentences")  # the document read whole (windows), then sentence by sentence
Span = tuple[str, int, int]


def spans(entities: list[dict[str, Any]]) -> list[Span]:
    return [(str(e["entity_group"]), int(e["start"]), int(e["end"])) for e in entities]


async def service_entities(
    repo: Path,
    model: str,
    backend: str,
    texts: list[str],
    strategy: str,
    segmentation: str | None = None,
    chunk: int = 32,
) -> list[list[dict[str, Any]]]:
    import httpx

    from bertserve.service.api.app import create_app
    from bertserve.service.settings import Settings

    settings = Settings(  # type: ignore[arg-type]
        repo=repo, models=[model], backend=backend, max_input_chars=10_000_000, request_timeout_ms=600_000
    )
    app = create_app(settings)
    out: list[list[dict[str, Any]]] = []
    async with app.router.lifespan_context(app):
        await app.state.bertserve.registry.wait_ready(120)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
            for i in range(0, len(texts), chunk):
                body: dict[str, Any] = {"inputs": texts[i : i + chunk], "aggregation": strategy}
                if segmentation is not None:
                    body["segmentation"] = segmentation
                r = await client.post(f"/v1/models/{model}/ner", json=body)
                r.raise_for_status()
                out.extend(r.json()["results"])
    return out


def document_agreement(
    args: argparse.Namespace, document: str, doc_sents: list[str], mode: str
) -> dict[str, Any]:
    """The document as one input against its sentences one by one, both read with `mode`."""
    run = args.repo, args.model, args.backend
    (doc_result,) = asyncio.run(service_entities(*run, [document], "simple", mode))
    per_sentence = asyncio.run(service_entities(*run, doc_sents, "simple", mode))
    exact = all(document[e["start"] : e["end"]] == e["text"] for e in doc_result)
    shifted: set[Span] = set()
    offset = 0
    for text, ents in zip(doc_sents, per_sentence, strict=True):
        shifted |= {(label, s + offset, e + offset) for label, s, e in spans(ents)}
        offset += len(text) + 1
    in_doc = set(spans(doc_result))
    both = shifted & in_doc
    recall = len(both) / len(shifted) if shifted else 1.0
    precision = len(both) / len(in_doc) if in_doc else 1.0
    print(
        f"   segmentation {mode}: spans exact: {exact}; duplicates: {len(doc_result) - len(in_doc)}; "
        f"sentence-level entities found in the document {len(both)}/{len(shifted)} ({recall:.2%}); "
        f"document entities found sentence by sentence {len(both)}/{len(in_doc)} ({precision:.2%})"
    )
    return {
        "doc_entities": len(in_doc),
        "sentence_entities": len(shifted),
        "spans_exact": exact,
        "agreement_of_sentence_entities": round(recall, 5),
        "agreement_of_document_entities": round(precision, 5),
        "duplicates": len(doc_result) - len(in_doc),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=Path("models"))
    ap.add_argument("--model", default="ner")
    ap.add_argument(
        "--checkpoint", type=Path, required=True, help="the checkpoint the model was exported from"
    )
    ap.add_argument("--backend", default="onnxruntime-cpu")
    ap.add_argument("--data", type=Path, default=WNUT_TEST)
    ap.add_argument("--sentences", type=int, default=600)
    ap.add_argument("--doc-sentences", type=int, default=300)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--doc-only", action="store_true", help="skip part 1 (the pipeline comparison)")
    args = ap.parse_args(argv)

    if not args.data.is_file():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    sentences = read_conll_texts(args.data)[: args.sentences]
    from transformers import pipeline

    reference = pipeline("token-classification", model=str(args.checkpoint), device="cpu")
    figures: dict[str, Any] = {"sentences": len(sentences), "backend": args.backend}

    if not args.doc_only:
        print(f"1. {len(sentences)} WNUT-17 test sentences, service ({args.backend}) vs the pipeline")
    for strategy in () if args.doc_only else STRATEGIES:
        # the pipeline reads each text whole: so does the service here, whatever the model's default
        got = asyncio.run(service_entities(args.repo, args.model, args.backend, sentences, strategy, "none"))
        agree, entities, shown = 0, 0, 0
        for text, mine in zip(sentences, got, strict=True):
            want = spans(list(reference(text, aggregation_strategy=strategy)))
            entities += len(want)
            if spans(mine) == want:
                agree += 1
            elif shown < 3:
                shown += 1
                ours = spans(mine)
                k = next((i for i, (a, b) in enumerate(zip(ours, want, strict=False)) if a != b), len(want))
                print(
                    f"   differs ({strategy}), {len(text)} chars: {text[:100]!r}\n"
                    f"     from entity {k}: service {ours[k : k + 3]} vs pipeline {want[k : k + 3]}"
                )
        share = agree / len(sentences)
        figures[f"agreement_{strategy}"] = round(share, 5)
        print(
            f"   {strategy:>7}: {agree}/{len(sentences)} sentences identical ({share:.2%}); "
            f"{entities} entities"
        )

    doc_sents = sentences[: args.doc_sentences]
    document = "\n".join(doc_sents)
    print(f"2. one document of {len(doc_sents)} sentences ({len(document)} characters), aggregation simple")
    for mode in SEGMENTATIONS:
        figures[f"document_{mode}"] = document_agreement(args, document, doc_sents, mode)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
