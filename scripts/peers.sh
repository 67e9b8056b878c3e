#!/usr/bin/env bash
# The peer servers (real third-party KServe-v2 implementations), in a virtualenv of their own so their
# pins never touch labelaudit's: MLServer serves our ONNX model in the Triton-backend tests.
# Idempotent. Used by .ci/run; the tests find it at .venv-peers (or $LABELAUDIT_PEERS_VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LABELAUDIT_PEERS_VENV:-.venv-peers}"
MLSERVER_VERSION="1.7.1"

if [ ! -x "$VENV/bin/mlserver" ] || ! "$VENV/bin/python" -c "import mlserver, onnxruntime" 2>/dev/null; then
  echo "peers: creating $VENV with mlserver==$MLSERVER_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "mlserver==$MLSERVER_VERSION" onnxruntime numpy
fi
"$VENV/bin/mlserver" --version
