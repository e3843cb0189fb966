"""Our /v1 JSON routes read only application/json bodies, and only JSON numbers in their arrays."""

import pytest

ZERO_IMAGE = [[0.0] * 28] * 28


@pytest.mark.parametrize("path", ["/v1/encode", "/v1/reconstruct", "/v1/decode"])
@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_json_routes_need_application_json(client, path, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(path, content=b'{"images": []}', headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]


def test_json_with_charset_parameter_accepted(client):
    response = client.post("/v1/decode", content=b'{"latents": [[0.0]]}',
                           headers={"content-type": "Application/JSON; charset=utf-8"})
    assert response.status_code == 422  # past the media type check: the latent is too short
    assert "shape [16]" in response.json()["detail"]


@pytest.mark.parametrize("value,kind", [('"0.5"', "strings"), ("true", "booleans"), ("null", "not numbers")])
def test_images_must_be_numbers(client, value, kind):
    row = ", ".join(["0.0"] * 27 + [value])
    body = '{"images": [[' + ", ".join([f"[{row}]"] * 28) + "]]}"
    response = client.post("/v1/encode", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert kind in response.json()["detail"] and "must be JSON numbers" in response.json()["detail"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_json_that_is_not_utf8_refused(client, encoding):
    """RFC 8259: JSON between systems is UTF-8. One parser reads the body; other encodings are a 400 naming it."""
    row = ", ".join(["0.0"] * 27 + ["true"])
    body = ('{"images": [[' + ", ".join([f"[{row}]"] * 28) + "]]}").encode(encoding)
    response = client.post("/v1/encode", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "malformed JSON" in response.json()["detail"]


@pytest.mark.parametrize("value", ['"1"', "false"])
def test_latents_must_be_numbers(client, value):
    latents = ", ".join(["0.0"] * 15 + [value])
    response = client.post("/v1/decode", content=f'{{"latents": [[{latents}]]}}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "must be JSON numbers" in response.json()["detail"]


def test_integers_are_numbers(client):
    response = client.post("/v1/encode", json={"images": [[[0] * 28] * 28]})
    assert response.status_code == 200, response.text


def test_model_info_publishes_no_local_paths(client):
    info = client.get("/v1/model").json()
    assert info["training"]["train"]["epochs"] > 0 and info["metrics"]["test_elbo_nats"] > 0
    for key in ("data_dir", "checkpoint", "run_dir"):
        assert key not in info["training"]
    assert "../shared" not in str(info) and "runs/default" not in str(info)
