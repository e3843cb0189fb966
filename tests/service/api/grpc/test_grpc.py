"""The gRPC front ends with real clients: tritonclient.grpc (KServe v2 / Open Inference Protocol) and
tensorflow-serving-api's stubs (TF Serving), against one in-process server (uvicorn + the gRPC servers on its event
loop, as `python -m service` runs them) with an API key; answers equal the /v1 routes' on the same digits."""

import socket
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.grpc import service_pb2 as v2pb
from tritonclient.grpc import service_pb2_grpc as v2grpc
from tritonclient.utils import InferenceServerException

from service.app import create_app
from service.settings import Settings
from tests.ports import free_port
from tests.service.conftest import LiveServer

KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
METADATA = tuple(AUTH.items())
MODEL = "mnist_vae"
ENCODE_OUTPUTS = ("mean", "covariance", "scale_tril")


class Served(LiveServer):
    """create_app(settings) under a real uvicorn in a thread (its lifespan starts the gRPC servers on its loop), both
    gRPC servers on free ports, one API key."""

    def __init__(self, ready_path: str = "/readyz", **overrides):
        self.grpc_port, self.tfs_port = free_port(), free_port()
        settings = Settings(grpc=True, grpc_port=self.grpc_port, tfserving_grpc_port=self.tfs_port,
                            api_keys=KEY, model_poll_s=0, log_level="warning", **overrides)
        super().__init__(create_app(settings), settings, ready_path=ready_path, wait_s=180)


@pytest.fixture(scope="module")
def served(fake_base_path):
    """Fakes of the bundled versions 1 and 2 (2, the newest, has the score signature), served with one API key."""
    with Served(model_base_path=fake_base_path) as server:
        yield server


