"""Serving chosen versions: model.yaml's version_policy (latest N, all, specific) chooses what is
served beside the default version, every native route and the v2 protocol answer at
/versions/{v}/, the unversioned routes answer with the default one, and a version that is not
served is a 404 that lists the served ones."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bertserve.modelrepo import VersionPolicy, load_model_config, save_model_config
from bertserve.service.settings import Settings
from tests.helpers.asgi import AppHarness, AppStarter
from tests.helpers.fake_repo import DEFAULT_SPECS, FakeBackends, write_fake_repo

KEY = "versions-test-key-0123456789"


def add_versions(repo: Path, name: str, count: int, policy: VersionPolicy | None, default: int) -> None:
    """Versions 2..count+1 (copies of version 1) and the given policy and default."""
    config = load_model_config(repo, name)
    versions = dict(config.versions)
    for v in range(2, count + 2):
        shutil.copytree(repo / name / "1", repo / name / str(v))
        versions[v] = config.versions[1]
    save_model_config(
        repo,
        config.model_copy(
            update={"versions": versions, "version_policy": policy, "default_version": default}
        ),
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_fake_repo(tmp_path / "repo", DEFAULT_SPECS)


@pytest.fixture
def start(repo: Path, start_app: AppStarter) -> Callable[..., Any]:
    async def make(**overrides: Any) -> AppHarness:
        settings = Settings(repo=repo, backend="fake", models=["cls", "ner"], **overrides)  # type: ignore[arg-type]
        return await start_app.start(settings, FakeBackends(), headers={"Authorization": f"Bearer {KEY}"})

    return make


def runs(svc: AppHarness, version: int) -> int:
    return int(svc.registry.describe("cls", version).backend.sequences_run)  # type: ignore[attr-defined]


async def test_latest_n_serves_those_versions_at_their_paths(start: Callable[..., Any], repo: Path) -> None:
    add_versions(repo, "cls", 2, VersionPolicy(latest=2), default=3)
    svc = await start()
    c = svc.client
    info = (await c.get("/v1/models/cls")).json()
    assert info["version"] == 3 and info["versions"] == [2, 3]
    assert (await c.get("/v1/models/cls/versions/2")).json()["version"] == 2
    before = {v: runs(svc, v) for v in (2, 3)}
    r = await c.post("/v1/models/cls/versions/2/classify", json={"inputs": ["a", "b"]})
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert runs(svc, 2) == before[2] + 2 and runs(svc, 3) == before[3]
    await c.post("/v1/models/cls/classify", json={"inputs": "c"})  # unversioned: the default
    assert runs(svc, 3) == before[3] + 1
    r = await c.post("/v1/models/cls/versions/1/classify", json={"inputs": "a"})
    assert r.status_code == 404 and "served: 2, 3" in r.json()["error"]["message"]
    r = await c.post("/v1/models/cls/versions/x/classify", json={"inputs": "a"})
    assert r.status_code == 422
    r = await c.post("/v1/models/cls/versions/2/tokenize", json={"inputs": "a"})
    assert r.status_code == 200
    # the Open Inference Protocol: its metadata lists the versions, /versions/{v}/infer runs it
    meta = (await c.get("/v2/models/cls")).json()
    assert meta["versions"] == ["2", "3"]
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    r = await c.post("/v2/models/cls/versions/2/infer", json=body)
    assert r.status_code == 200 and r.json()["model_version"] == "2" and runs(svc, 2) == before[2] + 3
    assert (await c.post("/v2/models/cls/versions/1/infer", json=body)).status_code == 404
    assert (await c.get("/v2/models/cls/versions/2/ready")).status_code == 200
    # every version's requests count under the model
    total = svc.registry.metrics.registry.get_sample_value(
        "bertserve_requests_total", {"model": "cls", "endpoint": "classify", "code": "200"}
    )
    assert total == 2


async def test_specific_versions_and_the_default_always(start: Callable[..., Any], repo: Path) -> None:
    add_versions(repo, "cls", 3, VersionPolicy(specific=[1, 2]), default=4)
    svc = await start()
    assert svc.registry.served_versions("cls") == [1, 2, 4]
    assert svc.registry.served_versions("ner") == [1]  # no policy: the default version only
    r = await svc.client.post("/v1/models/ner/versions/1/ner", json={"inputs": "Paris"})
    assert r.status_code == 200


async def test_a_reload_applies_a_new_policy(start: Callable[..., Any], repo: Path) -> None:
    svc = await start(api_key=KEY)
    assert svc.registry.served_versions("cls") == [1]
    add_versions(repo, "cls", 1, VersionPolicy(all=True), default=2)
    (outcome,) = (await svc.client.post("/v1/repository/models/cls/load")).json()["models"]
    assert outcome == {"name": "cls", "result": "loaded", "version": 2}
    assert svc.registry.served_versions("cls") == [1, 2]
    r = await svc.client.post("/v1/models/cls/versions/1/classify", json={"inputs": "a"})
    assert r.status_code == 200
