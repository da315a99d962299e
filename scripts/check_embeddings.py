"""Served embeddings against sentence-transformers, sentence by sentence: the figures behind the
acceptance bar "cosine >= 0.9999 per sentence on SST-2 dev, single and batched, both CPU backends".

    python scripts/check_embeddings.py --repo models --model embed [--limit 872]

Serves the model in-process (the production app, each CPU backend in turn), sends every sentence
in batches of 32 and the first `--singles` one per request, and prints min / mean cosine and max
|diff| against `SentenceTransformer.encode` of the checkpoint the model was exported from (the
packaged MiniLM unless `--source` says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))


async def served(
    repo: Path, model: str, backend: str, texts: list[str], singles: int
) -> tuple[np.ndarray, np.ndarray]:
    from bertserve.service.settings import Settings
    from tests.helpers.asgi import serve_app

    async with serve_app(Settings(repo=repo, models=[model], backend=backend), wait_ready_s=120) as app:  # type: ignore[arg-type]
        batched = []
        for i in range(0, len(texts), 32):
            r = await app.client.post(f"/v1/models/{model}/embed", json={"inputs": texts[i : i + 32]})
            r.raise_for_status()
            batched.extend(r.json()["embeddings"])
        one = []
        for text in texts[:singles]:
            r = await app.client.post(f"/v1/models/{model}/embed", json={"inputs": text})
            r.raise_for_status()
            one.extend(r.json()["embeddings"])
    return np.asarray(batched, dtype=np.float64), np.asarray(one, dtype=np.float64)


def main() -> int:
    from sentence_transformers import SentenceTransformer

    from bertserve.training.finetune import default_base_model
    from loadtest.corpus import classify_corpus

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path("models"))
    ap.add_argument("--model", default="embed")
    ap.add_argument("--source", type=Path, default=None, help="the sentence-transformers folder exported")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--singles", type=int, default=100)
    args = ap.parse_args()
    corpus = classify_corpus(limit=args.limit)
    texts = list(corpus.texts)
    source = args.source or default_base_model()
    expected = np.asarray(
        SentenceTransformer(str(source), device="cpu").encode(texts, batch_size=32), dtype=np.float64
    )
    print(f"{len(texts)} sentences from {corpus.source}; reference: sentence-transformers encode of {source}")
    for backend in ("onnxruntime-cpu", "openvino-cpu"):
        batched, one = asyncio.run(served(args.repo, args.model, backend, texts, args.singles))
        for name, got, want in (("batched", batched, expected), ("single", one, expected[: len(one)])):
            cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
            print(
                f"  {backend:16} {name:8} n={len(got):4}  min cosine {cos.min():.7f}  mean {cos.mean():.7f}  "
                f"max |diff| {np.abs(got - want).max():.2e}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
