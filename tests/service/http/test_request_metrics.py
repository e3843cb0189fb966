"""The HTTP request metrics carry the protocol of each route, named as the gRPC metrics name the same protocols."""

import numpy as np

from service.app import protocol_of


def test_each_route_is_labelled_with_its_protocol():
    assert protocol_of("/v1/encode") == protocol_of("/v1/model") == "v1"
    for path in ("/v2/models/{name}/infer", "/v2", "/v2/health/ready"):
        assert protocol_of(path) == "kserve_v2", path
    assert protocol_of("/v1/models/{name}:predict") == protocol_of("/v1/models/{name}") == "tfserving"
    assert protocol_of("/healthz") == protocol_of("/readyz") == protocol_of("/metrics") == "ops"
    assert protocol_of("/") == protocol_of("/playground/playground.js") == "playground"
    assert protocol_of("/openapi.json") == protocol_of("/docs") == "docs"
    assert protocol_of("/static-offline-docs/swagger-ui-bundle.js") == "docs"  # a mounted app's file: no route
    assert protocol_of("/no/such/route") == "other"


def test_the_gRPC_metrics_use_the_same_protocol_names():
    from service.api.grpc import kserve_v2, tfserving

    assert kserve_v2.protocol(0, "1").name == protocol_of("/v2/models/{name}/infer")
    assert tfserving.protocol(0).name == protocol_of("/v1/models/{name}:predict")


def test_requests_are_counted_by_protocol_route_and_status(client):
    image = np.zeros((1, 28, 28, 1), np.float32)
    client.post("/v1/encode", json={"images": image[..., 0].tolist()})
    client.post("/v2/models/mnist_vae/infer", json={"inputs": [{"name": "images", "shape": [1, 28, 28, 1],
                                                                "datatype": "FP32", "data": image.ravel().tolist()}]})
    client.post("/v1/models/mnist_vae:predict", json={"instances": image.tolist()})
    client.get("/v2/no/such/route")
    text = client.get("/metrics").text  # prometheus_client writes the labels in alphabetical order
    for series in ('{method="POST",protocol="v1",route="/v1/encode",status="200"}',
                   '{method="POST",protocol="kserve_v2",route="/v2/models/{name}/infer",status="200"}',
                   '{method="POST",protocol="tfserving",route="/v1/models/{name}:predict",status="200"}',
                   '{method="GET",protocol="kserve_v2",route="unmatched",status="404"}'):
        assert f"vae_http_requests_total{series}" in text, series
    assert 'vae_http_request_duration_seconds_count{method="POST",protocol="v1",route="/v1/encode"}' in text
