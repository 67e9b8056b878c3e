# syntax=docker/dockerfile:1
# labelaudit's one image: the HTTP gateway (the default command), the Kafka consumer (`consume`) and the
# nightly report (`report`). Serving dependencies only: no torch, no onnx (training runs elsewhere).
#
#   docker build -t labelaudit:0.1.0 .                                  # CPU: onnxruntime on python:3.11-slim
#   docker build -t labelaudit:0.1.0-gpu --build-arg VARIANT=gpu .     # onnxruntime-gpu on NVIDIA's CUDA base
#
# The install step is scripts/install-runtime.sh, which CI runs too (scripts/lint-deploy.sh): keep every
# dependency change in that script, not here. docs/deploy.md has the rest.

ARG VARIANT=cpu

# -- bases: the same for the build and the runtime stage of a variant --------------------------------------
FROM python:3.11.14-slim-bookworm AS base-cpu

# onnxruntime-gpu 1.31 (scripts/install-runtime.sh) is built for CUDA 13 and cuDNN 9. Ubuntu 24.04's Python
# is 3.12 (the package needs >= 3.11).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS base-gpu
# Ubuntu's archive drops superseded versions, so a pinned apt version would break the build; the CUDA tag
# pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# -- build: a virtual environment in /opt/labelaudit -------------------------------------------------------
# base-${VARIANT} is one of the two stages above, each pinned to a version tag; hadolint (DL3006) and checkov
# (CKV_DOCKER_7) take the stage name for an untagged image.
# checkov:skip=CKV_DOCKER_7:base-${VARIANT} names a stage above, not an image; both bases are version-pinned
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/labelaudit
COPY pyproject.toml README.md ./
COPY labelaudit/ labelaudit/
COPY schemas/ schemas/
COPY serving/ serving/
COPY training/ training/
COPY scripts/install-runtime.sh scripts/
# --slim: once checked, the venv loses the wheels' test suites and its own pip and setuptools (nothing installs
# into it later); the script's smoke test then imports the gateway, the consumer and the report from what is left.
RUN set -- --slim \
    && if [ "$VARIANT" = gpu ]; then set -- --gpu --slim; fi \
    && PYTHON=/opt/labelaudit/bin/python bash scripts/install-runtime.sh "$@"

# -- runtime: the venv, a non-root user, nothing else ------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
LABEL org.opencontainers.image.title="labelaudit" \
      org.opencontainers.image.description="Serve an image classifier and audit the noisy labels that stream in with it." \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 labelaudit \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/labelaudit --no-create-home \
       --shell /usr/sbin/nologin labelaudit \
    && mkdir -p /var/lib/labelaudit /models \
    && chown 10001:10001 /var/lib/labelaudit
COPY --from=build /opt/labelaudit /opt/labelaudit
# The model repository (`labelaudit export`) is mounted at /models; the SQLite store (the default,
# sqlite:///labelaudit-audit.db) lands in the working directory, the one writable path.
ENV PATH=/opt/labelaudit/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    LABELAUDIT_MODEL_REPO=/models
WORKDIR /var/lib/labelaudit
USER 10001:10001
EXPOSE 8080
# The gateway's liveness route. Kubernetes ignores HEALTHCHECK and uses the chart's probes; a container
# running `consume` or `report` has no gateway and should be run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["labelaudit"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
