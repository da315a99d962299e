"""Fixtures for the demo recipe tests (models/demo/compose.py, build.py).

The demo recipe lives under `models/demo/` (beside the data it builds from), not in an import
package, so its two modules are loaded from their files.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DEMO_DIR = Path(__file__).resolve().parents[3] / "models" / "demo"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bertserve_demo_{name}", DEMO_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def compose() -> ModuleType:
    return _load("compose")


@pytest.fixture(scope="session")
def build() -> ModuleType:
    return _load("build")
