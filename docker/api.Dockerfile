# recdistill API image: FastAPI + FAISS (CPU) serving and the Alembic migrations.
# Slim on purpose: the base install only, without the `train` extra, so no torch and no CUDA.
# Build from the repository root: docker build -f docker/api.Dockerfile -t recdistill-api .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECDISTILL_HOME=/data \
    ARTIFACT_DIR=/data/artifacts

# The same uid/gid as the worker image: both write to the shared artifact volume, which takes its
# ownership from the image's /data/artifacts when it is first mounted.
RUN groupadd --gid 10001 recdistill \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin recdistill \
    && mkdir -p /data/artifacts \
    && chown -R 10001:10001 /data

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY core ./core
COPY api ./api
COPY worker ./worker
# cli/ holds the `recdistill` console script that `pip install .` installs (recdistill migrate works here too).
COPY cli ./cli
COPY migrations ./migrations

# No extras: serving needs faiss-cpu and never torch (the API process never imports it).
RUN pip install . \
    && python -c "import importlib.util as u, sys; sys.exit('torch leaked into the API image' if u.find_spec('torch') else 0)"

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
# api.server runs uvicorn with the request-head bound (api/server.py); WEB_CONCURRENCY sets the number of
# API processes, each loading the active bundle.
CMD ["python", "-m", "api.server", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
