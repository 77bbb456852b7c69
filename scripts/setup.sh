#!/usr/bin/env bash
# Installs what Quarry's stack and tests need on a Debian machine. Idempotent: does nothing
# when everything is already there.
set -euo pipefail
need=()
command -v litecoind >/dev/null 2>&1 || need+=(litecoind)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v litecoind >/dev/null
command -v cargo >/dev/null || { echo "setup: cargo (Rust) is required" >&2; exit 1; }
