"""Browser test fixtures: the real service (`python -m service`, the bundled models under the default policy, so
the newest version with its score signature) and a headless Debian Chromium.

Tests that need Chromium skip, naming the install command, when it or Selenium is missing."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from service.settings import REPO_ROOT

# VAE_TEST_MODEL_DIR: one version folder to serve instead (e.g. models/mnist_vae/1, which has no score signature).
MODEL_ARGS = ["--model-dir", os.environ["VAE_TEST_MODEL_DIR"]] if os.environ.get("VAE_TEST_MODEL_DIR") else []
INSTALL = "apt-get install -y chromium chromium-driver (and pip install -e '.[dev]' for Selenium)"
# The machine's network is closed, and the tests must not depend on it: no Google services, no updates, no QUIC.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1100"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(**env: str) -> tuple[subprocess.Popen, str]:
    """`python -m service` on a free port with the bundled models (or VAE_TEST_MODEL_DIR) and extra VAE_* variables."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), *MODEL_ARGS],
                               cwd=REPO_ROOT, env={**os.environ, "VAE_LOG_LEVEL": "warning", **env},
                               stderr=subprocess.PIPE)
    return process, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """The service as soon as its port answers: the model's warm-up (seconds) may still run, so the first test can
    watch the page while the service is not ready."""
    process, url = start_service()
    wait_until(process, lambda: httpx.get(f"{url}/healthz").status_code == 200)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def ready_server(server) -> str:
    """The same service once /readyz answers 200 (model loaded and warmed up)."""
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
