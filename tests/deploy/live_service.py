"""The real service (bertserve.service.api.app.create_app) on loopback, with the fake backend on a
tiny repository.

Built without torch: a word-level WordPiece tokenizer from `tokenizers` and a model.yaml that lists no
artifacts (the fake backend reads no graph). uvicorn runs in a thread on a socket bound to 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from bertserve.modelrepo import (
    BatchingConfig,
    ModelConfig,
    Task,
    VersionConfig,
    save_model_config,
    sha256_file,
)
from bertserve.runtime.fake import FakeBackend, FaultHooks
from bertserve.service.api.app import create_app
from bertserve.service.settings import BackendKind, Settings

MODEL = "sentiment"
LABELS = ["negative", "positive"]
WORDS = [
    *("the", "a", "movie", "film", "was", "is", "great", "terrible"),
    *("fine", "boring", "good", "bad", "plot", "acting", "very", "not"),
]


def write_repository(repo: Path) -> None:
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    version = repo / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(version / "tokenizer.json"))
    config = ModelConfig(
        name=MODEL,
        task=Task.TEXT_CLASSIFICATION,
        architecture="bert",
        labels=LABELS,
        max_length=32,
        inputs=["input_ids", "attention_mask", "token_type_ids"],
        # A small queue so that a burst is rejected (429) and the rejection metrics carry data.
        batching=BatchingConfig.model_validate(
            {"max_batch_size": 8, "max_queue_delay_ms": 2.0, "max_queue_size": 8}
        ),
        versions={
            1: VersionConfig(
                artifacts=[], tokenizer_files={"tokenizer.json": sha256_file(version / "tokenizer.json")}
            )
        },
    )
    save_model_config(repo, config)


@dataclass(frozen=True)
class LiveService:
    url: str
    faults: FaultHooks


@contextmanager
def run_service(repo: Path, *, ready_timeout_s: float = 30.0) -> Iterator[LiveService]:
    faults = FaultHooks()
    settings = Settings.model_validate(
        {"repo": repo, "backend": BackendKind.FAKE, "host": "127.0.0.1", "port": 0, "tokenizer_threads": 1}
    )

    def factory(model: ModelConfig, version_dir: Path) -> FakeBackend:
        return FakeBackend(num_labels=model.output_width, input_names=tuple(model.inputs), faults=faults)

    app = create_app(settings, backend_factory=factory)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"service at {url} not ready within {ready_timeout_s} s")
            time.sleep(0.05)
        yield LiveService(url, faults)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


async def _classify_burst(url: str, clients: int, inputs_per_request: int) -> list[int]:
    texts = [" ".join(WORDS[: 3 + (i % 9)]) for i in range(inputs_per_request)]
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        responses = await asyncio.gather(
            *(client.post(f"/v1/models/{MODEL}/classify", json={"inputs": texts}) for _ in range(clients))
        )
    return [r.status_code for r in responses]


def drive_traffic(service: LiveService) -> list[int]:
    """Exercise every stage and produce at least one rejection; returns the status codes seen."""
    codes = asyncio.run(_classify_burst(service.url, clients=8, inputs_per_request=2))
    # A slow backend and a burst larger than the queue: the overflow is refused with 429.
    service.faults.delay_s = 0.2
    try:
        codes += asyncio.run(_classify_burst(service.url, clients=16, inputs_per_request=4))
    finally:
        service.faults.delay_s = 0.0
    return codes
