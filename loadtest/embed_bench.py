"""Embeddings: the raw backend against the service, measured side by side in one run.

    python -m loadtest.embed_bench [--repo models] [--model embed] [--quick]

(also phase 7 of `python -m loadtest.bench`, when the repository has the model.)

1. Raw: the embedding model's backend (the object the service builds, same artifact and threads)
   on the benchmark's sentences, pre-tokenized, at batch sizes 1, 8, 32 in arrival order and at 32
   on length-sorted batches (the ceiling a length-sorting batcher can reach). Only `backend.infer`
   is timed: no tokenization, no normalization.
2. The service: `bertserve serve` on loopback, one sentence per `POST /v1/models/{m}/embed`,
   closed loop at 1 and 64 clients (and 64 clients on TEI's `/embed`, to show the compatible route
   costs the same).
3. Ratios from back-to-back pairs: the service at 64 clients against the sorted raw ceiling, and
   the batch-1 p50 overhead of one request over one raw call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.bench import Budget, Target, free_port, load_sentences, open_raw, running_service, show
from loadtest.httpload import encode_post
from loadtest.report import RawPoint

CLIENTS = (1, 64)


@dataclass(frozen=True)
class EmbeddingRun:
    model: str
    backend: str
    precision: str
    dimensions: int
    raw: list[RawPoint]
    raw_sorted_32: RawPoint
    service: dict[str, dict[str, Any]]  # "<route> <clients>" -> load point
    service_vs_raw_pairs: list[float]
    overhead_ms_pairs: list[float]

    def summary(self) -> dict[str, object]:
        return {
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
            "dimensions": self.dimensions,
            "raw_sequences_per_s": {p.batch_size: round(p.sequences_per_s, 1) for p in self.raw},
            "raw_sorted_32_sequences_per_s": round(self.raw_sorted_32.sequences_per_s, 1),
            "service_rps": {k: v["throughput_rps"] for k, v in self.service.items()},
            "service_vs_sorted_raw": round(statistics.median(self.service_vs_raw_pairs), 3),
            "service_vs_sorted_raw_pairs": self.service_vs_raw_pairs,
            "latency_overhead_ms": round(statistics.median(self.overhead_ms_pairs), 3),
        }


def embed_target(port: int, model: str, sentences: list[str], tei: bool = False) -> Target:
    path, body = ("/embed", "inputs") if tei else (f"/v1/models/{model}/embed", "inputs")
    return Target(port, [encode_post("127.0.0.1", port, path, {body: s}) for s in sentences])


def measure_embeddings(
    repo: Path, model: str, backend: str, sentences: list[str], budget: Budget
) -> EmbeddingRun:
    from bertserve.modelrepo import load_model_config

    config = load_model_config(repo, model)
    assert config.embedding is not None, f"{model} is not a feature-extraction model"
    print(f"7. embeddings: {model} ({config.embedding.pooling} pooling, {config.embedding.dimensions} dims)")
    raw_bench = open_raw(repo, model, backend, None, sentences)
    ordered = raw_bench.sorted_by_length()
    raw = []
    for bs in (1, 8, 32):
        raw.append(raw_bench.measure(bs, budget.raw_s))
        print(
            f"  raw batch {bs:>3}: {raw[-1].sequences_per_s:8.1f} seq/s  p50 {raw[-1].p50_ms:7.2f} ms/batch"
        )
    sorted_32 = ordered.measure(32, budget.raw_s)
    print(f"  raw batch  32, length-sorted: {sorted_32.sequences_per_s:8.1f} seq/s")
    service: dict[str, dict[str, Any]] = {}
    ratios: list[float] = []
    overheads: list[float] = []
    port = free_port()
    with running_service(repo, model, backend, None, port):
        native = embed_target(port, model, sentences)
        tei = embed_target(port, model, sentences, tei=True)
        for clients in CLIENTS:
            point = native.closed(clients, budget.level_s, budget.warmup_s)
            service[f"embed {clients}"] = asdict(point)
            show("embed  ", point)
        point = tei.closed(64, budget.level_s, budget.warmup_s)
        service["tei_embed 64"] = asdict(point)
        show("TEI    ", point)
        for _ in range(budget.repeats):
            ceiling = ordered.measure(32, budget.pair_s).sequences_per_s
            served = native.closed(64, budget.pair_s, 0.5).throughput_rps
            ratios.append(round(served / ceiling, 3))
            single = raw_bench.measure(1, budget.pair_s).p50_ms
            one = native.closed(1, budget.pair_s, 0.5).p50_ms
            overheads.append(round(one - single, 3))
            print(
                f"   service/sorted raw {ratios[-1]} ({served:.1f} vs {ceiling:.1f}); "
                f"batch-1 overhead {overheads[-1]} ms"
            )
    raw_bench.backend.close()
    return EmbeddingRun(
        model,
        raw_bench.backend.name,
        str(raw_bench.backend.precision),
        config.embedding.dimensions,
        raw,
        sorted_32,
        service,
        ratios,
        overheads,
    )


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path("models"))
    ap.add_argument("--model", default="embed")
    ap.add_argument("--backend", default="onnxruntime-cpu")
    ap.add_argument("--data", type=Path, default=None, help="a sentence file instead of SST-2 dev")
    ap.add_argument("--sentences", type=int, default=872)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    budget = Budget.quick() if args.quick else Budget()
    started = time.perf_counter()
    corpus = load_sentences(args.data, args.sentences, 0)
    print(f"embed bench: {len(corpus.texts)} sentences from {corpus.source}")
    run = measure_embeddings(args.repo, args.model, args.backend, list(corpus.texts), budget)
    print(json.dumps(run.summary(), indent=2))
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
