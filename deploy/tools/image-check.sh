#!/usr/bin/env bash
# `make image-check` (part of `make test`, so of CI): the images built and the compose stack brought up on a
# real container engine, end to end, nothing done by hand.
#
#   1. the engine: Debian's podman 4.3 + podman-compose 1.0.3 (deploy/tools/install-engine.sh)
#   2. stand-in bases where no registry is reachable (deploy/images/stand-ins.sh, cached)
#   3. `--target cpu` built twice: with MODELS_FROM=models-empty, and with the demo repository baked in
#      (the README's default); build times, image sizes and the runtime image's layers are printed
#   4. each image run and checked (deploy/tools/container_check.py image): the baked one as it is, the empty
#      one with the baked repository mounted at /models on onnxruntime-cpu (auto picks openvino-cpu)
#   5. deploy/compose.yaml up with podman-compose, checked, and down (container_check.py compose)
#
# Fails with one line when the engine cannot be installed or cannot start here; never skipped in CI.
# BERTSERVE_SKIP_IMAGE_CHECK=1 skips it on a developer's machine (refused when CI=true).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${VENV_BIN:-$ROOT/.venv/bin}/python"
[[ -x "$PYTHON" ]] || PYTHON=python3
IMAGE_DEMO="${BERTSERVE_IMAGE:-bertserve:cpu}"
IMAGE_EMPTY="bertserve:cpu-nomodels"
TORCH_WHEELS="${BERTSERVE_TORCH_WHEELS:-/opt/wheels}"
COMPOSE_PROJECT=bertserve-image-check

if [[ -n "${BERTSERVE_SKIP_IMAGE_CHECK:-}" ]]; then
  if [[ "${CI:-}" == "true" ]]; then
    echo "FAIL image-check: BERTSERVE_SKIP_IMAGE_CHECK is set but CI=true (CI never skips it)"
    exit 1
  fi
  echo "SKIP image-check: BERTSERVE_SKIP_IMAGE_CHECK is set (by hand; CI never skips it)"
  exit 0
fi

WORK="$(mktemp -d)"
started=$SECONDS
setup_fail() { echo "FAIL image-check: $*"; exit 1; }
last_error() { grep -v '^\s*$' "$1" | tail -n1; }

# 1. the engine
deploy/tools/install-engine.sh 2>"$WORK/engine.log" \
  || setup_fail "cannot install the container engine: $(last_error "$WORK/engine.log")"
cat "$WORK/engine.log"
# shellcheck source=deploy/tools/engine.sh
source deploy/tools/engine.sh
podman info >/dev/null 2>"$WORK/info.log" \
  || setup_fail "podman cannot start on this machine: $(last_error "$WORK/info.log")"

cleanup() {
  # Whatever a failed or interrupted run left: the check's containers (by label) and its compose project.
  local ids
  ids="$(podman ps -a -q --filter label=org.bertserve.image-check=1 2>/dev/null || true)"
  [[ -n "$ids" ]] && podman rm -f -t 0 $ids >/dev/null 2>&1
  ids="$(podman ps -a -q --filter "label=io.podman.compose.project=$COMPOSE_PROJECT" 2>/dev/null || true)"
  if [[ -n "$ids" ]]; then
    podman rm -f -t 0 $ids >/dev/null 2>&1
    podman volume prune -f --filter "label=io.podman.compose.project=$COMPOSE_PROJECT" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 2. stand-in bases (a real python:3.11-slim-bookworm in the store is used as it is)
deploy/images/stand-ins.sh 2>&1 | sed 's/^/    /' || setup_fail "the stand-in base images could not be built"
podman run --rm --label org.bertserve.image-check=1 "$STANDIN_PYTHON_IMAGE" true 2>"$WORK/run.log" \
  || setup_fail "podman cannot run a container on this machine: $(last_error "$WORK/run.log")"

# 3. the two CPU images
failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }
summary=()

