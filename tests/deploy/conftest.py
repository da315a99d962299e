"""Fixtures for the deployment checks: the pinned tools and the chart rendered per value set.

The tools come from `deploy/tools/install.sh` (idempotent, cached in .tools/); a fresh clone running plain
`pytest` gets them the same way `make deploy-check` does.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.live_service import LiveService, drive_traffic, run_service, write_repository

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "bertserve"
TOOLS_BIN = ROOT / ".tools" / "bin"
KUBE_VERSION = "1.31.0"
VALUE_SETS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "gpu": (DEPLOY / "helm" / "values-gpu.yaml",),
    "autoscaling": (DEPLOY / "helm" / "values-autoscaling.yaml",),
    "keda": (DEPLOY / "helm" / "values-keda.yaml",),
}

Manifests = list[dict[str, Any]]


def ensure_tool(name: str, component: str) -> Path:
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        subprocess.run([str(DEPLOY / "tools" / "install.sh"), component], check=True, cwd=ROOT)
    assert os.access(path, os.X_OK), f"{path} missing after deploy/tools/install.sh {component}"
    return path


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_tool("helm", "helm")


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    return ensure_tool("prometheus", "prometheus")


class HelmError(Exception):
    pass


@pytest.fixture(scope="session")
def render(helm: Path) -> Callable[..., Manifests]:
    """render(value_set, *, kube_version=..., set_values=()) -> the rendered documents (cached)."""

    @functools.cache
    def _render(value_set: str, kube_version: str, set_values: tuple[str, ...]) -> str:
        cmd = [str(helm), "template", "bertserve", str(CHART), "--namespace", "serving"]
        cmd += ["--kube-version", kube_version]
        for values_file in VALUE_SETS[value_set]:
            cmd += ["-f", str(values_file)]
        for item in set_values:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise HelmError(proc.stderr.strip())
        return proc.stdout

    def render_docs(
        value_set: str = "default", *, kube_version: str = KUBE_VERSION, set_values: tuple[str, ...] = ()
    ) -> Manifests:
        text = _render(value_set, kube_version, set_values)
        return [doc for doc in yaml.safe_load_all(text) if doc]

    return render_docs


def only(docs: Manifests, kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kinds(docs: Manifests) -> set[str]:
    return {doc["kind"] for doc in docs}


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The real app with the fake backend on loopback, after one round of traffic (incl. 429s)."""
    repo = tmp_path_factory.mktemp("deploy-repo")
    write_repository(repo)
    with run_service(repo) as service:
        codes = drive_traffic(service)
        assert 200 in codes and 429 in codes, f"traffic did not produce both 200 and 429: {codes}"
        yield service
