#!/usr/bin/env bash
# Install everything labelaudit and its tests need on a fresh Debian machine (run as root, or with sudo).
# Idempotent: a second run only checks. Used by README's commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Debian packages: the real data set (Fashion-MNIST, 70,000 images), PostgreSQL (the second audit
# store; the tests start their own throwaway cluster with scripts/postgres.sh), and Chromium with its
# driver (the report's page is opened headless by the tests; selenium is given this driver, so nothing is
# downloaded at run time). Java and Maven resolve and run the Kafka broker (scripts/kafka.sh); they are
# installed only where no java/mvn is found.
apt_packages=(dataset-fashion-mnist postgresql chromium chromium-driver)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
command -v java >/dev/null || missing+=(default-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python: the package with the training extra (PyPI's torch; runs on CPU) and the dev tools.
echo "setup: pip install -e .[train,dev]"
python3 -m pip install --quiet --disable-pip-version-check -e ".[train,dev]"

# The Kafka broker's jars, from Maven Central (cached under ~/.cache/labelaudit).
bash scripts/kafka.sh install
