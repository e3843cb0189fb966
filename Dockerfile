# syntax=docker/dockerfile:1
# Versions are pinned in pyproject.toml (hence the DL3013 ignores: hadolint sees only `pip install .`).
# Two targets on one base:
#   api   (default) the service and the bundled model; no training code, no data
#   train           the training package; writes new model versions into /models
# EXTRAS picks the pyproject extras: "gpu" brings TensorFlow with its CUDA libraries from PyPI (needs an NVIDIA
# driver and the NVIDIA container toolkit on the host); drop it for a smaller CPU-only image, e.g.
#   docker build --build-arg EXTRAS=serve -t mnist-vae-api:cpu .

FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1
# /models is where model versions live; a named volume mounted there starts as a copy of the image's folder.
RUN groupadd --system --gid 10001 vae \
 && useradd --system --uid 10001 --gid vae --create-home --home-dir /home/vae vae \
 && install -d -o vae -g vae /models /runs
WORKDIR /app
COPY pyproject.toml README.md ./


FROM base AS train
ARG EXTRAS=train,gpu
COPY training/ training/
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip pip install ".[${EXTRAS}]"
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]


FROM base AS api
ARG EXTRAS=serve,gpu
COPY service/ service/
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip pip install ".[${EXTRAS}]"
COPY --chown=vae:vae models/mnist_vae/ /models/mnist_vae/
ENV VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_MODEL_DIR=/models/mnist_vae/1
USER 10001:10001
EXPOSE 8000
# No curl in slim images: the check is Python's urllib; any non-2xx answer or no answer is a failure.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VAE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
