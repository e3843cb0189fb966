"""GET /v1/model, /healthz, /readyz, /metrics and the OpenAPI schema."""

import time

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def test_readyz_before_load_is_503(model_dir):
    client = TestClient(create_app(Settings(model_dir=model_dir, retry_after_s=1)))  # no `with`: no lifespan yet
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "the model is not loaded yet"
    assert response.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200
    response = client.get("/v1/model")
    assert response.status_code == 503
    assert response.json()["detail"] == "the model is not loaded yet"


def test_readyz_after_load_is_200(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_failed_warm_up_makes_healthz_503(model_dir, monkeypatch):
    def failing_warm_up(self, batch_sizes, threads=1):
        raise RuntimeError("out of GPU memory")  # as a real warm-up can fail, after a successful load

    monkeypatch.setattr("service.serving.model.VaeModel.warm_up", failing_warm_up)
    failures = []
    with TestClient(create_app(Settings(model_dir=model_dir), on_failure=lambda: failures.append(1))) as client:
        deadline = time.monotonic() + 30
        while (health := client.get("/healthz")).status_code == 200:
            assert time.monotonic() < deadline, "/healthz still 200 after the warm-up failed"
            time.sleep(0.02)
        assert health.status_code == 503
        reason = "version 1: warm-up failed: RuntimeError: out of GPU memory"
        assert health.json()["detail"] == reason
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()["detail"]) == (503, reason)
        assert failures == [1]  # python -m service ends the process here


def test_model_shows_metadata_and_device(client, model_dir):
    import json

    metadata = json.loads((model_dir / "metadata.json").read_text())
    response = client.get("/v1/model")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == metadata["model_name"]
    assert body["latent_size"] == metadata["latent_size"]
    assert body["image_shape"] == [28, 28, 1]
    assert body["device"] in ("/CPU:0", "/GPU:0")
    assert body["metrics"] == metadata["metrics"]
    assert set(body["signatures"]) >= {"encode", "decode", "sample", "reconstruct"}
    settings = client.app.state.settings
    assert body["batching"] == {"max_size": settings.batch_max_size, "max_delay_ms": settings.batch_max_delay_ms,
                                "trim": settings.batch_trim, "queue_max": settings.queue_max}


def test_metrics_count_requests_and_batches(client, digits):
    client.post("/v1/encode", json={"images": digits[:1, ..., 0].tolist()})
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'vae_http_requests_total{method="POST",protocol="v1",route="/v1/encode",status="200"}' in text
    version = client.app.state.dataplane.registry.routing.default.number
    assert f'vae_batch_size_images_count{{signature="encode",version="{version}"}}' in text
    assert f'vae_model_inference_seconds_count{{signature="encode",version="{version}"}}' in text
    assert f'vae_batch_queue_depth{{signature="encode",version="{version}"}}' in text
    assert "vae_batch_queue_wait_seconds_bucket" in text


def test_unknown_route_counted_without_raw_path(client):
    assert client.get("/no/such/route/123").status_code == 404
    assert 'route="unmatched"' in client.get("/metrics").text


def test_openapi_documents_endpoints_with_examples(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/encode", "/v1/decode", "/v1/samples", "/v1/reconstruct", "/v1/model", "/healthz", "/readyz",
                 "/metrics"):
        assert path in paths, path
    encode_body = paths["/v1/encode"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(encode_body)
    assert "examples" in encode_body["application/json"]["schema"]["properties"]["images"]
    assert paths["/v1/decode"]["post"]["summary"] and paths["/v1/decode"]["post"]["description"]
    for path in ("/v1/encode", "/v1/reconstruct"):  # upload options, read by the route itself
        names = [parameter["name"] for parameter in paths[path]["post"]["parameters"]]
        assert {"invert", "normalize"} <= set(names), names
    assert {"output", "format"} <= {p["name"] for p in paths["/v1/reconstruct"]["post"]["parameters"]}


def test_docs_page_served(client):
    response = client.get("/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.text.lower()
