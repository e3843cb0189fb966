"""Browser test fixtures: the real service (`python -m service` with the newest bundled version, which has the score
signature) and a headless Debian Chromium. The service starts on an empty base path, so it is not ready until a test
publishes the version into it (`publish`): a first test can watch the page while the service is not ready, whatever
the machine's speed.

Tests that need Chromium skip, naming the install command, when it or Selenium is missing."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import contract
from service.settings import BUNDLED_MODEL_BASE_PATH, REPO_ROOT
from tests.ports import free_port

# VAE_TEST_MODEL_DIR: one version folder to serve instead (e.g. models/mnist_vae/1, which has no score signature).
MODEL = Path(os.environ.get("VAE_TEST_MODEL_DIR") or max(contract.version_folders(BUNDLED_MODEL_BASE_PATH).items())[1])
INSTALL = "apt-get install -y chromium chromium-driver (and pip install -e '.[dev]' for Selenium)"
# The machine's network is closed, and the tests must not depend on it: no Google services, no updates, no QUIC.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1100"]


def start_service(*args: str, **env: str) -> tuple[subprocess.Popen, str]:
    """`python -m service` on a free port with `args` (default: serving MODEL) and extra VAE_* variables. Batches of
    at most 64 images, the sizes warmed before the version is ready: with the default of 256 the model threads would
    go on to warm the sizes 80 to 256 once ready, seconds of CPU beside Chromium (the page asks for 16 at most)."""
    port = free_port()
    args = args or ("--model-dir", str(MODEL))
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), *args],
                               cwd=REPO_ROOT, env={**os.environ, "VAE_LOG_LEVEL": "warning",
                                                   "VAE_BATCH_MAX_SIZE": "64", **env},
                               stderr=subprocess.PIPE)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def base_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "mnist_vae"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def server(base_path) -> Iterator[str]:
    """The service following an empty base path: it answers, and is not ready until `publish` is called."""
    process, url = start_service("--model-base-path", str(base_path), VAE_MODEL_POLL_S="0.2")
    wait_until(process, lambda: httpx.get(f"{url}/healthz").status_code == 200)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def publish(base_path) -> Callable[[], None]:
    """Places MODEL under the base path as its own version number, the way exports do (a hidden folder, then a
    rename); once."""
    def place() -> None:
        if not (base_path / MODEL.name).exists():
            incoming = base_path / f".incoming-{MODEL.name}"
            shutil.copytree(MODEL, incoming)
            incoming.rename(base_path / MODEL.name)

    return place


@pytest.fixture(scope="session")
def ready_server(server, publish) -> str:
    """The same service once the model is published and /readyz answers 200 (loaded and warmed up)."""
    publish()
    wait_until(None, lambda: httpx.get(f"{server}/readyz").status_code == 200)
    return server


@pytest.fixture(scope="module")
def locked_server(request) -> Iterator[str]:
    """The service with access control on: one API key, `request.module.API_KEY`."""
    process, url = start_service(VAE_API_KEYS=request.module.API_KEY)
    wait_until(process, lambda: httpx.get(f"{url}/readyz").status_code == 200)
    yield url
    process.terminate()
    process.wait(timeout=30)


def wait_until(process: subprocess.Popen | None, check, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"the service did not get there in {timeout_s} s"
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium driven by chromedriver, with the browser console recorded."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip(f"Chromium or chromedriver not found; to run the browser tests: {INSTALL}")
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"Selenium is not installed; {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