@pytest.fixture(scope="module")
def rest(served):
    with httpx.Client(base_url=served.url, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def v2(served):
    client = triton.InferenceServerClient(f"127.0.0.1:{served.grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def channels(served):
    v2_channel = grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}")
    tfs_channel = grpc.insecure_channel(f"127.0.0.1:{served.tfs_port}")
    yield v2_channel, tfs_channel
    v2_channel.close()
    tfs_channel.close()


@pytest.fixture(scope="module")
def v2_stub(channels):
    return v2grpc.GRPCInferenceServiceStub(channels[0])


@pytest.fixture(scope="module")
def predict(channels):
    return prediction_service_pb2_grpc.PredictionServiceStub(channels[1])


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def v2_infer(client, model: str, **inputs: np.ndarray) -> triton.InferResult:
    tensors = []
    for name, array in inputs.items():
        tensor = triton.InferInput(name, list(array.shape), triton.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors, headers=AUTH, client_timeout=30)


def tfs_request(signature: str = "", name: str = MODEL, **inputs: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, array in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    return request


def tfs_predict(stub, signature: str = "", **inputs: np.ndarray) -> dict[str, np.ndarray]:
    response = stub.Predict(tfs_request(signature, **inputs), metadata=METADATA, timeout=30)
    return {name: tf.make_ndarray(tensor) for name, tensor in response.outputs.items()}


# -- the same answers as /v1


def test_encode_equals_v1_on_both_protocols(served, rest, v2, predict, digits):
    reference = rest.post("/v1/encode", json={"images": digits[:3, ..., 0].tolist()}).json()
    result = v2_infer(v2, MODEL, images=digits[:3])
    assert result.get_response().model_version == "2"
    tfs = tfs_predict(predict, images=digits[:3])
    for name in ENCODE_OUTPUTS:
        close(result.as_numpy(name), reference[name])
        close(tfs[name], reference[name])


def test_decode_sample_and_score_equal_v1(served, rest, v2, predict, digits):
    latents = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    decoded = rest.post("/v1/decode", params={"format": "json"}, json={"latents": latents.tolist(),
                                                                       "output": "probs"}).json()
    close(v2_infer(v2, f"{MODEL}-decode", latents=latents).as_numpy("probs")[..., 0], decoded["images"])
    close(tfs_predict(predict, "decode", latents=latents)["probs"][..., 0], decoded["images"])

    sampled = rest.get("/v1/samples", params={"n": 4, "seed": 7, "format": "json"}).json()
    scalars = {"num_samples": np.array(4, np.int32), "seed": np.array(7, np.int64)}
    spec = {t.name: t.datatype for t in v2.get_model_metadata(f"{MODEL}-sample", headers=AUTH).inputs}
    v2_scalars = {name: value.reshape(1).astype(triton.triton_to_np_dtype(spec[name]))
                  for name, value in scalars.items()}
    close(v2_infer(v2, f"{MODEL}-sample", **v2_scalars).as_numpy("latents"), sampled["latents"])
    tfs_scalars = {name: value.astype(triton.triton_to_np_dtype(spec[name])) for name, value in scalars.items()}
    close(tfs_predict(predict, "sample", **tfs_scalars)["latents"], sampled["latents"])

    scored = rest.post("/v1/score", params={"k": 8, "seed": 11}, json={"images": digits[:2, ..., 0].tolist()}).json()
    seeds = np.array([11, 12], np.int64)
    k = {"k": np.array([8], triton.triton_to_np_dtype(
        {t.name: t.datatype for t in v2.get_model_metadata(f"{MODEL}-score", headers=AUTH).inputs}["k"]))}
    by_v2 = v2_infer(v2, f"{MODEL}-score", images=digits[:2], seeds=seeds, **k)
    by_tfs = tfs_predict(predict, "score", images=digits[:2], seeds=seeds, k=k["k"].reshape(()))
    for name in ("elbo", "kl", "distortion", "nll"):
        expected = [row[name] for row in scored["scores"]]
        close(by_v2.as_numpy(name), expected)
        close(by_tfs[name], expected)


def test_typed_contents_in_typed_contents_out(v2_stub, v2, digits):
    request = v2pb.ModelInferRequest(model_name=MODEL, id="typed-1")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28, 1])
    tensor.contents.fp32_contents.extend(digits[0].reshape(-1).tolist())
    response = v2_stub.ModelInfer(request, metadata=METADATA, timeout=30)
    assert response.id == "typed-1" and not response.raw_output_contents
    mean = next(o for o in response.outputs if o.name == "mean")
    close(np.reshape(mean.contents.fp32_contents, mean.shape), v2_infer(v2, MODEL, images=digits[:1]).as_numpy("mean"))


def test_metadata_and_status(v2, served, channels):
    metadata = v2.get_model_metadata(MODEL, headers=AUTH, as_json=True)
    assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": ["-1", "28", "28", "1"]}]
    assert metadata["versions"] == ["2"]
    assert v2.is_model_ready(f"{MODEL}-decode", headers=AUTH) and v2.is_server_ready() and v2.is_server_live()
    assert v2.get_server_metadata(headers=AUTH).name == "mnist-vae"

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    answer = prediction_service_pb2_grpc.PredictionServiceStub(channels[1]).GetModelMetadata(request,
                                                                                            metadata=METADATA)
    defs = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(defs)
    images = defs.signature_def["serving_default"].inputs["images"]
    assert images.dtype == tf.float32.as_datatype_enum and [d.size for d in images.tensor_shape.dim] == [-1, 28, 28, 1]
    assert answer.model_spec.version.value == 2

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    status = model_service_pb2_grpc.ModelServiceStub(channels[1]).GetModelStatus(status_request, metadata=METADATA)
    assert [(s.version, s.state) for s in status.model_version_status] == [(2, get_model_status_pb2.ModelVersionStatus
                                                                            .AVAILABLE)]


# -- health, reflection, keys, request IDs, metrics


