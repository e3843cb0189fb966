"""The metrics port: what a scraper reads without the API key, while /metrics on the API port keeps needing it."""

import httpx

from service.http.server import serve_metrics
from service.serving.metrics import Metrics
from service.settings import Settings
from tests.ports import free_port


def test_metrics_port_serves_the_apps_metrics_without_a_key():
    metrics = Metrics()
    metrics.load_failures.labels("7").inc()
    settings = Settings(metrics_port=free_port(), api_keys="secret")
    serve_metrics(settings, metrics)
    answer = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")
    assert answer.status_code == 200
    assert 'vae_model_load_failures_total{version="7"} 1.0' in answer.text


def test_api_port_metrics_still_need_the_key(make_client):
    client = make_client(api_keys="secret")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer secret"}).status_code == 200
