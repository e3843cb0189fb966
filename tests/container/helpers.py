"""Helpers of the container tests: the docker CLI, polling, and the record of what was checked."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The CPU images, tagged and built as docker-compose.cpu.yml names and builds them (tests/test_deploy.py checks
# that these build arguments agree with the override), so `docker compose up` finds them built.
API_IMAGE, API_EXTRAS = "mnist-vae-api:cpu", "serve,cpu"
TRAIN_IMAGE, TRAIN_EXTRAS = "mnist-vae-train:cpu", "train,tf"
ENABLE = "start an engine with `eval \"$(../shared/tools/docker-engine up)\"` or run scripts/container-test"

CHECKS: list[tuple[str, float, str]] = []


def record(what: str, seconds: float, detail: str = "") -> None:
    """One line of the summary printed after the run."""
    CHECKS.append((what, seconds, detail))


def docker(*args: str, timeout: float = 120, check: bool = True, env: dict | None = None,
           input: str | None = None) -> subprocess.CompletedProcess:
    """Run the docker CLI; a failure shows its output."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, input=input,
                            env={**os.environ, "DOCKER_BUILDKIT": "1", **(env or {})}, cwd=ROOT)
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} -> exit {result.returncode}\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    return result


def inspect(container: str, template: str) -> str:
    return docker("inspect", "-f", template, container).stdout.strip()


def host_port(container: str, port: int = 8000) -> int:
    """The host port Docker bound (the tests publish on 127.0.0.1 port 0: the engine picks a free one)."""
    return int(docker("port", container, str(port)).stdout.split()[0].rsplit(":", 1)[1])


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    """Poll `condition()` until it returns a true value; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout_s} s")
        time.sleep(interval_s)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