def test_health_serving_when_ready_and_reflection(channels):
    for channel, service in ((channels[0], "inference.GRPCInferenceService"),
                             (channels[1], "tensorflow.serving.PredictionService"), (channels[1], "")):
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING  # no key needed: probes stay open
    listing = next(reflection_pb2_grpc.ServerReflectionStub(channels[1]).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {service.name for service in listing.list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService", "grpc.health.v1.Health"} <= names


def test_not_ready_is_not_serving_and_unavailable(tmp_path, digits):
    """No version under the base path yet: health NOT_SERVING, calls UNAVAILABLE, ServerReady false."""
    with Served(ready_path="/healthz", model_base_path=tmp_path) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = v2grpc.GRPCInferenceServiceStub(channel)
            assert not stub.ServerReady(v2pb.ServerReadyRequest()).ready
            request = v2pb.ModelInferRequest(model_name=MODEL)
            request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28, 1])
            request.raw_input_contents.append(digits[0].tobytes())
            with pytest.raises(grpc.RpcError) as failed:
                stub.ModelInfer(request, metadata=METADATA)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_api_key_request_id_and_metrics(v2_stub, rest, digits):
    request = v2pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="images", datatype="FP32", shape=[1, 28, 28, 1])
    request.raw_input_contents.append(digits[0].tobytes())
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", KEY),)):
        with pytest.raises(grpc.RpcError) as failed:
            v2_stub.ModelInfer(request, metadata=metadata)
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert v2_stub.ServerLive(v2pb.ServerLiveRequest()).live  # open, as /v2/health/live
    _, call = v2_stub.ModelInfer.with_call(request, metadata=(*METADATA, ("x-request-id", "rid-42")))
    assert ("x-request-id", "rid-42") in tuple(call.trailing_metadata())
    text = rest.get("/metrics").text
    assert 'vae_grpc_requests_total{code="OK",method="ModelInfer",protocol="kserve_v2"}' in text
    assert 'vae_grpc_requests_total{code="UNAUTHENTICATED",method="ModelInfer",protocol="kserve_v2"}' in text


# -- bad input: the right code, a message naming the problem, and the process keeps serving


def v2_request(model=MODEL, version="", datatype="FP32", shape=(1, 28, 28, 1), raw: bytes | None = None,
               typed: list[float] | None = None) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name="images", datatype=datatype, shape=shape)
    if typed is not None:
        tensor.contents.fp32_contents.extend(typed)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


PIXELS = np.full((1, 28, 28, 1), 0.5, np.float32)
V2_BAD = {
    "wrong datatype": (v2_request(datatype="FP64", raw=PIXELS.astype(np.float64).tobytes()), "INVALID_ARGUMENT",
                       "data-type is 'FP64'"),
    "wrong shape": (v2_request(shape=(1, 28, 28)), "INVALID_ARGUMENT", "unexpected shape"),
    "raw bytes of the wrong length": (v2_request(raw=PIXELS.tobytes()[:-4]), "INVALID_ARGUMENT", "needs 3136"),
    "raw and typed together": (v2_request(raw=PIXELS.tobytes(), typed=[0.5] * 784), "INVALID_ARGUMENT",
                               "one or the other"),
    "no contents": (v2_request(), "INVALID_ARGUMENT", "no contents"),
    "unknown model": (v2_request(model="no_such_model", raw=PIXELS.tobytes()), "NOT_FOUND", "unknown model"),
    "version not loaded": (v2_request(version="7", raw=PIXELS.tobytes()), "NOT_FOUND", "version 7"),
    "version not a number": (v2_request(version="latest", raw=PIXELS.tobytes()), "INVALID_ARGUMENT",
                             "positive integer"),
    "pixels out of range": (v2_request(raw=(PIXELS * 3).tobytes()), "INVALID_ARGUMENT", "[0, 1]"),
    "more images than VAE_MAX_IMAGES": (v2_request(shape=(257, 28, 28, 1), raw=bytes(257 * 3136)),
                                        "INVALID_ARGUMENT", "VAE_MAX_IMAGES"),
    "message over the limit": (v2_request(shape=(800, 28, 28, 1), raw=bytes(800 * 3136 * 4)),
                               "RESOURCE_EXHAUSTED", "larger than max"),
}


