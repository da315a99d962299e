"""Classification of texts longer than the model (`truncate: false, long_text: windows`), checked
against the context-free fake model: each window's logits are a function of that window's tokens
only, so the service's answer must be the softmax of the windows' mean (or per-label max)
recomputed here from the window plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bertserve.modelrepo import WindowPooling
from bertserve.runtime.fake import fake_logits
from bertserve.service.heads.activations import softmax
from bertserve.service.settings import Settings
from bertserve.service.tokenization import TextTokenizer
from bertserve.service.windowing import plan_windows
from tests.helpers.asgi import AppStarter
from tests.helpers.fake_repo import FakeBackends, FakeModelSpec, write_fake_repo

MAX_LENGTH = 32
LONG = " ".join(f"the movie number {i} was great and the actors were wonderful" for i in range(12))
SHORT = "worst service ever"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    specs = (
        FakeModelSpec("mean", max_length=MAX_LENGTH),
        FakeModelSpec("max", max_length=MAX_LENGTH, window_pooling=WindowPooling.MAX),
        FakeModelSpec("distil", max_length=MAX_LENGTH, inputs=("input_ids", "attention_mask")),
        FakeModelSpec("review", max_length=512),
    )
    return write_fake_repo(tmp_path_factory.mktemp("long-text-repo"), specs)


def expected(
    repo: Path, model: str, text: str, stride: int, with_types: bool = True, max_length: int = MAX_LENGTH
) -> dict[str, float]:
    tokenizer = TextTokenizer(repo / model / "1" / "tokenizer.json", max_length)
    (enc,) = tokenizer.encode_documents([text])
    plan = plan_windows(enc.special_tokens_mask, enc.word_ids, max_length, stride)
    ids, types = np.asarray(enc.encoding.ids), np.asarray(enc.encoding.type_ids)
    rows = []
    for k in range(len(plan.windows)):
        w = plan.window_inputs(k, ids, types)  # type: ignore[arg-type]
        mask = np.ones((1, len(w.input_ids)), np.int64)
        rows.append(
            fake_logits(w.input_ids[None], mask, w.token_type_ids[None] if with_types else None, 2, False)[0]
        )
    pooled = np.max(rows, axis=0) if model == "max" else np.mean(rows, axis=0)
    assert len(rows) > 2, "the text must really be long"
    return dict(zip(("NEGATIVE", "POSITIVE"), softmax(pooled.astype(np.float32)).tolist(), strict=True))


async def start(start_app: AppStarter, repo: Path, **overrides: Any) -> Any:
    settings = Settings(repo=repo, backend="fake", **overrides)  # type: ignore[arg-type]
    return (await start_app.start(settings, FakeBackends())).client


@pytest.mark.parametrize("model", ["mean", "max", "distil"])
async def test_a_long_text_is_read_in_windows_and_their_logits_pooled(
    start_app: AppStarter, repo: Path, model: str
) -> None:
    client = await start(start_app, repo)
    r = await client.post(
        f"/v1/models/{model}/classify",
        json={"inputs": [SHORT, LONG], "truncate": False, "long_text": "windows"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windowed"] == [1] and body["truncated"] == []
    stride = (MAX_LENGTH - 2) // 2  # BERTSERVE_NER_STRIDE (128) clamped to half a window
    want = expected(repo, model, LONG, stride, with_types=model != "distil")
    got = {x["label"]: x["score"] for x in body["results"][1]}
    assert got == pytest.approx(want, abs=1e-6)
    # a text that fits is read as it is, exactly as without windows
    plain = (await client.post(f"/v1/models/{model}/classify", json={"inputs": SHORT})).json()
    assert body["results"][0] == plain["results"][0]


async def test_a_5000_token_review_is_classified_through_its_windows(
    start_app: AppStarter, repo: Path
) -> None:
    sentences = [f"the film number {i} had great actors but a weak and predictable story" for i in range(420)]
    review = " ".join(sentences)
    (enc,) = TextTokenizer(repo / "review" / "1" / "tokenizer.json", 512).encode_documents([review])
    assert enc.length >= 5000
    client = await start(start_app, repo)
    r = await client.post(
        "/v1/models/review/classify", json={"inputs": review, "truncate": False, "long_text": "windows"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["windowed"] == [0]
    want = expected(repo, "review", review, stride=128, max_length=512)  # BERTSERVE_NER_STRIDE
    got = {x["label"]: x["score"] for x in r.json()["results"][0]}
    assert got == pytest.approx(want, abs=1e-6)


async def test_without_windows_a_long_text_is_cut_or_refused_as_before(
    start_app: AppStarter, repo: Path
) -> None:
    client = await start(start_app, repo)
    refused = await client.post("/v1/models/mean/classify", json={"inputs": LONG, "truncate": False})
    assert refused.status_code == 413 and "truncate=true" in refused.json()["error"]["message"]
    cut = (await client.post("/v1/models/mean/classify", json={"inputs": LONG})).json()
    assert cut["truncated"] == [0] and cut["windowed"] == []
    # a pair is never windowed: over the model it is refused as without windows, within it is read
    # as it is
    pairs = await client.post(
        "/v1/models/mean/classify",
        json={"inputs": [[LONG, SHORT]], "truncate": False, "long_text": "windows"},
    )
    assert pairs.status_code == 413 and "truncate=true" in pairs.json()["error"]["message"]
    short = await client.post(
        "/v1/models/mean/classify",
        json={"inputs": [[SHORT, SHORT]], "truncate": False, "long_text": "windows"},
    )
    assert short.status_code == 200 and short.json()["windowed"] == []
    plain_pair = (await client.post("/v1/models/mean/classify", json={"inputs": [[SHORT, SHORT]]})).json()
    assert short.json()["results"] == plain_pair["results"]


async def test_windows_count_against_the_request_limits(start_app: AppStarter, repo: Path) -> None:
    client = await start(start_app, repo, max_request_sequences=4)
    r = await client.post(
        "/v1/models/mean/classify", json={"inputs": LONG, "truncate": False, "long_text": "windows"}
    )
    assert r.status_code == 413 and "sequences" in r.json()["error"]["message"]
