# syntax=docker/dockerfile:1
# m3edge: one image for every role (serve, scp, api, worker --queues ..., db upgrade, models import, engines build).
#   docker build -t m3edge:0.1.0 .
#   docker run --gpus all -v m3edge-home:/var/lib/m3edge m3edge:0.1.0 worker --queues gpu
# Python packages are installed by scripts/install, the README's install path, with M3EDGE_TORCH naming the CUDA
# build of PyTorch and the pinned TensorRT 10 wheel (both bundle their CUDA libraries; the base adds the driver glue).
# deploy/compose.yaml runs it with PostgreSQL, Redis and trtllm-serve; see the README section "Deployment".

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---- build: compilers allowed here, and only here ------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0+cu128
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TENSORRT_VERSION=10.13.3.9
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Distribution packages follow the pinned base image's release (apt versions are not pinned: DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/m3edge
COPY pyproject.toml README.md ./
COPY scripts/ scripts/
COPY dicom_node/ dicom_node/
COPY engines/ engines/
COPY migrations/ migrations/
COPY service/ service/
COPY bench/ bench/
COPY deploy/container/ deploy/container/
RUN M3EDGE_TORCH="torch==${TORCH_VERSION} tensorrt==${TENSORRT_VERSION} --extra-index-url ${TORCH_INDEX}" scripts/install \
 && .venv/bin/python -c "import tensorrt, torch; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__)" \
 && find /opt/m3edge -name '__pycache__' -prune -exec rm -rf {} +

# ---- runtime: the interpreter and the installed tree, no compilers ---------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 m3edge \
 && useradd --system --uid 10001 --gid m3edge --home-dir /var/lib/m3edge --shell /usr/sbin/nologin m3edge \
 && install -d -o m3edge -g m3edge -m 0750 /var/lib/m3edge
COPY --from=build /opt/m3edge /opt/m3edge
ENV PATH=/opt/m3edge/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    M3EDGE_HOME=/var/lib/m3edge \
    M3EDGE_API_HOST=0.0.0.0 \
    M3EDGE_API_PORT=8000 \
    M3EDGE_DICOM_PORT=11112
WORKDIR /var/lib/m3edge
VOLUME ["/var/lib/m3edge"]
USER 10001:10001
EXPOSE 8000 11112
# The API's readiness (database and broker reachable); other roles override it (see deploy/compose.yaml).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "/opt/m3edge/deploy/container/healthcheck.py", "readyz"]
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/m3edge/deploy/container/entrypoint.sh"]
CMD ["serve"]
