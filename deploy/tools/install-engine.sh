#!/usr/bin/env bash
# Installs the container engine `make image-check` runs on, from Debian's archive only:
#
#   podman 4.3 (+ runc, netavark, aardvark-dns, iptables)  builds the images and runs the containers;
#                                                          builds only the stages a target needs
#   podman-compose 1.0.3                                   brings deploy/compose.yaml up on podman
#   debootstrap                                            makes the stand-in base image (no registry)
#
# Debian's docker.io 20.10 is not used: it has no buildx, so its legacy builder builds every stage
# before the target (the demo-builder too) and knows no named build contexts.
# Idempotent: installed packages are left alone; only missing ones are installed (as root).
set -euo pipefail

PACKAGES=(podman runc conmon netavark aardvark-dns iptables podman-compose debootstrap)

log() { printf 'image-engine: %s\n' "$*" >&2; }

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || { log "apt-get is needed to install ${missing[*]}"; exit 1; }
  [[ "$(id -u)" == 0 ]] || { log "root is needed to install ${missing[*]} (apt-get)"; exit 1; }
  log "installing ${missing[*]} from Debian's archive"
  apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed (trying the cached package lists)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >/tmp/bertserve-install-engine.log 2>&1; then
    tail -n 5 /tmp/bertserve-install-engine.log >&2
    log "apt-get install ${missing[*]} failed (log: /tmp/bertserve-install-engine.log)"
    exit 1
  fi
fi
log "podman $(dpkg-query -W -f='${Version}' podman), podman-compose $(dpkg-query -W -f='${Version}' podman-compose)"
