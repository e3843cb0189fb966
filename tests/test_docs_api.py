"""docs/api.md names every route the service serves and every query option of its /v1 routes, read from the app's
OpenAPI schema (service.app.create_app; no model is loaded). README.md's endpoint table names every /v1 route."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
API = REPO / "docs" / "api.md"
PROTOCOLS = REPO / "docs" / "protocols.md"


@pytest.fixture(scope="module")
def schema() -> dict:
    from service.app import create_app
    from service.settings import Settings

    return create_app(Settings()).openapi()


def _base(path: str) -> str:
    """/v2/models/{name}/versions/{version}/infer -> /v2/models/{name}: the docs write the optional part in brackets."""
    return re.sub(r"/versions/\{version\}", "", path).split(":")[0]


def test_every_route_is_documented(schema):
    docs = re.sub(r"\[/versions/\{v\}\]", "", API.read_text() + PROTOCOLS.read_text())  # [/versions/{v}]: optional
    for path in schema["paths"]:
        shown = _base(path).replace("{name}", "mnist_vae")
        assert _base(path) in docs or shown in docs, f"{path} is not in docs/api.md or docs/protocols.md"


def test_every_v1_option_is_in_the_options_table(schema):
    text = API.read_text()
    table = text[text.index("## Options"):text.index("## Examples")]
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1/") or path.startswith("/v1/models"):
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                assert f"`{parameter['name']}`" in table, f"{path}: option {parameter['name']} is not in the table"


def test_the_readme_names_every_v1_model_route(schema):
    readme = (REPO / "README.md").read_text()
    for path in schema["paths"]:
        if path.startswith("/v1/") and not path.startswith("/v1/models"):
            assert f"`{next(iter(schema['paths'][path])).upper()} {path}" in readme or path in readme, path
