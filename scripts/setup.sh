#!/usr/bin/env bash
# Install everything labelaudit and its tests need on a fresh Debian machine (run as root, or with sudo).
# Idempotent: a second run only checks. Used by README's commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: the real data set (Fashion-MNIST, 70,000 images).
apt_packages=(dataset-fashion-mnist)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python: the package with the training extra (PyPI's torch; runs on CPU) and the dev tools.
echo "setup: pip install -e .[train,dev]"
python3 -m pip install --quiet --disable-pip-version-check -e ".[train,dev]"
