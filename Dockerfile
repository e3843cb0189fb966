# Versions are pinned in pyproject.toml (hence the DL3013 ignores: hadolint sees only `pip install /mnt[...]`).
# No `# syntax=` line: BuildKit's built-in frontend supports RUN --mount, and a syntax image would need a registry.
# Two targets on one base:
#   api   (default) the service, the contract module and the bundled model; no training code, no data
#   train           the training package; writes new model versions into /models
# EXTRAS picks the pyproject extras, TensorFlow included: "gpu" brings TensorFlow with its CUDA libraries from
# PyPI (needs an NVIDIA driver and the NVIDIA container toolkit on the host). CPU only (a third of the size):
#   docker build --build-arg EXTRAS=serve,cpu -t mnist-vae-api:cpu .
#   docker build --target train --build-arg EXTRAS=train,tf -t mnist-vae-train:cpu .
# (tf-keras requires the `tensorflow` distribution by name, so train's CPU variant takes `tf`, not `cpu`.)

FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_CPP_MIN_LOG_LEVEL=1
# /models is where model versions live; a named volume mounted there starts as a copy of the image's folder.
RUN groupadd --system --gid 10001 vae \
 && useradd --system --uid 10001 --gid vae --create-home --home-dir /home/vae vae \
 && install -d -o vae -g vae /models /runs
WORKDIR /home/vae


# The sources of each image, alone: the package build below sees only these, so the api wheel cannot hold
# training code. They are bind-mounted (read-write, discarded) at /mnt (an empty folder of the base image, so
# no mount point is left behind) into the install step, which leaves no build/ or *.egg-info in the image.
# TensorFlow's C++ headers (287 MB, for compiling custom ops) are removed.
FROM base AS api-src
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY service/ service/

FROM base AS train-src
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY training/ training/


FROM base AS train
ARG EXTRAS=train,gpu
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=train-src,source=/src,target=/mnt,rw \
    pip install "/mnt[${EXTRAS}]" \
 && rm -rf "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tensorflow/include"
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]


FROM base AS api
ARG EXTRAS=serve,gpu
# TF Serving's gRPC stubs without their dependencies: they require `tensorflow` by name, and the CPU image has
# tensorflow-cpu (the same modules); pip would install the full `tensorflow` wheel beside it.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=api-src,source=/src,target=/mnt,rw \
    pip install "/mnt[${EXTRAS}]" \
 && pip install --no-deps tensorflow-serving-api==2.21.0 \
 && rm -rf "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tensorflow/include"
COPY --chown=vae:vae models/mnist_vae/ /models/mnist_vae/
# The service serves the newest version under the base path and picks up new ones live; gRPC beside HTTP: KServe v2
# on 8081, TF Serving on 8500 (plaintext: TLS ends in front of the container unless VAE_GRPC_TLS_* are set); the
# Prometheus metrics with no API key on 8002 (keep it inside the cluster).
ENV VAE_HOST=0.0.0.0 \
    VAE_PORT=8000 \
    VAE_MODEL_BASE_PATH=/models/mnist_vae \
    VAE_GRPC=true \
    VAE_GRPC_PORT=8081 \
    VAE_TFSERVING_GRPC_PORT=8500 \
    VAE_METRICS_PORT=8002
USER 10001:10001
EXPOSE 8000 8081 8500 8002
# uvicorn stops on SIGTERM after finishing the requests in flight (docker stop waits 10 s, then kills).
STOPSIGNAL SIGTERM
# No curl in slim images: the check is Python's urllib; any non-2xx answer or no answer is a failure.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VAE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
