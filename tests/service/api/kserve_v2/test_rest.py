"""KServe v2 (Open Inference Protocol) with the real tritonclient against the service under uvicorn, over real
HTTP."""

import asyncio
import re

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

MODEL = "mnist_vae"


@pytest.fixture(scope="module")
def server(live_server) -> str:
    """The service under uvicorn (the configuration `python -m service` runs) over real HTTP."""
    return live_server(batch_max_delay_ms=50).url


@pytest.fixture(scope="module")
def triton_client(server):
    client = triton.InferenceServerClient(server.removeprefix("http://"))
    yield client
    client.close()


def images_input(array: np.ndarray, binary: bool = True, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_server_live_ready_and_metadata(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    metadata = triton_client.get_server_metadata()
    assert "binary_tensor_data" in metadata["extensions"]
    for name in ("mnist_vae", "mnist_vae-encode", "mnist_vae-decode", "mnist_vae-sample", "mnist_vae-reconstruct"):
        assert triton_client.is_model_ready(name), name
    assert triton_client.is_model_ready(MODEL, "1")
    assert not triton_client.is_model_ready("no-such-model")
    assert not triton_client.is_model_ready(MODEL, "99")


def test_model_metadata_from_the_signatures(triton_client):
    metadata = triton_client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["platform"] == "tensorflow_savedmodel"
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert metadata["outputs"] == [{"name": "mean", "datatype": "FP32", "shape": [-1, 16]},
                                   {"name": "scale_tril", "datatype": "FP32", "shape": [-1, 16, 16]},
                                   {"name": "covariance", "datatype": "FP32", "shape": [-1, 16, 16]}]
    sample = triton_client.get_model_metadata("mnist_vae-sample", "1")
    assert sample["inputs"] == [{"name": "num_samples", "datatype": "INT32", "shape": []},
                                {"name": "seed", "datatype": "INT64", "shape": []}]


@pytest.mark.parametrize("binary", [True, False])
def test_encode_equals_v1_encode(triton_client, server, digits, binary):
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("mean", "scale_tril", "covariance")]
    result = triton_client.infer(MODEL, [images_input(digits, binary)], outputs=outputs)
    reference = httpx.post(f"{server}/v1/encode", json={"images": digits[..., 0].tolist()}).json()
    for name in ("mean", "scale_tril", "covariance"):
        np.testing.assert_allclose(result.as_numpy(name), reference[name], rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "1"
    assert all(("parameters" in output) == binary for output in response["outputs"])


def test_default_request_gets_every_output_as_binary(triton_client, digits, signatures):
    result = triton_client.infer("mnist_vae-encode", [images_input(digits[:2])])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["mean", "scale_tril", "covariance"]
    assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])
    expected = signatures["encode"](images=digits[:2])
    np.testing.assert_allclose(result.as_numpy("covariance"), expected["covariance"].numpy(), rtol=1e-5, atol=1e-6)


def test_subset_of_outputs(triton_client, digits):
    outputs = [triton.InferRequestedOutput("covariance", binary_data=False), triton.InferRequestedOutput("mean")]
    result = triton_client.infer(MODEL, [images_input(digits[:3])], outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["covariance", "mean"]
    assert response["id"] == "req-7"
    assert result.as_numpy("scale_tril") is None
    assert result.as_numpy("mean").shape == (3, 16) and result.as_numpy("covariance").shape == (3, 16, 16)


def test_decode(triton_client, signatures):
    latents = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    tensor = triton.InferInput("latents", [5, 16], "FP32")
    tensor.set_data_from_numpy(latents)
    result = triton_client.infer("mnist_vae-decode", [tensor], outputs=[triton.InferRequestedOutput("probs")])
    expected = signatures["decode"](latents=latents)["probs"].numpy()
    np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [[1], []])
def test_sample_equals_v1_samples(triton_client, server, shape):
    n = triton.InferInput("num_samples", shape, "INT32")
    n.set_data_from_numpy(np.array(4, np.int32).reshape(shape))
    seed = triton.InferInput("seed", shape, "INT64")
    seed.set_data_from_numpy(np.array(7, np.int64).reshape(shape), binary_data=False)
    result = triton_client.infer("mnist_vae-sample", [n, seed])
    reference = httpx.get(f"{server}/v1/samples", params={"n": 4, "seed": 7, "format": "json"}).json()
    np.testing.assert_allclose(result.as_numpy("latents"), reference["latents"], rtol=1e-6)
    assert result.as_numpy("mode").shape == (4, 28, 28, 1)


def test_reconstruct(triton_client, digits, signatures):
    result = triton_client.infer("mnist_vae-reconstruct", [images_input(digits)])
    expected = signatures["reconstruct"](images=digits)
    np.testing.assert_allclose(result.as_numpy("mean"), expected["mean"].numpy(), rtol=1e-5, atol=1e-6)
    assert np.mean(result.as_numpy("mode") == expected["mode"].numpy()) > 0.999


