"""Shared fixtures for the service tests: the real model (bundled by default), MNIST digit fixtures, app clients.

VAE_TEST_MODEL_DIR points the tests at another exported model during development."""

import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from service.settings import BUNDLED_MODEL_DIR, Settings

FIXTURES = Path(__file__).parent / "fixtures"
MNIST_TEST_300 = Path(__file__).parents[1] / "data" / "mnist_test_300.npz"  # the first 300 MNIST test digits
MODEL_DIR = Path(os.environ.get("VAE_TEST_MODEL_DIR", BUNDLED_MODEL_DIR))


@pytest.fixture(scope="session")
def model_dir() -> Path:
    assert (MODEL_DIR / "saved_model.pb").is_file(), f"no SavedModel at {MODEL_DIR}; set VAE_TEST_MODEL_DIR"
    return MODEL_DIR


@pytest.fixture(scope="session")
def signatures(model_dir: Path):
    """The SavedModel's signatures, called directly: the reference the service must match."""
    import tensorflow as tf

    return tf.saved_model.load(str(model_dir)).signatures


@pytest.fixture(scope="session")
def digit_pngs() -> list[bytes]:
    paths = sorted(FIXTURES.glob("mnist_test_*.png"))
    assert len(paths) == 8, f"expected 8 fixture digits in {FIXTURES}, found {len(paths)}"
    return [path.read_bytes() for path in paths]


@pytest.fixture(scope="session")
def digits(digit_pngs: list[bytes]) -> np.ndarray:
    """(8, 28, 28, 1) float32 in [0, 1], as the service turns the PNGs into model input."""
    return np.stack([np.asarray(Image.open(io.BytesIO(png)), np.float32) / 255.0 for png in digit_pngs])[..., None]


@pytest.fixture(scope="session")
def mnist_test_digits() -> np.ndarray:
    """(300, 28, 28) uint8: the first 300 MNIST test digits (MNIST: Yann LeCun and Corinna Cortes, CC BY-SA 3.0)."""
    with np.load(MNIST_TEST_300) as data:
        return data["images"]


def wait_until_ready(client: TestClient, timeout_s: float = 120) -> TestClient:
    """The lifespan returns once the model is loaded; the warm-up that follows ends with /readyz answering 200."""
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, f"not ready after {timeout_s} s"
        time.sleep(0.05)
    return client


@pytest.fixture(scope="session")
def make_client(model_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Started clients (lifespan run, model loaded) for settings overrides, one app per distinct override set."""
    with ExitStack() as stack:
        clients: dict[tuple, TestClient] = {}

        def make(**overrides) -> TestClient:
            key = tuple(sorted(overrides.items()))
            if key not in clients:
                app = create_app(Settings(model_dir=model_dir, **overrides))
                clients[key] = wait_until_ready(stack.enter_context(TestClient(app)))
            return clients[key]

        yield make


@pytest.fixture(scope="session")
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def png_bytes(array: np.ndarray, format: str = "PNG", **params) -> bytes:
    """(H, W) float in [0, 1] or uint8 -> encoded image bytes."""
    if array.dtype != np.uint8:
        array = np.round(array * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **params)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def encode_image() -> Callable[..., bytes]:
    return png_bytes


def files(*payloads: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"digit{i}.png", payload, "application/octet-stream")) for i, payload in enumerate(payloads)]


@pytest.fixture(scope="session")
def as_files() -> Callable[..., list]:
    """Multipart `files` fields for TestClient/httpx, one per payload."""
    return files
