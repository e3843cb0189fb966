"""Optional API keys: model routes and /metrics need a Bearer key, probes and docs do not."""

import pytest

from service.http.auth import ApiKeyError, load_api_keys
from service.settings import Settings


@pytest.fixture(scope="module")
def guarded(make_client, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# operators\nfile-key-1\n\n")
    return make_client(api_keys="env-key-1, env-key-2", api_keys_file=str(key_file))


@pytest.mark.parametrize("method,path", [("GET", "/v1/model"), ("GET", "/metrics"), ("GET", "/v1/samples"),
                                         ("POST", "/v1/encode"), ("POST", "/v2/models/mnist_vae/infer"),
                                         ("GET", "/v1/models/mnist_vae")])
def test_protected_paths_need_a_key(guarded, method, path):
    response = guarded.request(method, path)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == 'Bearer realm="mnist-vae"'
    key = "error" if path.startswith(("/v2", "/v1/models/")) else "detail"
    assert "needs an API key" in response.json()[key]


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic ZW52LWtleS0xOg==", "Bearer", "env-key-1"])
def test_wrong_key_is_401_invalid_token(guarded, header):
    response = guarded.get("/v1/model", headers={"authorization": header})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert "not valid" in response.json()["detail"]


@pytest.mark.parametrize("key", ["env-key-1", "env-key-2", "file-key-1"])
def test_each_configured_key_works(guarded, key):
    response = guarded.get("/v1/samples", params={"n": 1, "seed": 1}, headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    assert guarded.get("/metrics", headers={"authorization": f"bearer {key}"}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/docs", "/openapi.json"])
def test_probes_and_docs_stay_open(guarded, path):
    assert guarded.get(path).status_code == 200


def test_no_keys_means_open(client):
    assert client.get("/v1/model").status_code == 200


def test_key_file_problems_fail_at_start(tmp_path):
    with pytest.raises(ApiKeyError, match="cannot read the API key file"):
        load_api_keys(Settings(api_keys_file=tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ApiKeyError, match="holds no key"):
        load_api_keys(Settings(api_keys_file=tmp_path / "empty.txt"))
