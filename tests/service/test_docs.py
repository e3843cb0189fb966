"""/docs works with no internet: Swagger UI's page and assets come from the service (fastapi-offline's copies)."""

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


@pytest.fixture(scope="module")
def docs_client() -> TestClient:
    return TestClient(create_app())  # no lifespan: the docs need no model


def test_docs_page_and_its_assets_are_served_by_the_service(docs_client):
    page = docs_client.get("/docs")
    assert page.status_code == 200
    parser = _Links()
    parser.feed(page.text)
    assert any(link.endswith("swagger-ui-bundle.js") for link in parser.links), parser.links
    assert any(link.endswith(".css") for link in parser.links), parser.links
    for link in parser.links:
        assert link.startswith("/") and not link.startswith("//"), f"/docs links to another host: {link}"
        asset = docs_client.get(link)
        assert asset.status_code == 200 and len(asset.content) > 1000, link
        if link.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css")
            urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", asset.text)
            assert all(u.startswith(("data:", "#")) or "//" not in u for u in urls), urls
        if link.endswith(".js"):
            assert "javascript" in asset.headers["content-type"]
    # The page itself names no other host (Swagger UI's script and the schema come from the same origin).
    assert not re.findall(r"https?://", page.text), page.text


def test_redoc_is_not_served(docs_client):
    """ReDoc (FastAPI's /redoc) was dropped: its page loads a logo from a CDN."""
    assert docs_client.get("/redoc").status_code == 404


@pytest.mark.slow  # drives a browser
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs a headless Chromium: apt-get install chromium (Debian's package)")
def test_docs_render_in_a_browser_that_cannot_reach_the_internet(tmp_path):
    """Chromium resolves no host but 127.0.0.1; the page must still list the operations, and every request the
    page made (its net log, requests initiated by the page's origin) went to the service. The service follows an
    empty base path: the docs and the schema do not depend on the model, whose load and warm-up would only compete
    with Chromium for the CPU."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (tmp_path / "models").mkdir()
    server = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--model-base-path",
                               str(tmp_path / "models")], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, "the service exited"
            assert time.monotonic() < deadline, "the service did not open its port in 120 s"
            try:
                urllib.request.urlopen(f"{origin}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        net_log = tmp_path / "net.json"
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--log-net-log={net_log}", "--virtual-time-budget=10000", "--dump-dom", f"{origin}/docs"],
            capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    # Swagger UI rendered the schema: one block per operation.
    for path in ("/v1/encode", "/v1/decode", "/v1/samples", "/v1/model"):
        assert f'data-path="{path}"' in dom, f"{path} not rendered"
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    by_page = [e["params"]["url"] for e in log["events"]
               if e["type"] == start_job and e.get("params", {}).get("initiator") == origin]
    assert any(url.endswith("/swagger-ui-bundle.js") for url in by_page), by_page
    assert {urllib.parse.urlsplit(url).netloc for url in by_page} == {f"127.0.0.1:{port}"}, by_page
