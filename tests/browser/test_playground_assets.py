"""The playground's files and routes, without a browser or a model: offline by construction, and switchable off."""

import re

import pytest
from fastapi.testclient import TestClient

from service.api.playground.routes import ASSETS, PAGE_PATHS, STATIC_DIR, router
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.slow  # starts other processes or drives a browser

PAGE_FILES = sorted(STATIC_DIR.iterdir())
# Routes the page calls only when the service has them (it reads /openapi.json and hides their panels otherwise).
OPTIONAL_ROUTES = {"/v1/score", "/v1/interpolate"}


@pytest.fixture(scope="module")
def client():
    # Without `with`, the lifespan (model loading) does not run: the page and its assets need no model.
    return TestClient(create_app(Settings()))


def test_page_files_are_the_three_served():
    assert sorted(path.name for path in PAGE_FILES) == sorted(["index.html", *ASSETS])


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda path: path.name)
def test_page_files_reference_no_external_host(path):
    text = path.read_text(encoding="utf-8")
    assert not re.findall(r"[a-z][a-z0-9+.-]*://", text, re.IGNORECASE), "a URL with a scheme"
    # Protocol-relative URLs (//host/...) in attributes, CSS url() and string literals; `// comment` lines in
    # JavaScript and CSS are followed by a space, a host name is not.
    assert not re.findall(r"""(?:["'(=]\s*|url\(\s*["']?)//[^\s/"')]""", text), "a protocol-relative URL"
    assert not re.findall(r"@import", text), "a CSS import"


def test_page_loads_only_its_own_assets(client):
    html = client.get("/").text
    references = set(re.findall(r"""(?:src|href)="([^"]+)\"""", html))
    assert references == {"/playground/playground.css", "/playground/playground.js", "/openapi.json", "data:,"}
    for reference in references - {"data:,"}:
        assert client.get(reference).status_code == 200, reference


def test_page_calls_only_routes_the_service_has(client):
    script = (STATIC_DIR / "playground.js").read_text(encoding="utf-8")
    called = set(re.findall(r"""[`"'](/(?:v1/[a-z]+|readyz|openapi\.json))""", script))
    served = {*client.app.openapi()["paths"], client.app.openapi_url}
    assert {"/v1/encode", "/v1/reconstruct", "/v1/decode", "/v1/samples", "/readyz"} <= called
    assert called - OPTIONAL_ROUTES <= served


@pytest.mark.parametrize(("path", "media_type"), [("/", "text/html"), ("/playground", "text/html"),
                                                   ("/playground/playground.css", "text/css"),
                                                   ("/playground/playground.js", "text/javascript")])
def test_page_and_assets_are_served_with_a_strict_policy(client, path, media_type):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (STATIC_DIR / ("index.html" if media_type == "text/html" else path.split("/")[-1])
                                ).read_bytes()


def test_page_paths_name_every_playground_route(client):
    """PAGE_PATHS is what access control leaves open; it must hold the page and every asset, and nothing else."""
    routes = {route.path for route in router.routes}
    assert PAGE_PATHS <= routes
    assert {path for path in routes if path == "/" or path.startswith("/playground")} == PAGE_PATHS


def test_other_static_paths_are_not_served(client):
    for path in ["/playground/index.html.bak", "/playground/../settings.py", "/static/playground/index.html",
                 "/playground/conftest.py", "/index.html"]:
        assert client.get(path, follow_redirects=False).status_code == 404, path


def test_setting_turns_the_page_off(monkeypatch):
    monkeypatch.setenv("VAE_PLAYGROUND", "false")
    client = TestClient(create_app())
    for path in ["/", "/playground", "/playground/playground.js", "/playground/playground.css"]:
        assert client.get(path).status_code == 404, path
    assert client.get("/healthz").status_code == 200  # the rest of the service is there
