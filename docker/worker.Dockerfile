# recdistill worker image: CUDA PyTorch + faiss-gpu, running `recdistill worker` (one Celery job per GPU).
# Build from the repository root: docker build -f docker/worker.Dockerfile -t recdistill-worker .
# CPU-only variant (compose profile "cpu"): --build-arg BASE_IMAGE=ubuntu:24.04
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg FAISS=cpu
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# Torch's own CUDA 12.8 wheels (they bring cuDNN and cuBLAS as pip packages); the range is pyproject's `train` extra.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_SPEC="torch>=2.2,<2.15"
# gpu: replace faiss-cpu by the `gpu` extra's faiss-gpu (falls back to faiss-cpu if that wheel will not load).
ARG FAISS=gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RECDISTILL_HOME=/data \
    ARTIFACT_DIR=/data/artifacts

# Ubuntu 24.04's Python is 3.12 (the project needs >= 3.11); a venv keeps pip away from the system's.
# The pinned base image fixes the distribution release, so apt's versions are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# The same uid/gid as the API image (shared artifact volume).
RUN groupadd --gid 10001 recdistill \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin recdistill \
    && mkdir -p /data/artifacts \
    && chown -R 10001:10001 /data

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations

# Versions come from pyproject.toml's ranges (and TORCH_SPEC), not from pins here.
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
    && pip install ".[train]" \
    && if [ "${FAISS}" = "gpu" ]; then \
         spec="$(python -c "from importlib.metadata import requires; print(next(r.split(';')[0] for r in requires('recdistill') if r.startswith('faiss-gpu')))")" \
         && pip uninstall -y faiss-cpu \
         && pip install "${spec}" \
         && (python -c "import faiss" \
             || (echo "WARNING: ${spec} does not load in this image; falling back to faiss-cpu" >&2 \
                 && pip uninstall -y faiss-gpu && pip install "faiss-cpu>=1.8")); \
       fi \
    && python -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| faiss', faiss.__version__, 'gpu build:', hasattr(faiss, 'StandardGpuResources'))"

USER 10001:10001
# One job per GPU: the solo pool runs one task at a time, prefetch 1 and late acks (worker/celery_app.py).
CMD ["recdistill", "worker"]
