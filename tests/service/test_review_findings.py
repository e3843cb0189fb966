"""Regressions from the final review: digit-like strings that int() refuses, and request sizes that must stay
within the limits of one model call."""

import numpy as np
import pytest

import contract


@pytest.mark.parametrize("text,expected", [("12", True), ("0", True), ("²", False), ("1" * 19, False),
                                           ("-1", False), ("", False), ("١", False)])
def test_is_count_accepts_ascii_int64_digits_only(text, expected):
    assert contract.is_count(text) is expected


@pytest.mark.parametrize("version", ["%C2%B2", "1" * 5000])
def test_version_that_is_not_a_number_is_a_4xx_on_every_protocol(client, version):
    assert client.get(f"/v1/model?version={version}").status_code == 422
    for path in (f"/v1/models/mnist_vae/versions/{version}", f"/v2/models/mnist_vae/versions/{version}"):
        response = client.get(path)
        assert 400 <= response.status_code < 500 and "error" in response.json(), (path, response.text)


def test_v2_header_length_that_is_not_a_number_is_a_400(client):
    response = client.post("/v2/models/mnist_vae/infer", content=b"{}",
                           headers={"Inference-Header-Content-Length": "0" * 4400})
    assert response.status_code == 400 and "Inference-Header-Content-Length" in response.json()["error"]


def test_posterior_reconstruct_is_capped_by_the_images_it_returns(client, digit_pngs):
    response = client.post("/v1/reconstruct?samples=300&format=json", files=[("files", ("d.png", digit_pngs[0]))])
    assert response.status_code == 422 and "VAE_MAX_IMAGES" in response.json()["detail"]


def test_score_requests_are_sized_by_samples_so_merged_calls_stay_within_the_cap(make_client, fake_base_path):
    """The fake of version 2 (a score signature): the limit is the service's, whatever the model answers."""
    client = make_client(model_dir=fake_base_path / "2", max_posterior_samples=64)
    score = client.app.state.dataplane.registry.routing.default.serving.batchers.score
    assert score.max_size == 64  # k x images per model call, not images
    response = client.post("/v1/score?k=16&seed=1", json={"images": np.zeros((4, 28, 28)).tolist()})
    assert response.status_code == 200 and len(response.json()["scores"]) == 4
    response = client.post("/v1/score?k=16&seed=1", json={"images": np.zeros((5, 28, 28)).tolist()})
    assert response.status_code == 422 and "VAE_MAX_POSTERIOR_SAMPLES" in response.json()["detail"]
