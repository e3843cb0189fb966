"""POST /v1/decode and GET /v1/samples: JSON and PNG outputs, seed determinism and caching, bad parameters."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image


@pytest.fixture(scope="module")
def latents(client) -> np.ndarray:
    size = client.get("/v1/model").json()["latent_size"]
    return np.random.default_rng(0).normal(size=(5, size)).astype(np.float32)


@pytest.mark.parametrize("output", ["mode", "probs"])
def test_decode_json_equals_signature_call(client, signatures, latents, output):
    response = client.post("/v1/decode", params={"output": output}, json={"latents": latents.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == output and body["model"] == "mnist_vae"
    expected = signatures["decode"](latents=latents)[output].numpy()[..., 0]
    np.testing.assert_allclose(body["images"], expected, rtol=1e-5, atol=1e-6)


def test_decode_null_output_in_body_uses_query(client, latents):
    body = {"latents": latents.tolist(), "output": None}
    response = client.post("/v1/decode", params={"output": "probs"}, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == "probs"


def test_decode_output_in_body_overrides_query(client, latents):
    body = {"latents": latents.tolist(), "output": "probs"}
    response = client.post("/v1/decode", params={"output": "mode"}, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == "probs"


@pytest.mark.parametrize("count,size", [(1, (28, 28)), (5, (84, 56)), (16, (112, 112))])
def test_decode_png_has_grid_size(client, latents, count, size):
    batch = np.resize(latents, (count, latents.shape[1]))
    response = client.post("/v1/decode", headers={"accept": "image/png"}, json={"latents": batch.tolist()})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert (image.size, image.mode) == (size, "L")


@pytest.mark.parametrize("body,params,status,detail", [
    ({"latents": [[0.0] * 3]}, {}, 422, "items must have shape [16], got [3]"),
    # RFC 8259 has no NaN or Infinity: one parser (orjson) reads the body, and refuses them as malformed JSON
    ({"latents": [[float("nan")] * 16]}, {}, 400, "malformed JSON"),
    ({"latents": [[float("inf")] * 16]}, {}, 400, "malformed JSON"),
    ({"latents": []}, {}, 422, "non-empty list"),
    ({"vectors": [[0.0] * 16]}, {}, 422, "no 'latents' field"),
    ({"latents": [[0.0] * 16] * 257}, {}, 422, "has 257 items, the limit is 256"),
    ({"latents": [[0.0] * 16], "output": "logits"}, {}, 422, "output must be 'mode' or 'probs'"),
    ({"latents": [[0.0] * 16]}, {"output": "logits"}, 422, "query.output: Input should be 'mode' or 'probs'"),
    ({"latents": [[0.0] * 16]}, {"format": "gif"}, 422, "query.format: Input should be 'json' or 'png'"),
], ids=["wrong_length", "nan", "inf", "empty", "missing", "too_many", "body_output", "query_output", "format"])
def test_decode_bad_request_rejected(client, body, params, status, detail):
    import json

    response = client.post("/v1/decode", params=params, content=json.dumps(body),
                           headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]


def test_decode_malformed_json_rejected(client):
    response = client.post("/v1/decode", content=b'{"latents": [[0.0,', headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("malformed JSON")


def test_samples_png_grid_has_grid_size(client):
    response = client.get("/v1/samples", params={"n": 16, "seed": 7, "format": "png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (112, 112)


def test_samples_same_seed_gives_identical_bytes(client):
    first = client.get("/v1/samples", params={"n": 9, "seed": 123, "format": "png"})
    second = client.get("/v1/samples", params={"n": 9, "seed": 123, "format": "png"})
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.headers["etag"] == second.headers["etag"]
    assert first.headers["x-seed"] == "123"
    # Without the version in the URL the next rollout may change the answer: revalidate (the ETag names the version).
    assert first.headers["cache-control"] == "no-cache"
    assert first.headers["x-model-version"] == "1"
    other = client.get("/v1/samples", params={"n": 9, "seed": 124, "format": "png"})
    assert other.headers["etag"] != first.headers["etag"]
    pinned = client.get("/v1/samples", params={"n": 9, "seed": 123, "format": "png", "version": 1})
    assert pinned.content == first.content and pinned.headers["etag"] == first.headers["etag"]
    assert pinned.headers["cache-control"] == "public, max-age=86400, immutable"
    revalidated = client.get("/v1/samples", params={"n": 9, "seed": 123, "format": "png"},
                             headers={"if-none-match": first.headers["etag"]})
    assert revalidated.status_code == 304 and revalidated.headers["x-model-version"] == "1"


def test_samples_json_equals_signature_call(client, signatures):
    response = client.get("/v1/samples", params={"n": 4, "seed": 99, "output": "probs"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = signatures["sample"](num_samples=tf.constant(4), seed=tf.constant(99, tf.int64))
    assert body["seed"] == 99
    np.testing.assert_allclose(body["latents"], expected["latents"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(body["images"], expected["probs"].numpy()[..., 0], rtol=1e-5, atol=1e-6)


def test_samples_without_seed_returns_reproducible_seed(client):
    response = client.get("/v1/samples", params={"n": 3})
    assert response.status_code == 200, response.text
    seed = int(response.headers["x-seed"])
    assert response.headers["cache-control"] == "no-store"
    again = client.get("/v1/samples", params={"n": 3, "seed": seed})
    assert again.json()["latents"] == response.json()["latents"]


def test_samples_matching_etag_gets_304(client):
    first = client.get("/v1/samples", params={"n": 2, "seed": 5, "format": "png"})
    for header in (first.headers["etag"], f'"other", W/{first.headers["etag"]}', "*"):
        response = client.get("/v1/samples", params={"n": 2, "seed": 5, "format": "png"},
                              headers={"if-none-match": header})
        assert response.status_code == 304, header
        assert response.headers["etag"] == first.headers["etag"]
    changed = client.get("/v1/samples", params={"n": 2, "seed": 5, "format": "png"}, headers={"if-none-match": '"x"'})
    assert changed.status_code == 200


@pytest.mark.parametrize("params,detail", [
    ({"n": 0}, "n must be between 1 and 256, got 0"),
    ({"n": 257}, "n must be between 1 and 256, got 257"),
    ({"n": "many"}, "query.n: Input should be a valid integer"),
    ({"seed": -1}, "query.seed: Input should be greater than or equal to 0"),
    ({"output": "logits"}, "query.output: Input should be 'mode' or 'probs'"),
    ({"format": "jpeg"}, "query.format: Input should be 'json' or 'png'"),
], ids=["n_zero", "n_too_big", "n_not_int", "seed_negative", "output", "format"])
def test_samples_bad_parameter_rejected(client, params, detail):
    response = client.get("/v1/samples", params=params)
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
