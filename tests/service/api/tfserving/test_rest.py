"""TF Serving REST: requests and answers in the shapes of tensorflow_serving/g3doc/api_rest.md, on the real model."""

import numpy as np
import pytest

from service.api.tfserving.codec import predict_response
from service.serving.signatures import SignatureSpec, TensorSpec

MODEL = "mnist_vae"
ENCODE_OUTPUTS = ("mean", "scale_tril", "covariance")


def test_row_format_predictions_are_one_object_per_instance(client, digits, signatures):
    answer = client.post(f"/v1/models/{MODEL}:predict", json={"instances": digits[:3].tolist()})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    predictions = answer.json()["predictions"]
    expected = signatures["serving_default"](images=digits[:3])
    assert len(predictions) == 3 and all(set(row) == set(ENCODE_OUTPUTS) for row in predictions)
    for name in ENCODE_OUTPUTS:
        np.testing.assert_allclose([row[name] for row in predictions], expected[name].numpy(), rtol=1e-5, atol=1e-6)


def test_row_format_with_named_inputs_and_explicit_signature(client, digits, signatures):
    body = {"signature_name": "reconstruct", "instances": [{"images": digit.tolist()} for digit in digits[:2]]}
    predictions = client.post(f"/v1/models/{MODEL}:predict", json=body).json()["predictions"]
    expected = signatures["reconstruct"](images=digits[:2])
    np.testing.assert_allclose([row["mean"] for row in predictions], expected["mean"].numpy(), rtol=1e-5, atol=1e-6)
    assert np.asarray([row["mode"] for row in predictions]).shape == (2, 28, 28, 1)


def test_columnar_format_outputs_are_an_object_of_tensors(client, digits, signatures):
    named = client.post(f"/v1/models/{MODEL}:predict", json={"inputs": {"images": digits[:2].tolist()}}).json()
    bare = client.post(f"/v1/models/{MODEL}:predict", json={"inputs": digits[:2].tolist()}).json()
    assert named == bare and set(named["outputs"]) == set(ENCODE_OUTPUTS)
    np.testing.assert_allclose(named["outputs"]["mean"], signatures["encode"](images=digits[:2])["mean"].numpy(),
                               rtol=1e-5, atol=1e-6)

    latents = np.zeros((1, 16), np.float32)
    decoded = client.post(f"/v1/models/{MODEL}:predict",
                          json={"signature_name": "decode", "inputs": {"latents": latents.tolist()}}).json()
    np.testing.assert_allclose(decoded["outputs"]["probs"], signatures["decode"](latents=latents)["probs"].numpy(),
                               rtol=1e-5, atol=1e-6)


def test_sample_scalars_in_columnar_format(client):
    body = {"signature_name": "sample", "inputs": {"num_samples": 4, "seed": 7}}
    outputs = client.post(f"/v1/models/{MODEL}:predict", json=body).json()["outputs"]
    reference = client.get("/v1/samples", params={"n": 4, "seed": 7, "format": "json"}).json()
    np.testing.assert_allclose(outputs["latents"], reference["latents"], rtol=1e-6)


def test_single_named_output_is_given_without_its_name():
    """api_rest.md: one named output -> `predictions` is a plain list (row), `outputs` the bare tensor (columnar)."""
    spec = SignatureSpec("one", (), (TensorSpec("y", np.dtype(np.float32), (None,), "y:0"),))
    y = np.array([3.5, 4.0, 5.5], np.float32)
    assert predict_response(spec, "row", {"y": y}) == b'{"predictions":[3.5,4.0,5.5]}'
    assert predict_response(spec, "columnar", {"y": y}) == b'{"outputs":[3.5,4.0,5.5]}'


def test_versions_in_the_url(client, digits):
    body = {"instances": digits[:1].tolist()}
    assert client.post(f"/v1/models/{MODEL}/versions/1:predict", json=body).status_code == 200
    missing = client.post(f"/v1/models/{MODEL}/versions/9:predict", json=body)
    assert missing.status_code == 404
    assert missing.json() == {"error": f"Servable not found for request: Specific({MODEL}, 9)"}


@pytest.mark.parametrize(("body", "status", "error"), [
    # api_rest.md's own example of an unknown model is the next test; these follow json_tensor.cc's messages.
    ({"signature_name": "no_such_signature", "instances": [1.0]}, 400,
     'Serving signature name: "no_such_signature" not found in signature def'),
    ({"instances": [{"b64": "aW1hZ2UgYnl0ZXM="}]}, 400,
     'JSON Value: {"b64":"aW1hZ2UgYnl0ZXM="} Type: Object is not of expected type: float'),
    ({"instances": [[0.0]], "inputs": [[0.0]]}, 400,
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ({"signature_name": "sample", "inputs": {"num_samples": 4}}, 400, "Missing named input: seed in 'inputs' object."),
    ({"instances": []}, 400, "No values in 'instances' array"),
    ({}, 400, "Missing 'inputs' or 'instances' key"),
    ({"instances": [[0.0] * 28] * 28}, 400, "input 'images' has shape [28, 28], the signature expects [-1,28,28,1]"),
])
def test_bad_requests(client, body, status, error):
    answer = client.post(f"/v1/models/{MODEL}:predict", json=body)
    assert (answer.status_code, answer.json()) == (status, {"error": error})


def test_documented_unknown_model_answer(client):
    answer = client.post("/v1/models/half:predict", json={"instances": [1.0, 5.0]})
    assert (answer.status_code, answer.json()) == (404, {"error": "Servable not found for request: Latest(half)"})


def test_metadata_is_the_signature_def_map(client):
    answer = client.get(f"/v1/models/{MODEL}/metadata")
    assert answer.status_code == 200
    document = answer.json()
    assert document["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signature_defs = document["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "encode", "decode", "sample", "reconstruct"} <= set(signature_defs)
    images = signature_defs["serving_default"]["inputs"]["images"]
    assert images["dtype"] == "DT_FLOAT" and images["name"] == "images:0"
    assert [dim["size"] for dim in images["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert signature_defs["sample"]["inputs"]["seed"] == {
        "dtype": "DT_INT64", "tensor_shape": {"dim": [], "unknown_rank": False}, "name": "seed:0"}
    assert signature_defs["decode"]["method_name"] == "tensorflow/serving/predict"
    assert client.get(f"/v1/models/{MODEL}/versions/1/metadata").json() == document
    assert client.get(f"/v1/models/{MODEL}/versions/2/metadata").status_code == 404


def test_limits_and_methods_answer_error(make_client, digits):
    small = make_client(max_body_bytes=1000)
    too_big = small.post(f"/v1/models/{MODEL}:predict", json={"instances": digits[:1].tolist()})
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    wrong_method = small.put(f"/v1/models/{MODEL}:predict")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
