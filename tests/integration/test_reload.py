"""Reload without restart, on the fake backend under load: a new version is loaded and warmed up
beside the served one, traffic switches once it is ready with no request failing, the old one is
freed once its requests finished; a broken new version leaves the served one in place and says
why; the endpoints need the API key; the poller does the same unasked."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bertserve.modelrepo import load_model_config, save_model_config
from bertserve.runtime.fake import FaultHooks
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppHarness, AppStarter
from tests.helpers.fake_repo import DEFAULT_SPECS, FakeBackends, write_fake_repo

KEY = "reload-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
V1_LABELS = ("NEGATIVE", "POSITIVE")
V2_LABELS = ("negative-v2", "positive-v2")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_fake_repo(tmp_path / "repo", DEFAULT_SPECS)


def new_version(
    repo: Path,
    name: str,
    labels: tuple[str, ...],
    *,
    break_tokenizer: bool = False,
    source: int | None = None,
) -> int:
    """Copy the default version into the next folder with other label names and make it the default
    (as `bertserve export` of a retrained model does); `break_tokenizer` corrupts a file after its
    sha256 was recorded, so that this version cannot load."""
    config = load_model_config(repo, name)
    version = max(config.versions) + 1
    source = config.default_version if source is None else source
    shutil.copytree(repo / name / str(source), repo / name / str(version))
    if break_tokenizer:
        (repo / name / str(version) / "tokenizer.json").write_text("{}", encoding="utf-8")
    versions = {**config.versions, version: config.versions[source]}
    save_model_config(
        repo,
        config.model_copy(update={"labels": list(labels), "versions": versions, "default_version": version}),
    )
    return version


@pytest.fixture
def start(repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def make(**overrides: Any) -> tuple[AppHarness, FakeBackends]:
        settings = Settings(repo=repo, backend="fake", models=["cls", "ner"], **overrides)  # type: ignore[arg-type]
        backends = FakeBackends(FaultHooks(delay_s=0.003))
        return await start_app.start(settings, backends, headers=AUTH), backends

    return make


class Load:
    """Clients classifying back to back; every answer recorded with the times its request was sent
    and answered."""

    def __init__(self, client: httpx.AsyncClient, clients: int) -> None:
        self.client = client
        self.answers: list[tuple[float, float, int, str | None]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._user(i)) for i in range(clients)]

    async def _user(self, i: int) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            r = await self.client.post(
                "/v1/models/cls/classify", json={"inputs": f"text number {i}", "top_k": 1}
            )
            label = r.json()["results"][0][0]["label"] if r.status_code == 200 else None
            self.answers.append((sent, time.monotonic(), r.status_code, label))
            await asyncio.sleep(0)

    async def until(self, answers: int, after: float = 0.0, timeout_s: float = 30.0) -> None:
        """Wait until `answers` requests sent after `after` (time.monotonic()) were answered."""
        deadline = time.monotonic() + timeout_s
        while sum(1 for sent, *_ in self.answers if sent > after) < answers:
            assert time.monotonic() < deadline, f"{len(self.answers)} answers in {timeout_s} s"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_reload_under_load_switches_without_a_failed_request(
    start: Callable[..., Any], repo: Path
) -> None:
    svc, backends = await start(api_key=KEY)
    old = svc.registry.describe("cls")
    load = Load(svc.client, clients=6)
    await load.until(30)  # the switch happens under traffic, whatever this machine's speed
    version = new_version(repo, "cls", V2_LABELS)
    began = time.monotonic()
    r = await svc.client.post("/v1/repository/reload")
    switched = time.monotonic()
    assert r.status_code == 200, r.text
    outcomes = {m["name"]: m for m in r.json()["models"]}
    assert outcomes["cls"] == {"name": "cls", "result": "loaded", "version": version}
    assert outcomes["ner"]["result"] == "unchanged"
    await load.until(30, after=switched)
    await load.stop()

    codes = {code for _, _, code, _ in load.answers}
    assert codes == {200}, codes  # not one request failed across the switch
    # answered before the reload began: v1; sent after it answered: v2 (a request in flight across
    # the switch finishes on the version it started on, either is right)
    before = {label for _, done, _, label in load.answers if done < began}
    after = {label for sent, _, _, label in load.answers if sent > switched}
    assert before <= set(V1_LABELS) and before and after <= set(V2_LABELS) and after
    info = (await svc.client.get("/v1/models/cls")).json()
    assert info["version"] == version and info["labels"] == list(V2_LABELS) and info["reload_error"] is None
    # the replaced version is freed once nothing holds it
    for _ in range(200):
        if old.backend.closed:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.01)
    assert old.backend.closed  # type: ignore[attr-defined]
    assert svc.registry.describe("cls").backend is backends.made["cls"]
    loaded = svc.registry.metrics.registry.get_sample_value(
        "bertserve_model_reloads_total", {"model": "cls", "result": "loaded"}
    )
    assert loaded == 1


async def test_a_broken_version_leaves_the_served_one(start: Callable[..., Any], repo: Path) -> None:
    svc, _ = await start(api_key=KEY)
    load = Load(svc.client, clients=4)
    await load.until(10)
    new_version(repo, "cls", V2_LABELS, break_tokenizer=True)
    r = await svc.client.post("/v1/repository/models/cls/load")
    await load.until(10, after=time.monotonic())
    await load.stop()
    assert r.status_code == 200
    (outcome,) = r.json()["models"]
    assert outcome["result"] == "failed" and outcome["version"] == 1 and "tokenizer.json" in outcome["error"]
    assert {code for _, _, code, _ in load.answers} == {200}
    assert {label for _, _, _, label in load.answers} <= set(V1_LABELS)
    info = (await svc.client.get("/v1/models/cls")).json()
    assert info["version"] == 1 and "tokenizer.json" in info["reload_error"]
    failed = svc.registry.metrics.registry.get_sample_value(
        "bertserve_model_reloads_total", {"model": "cls", "result": "failed"}
    )
    assert failed == 1
    assert (await svc.client.get("/health/ready")).status_code == 200
    # fixed: the next reload loads it and clears the error
    new_version(repo, "cls", V2_LABELS, source=1)
    r = await svc.client.post("/v1/repository/models/cls/load")
    assert r.json()["models"][0]["result"] == "loaded"
    assert (await svc.client.get("/v1/models/cls")).json()["reload_error"] is None


async def test_control_needs_the_api_key_and_a_served_model(start: Callable[..., Any], repo: Path) -> None:
    svc, _ = await start()  # no API key: the endpoints refuse
    r = await svc.client.post("/v1/repository/reload")
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert "BERTSERVE_API_KEY" in r.json()["error"]["message"]
    keyed, _ = await start(api_key=KEY)
    r = await keyed.client.post(
        "/v1/repository/reload", headers={"Authorization": "Bearer wrong-key-0123456789"}
    )
    assert r.status_code == 401
    r = await keyed.client.post("/v1/repository/models/nope/load")
    assert r.status_code == 404
    r = await keyed.client.post("/v1/repository/reload")
    assert {m["result"] for m in r.json()["models"]} == {"unchanged"}


async def test_a_task_change_needs_a_restart(start: Callable[..., Any], repo: Path) -> None:
    svc, _ = await start(api_key=KEY)
    ner = load_model_config(repo, "ner")
    cls = load_model_config(repo, "cls")
    save_model_config(repo, ner.model_copy(update={"name": "cls", "versions": cls.versions}))
    (outcome,) = (await svc.client.post("/v1/repository/models/cls/load")).json()["models"]
    assert outcome["result"] == "failed" and "restart" in outcome["error"]
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": "still here"})
    assert r.status_code == 200


async def test_the_poller_reloads_unasked(start: Callable[..., Any], repo: Path) -> None:
    svc, _ = await start(repository_poll_s=0.05)  # no key needed: nothing is exposed
    version = new_version(repo, "cls", V2_LABELS)
    for _ in range(100):
        if (await svc.client.get("/v1/models/cls")).json()["version"] == version:
            break
        await asyncio.sleep(0.05)
    r = await svc.client.post("/v1/models/cls/classify", json={"inputs": "polled", "top_k": 1})
    assert r.json()["results"][0][0]["label"] in V2_LABELS
