"""Validate rendered Kubernetes manifests against the API schemas of one pinned Kubernetes version.

kubernetes-validate's own CLI only *warns* when it has no schema for a kind, so a typo in a built-in
apiVersion (say `autoscaling/v2beta3`) would pass. Here every built-in kind must validate strictly
(unknown fields are errors); kinds from CRDs the chart may emit (ServiceMonitor, ScaledObject), for
which no schema ships, are skipped by name with a printed note, and anything else unknown fails.

Usage: python deploy/tools/validate_manifests.py --kube-version 1.31.0 rendered/*.yaml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

# API groups of the custom resources the chart renders; they are validated structurally by
# tests/deploy instead (their CRDs are not part of Kubernetes' schema set).
CRD_GROUPS = frozenset({"monitoring.coreos.com", "keda.sh"})


def documents(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc:  # helm emits empty documents for templates whose condition is false
            yield doc


def api_group(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def validate_file(path: Path, kube_version: str) -> tuple[int, int, int]:
    """Return (passed, skipped, failed) counts, printing one line per resource."""
    passed = skipped = failed = 0
    for doc in documents(path):
        kind, api_version = doc.get("kind", "?"), doc.get("apiVersion", "?")
        ref = f"{kind}/{doc.get('metadata', {}).get('name', '?')} ({api_version})"
        if api_group(api_version) in CRD_GROUPS:
            print(f"SKIP {path.name}: {ref}: custom resource, no schema in Kubernetes {kube_version}")
            skipped += 1
            continue
        try:
            validated = kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            print(f"FAIL {path.name}: {ref}: {where}: {exc.message}")
            failed += 1
        except kubernetes_validate.SchemaNotFoundError:
            print(f"FAIL {path.name}: {ref}: not a Kubernetes {kube_version} API kind")
            failed += 1
        else:
            print(f"PASS {path.name}: {ref} against Kubernetes {validated} (strict)")
            passed += 1
    return passed, skipped, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kube-version", required=True, help="Kubernetes version, e.g. 1.31.0")
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    totals = [0, 0, 0]
    for path in args.files:
        for i, count in enumerate(validate_file(path, args.kube_version)):
            totals[i] += count
    passed, skipped, failed = totals
    print(f"kubernetes-validate: {passed} passed, {failed} failed, {skipped} skipped (CRDs)")
    if passed == 0:
        print("FAIL no resources validated")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
