"""The baseline users write by hand: FastAPI + the transformers pipeline, one request per call.

    python -m loadtest.naive_server --checkpoint PATH --model sentiment --port 8001

No batching, no ONNX: each request runs the PyTorch model on its own inputs. The route is a plain
`def`, so FastAPI runs it in its thread pool, which is what the tutorials show. It answers the
same URL and JSON shape as bertserve's classify endpoint, so the benchmark drives both with the
same pre-encoded requests. Only for benchmarks: it imports torch and lives outside `service/`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from loadtest.httpload import check_loopback


class ClassifyBody(BaseModel):
    inputs: str | list[str]
    top_k: int | None = None


def create_app(checkpoint: Path, model_name: str, threads: int | None) -> FastAPI:
    import torch
    from transformers import pipeline

    if threads:
        torch.set_num_threads(threads)
    classifier = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), device=-1)
    app = FastAPI(title="naive transformers server")

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/models/{model}/classify")
    def classify(model: str, body: ClassifyBody) -> dict[str, Any]:
        if model != model_name:
            raise HTTPException(404, f"unknown model {model!r}")
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        # top_k=None: every label, best first, as bertserve answers by default.
        results = classifier(texts, top_k=body.top_k, truncation=True)
        return {"model": model, "results": results}

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="Hugging Face checkpoint folder")
    ap.add_argument("--model", required=True, help="model name in the URL")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    check_loopback(args.host)
    import uvicorn

    app = create_app(args.checkpoint, args.model, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
