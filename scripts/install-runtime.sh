#!/usr/bin/env bash
# Install labelaudit's serving runtime into a Python environment: the package's base dependencies only
# (onnxruntime, FastAPI, kafka-python, psycopg, tritonclient, ...), never torch or onnx (the `train` extra).
#
# The Dockerfile's build stage runs exactly this script, and so does CI (scripts/lint-deploy.sh, in a fresh
# venv): a green CI proves the image's install steps without a Docker engine.
#
#   PYTHON=/opt/labelaudit/bin/python bash scripts/install-runtime.sh          # CPU: onnxruntime
#   PYTHON=/opt/labelaudit/bin/python bash scripts/install-runtime.sh --gpu    # onnxruntime-gpu (CUDA 13, cuDNN 9)
#   PYTHON=/opt/labelaudit/bin/python bash scripts/install-runtime.sh --slim   # the image's (with or without --gpu)
#   bash scripts/install-runtime.sh --check-gpu-wheel    # CI: the GPU pin has a wheel for the GPU image's Python
#
# PYTHON is the interpreter of the environment to install into (default: python3 on PATH). --slim, for the
# image's venv, which nothing installs into afterwards: once the install is checked, drop what no command
# needs at run time, the test suites the wheels ship (scipy, numpy, matplotlib, gevent, ...: about 60 MB) and
# the venv's own pip and setuptools (about 25 MB); the smoke test below then runs on what is left.
set -euo pipefail
cd "$(dirname "$0")/.."

# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: the Dockerfile's CUDA base must match.
ONNXRUNTIME_GPU_VERSION=1.31.1
PYTHON="${PYTHON:-python3}"
usage() { echo "usage: $0 [--gpu] [--slim] | --check-gpu-wheel" >&2; exit 2; }
gpu=0
slim=0
case "${1:-}" in
  --check-gpu-wheel)
    [ "$#" = 1 ] || usage
    # CI, which has no CUDA: the pinned onnxruntime-gpu resolves to a wheel for the GPU image's Python
    # (Ubuntu 24.04: CPython 3.12, glibc 2.39). A dry run reads the wheel's metadata, not its 300 MB.
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --dry-run --ignore-installed --no-deps \
      --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --target "$(mktemp -d)" \
      "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"
    echo "install-runtime: onnxruntime-gpu ${ONNXRUNTIME_GPU_VERSION} has a wheel for the GPU image's Python 3.12"
    exit 0 ;;
esac
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --slim) slim=1 ;;
    *) usage ;;
  esac
done

"$PYTHON" -m pip install --quiet --disable-pip-version-check .
if [ "$gpu" = 1 ]; then
  # Both wheels provide the `onnxruntime` module: the CPU one must go before the GPU one comes.
  "$PYTHON" -m pip uninstall --quiet --yes onnxruntime
  "$PYTHON" -m pip install --quiet --disable-pip-version-check "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"
else
  "$PYTHON" -m pip check
fi
if [ "$slim" = 1 ]; then
  prefix="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
  site="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  before="$(du -sm "$prefix" | cut -f1)"
  # Only folders named tests inside a package (numpy/_core/tests, scipy/stats/tests, ...): no package imports
  # its own test suite; numpy.testing and the like, which some packages import, are not named tests.
  find "$site" -mindepth 2 -depth -type d -name tests -exec rm -rf {} +
  "$PYTHON" -m pip uninstall --quiet --yes pip setuptools
  echo "install-runtime: --slim: dropped the wheels' test suites and the venv's pip and setuptools:" \
    "${before} MB -> $(du -sm "$prefix" | cut -f1) MB"
fi

# Smoke test, from outside the source tree so that the installed package is the one imported: serving
# imports without torch, the nightly report too where the source has it, Triton's clients (gRPC and HTTP,
# which the backend imports only when LABELAUDIT_BACKEND=triton) and granian load, and the CLI answers.
modules="labelaudit.serving.http.app labelaudit.serving.stream.consumer tritonclient.grpc.aio tritonclient.http.aio"
modules+=" granian.server granian.http"  # the other HTTP server (LABELAUDIT_HTTP_SERVER=granian): its Rust module loads
if [ -d serving/report ]; then modules+=" labelaudit.serving.report.job"; fi
cd /
MODULES="$modules" "$PYTHON" - <<'EOF'
import importlib
import importlib.util
import os

for heavy in ("torch", "onnx"):
    assert importlib.util.find_spec(heavy) is None, f"{heavy} must not be in the runtime image"
for module in os.environ["MODULES"].split():
    importlib.import_module(module)
EOF
"$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/labelaudit" --help >/dev/null
echo "install-runtime: labelaudit serving runtime installed in $("$PYTHON" -c 'import sys; print(sys.prefix)')"