def assert_refused(call, request, code: str, words: str) -> None:
    """The call answers status `code` with a message containing `words`."""
    with pytest.raises(grpc.RpcError) as failed:
        call(request, metadata=METADATA, timeout=30)
    assert (failed.value.code().name, words in failed.value.details()) == (code, True), failed.value.details()


@pytest.mark.parametrize("case", V2_BAD)
def test_v2_bad_input(v2_stub, case):
    assert_refused(v2_stub.ModelInfer, *V2_BAD[case])


def test_v2_bad_input_with_tritonclient(v2):
    with pytest.raises(InferenceServerException) as failed:
        v2_infer(v2, MODEL, images=np.zeros((1, 28, 28), np.float32))
    assert failed.value.status() == "StatusCode.INVALID_ARGUMENT" and "unexpected shape" in failed.value.message()


def tfs_bad(change) -> predict_pb2.PredictRequest:
    """One encode image (0.5 everywhere), changed by `change(request)`."""
    request = tfs_request(images=PIXELS)
    change(request)
    return request


TFS_BAD = {
    "wrong dtype": (tfs_request(images=PIXELS.astype(np.float64)), "INVALID_ARGUMENT", "DT_DOUBLE"),
    "wrong shape": (tfs_request(images=PIXELS[0]), "INVALID_ARGUMENT", "has shape [28, 28, 1]"),
    "tensor_content of the wrong length": (
        tfs_bad(lambda r: setattr(r.inputs["images"], "tensor_content", PIXELS.tobytes()[:-1])),
        "INVALID_ARGUMENT", "needs 3136"),
    "tensor_content and float_val together": (
        tfs_bad(lambda r: r.inputs["images"].float_val.append(0.5)), "INVALID_ARGUMENT", "both tensor_content"),
    "unknown model": (tfs_request(name="half", images=PIXELS), "NOT_FOUND", "Servable not found for request: "
                                                                             "Latest(half)"),
    "version not loaded": (tfs_bad(lambda r: r.model_spec.version.CopyFrom(
        type(r.model_spec.version)(value=7))), "NOT_FOUND", f"Specific({MODEL}, 7)"),
    "unknown signature": (tfs_request("no_such", images=PIXELS), "INVALID_ARGUMENT", '"no_such" not found'),
    "missing input": (tfs_request("sample", num_samples=np.array(4, np.int32)), "INVALID_ARGUMENT", "missing"),
}


@pytest.mark.parametrize("case", TFS_BAD)
def test_tfserving_bad_input(predict, case):
    assert_refused(predict.Predict, *TFS_BAD[case])


@pytest.mark.parametrize("port", ["grpc_port", "tfs_port"])
def test_garbage_bytes_and_unimplemented_methods(served, port):
    method = {"grpc_port": "/inference.GRPCInferenceService/ModelInfer",
              "tfs_port": "/tensorflow.serving.PredictionService/Predict"}[port]
    with grpc.insecure_channel(f"127.0.0.1:{getattr(served, port)}") as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as failed:
            call(b"\xff\xff\xff\xff garbage", metadata=METADATA, timeout=30)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in failed.value.details()
        other = {"grpc_port": "/inference.GRPCInferenceService/RepositoryIndex",
                 "tfs_port": "/tensorflow.serving.PredictionService/Classify"}[port]
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(other)(b"", metadata=METADATA, timeout=30)
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_deadline_exceeded(v2_stub):
    request = v2_request(shape=(64, 28, 28, 1), raw=bytes(64 * 3136))
    with pytest.raises(grpc.RpcError) as failed:
        v2_stub.ModelInfer(request, metadata=METADATA, timeout=0.0005)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_still_serving_both_after_bad_input(v2, rest, digits):
    """Runs after the bad-input tests (file order): the process answers gRPC and REST alike."""
    assert rest.post("/v1/encode", json={"images": digits[:1, ..., 0].tolist()}).status_code == 200
    assert v2_infer(v2, MODEL, images=digits[:1]).as_numpy("mean").shape == (1, 16)


