"""Shared fixtures for the service tests: the model (a fake of the bundled version 1 by default: tests/service/
fake_model.py; `real_model_dir` for tests about what the model answers), MNIST digit fixtures, app clients.

VAE_TEST_MODEL_DIR points the default at a real exported model instead (the bundled version 1: BUNDLED_MODEL_DIR)."""

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

from service.app import create_app
from service.settings import BUNDLED_MODEL_BASE_PATH, BUNDLED_MODEL_DIR, Settings

FIXTURES = Path(__file__).parent / "fixtures"
MNIST_TEST_300 = Path(__file__).parents[1] / "data" / "mnist_test_300.npz"  # the first 300 MNIST test digits
TEST_MODEL_DIR = os.environ.get("VAE_TEST_MODEL_DIR")


@pytest.fixture(scope="session")
def fake_base_path(tmp_path_factory) -> Path:
    """Fakes of the bundled versions 1 (schema 1) and 2 (schema 2: score, calibration), as a model base path."""
    from tests.service.fake_model import export_fake

    base = tmp_path_factory.mktemp("fake") / "mnist_vae"
    for version in (1, 2):
        export_fake(BUNDLED_MODEL_BASE_PATH / str(version), base / str(version))
    return base


@pytest.fixture(scope="session")
def model_dir(fake_base_path: Path) -> Path:
    """The model the service tests run against: the fake of version 1, or VAE_TEST_MODEL_DIR."""
    if TEST_MODEL_DIR:
        assert (Path(TEST_MODEL_DIR) / "saved_model.pb").is_file(), f"no SavedModel at {TEST_MODEL_DIR}"
        return Path(TEST_MODEL_DIR)
    return fake_base_path / "1"


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The bundled version 1 itself, for tests about what the model answers."""
    return BUNDLED_MODEL_DIR


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
        time.sleep(0.02)
    return client


@pytest.fixture(scope="session")
def make_client(model_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Started clients (lifespan run, model loaded) for settings overrides, one app per distinct override set."""
    with ExitStack() as stack:
        clients: dict[tuple, TestClient] = {}

        def make(**overrides) -> TestClient:
            key = tuple(sorted(overrides.items()))
            if key not in clients:
                app = create_app(Settings(**({"model_dir": model_dir} | overrides)))
                clients[key] = wait_until_ready(stack.enter_context(TestClient(app)))
            return clients[key]

        yield make


@pytest.fixture(scope="session")
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def make_real_client(make_client: Callable[..., TestClient]) -> Callable[..., TestClient]:
    """make_client for a real model version (tests about what the model answers): batches of at most 64 images, the
    padded sizes warmed before the version is ready (VAE_BATCH_READY_SIZE). With the default of 256, each app's model
    threads would go on to warm the sizes 80 to 256 once ready: about 4 s of CPU per real model, in front of the
    tests' first requests and beside the tests after them. No test of a real model sends a padded signature more
    than 64 images (a larger request would still be answered, alone in its batch)."""

    def make(model_dir: Path, **overrides) -> TestClient:
        return make_client(**({"model_dir": model_dir, "batch_max_size": 64} | overrides))

    return make


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


class LiveServer:
    """The app served by a real uvicorn (the config `python -m service` uses) in a thread, on a free port; entering
    it starts the server and waits until `ready_path` answers 200 (at most `wait_s`)."""

    def __init__(self, app, settings: Settings, ready_path: str = "/readyz", wait_s: float = 120):
        import threading

        import uvicorn

        from service.http.server import bind_socket, uvicorn_config

        self.app = app
        self.socket = bind_socket("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, settings, log_config=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.ready_path, self.wait_s = ready_path, wait_s

    def __enter__(self) -> "LiveServer":
        import httpx

        self.thread.start()
        deadline = time.monotonic() + self.wait_s
        while True:
            assert self.thread.is_alive(), "the server thread ended"
            assert time.monotonic() < deadline, f"{self.ready_path} did not answer 200 in {self.wait_s} s"
            try:
                if httpx.get(f"{self.url}{self.ready_path}").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def live_server(model_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """Started uvicorn servers for settings overrides, one per distinct override set, shared by the session.
    `prepare(app)` may add routes before the server starts (only on the first call for an override set)."""
    with ExitStack() as stack:
        servers: dict[tuple, LiveServer] = {}

        def make(prepare: Callable | None = None, **overrides) -> LiveServer:
            key = tuple(sorted(overrides.items()))
            if key not in servers:
                settings = Settings(**({"model_dir": model_dir} | overrides))
                app = create_app(settings)
                if prepare is not None:
                    prepare(app)
                servers[key] = stack.enter_context(LiveServer(app, settings))
            return servers[key]

        yield make
        for server in servers.values():  # all told at once: each ends at its next 0.1 s tick, then they are joined
            server.server.should_exit = True
