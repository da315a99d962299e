#!/usr/bin/env bash
# Builds the stand-in base images `make image-check` needs where no image registry is reachable:
#
#   python:3.11-slim-bookworm  debootstrap (minbase + python3, python3-venv, python3-pip, ca-certificates)
#                              from Debian's archive, imported, plus `python` on PATH and the host's CA
#                              bundle (deploy/images/python/Containerfile); Python 3.11 as in the real image
#   prom/prometheus stand-in   Debian's prometheus package on that base (deploy/images/prometheus/)
#
# A real python:3.11-slim-bookworm already in the engine's store (no stand-in label) is used as it is.
# The debootstrap tarball is cached in $BERTSERVE_IMAGE_CACHE (default /var/cache/bertserve/image-check)
# and the images in podman's store, so later runs (fresh clones included) only re-check cached layers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/tools/engine.sh
source "$ROOT/deploy/tools/engine.sh"
CACHE="${BERTSERVE_IMAGE_CACHE:-/var/cache/bertserve/image-check}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip,ca-certificates
TARBALL="$CACHE/$SUITE-minbase-$(echo "$INCLUDE" | tr ',' '+').tar"
HOST_CA=/etc/ssl/certs/ca-certificates.crt

log() { printf 'stand-ins: %s\n' "$*" >&2; }
standin_label() { podman image inspect --format '{{index .Labels "org.bertserve.stand-in"}}' "$1" 2>/dev/null; }

make_tarball() {
  [[ -s "$TARBALL" ]] && return 0
  command -v debootstrap >/dev/null || { log "debootstrap missing (deploy/tools/install-engine.sh)"; return 1; }
  mkdir -p "$CACHE"
  local work start=$SECONDS
  work="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  # shellcheck disable=SC2064  # expand now
  trap "rm -rf '$work'" RETURN
  log "debootstrap --variant=minbase --include=$INCLUDE $SUITE ($MIRROR), once per machine"
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/rootfs" "$MIRROR" \
      >"$work/debootstrap.log" 2>&1; then
    tail -n 5 "$work/debootstrap.log" >&2
    log "debootstrap failed"
    return 1
  fi
  # What a slim image leaves out: downloaded packages, package lists.
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" --numeric-owner -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
  log "rootfs tarball $(du -h "$TARBALL" | cut -f1) in $((SECONDS - start)) s: $TARBALL"
}

build_python() {
  if podman image exists "$STANDIN_PYTHON_IMAGE" && [[ -z "$(standin_label "$STANDIN_PYTHON_IMAGE")" ]]; then
    log "using the real $STANDIN_PYTHON_IMAGE already in the engine's store"
    return 0
  fi
  if ! podman image exists "$STANDIN_ROOTFS_IMAGE"; then
    make_tarball
    podman import --quiet "$TARBALL" "$STANDIN_ROOTFS_IMAGE" >/dev/null
  fi
  local context
  context="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$context'" RETURN
  cp "$ROOT/deploy/images/python/Containerfile" "$context/"
  cp "$HOST_CA" "$context/ca-certificates.crt"
  podman build --quiet "${ENGINE_ULIMITS[@]}" --build-arg "ROOTFS=$STANDIN_ROOTFS_IMAGE" \
    -t "$STANDIN_PYTHON_IMAGE" "$context" >/dev/null
}

build_prometheus() {
  podman build --quiet "${ENGINE_ULIMITS[@]}" --build-arg "BASE=$STANDIN_PYTHON_IMAGE" \
    -t "$STANDIN_PROMETHEUS_IMAGE" "$ROOT/deploy/images/prometheus" >/dev/null
}

start=$SECONDS
build_python
log "$STANDIN_PYTHON_IMAGE: $(podman run --rm "${ENGINE_ULIMITS[@]}" "$STANDIN_PYTHON_IMAGE" python --version 2>&1)"
build_prometheus
log "$STANDIN_PROMETHEUS_IMAGE: $(podman run --rm "${ENGINE_ULIMITS[@]}" "$STANDIN_PROMETHEUS_IMAGE" --version 2>&1 | head -n1)"
log "stand-in bases ready in $((SECONDS - start)) s"