def test_port_in_use_fails_the_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = Settings(grpc=True, grpc_port=taken.getsockname()[1], tfserving_grpc_port=0,
                            model_base_path=tmp_path)
        import asyncio

        from service.api import grpc as grpc_servers
        from service.api.grpc.server import GrpcStartError
        from service.serving.dataplane import DataPlane
        from service.serving.metrics import Metrics
        from service.serving.registry import Registry

        metrics = Metrics()
        with pytest.raises(GrpcStartError, match="cannot listen on"):
            asyncio.run(grpc_servers.start(settings, DataPlane(Registry(settings, metrics)), metrics, "1"))


def test_settings_turn_each_server_off():
    assert not Settings().grpc  # off unless asked (the image turns it on)
    assert Settings(grpc=True, tfserving_grpc_port=0).tfserving_grpc_port == 0
    with pytest.raises(ValueError, match="both"):
        Settings(grpc_tls_cert_file=Path("cert.pem"))


# -- the edge alone (no model): TLS, drain, deadlines


def edge_servers(tmp_path, handler, **overrides):
    """GrpcServers with one protocol whose ServerLive is `handler`, over a data plane with nothing loaded."""

    from service.api.grpc.kserve_v2 import SERVICE
    from service.api.grpc.server import GRPC_STATUS, GrpcServers, Protocol
    from service.serving.dataplane import DataPlane
    from service.serving.metrics import Metrics
    from service.serving.registry import Registry

    settings = Settings(grpc=True, model_base_path=tmp_path, **overrides)
    metrics = Metrics()

    def add(server, edge):
        server.add_generic_rpc_handlers([edge.generic_handler(SERVICE, {"ServerLive": handler})])
        return [SERVICE.full_name]

    async def start():
        return await GrpcServers.start(settings, DataPlane(Registry(settings, metrics)), metrics,
                                       [Protocol("test", free_port(), add, GRPC_STATUS)])

    return start, metrics


def test_tls_from_settings(tmp_path):
    import asyncio
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)

    async def live(request, context):
        return v2pb.ServerLiveResponse(live=True)

    start, _ = edge_servers(tmp_path, live, grpc_tls_cert_file=cert, grpc_tls_key_file=key)

    async def run():
        servers = await start()
        (port,) = servers.ports.values()
        try:
            credentials = grpc.ssl_channel_credentials(cert.read_bytes())
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                assert (await v2grpc.GRPCInferenceServiceStub(channel).ServerLive(v2pb.ServerLiveRequest())).live
                check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING  # nothing loaded
            async with grpc.aio.insecure_channel(f"localhost:{port}") as plain:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await v2grpc.GRPCInferenceServiceStub(plain).ServerLive(v2pb.ServerLiveRequest(), timeout=5)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await servers.stop(0)

    asyncio.run(run())


def test_drain_finishes_calls_in_flight_and_deadlines_cancel_work(tmp_path):
    import asyncio

    cancelled = []

    async def slow(request, context):
        try:
            await asyncio.sleep(request_delay[0])
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return v2pb.ServerLiveResponse(live=True)

    request_delay = [5.0]
    start, metrics = edge_servers(tmp_path, slow)

    async def run():
        servers = await start()
        (port,) = servers.ports.values()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = v2grpc.GRPCInferenceServiceStub(channel)
            # The call's deadline is the request's: the server stops its work when it passes.
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ServerLive(v2pb.ServerLiveRequest(), timeout=0.2)
            assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for _ in range(100):
                if cancelled:
                    break
                await asyncio.sleep(0.01)
            assert cancelled
            # Drain: a call in flight finishes; calls after the stop are refused.
            request_delay[0] = 0.3
            in_flight = asyncio.ensure_future(stub.ServerLive(v2pb.ServerLiveRequest(), timeout=10))
            await asyncio.sleep(0.1)
            await servers.stop(5)
            assert (await in_flight).live
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ServerLive(v2pb.ServerLiveRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(run())
    sample = metrics.registry.get_sample_value
    assert sample("vae_grpc_requests_total", {"protocol": "test", "method": "ServerLive", "code": "OK"}) == 1
