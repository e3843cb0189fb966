"""docker compose with the CPU override: api up healthy (HTTP, and both gRPC servers on their published ports), a
quick trial of the train service exporting the next version into the shared volume, the api
serving it, and everything down clean."""

import json
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.container.helpers import docker, inspect, record, unique, wait_for

pytestmark = pytest.mark.container

COMPOSE_FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
# The README's quick trial, smaller still: one epoch on 256 images, evaluated on 64 test images with k = 2.
TRIAL = {"RUN_NAME": "trial", "TRAIN_ARGS": "--epochs 1 --train-limit 256", "EVAL_ARGS": "--limit 64 --k 2"}


def model_version(url: str) -> int | None:
    try:
        response = httpx.get(f"{url}/v1/model", timeout=5)
    except httpx.HTTPError:
        return None
    return response.json()["version"] if response.status_code == 200 else None


def grpc_health(address: str) -> str:
    """The gRPC health service's status for the whole server, as its name ('SERVING')."""
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def test_compose_trains_a_version_the_api_serves_then_comes_down_clean(mnist_dir, api_image, train_image):
    project = unique("vaetest")
    env = {"COMPOSE_PROJECT_NAME": project, "API_PORT": "127.0.0.1:0", "GRPC_PORT": "127.0.0.1:0",
           "TFSERVING_GRPC_PORT": "127.0.0.1:0", "MNIST_DIR": str(mnist_dir)}

    def compose(*args, timeout=300, extra=None):
        return docker("compose", *COMPOSE_FILES, *args, timeout=timeout, env={**env, **(extra or {})})

    try:
        started = time.monotonic()
        compose("up", "-d", "--wait", "api")  # --wait: until the healthcheck passes
        api = compose("ps", "-q", "api").stdout.strip()
        assert inspect(api, "{{.State.Health.Status}}") == "healthy"
        assert inspect(api, "{{.Config.Image}}") == api_image  # the image built from the Dockerfile, not rebuilt
        url = "http://" + compose("port", "api", "8000").stdout.strip()
        wait_for(lambda: model_version(url) is not None, 120, "compose api serving")
        bundled = model_version(url)  # the newest bundled version, from the volume filled from the image
        for port in ("8081", "8500"):  # KServe v2 and TF Serving gRPC, published beside HTTP
            assert grpc_health(compose("port", "api", port).stdout.strip()) == "SERVING", port
        new = bundled + 1
        record(f"compose (CPU override) up: api healthy, serving version {bundled} over HTTP and both gRPC ports",
               time.monotonic() - started)

        started = time.monotonic()
        trained = compose("--profile", "train", "run", "--rm", "train", timeout=900, extra=TRIAL)
        assert f"exported /models/mnist_vae/{new}" in trained.stdout, trained.stdout[-2000:]
        record(f"compose train quick trial: trained, exported /models/mnist_vae/{new}, evaluated",
               time.monotonic() - started, f"{TRIAL['TRAIN_ARGS']}; evaluate {TRIAL['EVAL_ARGS']}; data {mnist_dir}")

        started = time.monotonic()
        started_at = inspect(api, "{{.State.StartedAt}}")
        assert "VAE_MODEL_DIR=" not in " ".join(json.loads(inspect(api, "{{json .Config.Env}}")))
        # The service watches VAE_MODEL_BASE_PATH: the running container serves the new version by itself.
        wait_for(lambda: model_version(url) == new, 120, f"the running api serving version {new}")
        assert inspect(api, "{{.State.StartedAt}}") == started_at, "the api restarted"
        how = "picked up live by the running api (no restart)"
        # The api may have loaded the version between its export and its evaluation: the metrics evaluate wrote into
        # the served version's metadata.json are re-read at the next poll (VAE_MODEL_POLL_S, 2 s).
        def trial_metrics() -> dict | None:
            metrics = httpx.get(f"{url}/v1/model", timeout=10).json()["metrics"]
            return metrics if metrics and metrics["iwae_k"] == 2 and metrics["test_images"] == 64 else None

        wait_for(trial_metrics, 30, "the trial's metrics served")
        assert httpx.post(f"{url}/v1/encode", json={"images": [[[0.0] * 28] * 28]}, timeout=30).status_code == 200
        record(f"version {new} {how}; its metadata holds the trial's metrics", time.monotonic() - started)

        started = time.monotonic()
        api = compose("ps", "-q", "api").stdout.strip()
        compose("stop", "api")
        assert inspect(api, "{{.State.ExitCode}}") == "0"
        compose("--profile", "train", "down", "--volumes")  # the profile: train's `runs` volume too
        left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout.strip()
        volumes = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout
        assert not left and not volumes.strip(), (left, volumes)
        record("compose stop + down --volumes: api exited 0, no container or volume left",
               time.monotonic() - started)
    finally:
        docker("compose", *COMPOSE_FILES, "down", "--volumes", "--timeout", "5", check=False,
               env={**env, "COMPOSE_PROFILES": "train"})