build() { # build <label> <image> <podman build args...>
  local label="$1" image="$2"; shift 2
  local start=$SECONDS
  # --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
  if podman build --format docker "${ENGINE_ULIMITS[@]}" --target cpu -t "$image" "$@" . >"$WORK/build.log" 2>&1; then
    local took=$((SECONDS - start)) size
    size="$(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
    pass "build $label: $image in ${took} s, $size"
    summary+=("$(printf '%-44s %6s s  %s' "$image ($label)" "$took" "$size")")
  else
    tail -n 25 "$WORK/build.log"
    fail "build $label ($image): $(last_error "$WORK/build.log")"
    return 1
  fi
}

TORCH_VERSION="$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)"
demo_args=()
if compgen -G "$TORCH_WHEELS/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
  # This machine has the CPU wheel on disk and cannot reach PyTorch's index: hand the wheel over as a build
  # context and take torch's own dependencies from PyPI.
  echo "     torch $TORCH_VERSION+cpu from $TORCH_WHEELS (build context torch-wheels), the rest from PyPI"
  demo_args=(--build-context "torch-wheels=$TORCH_WHEELS" --build-arg "TORCH_VERSION=$TORCH_VERSION+cpu"
             --build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
fi
# NOTE: podman 4.3 (buildah 1.28) decides which stages a target needs from the --build-arg values only, not
# from ARG defaults, so it would skip the default demo-builder stage; naming it is the same build as the
# README's `docker build --target cpu .`.
build_ok=1
build "models-empty" "$IMAGE_EMPTY" --build-arg MODELS_FROM=models-empty || build_ok=0
build "demo models baked in" "$IMAGE_DEMO" --build-arg MODELS_FROM=demo-builder "${demo_args[@]}" || build_ok=0
if ((build_ok == 0)); then
  echo "image-check: $failures check(s) failed ($((SECONDS - started)) s)"
  exit 1
fi

echo "     layers of $IMAGE_DEMO (podman history; the base is the stand-in where no registry is reachable):"
podman history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE_DEMO" \
  | sed -E 's|/bin/sh -c #\(nop\) ||; s/(dir|file):[0-9a-f]{64} //' \
  | awk -F'\t' '$1 != "0 B" { printf "       %10s  %s\n", $1, substr($2, 1, 100) }'
echo "     the largest parts of /opt/venv and /models:"
podman run --rm --label org.bertserve.image-check=1 --entrypoint sh "$IMAGE_DEMO" -c \
  'cd /opt/venv/lib/python3*/site-packages && du -sm openvino onnxruntime numpy numpy.libs tokenizers uvloop \
     hf_xet huggingface_hub && cd /models && du -sm */*/* | sort -rn | head -n 6' \
  | awk '{ printf "       %7s MB  %s\n", $1, $2 }'

# 4. the containers. The empty image serves the baked repository, mounted, on the other backend.
mkdir -p "$WORK/models"
id="$(podman create --label org.bertserve.image-check=1 "$IMAGE_DEMO")"
podman cp "$id:/models/." "$WORK/models/" && podman rm -f "$id" >/dev/null 2>&1
chmod -R a+rX "$WORK/models" && chmod a+rx "$WORK"
"$PYTHON" deploy/tools/container_check.py image "$IMAGE_DEMO" || failures=$((failures + $?))
"$PYTHON" deploy/tools/container_check.py image "$IMAGE_EMPTY" --repo "$WORK/models" --backend onnxruntime-cpu \
  || failures=$((failures + $?))

# 5. the compose stack, as users run it (the override swaps image names only)
"$PYTHON" deploy/tools/container_check.py compose --override deploy/images/compose.stand-ins.yaml \
  --project "$COMPOSE_PROJECT" || failures=$((failures + $?))

echo "     build times and sizes:"
printf '       %s\n' "${summary[@]}"
if ((failures)); then
  echo "image-check: $failures check(s) failed ($((SECONDS - started)) s)"
  exit 1
fi
echo "image-check: all checks passed ($((SECONDS - started)) s)"
