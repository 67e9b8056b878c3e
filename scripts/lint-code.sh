#!/usr/bin/env bash
# The checks that need the package as it installs: import-linter's contracts and mypy ([tool.importlinter] and
# [tool.mypy] in pyproject.toml). The source tree maps labelaudit.serving to serving/ (training/ and schemas/
# alike), which neither tool's scan of the labelaudit/ folder would see; a --target install puts every module
# where its imports say it is.
set -euo pipefail
cd "$(dirname "$0")/.."
config=$(pwd)/pyproject.toml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf build  # setuptools' staging folder: a module deleted since the last build would be installed from it
python3 -m pip install -q --no-deps --no-build-isolation --target "$tmp/site" . >/dev/null
cd "$tmp/site"
lint-imports --no-cache "$config"
python3 -m mypy --config-file "$config" --cache-dir "$tmp/mypy" \
    -p labelaudit.serving -p labelaudit.schemas -p labelaudit.imaging -p labelaudit.errors
