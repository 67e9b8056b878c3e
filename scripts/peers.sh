#!/usr/bin/env bash
# The peer servers, in virtualenvs of their own so their pins never touch labelaudit's:
# - .venv-peers: MLServer (a real KServe-v2 server) serves our ONNX model in the Triton-backend tests and
#   in bench/serve.py (Pillow for the benchmark's decoding runtime, bench/peers/mlserver_runtime.py).
#   uvloop below 0.22: with 0.22+ MLServer 1.7.1's inference workers (parallel_workers >= 1, its default)
#   die at start ("There is no current event loop", SeldonIO/MLServer#2286);
# - .venv-peers-bentoml: BentoML, for bench/serve.py only. Its own venv because, in one venv, BentoML's
#   opentelemetry-instrumentation-aiohttp-client (newest 0.66b1) and MLServer's -fastapi/-grpc (0.66b2) pin
#   opentelemetry-instrumentation exactly, at different versions. (1.4.39: 1.4.40 needs a certifi release
#   newer than the package index offers here.)
# Idempotent. Used by .ci/run; the tests find MLServer at .venv-peers (or $LABELAUDIT_PEERS_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LABELAUDIT_PEERS_VENV:-.venv-peers}"
BENTOML_VENV="${LABELAUDIT_BENTOML_VENV:-.venv-peers-bentoml}"
MLSERVER_VERSION="1.7.1"
UVLOOP_VERSION="0.21.0"
BENTOML_VERSION="1.4.39"

if [ ! -x "$VENV/bin/mlserver" ] || ! "$VENV/bin/python" -c "import mlserver, onnxruntime, PIL, uvloop; assert uvloop.__version__ == '$UVLOOP_VERSION'" 2>/dev/null; then
  echo "peers: creating $VENV with mlserver==$MLSERVER_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "mlserver==$MLSERVER_VERSION" \
    "uvloop==$UVLOOP_VERSION" onnxruntime numpy pillow
fi
"$VENV/bin/mlserver" --version

if [ ! -x "$BENTOML_VENV/bin/bentoml" ] \
  || ! "$BENTOML_VENV/bin/python" -c "import bentoml, onnxruntime, PIL; assert bentoml.__version__ == '$BENTOML_VERSION'" 2>/dev/null; then
  echo "peers: creating $BENTOML_VENV with bentoml==$BENTOML_VERSION"
  python3 -m venv "$BENTOML_VENV"
  "$BENTOML_VENV/bin/pip" install --quiet --disable-pip-version-check "bentoml==$BENTOML_VERSION" onnxruntime numpy pillow
fi
"$BENTOML_VENV/bin/python" -c "import bentoml; print('bentoml', bentoml.__version__)"
