#!/usr/bin/env bash
# Static checks of everything under deploy/ plus the Dockerfile; `make deploy-check` (and so `make test`
# and CI) runs it. No Docker engine and no cluster needed. Each check prints one PASS/FAIL line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
TOOLS_BIN="$ROOT/.tools/bin"
# One pinned Kubernetes version for rendering and schema validation (helm 3.17 ships with 1.32 client
# libraries; 1.31 is the oldest minor still supported upstream when this was pinned), plus the oldest
# version the chart supports, which renders the exec-based preStop instead of the native sleep action.
KUBE_VERSION="${KUBE_VERSION:-1.31.0}"
KUBE_VERSION_OLDEST="1.29.0"
CHART=deploy/helm/bertserve
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
run_check() { # run_check "label" cmd...  (output shown only on failure)
  local label="$1"; shift
  if "$@" >"$OUT/log" 2>&1; then pass "$label"; else cat "$OUT/log"; fail "$label"; fi
}

deploy/tools/install.sh
HELM="$TOOLS_BIN/helm"

run_check "hadolint Dockerfile ($("$VENV_BIN/hadolint" --version | awk '{print $NF}'))" \
  "$VENV_BIN/hadolint" --failure-threshold style Dockerfile

declare -A VARIANTS=(
  [default]=""
  [gpu]="deploy/helm/values-gpu.yaml"
  [autoscaling]="deploy/helm/values-autoscaling.yaml"
  [keda]="deploy/helm/values-keda.yaml"
)
rendered=()
for variant in default gpu autoscaling keda; do
  args=()
  [[ -n "${VARIANTS[$variant]}" ]] && args=(-f "${VARIANTS[$variant]}")
  run_check "helm lint --strict ($variant values)" "$HELM" lint --strict "$CHART" "${args[@]}"
  if "$HELM" template bertserve "$CHART" --namespace serving --kube-version "$KUBE_VERSION" "${args[@]}" \
      >"$OUT/$variant.yaml" 2>"$OUT/log"; then
    pass "helm template ($variant values, Kubernetes $KUBE_VERSION): $(grep -c '^kind:' "$OUT/$variant.yaml") resources"
    rendered+=("$OUT/$variant.yaml")
  else
    cat "$OUT/log"; fail "helm template ($variant values)"
  fi
done
if "$HELM" template bertserve "$CHART" --namespace serving --kube-version "$KUBE_VERSION_OLDEST" \
    >"$OUT/default-k$KUBE_VERSION_OLDEST.yaml" 2>"$OUT/log"; then
  pass "helm template (default values, Kubernetes $KUBE_VERSION_OLDEST)"
else
  cat "$OUT/log"; fail "helm template (default values, Kubernetes $KUBE_VERSION_OLDEST)"
fi

echo "kubernetes-validate --strict, Kubernetes $KUBE_VERSION:"
if "$VENV_BIN/python" deploy/tools/validate_manifests.py --kube-version "$KUBE_VERSION" "${rendered[@]}"; then
  pass "kubernetes-validate ($KUBE_VERSION, strict) on ${#rendered[@]} rendered value sets"
else
  fail "kubernetes-validate ($KUBE_VERSION, strict)"
fi
if "$VENV_BIN/python" deploy/tools/validate_manifests.py --kube-version "$KUBE_VERSION_OLDEST" \
    "$OUT/default-k$KUBE_VERSION_OLDEST.yaml" >"$OUT/log" 2>&1; then
  pass "kubernetes-validate ($KUBE_VERSION_OLDEST, strict) on the default value set"
else
  cat "$OUT/log"; fail "kubernetes-validate ($KUBE_VERSION_OLDEST, strict)"
fi

if [[ -x "$TOOLS_BIN/promtool" ]]; then
  run_check "promtool check config deploy/prometheus/prometheus.yml" \
    "$TOOLS_BIN/promtool" check config --syntax-only deploy/prometheus/prometheus.yml
else
  fail "promtool missing (deploy/tools/install.sh prometheus)"
fi

# tests/deploy (rendered-manifest contents, compose, and the live metrics/Prometheus checks) run
# as part of the main pytest suite, so `make test` runs them once and reports one total.

if ((failures)); then
  echo "deploy-check: $failures check(s) failed"
  exit 1
fi
echo "deploy-check: all checks passed"
