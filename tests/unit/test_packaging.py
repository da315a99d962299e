"""The installed package: one top-level name, every package folder listed, no generic names."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        table: dict[str, object] = tomllib.load(f)["tool"]["setuptools"]
    return table


def test_every_package_folder_is_listed_under_bertserve() -> None:
    table = _setuptools()
    package_dir: dict[str, str] = table["package-dir"]  # type: ignore[assignment]
    found: set[str] = set()
    for name, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(base).parts
            found.add(".".join((name, *relative)))
    assert set(table["packages"]) == found  # type: ignore[arg-type]
    assert all(name == "bertserve" or name.startswith("bertserve.") for name in found)


def _run_elsewhere(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Outside the checkout, so that only the installed environment answers (not the working folder).
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_generic_top_level_names_are_not_installed(tmp_path: Path) -> None:
    for name in ("service", "export"):
        result = _run_elsewhere(f"import {name}", tmp_path)
        assert result.returncode != 0
        assert f"No module named '{name}'" in result.stderr


def test_the_folders_are_served_under_the_bertserve_namespace(tmp_path: Path) -> None:
    result = _run_elsewhere(
        "import bertserve.service.api.app as a, bertserve.export.exporter as e, bertserve.runtime.base as r; "
        "print(a.__file__); print(e.__file__); print(r.__file__)",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    app_file, export_file, runtime_file = (Path(line) for line in result.stdout.split())
    assert app_file == ROOT / "service" / "api" / "app.py"
    assert export_file == ROOT / "export" / "exporter.py"
    assert runtime_file == ROOT / "bertserve" / "runtime" / "base.py"
