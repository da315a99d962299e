# Sourced by the image-check scripts (deploy/tools/image-check.sh, deploy/images/stand-ins.sh): the podman
# settings this sandbox (and CI, on a machine like it) accepts, written to a containers.conf that
# CONTAINERS_CONF points every podman call at, podman-compose's included.
#
# - rlimits: the engine's defaults (nofile 1048576) are above the shell's hard limits and the sandbox lacks
#   CAP_SYS_RESOURCE, so containers get the shell's hard limits instead; nproc is capped at 32768 too,
#   because podman 4.3 lowers its own nproc hard limit to that before it starts conmon.
# - runtime: runc; Debian's crun 1.8 refuses this machine's hybrid cgroup v1/v2 layout.
# shellcheck shell=bash

_hard_limit() { # _hard_limit <ulimit flag> <cap>: the shell's hard limit, at most <cap>
  local value
  value="$(ulimit -H "$1")"
  [[ "$value" == unlimited || "$value" -gt "$2" ]] && value="$2"
  printf '%s' "$value"
}
ENGINE_NPROC="$(_hard_limit -u 32768)"
ENGINE_NOFILE="$(_hard_limit -n 65536)"
ENGINE_ULIMITS=(--ulimit "nproc=$ENGINE_NPROC:$ENGINE_NPROC" --ulimit "nofile=$ENGINE_NOFILE:$ENGINE_NOFILE")

_engine_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mkdir -p "$_engine_root/.tools/image-check"
cat >"$_engine_root/.tools/image-check/containers.conf" <<CONF
# Written by deploy/tools/engine.sh for make image-check; see the comments there.
[containers]
default_ulimits = ["nproc=$ENGINE_NPROC:$ENGINE_NPROC", "nofile=$ENGINE_NOFILE:$ENGINE_NOFILE"]

[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$_engine_root/.tools/image-check/containers.conf"

# Stand-in image names (deploy/images/stand-ins.sh); the Dockerfile's base keeps its own name.
STANDIN_PYTHON_IMAGE="python:3.11-slim-bookworm"
STANDIN_ROOTFS_IMAGE="localhost/bertserve-stand-in/bookworm-minbase:latest"
STANDIN_PROMETHEUS_IMAGE="localhost/bertserve-stand-in/prometheus:debian-bookworm"
