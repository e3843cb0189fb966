"""Fixtures of the container tests: a Docker engine, the two images built from the unmodified Dockerfile, and a
record of what was checked and how long it took (printed at the end of the run).

They build and run real images with whatever engine `docker` reaches; without one they skip, naming how to start
one. Run them with scripts/container-test (which starts the engine with ../shared/tools/docker-engine if needed)
or `pytest -n 0 -m container tests/container` (one process: both files build the same images)."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.container.helpers import (
    API_EXTRAS,
    API_IMAGE,
    CHECKS,
    ENABLE,
    ROOT,
    TRAIN_EXTRAS,
    TRAIN_IMAGE,
    docker,
    record,
)


def pytest_terminal_summary(terminalreporter):
    if not CHECKS:
        return
    terminalreporter.section("container checks")
    for what, seconds, detail in CHECKS:
        terminalreporter.write_line(f"{seconds:7.1f} s  {what}" + (f"  ({detail})" if detail else ""))
    out = os.environ.get("CONTAINER_TEST_REPORT")
    if out:
        Path(out).write_text(json.dumps([{"check": w, "seconds": round(s, 2), "detail": d} for w, s, d in CHECKS],
                                        indent=2) + "\n")


@pytest.fixture(scope="session")
def engine() -> str:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.fail("the container tests run in one process (both files build the same images and the summary "
                    "is printed by it): add -n 0, as scripts/container-test does")
    if shutil.which("docker") is None:
        pytest.skip(f"no docker CLI: {ENABLE}")
    info = subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True)
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers: {ENABLE}")
    return info.stdout.strip()


def build(target: str, extras: str, tag: str) -> float:
    started = time.monotonic()
    docker("build", "--target", target, "--build-arg", f"EXTRAS={extras}", "-t", tag, ".", timeout=900)
    return time.monotonic() - started


def image_size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6


@pytest.fixture(scope="session")
def api_image(engine: str) -> str:
    seconds = build("api", API_EXTRAS, API_IMAGE)
    record(f"built {API_IMAGE} (target api, EXTRAS={API_EXTRAS}) with Docker {engine}", seconds,
           f"{image_size_mb(API_IMAGE):,.0f} MB")
    return API_IMAGE


@pytest.fixture(scope="session")
def train_image(engine: str) -> str:
    seconds = build("train", TRAIN_EXTRAS, TRAIN_IMAGE)
    record(f"built {TRAIN_IMAGE} (target train, EXTRAS={TRAIN_EXTRAS})", seconds,
           f"{image_size_mb(TRAIN_IMAGE):,.0f} MB")
    return TRAIN_IMAGE


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """MNIST files for a tiny training run: the repo's subset, else MNIST_DIR, else ../shared/data/mnist."""
    candidates = [ROOT / "tests" / "data" / "mnist", os.environ.get("MNIST_DIR"), ROOT.parent / "shared/data/mnist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate).resolve()
    pytest.skip("no MNIST files for the training run: tests/data/mnist, MNIST_DIR or ../shared/data/mnist")