def test_errors(triton_client, digits):
    with pytest.raises(InferenceServerException) as wrong_shape:
        triton_client.infer(MODEL, [images_input(digits[:, :, :, 0])])
    assert wrong_shape.value.status() == "400"
    assert "unexpected shape for input 'images'" in wrong_shape.value.message()
    assert "[-1,28,28,1]" in wrong_shape.value.message()

    with pytest.raises(InferenceServerException) as wrong_type:
        triton_client.infer(MODEL, [images_input(digits.astype(np.float64), datatype="FP64")])
    assert wrong_type.value.status() == "400"
    assert "data-type is 'FP64'" in wrong_type.value.message() and "'FP32'" in wrong_type.value.message()

    with pytest.raises(InferenceServerException) as unknown:
        triton_client.infer("no-such-model", [images_input(digits)])
    assert unknown.value.status() == "404" and "unknown model" in unknown.value.message()

    with pytest.raises(InferenceServerException) as unknown_version:
        triton_client.infer(MODEL, [images_input(digits)], model_version="99")
    assert unknown_version.value.status() == "404"

    with pytest.raises(InferenceServerException) as unknown_output:
        triton_client.infer(MODEL, [images_input(digits)], outputs=[triton.InferRequestedOutput("logits")])
    assert unknown_output.value.status() == "400" and "'logits'" in unknown_output.value.message()

    nan = digits.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException) as not_finite:
        triton_client.infer(MODEL, [images_input(nan)])
    assert not_finite.value.status() == "400" and "NaN" in not_finite.value.message()
    assert triton_client.is_server_live()


def test_malformed_bodies_and_protocol_paths_answer_error(server):
    header = (b'{"inputs":[{"name":"images","shape":[1,28,28,1],"datatype":"FP32",'
              b'"parameters":{"binary_data_size":3136}}]}')
    short = httpx.post(f"{server}/v2/models/{MODEL}/infer", content=header + b"\0" * 100,
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "3136 bytes" in short.json()["error"]
    bad_length = httpx.post(f"{server}/v2/models/{MODEL}/infer", content=header,
                            headers={"Inference-Header-Content-Length": "99999"})
    assert bad_length.status_code == 400 and "Inference-Header-Content-Length" in bad_length.json()["error"]
    assert httpx.post(f"{server}/v2/models/{MODEL}/infer", content=b"{").json()["error"].startswith("malformed")
    assert httpx.get(f"{server}/v2/models/{MODEL}/infer").status_code == 405
    assert "error" in httpx.get(f"{server}/v2/models/{MODEL}/infer").json()
    assert httpx.get(f"{server}/v1/no-such-route").json() == {"detail": "Not Found"}  # our routes keep detail


def test_raw_binary_and_gzip_requests(triton_client, server, digits, signatures):
    raw = httpx.post(f"{server}/v2/models/{MODEL}/infer", content=digits[:2].tobytes(),
                     headers={"Inference-Header-Content-Length": "0"})
    assert raw.status_code == 200
    result = triton.InferResult.from_response_body(raw.content, header_length=int(
        raw.headers["Inference-Header-Content-Length"]))
    np.testing.assert_allclose(result.as_numpy("mean"), signatures["encode"](images=digits[:2])["mean"].numpy(),
                               rtol=1e-5, atol=1e-6)
    compressed = triton_client.infer(MODEL, [images_input(digits[:1])], request_compression_algorithm="gzip")
    assert compressed.as_numpy("mean").shape == (1, 16)


def batch_totals(text: str) -> tuple[float, float]:
    """Images and model calls of the encode batchers, summed over every model version (one call means one batcher)."""
    return tuple(sum(float(value) for value in re.findall(
        rf'vae_batch_size_images_{kind}{{[^}}]*signature="encode"[^}}]*}} (\S+)', text)) for kind in ("sum", "count"))


def test_v2_and_v1_requests_share_a_model_call(server, digits):
    """A 3-image v2 request and a 5-image /v1/encode request sent together make one 8-image model call."""
    body, header_length = triton.InferenceServerClient.generate_request_body([images_input(digits[:3])])
    v2_headers = {"Inference-Header-Content-Length": str(header_length)}
    v1_json = {"images": digits[3:8, ..., 0].tolist()}

    async def together(client: httpx.AsyncClient) -> tuple[int, int]:
        replies = await asyncio.gather(client.post(f"/v2/models/{MODEL}/infer", content=body, headers=v2_headers),
                                       client.post("/v1/encode", json=v1_json))
        return tuple(reply.status_code for reply in replies)

    async def scenario() -> list[tuple[float, float]]:
        deltas = []
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            for _ in range(10):
                before = batch_totals((await client.get("/metrics")).text)
                assert await together(client) == (200, 200)
                after = batch_totals((await client.get("/metrics")).text)
                deltas.append((after[0] - before[0], after[1] - before[1]))
                if deltas[-1] == (8, 1):
                    break
        return deltas

    deltas = asyncio.run(scenario())
    assert all(images == 8 for images, _ in deltas)
    assert deltas[-1] == (8, 1), f"never merged into one 8-image call: {deltas}"


def test_score_over_v2(digits, fake_base_path, live_server):
    """mnist_vae-score (version 2): three inputs dispatched to the score batcher, equal to the SavedModel."""
    import tensorflow as tf

    version_2 = fake_base_path / "2"
    for url in [live_server(model_dir=version_2, batch_max_delay_ms=50).url]:
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        tensors = [images_input(digits[:3]), triton.InferInput("k", [1], "INT32"),
                   triton.InferInput("seeds", [3], "INT64")]
        tensors[1].set_data_from_numpy(np.array([4], np.int32))
        tensors[2].set_data_from_numpy(np.arange(7, 10, dtype=np.int64))
        result = client.infer("mnist_vae-score", tensors)
        score = tf.saved_model.load(str(version_2)).signatures["score"]
        expected = score(images=digits[:3], k=tf.constant(4, tf.int32), seeds=tf.constant(np.arange(7, 10), tf.int64))
        for name in ("elbo", "nll"):
            np.testing.assert_allclose(result.as_numpy(name), expected[name].numpy(), rtol=1e-4, atol=1e-4)
        tensors[1].set_data_from_numpy(np.array([10**6], np.int32))
        with pytest.raises(InferenceServerException, match="k x images"):
            client.infer("mnist_vae-score", tensors)
        client.close()
