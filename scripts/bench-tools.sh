#!/usr/bin/env bash
# The benchmarks' own tools, beyond what scripts/setup.sh installs (not used by .ci/run: CI runs no
# benchmark):
# - wrk (Debian's 4.1.0, LuaJIT scripting): bench/serve.py's load generator for the HTTP rows. A compiled
#   client spends some tens of microseconds of CPU per request where the Python one (aiohttp) spends hundreds,
#   on the same cores as the servers it measures; without wrk, bench/serve.py falls back to aiohttp.
# Idempotent; Debian (apt as root or with sudo). The peer servers come from scripts/peers.sh.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v wrk >/dev/null; then
  echo "bench-tools: installing wrk"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
{ wrk -v 2>&1 || true; } | head -1  # wrk -v exits 1 after printing its version
